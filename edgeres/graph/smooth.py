"""Activation smoothing: move per-channel activation outliers into the weights.

Per-tensor 8-bit activations give every channel of a tensor the same step. A channel whose
range is 10x the median one sets that step, and the quiet channels drown in it. Like
SmoothQuant (Xiao et al., ICML 2023) this divides channel ``j`` of an activation by ``s_j``
and multiplies what reads it by ``s_j``: the float function is unchanged, the activation's
channels become alike, and the consumers' weights carry the difference. With per-channel
weights the producers' side is free (each output channel has its own scale) and so is a
depthwise consumer's; only a dense consumer's input channels pay, in weight rounding.

What is new here is where it applies in a CNN. A *domain* is a set of tensors that must be
scaled together: a conv's output, and, for a residual stream, every tensor joined to it by an
``add`` (MobileNetV2's stage of blocks, whose adds sum projections channel by channel). All
of a domain's producers must be convs/linears (or the domain's own adds) and all its readers
convs/linears or the domain's adds; otherwise (pooling, the graph's input or output, an
activation in between) the domain is left alone and the report says why.

Scales: ``s_j = a_j^alpha / w_j^(1-alpha)`` (a_j: the channel's calibrated absolute maximum,
w_j: the largest weight that reads it among dense consumers), SmoothQuant's rule. A producer
with ReLU6 clips at 6, which does not scale: there a channel may only grow (``s_j <= 1``) and
only while its calibrated maximum stays below 6 (``a_j / s_j <= 6 / margin``), so the clip
acts only on inputs ``margin`` times louder than any calibration image (where the int8
tensor's own range clips them anyway); on held-out images the float function moves by
~70 dB SQNR or less, far below int8 noise (MobileNetV2-1.0 on ImageNet views: 128 dB).

With per-tensor weights (``per_tensor`` layers, from the plan) neither side is free: no
channel's weights may grow past the layer's widest, in producers or readers, so smoothing
there only uses the headroom each layer already has.

No maintained library applies this to a captured CNN graph with residual streams (SmoothQuant
and its ports rewrite transformer LayerNorm -> Linear pairs), so it is written here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from rich.progress import Progress
from torch import Tensor

from edgeres.graph.equalize import is_plain_depthwise
from edgeres.graph.ir import STATS_DTYPE, Graph, Node, run_graph

RELU6_MARGIN = 1.5  # grown ReLU6 channels keep their calibrated max below 6 / this
MAX_SCALE_RATIO = 256.0  # s_j is kept within [1/this, this]: dead channels stay put


@dataclass
class SmoothDomain:
    """Tensors scaled together, the nodes that write them and the nodes that read them."""

    tensors: list[str]
    producers: list[Node]
    readers: list[Node]  # convs / linears outside the domain

    @property
    def name(self) -> str:
        return self.tensors[-1]


@dataclass
class SmoothReport:
    """Which domains were smoothed, which were not and why, and how much each range shrank."""

    smoothed: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (tensor, why)
    alpha: float = 0.5
    # tensor -> per-channel divisor s: smoothed tensor = original / s (not in the JSON: a
    # debugger comparing runtime tensors with the original float model needs the numbers)
    divisors: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"alpha": self.alpha, "smoothed": self.smoothed,
                "skipped": [list(s) for s in self.skipped]}


def _scalable_reader(graph: Graph, node: Node, tensor: str) -> bool:
    """Can ``node`` absorb a per-channel scale of its input ``tensor`` in its weights?"""
    if node.op == "conv2d":
        return node.attrs["groups"] == 1 or is_plain_depthwise(node)
    return node.op == "linear" and len(graph.shapes[tensor]) == 2


def _grow_domain(graph: Graph, start: Node) -> tuple[SmoothDomain | None, str]:
    """The domain of ``start``'s output, or None and why it cannot be scaled."""
    tensors, producers, readers = [start.output], [start], []
    seen = {start.output}
    i = 0
    while i < len(tensors):
        t = tensors[i]
        i += 1
        if t in graph.outputs:
            return None, "it is a graph output"
        users = graph.consumers(t)
        if not users:
            return None, "nothing reads it"
        for u in users:
            if u.op == "add" and u.attrs.get("act", "none") == "none":
                for t2 in [*u.inputs, u.output]:
                    if t2 not in seen:
                        seen.add(t2)
                        tensors.append(t2)
            elif _scalable_reader(graph, u, t):
                if u not in readers:
                    readers.append(u)
            else:
                return None, f"read by {u.describe()}"
        p = graph.producer(t)
        if p is None:
            return None, "it is a graph input"
        if p.op == "add":
            continue
        if p.op not in ("conv2d", "linear") or p.attrs.get("act", "none") not in (
            "none", "relu", "relu6"
        ):
            return None, f"written by {p.describe()}"
        if p not in producers:
            producers.append(p)
    return SmoothDomain(tensors, producers, readers), ""


def find_domains(graph: Graph) -> tuple[list[SmoothDomain], list[tuple[str, str]]]:
    """Every scalable domain, each once, and the conv outputs that are not scalable."""
    domains, skipped, covered = [], [], set()
    for node in graph.nodes:
        if node.op not in ("conv2d", "linear") or node.output in covered:
            continue
        dom, why = _grow_domain(graph, node)
        if dom is None:
            skipped.append((node.output, why))
            continue
        covered.update(dom.tensors)
        domains.append(dom)
    return domains, skipped


