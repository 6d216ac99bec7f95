"""REx residual error expansion (Yvinec et al., NeurIPS 2023) as plain tensor functions.

A weight ``W`` becomes K integer terms: ``R1 = Q(W)``, ``Rk = Q(W - R1 - ... - R(k-1))``, each
quantized with its own scale computed on the residual it quantizes, so the weight error
shrinks roughly by ``2^b`` per order while every term stays in the target's weight format.
Group sparsity: terms k >= 2 keep only ``rows`` (the output channels with the largest
residual output error); the other rows are zero there.

Why the kept rows are one set for every k >= 2 (the paper re-ranks per order): the graph
transform computes the sparse terms on a channel branch of their own (see
:mod:`edgeres.graph.rex_expand`), and one branch per layer is what exports cleanly.

>>> import torch
>>> from edgeres.qtypes import QSpec
>>> w = torch.randn(8, 4, 3, 3)
>>> spec = QSpec(4, True, True, 0, True)
>>> terms = expand_weight(w, spec, order=3)
>>> bool(weight_error(w, terms[:3]) < weight_error(w, terms[:1]))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edgeres.errors import UserError
from edgeres.qtypes import QParams, QSpec
from edgeres.quant.primitives import quantize_weight, weight_qparams
from edgeres.targets import Target


@dataclass(frozen=True, eq=False)
class RExTerm:
    """One integer term of an expanded weight: full-shaped codes (zero outside ``rows``)."""

    codes: np.ndarray
    qparams: QParams
    rows: np.ndarray | None = None  # kept output channels (sorted); None: every channel

    def dequantized(self) -> Tensor:
        """The term's real value in float64 (exact: int codes times float32 scales)."""
        return self.qparams.dequantize(torch.from_numpy(self.codes.astype(np.int64)))

    def select(
        self, rows: np.ndarray, cols: np.ndarray | None = None
    ) -> tuple[np.ndarray, QParams]:
        """Codes and QParams of a slice of output rows (and input columns): what a branch needs.

        Per-channel scales follow their rows; a per-tensor scale is shared unchanged.
        """
        codes = self.codes[rows]
        if cols is not None:
            codes = codes[:, cols]
        qp = self.qparams
        if qp.spec.per_channel:
            qp = QParams(qp.spec, qp.scale[rows], qp.zero_point[rows])
        return np.ascontiguousarray(codes), qp


def check_bits(target: Target, bits: int) -> None:
    """REx is asked for a specific grid, so bits the target cannot run are an error (plain
    PTQ widens them instead)."""
    if bits not in target.weights.bits:
        allowed = ", ".join(str(b) for b in target.weights.bits)
        raise UserError(
            f"REx weight_bits={bits} cannot run on {target.name} (allowed weight bits: "
            f"{allowed}); pick one of those, or a target profile whose [weights] bits list {bits}"
        )


def term_spec(target: Target, bits: int, per_channel: bool | None, *, layer: str,
              depthwise: bool) -> QSpec:
    """The weight QSpec of every REx term of ``layer``: ``bits`` wide, in the granularity,
    symmetry and range the target allows (see :meth:`Target.check_qspec`)."""
    check_bits(target, bits)
    wanted = target.weight_qspec(bits, depthwise=depthwise)
    if per_channel is not None:
        wanted = QSpec(bits, wanted.signed, wanted.symmetric, 0 if per_channel else None,
                       wanted.narrow_range)
    return target.check_qspec(wanted, layer=layer, depthwise=depthwise).spec


def kept_count(channels: int, sparsity: float) -> int:
    """Output channels a sparse term keeps: ``ceil((1 - gamma) * C)``, at least one."""
    if not 0.0 <= sparsity < 1.0:
        raise UserError(f"REx sparsity gamma must be in [0, 1), got {sparsity}")
    return max(1, min(channels, math.ceil((1.0 - sparsity) * channels - 1e-9)))


def top_rows(score: Tensor, sparsity: float) -> np.ndarray:
    """Indices (sorted) of the ``kept_count`` channels with the largest score; ties by index."""
    m = kept_count(score.numel(), sparsity)
    order = np.argsort(-score.detach().double().numpy(), kind="stable")
    return np.sort(order[:m])


