"""Data-free cross-layer equalization (Nagel et al., "Data-Free Quantization", ICCV 2019).

For two layers in a row, ``y = W2 f(W1 x + b1)`` with ``f`` positively homogeneous
(``f(s x) = s f(x)`` for s > 0: no activation, or ReLU), scaling output channel i of W1 and
b1 by ``1/s_i`` and input channel i of W2 by ``s_i`` leaves the network's function unchanged.
``s_i = sqrt(r1_i / r2_i)`` (r = the channel's weight range) makes both ranges
``sqrt(r1_i r2_i)``: channels of similar range, which is what a per-tensor weight scale needs
(MobileNetV2's depthwise convs, whose folded BatchNorm leaves channel ranges 100x apart).
Iterating over all pairs converges to equalized chains (conv -> depthwise -> pointwise).

ReLU6 is not homogeneous (the clip at 6 does not scale), so pairs joined by it are skipped;
:func:`relu6_to_relu` replaces it as the DFQ paper does. That changes the float model (any
activation above 6 is no longer clipped): its accuracy must be measured again, and the report
says which layers changed. Bias correction (in PTQ) completes the DFQ-style baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from edgeres.graph.ir import Graph, Node

HOMOGENEOUS = ("none", "relu")


@dataclass
class EqualizeReport:
    """What equalization did: the pairs it scaled, what it skipped and why, and any ReLU6
    it replaced."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (first, second, why)
    relu6_replaced: list[str] = field(default_factory=list)
    iterations: int = 0
    max_log_scale: float = 0.0  # largest |log s| of the last iteration (0 = converged)

    def to_json(self) -> dict:
        return {
            "pairs": [list(p) for p in self.pairs],
            "skipped": [list(s) for s in self.skipped],
            "relu6_replaced": self.relu6_replaced,
            "iterations": self.iterations,
            "max_log_scale": self.max_log_scale,
        }


def relu6_to_relu(graph: Graph) -> tuple[Graph, list[str]]:
    """Every ReLU6 (fused into conv/linear/add, or standalone) becomes ReLU; returns the names."""
    g = graph.copy()
    changed = []
    for node in g.nodes:
        if node.op == "act" and node.attrs["kind"] == "relu6":
            node.attrs["kind"] = "relu"
            changed.append(node.name)
        elif node.attrs.get("act") == "relu6":
            node.attrs["act"] = "relu"
            changed.append(node.name)
    return g, changed


def is_plain_depthwise(node: Node) -> bool:
    """A depthwise conv with one filter per input channel (channel i in, channel i out)."""
    w = node.params.get("weight")
    return (node.op == "conv2d" and w is not None and node.attrs["groups"] == w.shape[0] > 1
            and w.shape[1] == 1)


def _pair_reason(graph: Graph, first: Node, second: Node) -> str | None:
    """Why (first, second) cannot be equalized; None if it can."""
    act = first.attrs.get("act", "none")
    if act not in HOMOGENEOUS:
        return f"activation {act} between them is not positively homogeneous"
    if second.op == "conv2d" and second.attrs["groups"] != 1 and not is_plain_depthwise(second):
        return "grouped convolution"
    if second.op == "linear" and len(graph.shapes[first.output]) != 2:
        return "linear over a non-channel axis"
    return None


def find_pairs(graph: Graph) -> tuple[list[tuple[Node, Node]], list[tuple[str, str, str]]]:
    """Consecutive conv/linear layers (the first's output read only by the second)."""
    pairs, skipped = [], []
    for first in graph.nodes:
        if first.op not in ("conv2d", "linear"):
            continue
        users = graph.consumers(first.output)
        if len(users) != 1 or first.output in graph.outputs:
            continue
        second = users[0]
        if second.op not in ("conv2d", "linear"):
            continue
        why = _pair_reason(graph, first, second)
        if why is None:
            pairs.append((first, second))
        else:
            skipped.append((first.name, second.name, why))
    return pairs, skipped


def _out_range(w: Tensor) -> Tensor:
    return w.abs().reshape(w.shape[0], -1).amax(dim=1)


def _in_range(node: Node) -> Tensor:
    w = node.params["weight"]
    if is_plain_depthwise(node):  # input channel i is filter i
        return _out_range(w)
    return w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(dim=1)


def equalization_scales(r1: Tensor, r2: Tensor) -> Tensor:
    """``s_i = sqrt(r1_i / r2_i)`` (1 where either range is 0, so dead channels stay put)."""
    ok = (r1 > 0) & (r2 > 0)
    s = torch.ones_like(r1)
    s[ok] = torch.sqrt(r1[ok] / r2[ok])
    return s


def _apply(first: Node, second: Node, s: Tensor) -> None:
    w1, b1 = first.params["weight"], first.params["bias"]
    shape1 = [-1] + [1] * (w1.dim() - 1)
    first.params = {**first.params, "weight": w1 / s.reshape(shape1), "bias": b1 / s}
    w2 = second.params["weight"]
    if is_plain_depthwise(second):
        scaled = w2 * s.reshape([-1] + [1] * (w2.dim() - 1))
    else:
        scaled = w2 * s.reshape([1, -1] + [1] * (w2.dim() - 2))
    second.params = {**second.params, "weight": scaled}


def equalize(graph: Graph, relu6_to_relu_first: bool = False, iterations: int = 20,
             tol: float = 1e-4) -> tuple[Graph, EqualizeReport]:
    """Cross-layer equalization of every eligible pair, iterated until the scales are ~1.

    ``relu6_to_relu_first`` replaces ReLU6 by ReLU first (changing the float model) so that
    MobileNetV2's pairs become eligible. Returns a new graph (parameters are new tensors).
    """
    report = EqualizeReport()
    g = graph.copy()
    if relu6_to_relu_first:
        g, report.relu6_replaced = relu6_to_relu(g)
    for node in g.nodes:  # own float64 copies: the inputs' tensors are never touched
        if node.op in ("conv2d", "linear"):
            node.params = {k: v.detach().to(torch.float64).clone() for k, v in node.params.items()}
    pairs, report.skipped = find_pairs(g)
    report.pairs = [(a.name, b.name) for a, b in pairs]
    for it in range(iterations):
        worst = 0.0
        for first, second in pairs:
            s = equalization_scales(_out_range(first.params["weight"]), _in_range(second))
            _apply(first, second, s)
            worst = max(worst, float(s.log().abs().max()) if s.numel() else 0.0)
        report.iterations, report.max_log_scale = it + 1, worst
        if worst < tol:
            break
    for node in g.nodes:
        if node.op in ("conv2d", "linear"):
            node.params = {k: v.to(torch.float32) for k, v in node.params.items()}
    return g, report


__all__ = ["EqualizeReport", "equalization_scales", "equalize", "find_pairs", "is_plain_depthwise",
           "relu6_to_relu"]