def _channel_absmax(graph: Graph, tensors: set[str], calib: Tensor, batch: int,
                    progress: bool = False) -> dict:
    out: dict[str, Tensor] = {}

    def observe(name: str, value: Tensor) -> None:
        if name in tensors:
            m = value.detach().abs().transpose(0, 1).reshape(value.shape[1], -1).amax(1)
            out[name] = m if name not in out else torch.maximum(out[name], m)

    starts = range(0, calib.shape[0], batch)
    with Progress(disable=not progress, transient=True) as bar:
        for i in bar.track(starts, description="smoothing: channel ranges"):
            run_graph(graph, calib[i : i + batch], dtype=STATS_DTYPE, observe=observe)
    return {k: v.to(torch.float64) for k, v in out.items()}


def _reader_in_range(node: Node) -> Tensor:
    """Largest |weight| reading each input channel (dense readers only)."""
    w = node.params["weight"].detach().to(torch.float64)
    return w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(1)


def domain_scales(dom: SmoothDomain, absmax: dict[str, Tensor], alpha: float,
                  per_tensor: Collection[str] = ()) -> Tensor:
    """SmoothQuant's ``s_j``, bounded where a ReLU6 producer would change the function and
    where a layer with one weight scale (``per_tensor`` names) would widen its weight range
    (SmoothQuant's balance assumes the reader's range may widen; one shared scale cannot)."""
    a = torch.stack([absmax[t] for t in dom.tensors]).amax(0)
    dense = [_reader_in_range(r) for r in dom.readers if not is_plain_depthwise(r)]
    if dense:
        w = torch.stack(dense).amax(0)
        s = a.clamp_min(1e-12).pow(alpha) / w.clamp_min(1e-12).pow(1 - alpha)
    else:  # depthwise readers only: both sides free, make every channel's range the widest
        s = a / a.max().clamp_min(1e-12)
    s = s / s[a > 0].median() if (a > 0).any() else torch.ones_like(a)
    s = s.clamp(1 / MAX_SCALE_RATIO, MAX_SCALE_RATIO)
    if any(p.attrs.get("act") == "relu6" for p in dom.producers):
        grow_limit = (a * RELU6_MARGIN / 6.0).clamp_min(1 / MAX_SCALE_RATIO)
        s = torch.maximum(s.clamp(max=1.0), grow_limit).clamp(max=1.0)
    for p in dom.producers:  # w_j / s_j must stay within the producer's one range
        if p.name in per_tensor:
            r = _out_range(p)
            s = torch.maximum(s, r / r.max().clamp_min(1e-12))
    for r in dom.readers:  # a reader's weights for channel j grow by s_j
        if r.name in per_tensor:
            rr = _out_range(r) if is_plain_depthwise(r) else _reader_in_range(r)
            s = torch.minimum(s, rr.max() / rr.clamp_min(1e-12))
    s[a <= 0] = 1.0
    return s


def _out_range(node: Node) -> Tensor:
    w = node.params["weight"].detach().to(torch.float64)
    return w.abs().reshape(w.shape[0], -1).amax(1)


def _scale_producer(node: Node, s: Tensor) -> None:
    w = node.params["weight"].to(torch.float64)
    scaled = {"weight": (w / s.reshape([-1] + [1] * (w.dim() - 1))).float()}
    if node.params.get("bias") is not None:
        scaled["bias"] = (node.params["bias"].to(torch.float64) / s).float()
    node.params = {**node.params, **scaled}


def _scale_reader(node: Node, s: Tensor) -> None:
    w = node.params["weight"].to(torch.float64)
    if is_plain_depthwise(node):
        w = w * s.reshape([-1] + [1] * (w.dim() - 1))
    else:
        w = w * s.reshape([1, -1] + [1] * (w.dim() - 2))
    node.params = {**node.params, "weight": w.float()}


def smooth(graph: Graph, calib: Tensor, alpha: float = 0.5, batch: int = 32,
           per_tensor: Collection[str] = (), progress: bool = False
           ) -> tuple[Graph, SmoothReport]:
    """A new graph computing the same function with smoothed activation channels.

    ``per_tensor`` names the layers whose weights will have one scale (per-tensor targets):
    their weight ranges are not allowed to widen.
    """
    absmax = _channel_absmax(graph, domain_tensors(graph), calib, batch, progress)
    g, report, _ = smooth_with_ranges(graph, absmax, alpha, per_tensor)
    return g, report


def domain_tensors(graph: Graph) -> set[str]:
    """The tensors smoothing may rescale: their channel ranges are what it needs."""
    return {t for d in find_domains(graph)[0] for t in d.tensors}


def smooth_with_ranges(graph: Graph, absmax: dict[str, Tensor], alpha: float = 0.5,
                       per_tensor: Collection[str] = ()
                       ) -> tuple[Graph, SmoothReport, dict[str, Tensor]]:
    """:func:`smooth` from channel ranges already measured (``absmax``: each domain tensor's
    per-channel max |value| on the calibration data); also returns each rescaled tensor's
    divisor ``s``, so its statistics carry over without another pass (PTQ calibrates once)."""
    g = graph.copy()
    domains, skipped = find_domains(g)
    report = SmoothReport(skipped=skipped, alpha=alpha)
    divisors = report.divisors
    for dom in domains:
        s = domain_scales(dom, absmax, alpha, per_tensor)
        for p in dom.producers:
            _scale_producer(p, s)
        for r in dom.readers:
            _scale_reader(r, s)
        divisors.update({t: s for t in dom.tensors})
        before = max(float(absmax[t].max()) for t in dom.tensors)
        after = max(float((absmax[t] / s).max()) for t in dom.tensors)
        report.smoothed.append({"domain": dom.tensors, "range_before": round(before, 4),
                                "range_after": round(after, 4)})
    return g, report, divisors


__all__ = ["SmoothDomain", "SmoothReport", "domain_scales", "domain_tensors", "find_domains",
           "smooth", "smooth_with_ranges"]
