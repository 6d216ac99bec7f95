"""Quantization math as plain tensor functions (no modules, no state).

All functions return float32 scales, as files store them; codes are computed from those
float32 scales so that every consumer derives the same integers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from edgeres.qtypes import QParams, QSpec


def qparams_from_range(spec: QSpec, lo: Tensor | float, hi: Tensor | float) -> QParams:
    """QParams covering [lo, hi] (0 always included so zero pads are exact).

    Symmetric specs use scale = max|x| / qmax and zero point 0 (or the unsigned midpoint).
    """
    lo_t = torch.as_tensor(lo, dtype=torch.float64).clamp(max=0.0)
    hi_t = torch.as_tensor(hi, dtype=torch.float64).clamp(min=0.0)
    qmin, qmax = spec.qmin, spec.qmax
    tiny = 1e-8
    if spec.symmetric:
        amax = torch.maximum(-lo_t, hi_t).clamp(min=tiny)
        if spec.signed:
            scale = amax / qmax
            zp = torch.zeros_like(scale)
        else:  # unsigned symmetric: zero at the midpoint
            scale = 2 * amax / (qmax - qmin)
            zp = torch.full_like(scale, (qmax + qmin + 1) // 2)
    else:
        span = (hi_t - lo_t).clamp(min=tiny)
        scale = span / (qmax - qmin)
        zp = torch.round(qmin - lo_t / scale.to(torch.float32).double()).clamp(qmin, qmax)
    scale32 = scale.to(torch.float32).numpy()
    return QParams(spec, np.asarray(scale32, np.float32), zp.to(torch.int64).numpy())


def quantize_weight(w: Tensor, qp: QParams) -> np.ndarray:
    """Integer codes of a weight tensor in the spec's storage dtype."""
    return qp.quantize(w.detach().to(torch.float32)).numpy().astype(qp.spec.storage_dtype())


def per_channel_absmax(w: Tensor, axis: int = 0) -> Tensor:
    dims = [d for d in range(w.dim()) if d != axis]
    return w.detach().abs().amax(dim=dims) if dims else w.detach().abs()


def weight_qparams(w: Tensor, spec: QSpec, method: str = "minmax") -> QParams:
    """Symmetric weight QParams, per channel along ``spec.axis`` or per tensor.

    ``mse`` searches clip ratios per channel for the smallest squared rounding error. It
    matters at 4 bits and below, where min-max wastes most levels on outliers; at 8 bits a
    short grid near 1.0 suffices (and keeps PTQ of MobileNetV2-1.0 to seconds).
    """
    w = w.detach().to(torch.float32)
    axis = spec.axis
    amax = per_channel_absmax(w, axis) if axis is not None else w.abs().max()
    if method == "minmax":
        return qparams_from_range(spec, -amax, amax)
    if method != "mse":
        raise ValueError(f"unknown weight observer '{method}'")
    low, grid = (0.7, 16) if spec.bits >= 7 else (0.3, 48)
    moved = w.movedim(axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    amax_c = amax.reshape(-1)
    best_err = torch.full_like(amax_c, float("inf"))
    best = amax_c.clone()
    for ratio in torch.linspace(low, 1.0, grid):
        clip = (amax_c * ratio).clamp(min=1e-12)
        scale = (clip / spec.qmax)[:, None]
        q = torch.round(moved / scale).clamp_(spec.qmin, spec.qmax)
        err = q.mul_(scale).sub_(moved).square_().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, clip, best)
    if axis is None:
        return qparams_from_range(spec, -best[0], best[0])
    return qparams_from_range(spec, -best, best)


def sqnr_db(reference: Tensor, test: Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical)."""
    ref = reference.to(torch.float64)
    noise = ((test.to(torch.float64) - ref) ** 2).mean().item()
    signal = (ref**2).mean().item()
    if noise == 0.0:
        return float("inf")
    return 10.0 * float(np.log10(max(signal, 1e-30) / noise))