def _quantize_rows(res: Tensor, spec: QSpec, rows: np.ndarray | None,
                   method: str) -> tuple[np.ndarray, QParams]:
    """Quantize a residual; outside ``rows`` the codes are zero.

    A per-tensor scale is computed on the kept rows only (the dropped rows do not exist in
    the deployed term); per-channel scales of dropped rows are set to the largest kept scale
    (their codes are zero, so the value is free, but a tiny scale would make a runtime's
    requantization multiplier underflow).
    """
    if rows is not None and len(rows) == res.shape[0]:
        rows = None
    if rows is None:
        qp = weight_qparams(res, spec, method)
        return quantize_weight(res, qp), qp
    if spec.per_channel:
        qp = weight_qparams(res, spec, method)
        mask = np.zeros(res.shape[0], bool)
        mask[rows] = True
        scale = qp.scale.copy()
        scale[~mask] = scale[mask].max()
        qp = QParams(spec, scale, qp.zero_point)
    else:
        qp = weight_qparams(res[torch.from_numpy(rows)], spec, method)
    codes = quantize_weight(res, qp)
    keep = np.zeros(res.shape[0], bool)
    keep[rows] = True
    codes[~keep] = 0
    return codes, qp


def expand_weight(w: Tensor, spec: QSpec, order: int, rows: np.ndarray | None = None,
                  method: str = "mse", first: RExTerm | None = None) -> list[RExTerm]:
    """The ``order`` REx terms of ``w`` (output channels on axis 0).

    ``rows``: output channels the terms k >= 2 keep (None: all, i.e. gamma = 0). ``method``
    picks each term's scale ("minmax" or "mse" clipping, as for PTQ weights); either way a
    term never increases any element's error (round to nearest of a zero-centred grid).
    ``first``: term 1 if already computed (it does not depend on ``rows``).
    """
    if order < 1:
        raise UserError(f"REx order must be >= 1, got {order}")
    if not spec.symmetric or not spec.signed:
        raise UserError(f"REx terms need signed symmetric weights, got {spec.describe()}")
    if spec.per_channel and spec.axis != 0:
        raise UserError(f"REx expects per-channel weights on axis 0, got axis {spec.axis}")
    w64 = w.detach().to(torch.float64)
    acc = torch.zeros_like(w64)
    terms: list[RExTerm] = []
    for k in range(order):
        sel = None if k == 0 else rows
        if k == 0 and first is not None:
            term = first
        else:
            codes, qp = _quantize_rows(w64 - acc, spec, sel, method)
            term = RExTerm(codes, qp, None if sel is None else np.asarray(sel, np.int64))
        acc = acc + term.dequantized()
        terms.append(term)
    return terms


def reconstruct(terms: list[RExTerm]) -> Tensor:
    """Sum of the dequantized terms (float64): the weight the expanded layer computes with."""
    out = terms[0].dequantized()
    for t in terms[1:]:
        out = out + t.dequantized()
    return out


def weight_error(w: Tensor, terms: list[RExTerm]) -> float:
    """Squared Frobenius norm of ``W - sum(terms)``."""
    return float(((w.detach().to(torch.float64) - reconstruct(terms)) ** 2).sum())


def channel_noise(dw: Tensor, groups: int = 1, in_energy: Tensor | None = None) -> Tensor:
    """Per output channel output-error power of a weight error ``dw``: ``sum dw^2 * E[x^2]``.

    Rounding errors of different weights are nearly uncorrelated, so the output error power
    is the weight error power weighted by each input channel's second moment (``in_energy``,
    from calibration; None = data-free, every input channel 1). Works for OIHW convs (any
    ``groups``) and [out, in] linears.
    """
    sq = dw.detach().to(torch.float64) ** 2
    per_in = sq.sum(dim=tuple(range(2, sq.dim()))) if sq.dim() > 2 else sq  # [O, I/groups]
    if in_energy is None:
        return per_in.sum(dim=1)
    e = in_energy.detach().to(torch.float64)
    o, ig = per_in.shape
    e_rows = e.reshape(groups, ig).repeat_interleave(o // groups, dim=0)  # [O, I/groups]
    return (per_in * e_rows).sum(dim=1)


def term_bytes(terms: list[RExTerm]) -> int:
    """Bytes the terms k >= 2 add when stored as int8 kernels with an int32 bias per row."""
    total = 0
    for t in terms[1:]:
        rows = t.codes.shape[0] if t.rows is None else len(t.rows)
        total += rows * int(np.prod(t.codes.shape[1:])) + 4 * rows
    return total


__all__ = [
    "RExTerm",
    "channel_noise",
    "check_bits",
    "expand_weight",
    "kept_count",
    "reconstruct",
    "term_bytes",
    "term_spec",
    "top_rows",
    "weight_error",
]
