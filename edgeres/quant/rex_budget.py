"""Choosing REx order K and sparsity gamma per layer: uniformly, or greedily under a budget.

The objective is the noise the expansion leaves at the model's output, relative to the
output's power, predicted without a forward pass per candidate. A weight error ``dW`` puts
``channel_noise`` (``sum dW^2 E[x^2]``, per output channel) on the layer's pre-activation
output; how much of that reaches the logits is the channel's gain, ``sum ||d logits / dz||^2``
over its positions, measured once with a backward pass on calibration data
(:func:`layer_gains`, Hutchinson's estimator with a random logit direction). Noise powers of
independent sources add, so the proxy is a sum over layers and channels. Expansion is not
free of noise either: each expanded layer's term 1 is an int8 tensor of its own (one more
rounding of about the output's step, ``step^2 / 12`` per element), and a split consumer
rounds its two halves; both are charged, which stops REx from "improving" 8-bit layers whose
weight error is already below their activations' rounding. The same gains rank the channels
a sparse term keeps: the largest residual error *as seen at the output*.

The cost is what the expanded graph really executes and stores (the deployed layout of
:mod:`edgeres.graph.rex_expand`): a layer whose output channels can be split into a branch
pays ``(K-1)(1-gamma)`` of its MACs; any other layer pays ``K-1`` whole copies, so gamma > 0
buys it nothing and is not offered.

The budget search is the classic greedy for a multiple-choice knapsack: start every layer at
K = 1 and repeatedly take the upgrade with the largest error reduction per unit of cost that
still fits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from edgeres.errors import UserError
from edgeres.graph.ir import STATS_DTYPE, Graph, Node, run_graph
from edgeres.qtypes import QSpec
from edgeres.quant.rex import RExTerm, channel_noise, expand_weight, term_bytes, top_rows

SPARSITY_GRID = (0.0, 0.25, 0.5, 0.75, 0.875)


@dataclass(frozen=True, eq=False)
class LayerInfo:
    """What the search knows about one expandable conv2d / linear layer."""

    name: str
    weight: Tensor
    groups: int
    spec: QSpec
    macs: int
    moments: PatchMoments | None = None  # input patch statistics; None = data-free
    gain: Tensor | None = None  # per output channel: output noise per unit noise here
    round_var: float = 0.0  # noise power of one more rounding on the output's int8 grid
    weight_scale: float = 1.0  # measured / predicted output noise of this layer's K = 1

    def noise(self, dw: Tensor) -> Tensor:
        """Per output channel, the output noise that a weight error ``dw`` causes."""
        n = channel_noise(dw, self.groups) if self.moments is None else self.moments.noise(dw)
        n = n if self.gain is None else n * self.gain
        return n * self.weight_scale

    def round_noise(self, rows: np.ndarray | None = None) -> float:
        """Output noise of one more rounding of this layer's output (``rows`` only)."""
        if self.gain is None:
            return 0.0
        g = self.gain if rows is None else self.gain[torch.from_numpy(rows)]
        return self.round_var * float(g.sum())


@dataclass(frozen=True, eq=False)
class Option:
    """One choice for a unit: an order per layer, the kept rows, its cost and error."""

    orders: tuple[int, ...]
    sparsity: float
    rows: np.ndarray | None
    extra_macs: int
    extra_bytes: int
    error: float


@dataclass(eq=False)
class Unit:
    """Layers that share one channel split (a region) or a single layer that cannot split."""

    layers: tuple[LayerInfo, ...]
    splittable: bool
    split_bytes: int = 0  # what splitting costs in bytes (the consumer's second bias)
    split_noise: float = 0.0  # what splitting costs in noise (the consumer's two halves)

    @property
    def name(self) -> str:
        return self.layers[0].name


@dataclass(frozen=True, eq=False)
class LayerChoice:
    """The decision for one layer: its terms (len = order) and the kept rows of k >= 2."""

    name: str
    order: int
    sparsity: float
    rows: np.ndarray | None
    terms: list[RExTerm]
    split: bool


def _prefix_errors(info: LayerInfo, terms: list[RExTerm]) -> list[float]:
    """Error proxy after 1..K terms (nested, so one expansion gives every prefix)."""
    w = info.weight.detach().to(torch.float64)
    acc = torch.zeros_like(w)
    out = []
    for t in terms:
        acc = acc + t.dequantized()
        out.append(float(info.noise(w - acc).sum()))
    return out


class UnitEvaluator:
    """Cost and error of any (orders, gamma) choice of one unit, with expansions cached."""

    def __init__(self, unit: Unit, max_order: int, method: str,
                 firsts: dict[str, RExTerm] | None = None) -> None:
        self.unit, self.max_order, self.method = unit, max_order, method
        self._cache: dict[tuple, tuple[list[RExTerm], list[float]]] = {}
        self._first: dict[str, RExTerm] = {}
        self._score = torch.zeros(unit.layers[0].weight.shape[0], dtype=torch.float64)
        for li in unit.layers:
            first = (firsts or {}).get(li.name) or expand_weight(li.weight, li.spec, 1,
                                                                 method=method)[0]
            self._first[li.name] = first
            self._score += li.noise(li.weight.detach().to(torch.float64) - first.dequantized())

    def rows(self, orders: tuple[int, ...], gamma: float) -> np.ndarray | None:
        """Kept rows: the largest residual output errors (summed over the unit's layers, so
        one set of rows serves every order combination and expansions are shared)."""
        if not self.unit.splittable or gamma <= 0.0 or max(orders) <= 1:
            return None
        rows = top_rows(self._score, gamma)
        return None if len(rows) == self._score.numel() else rows

    def terms(self, li: LayerInfo, rows: np.ndarray | None) -> tuple[list[RExTerm], list[float]]:
        key = (li.name, None if rows is None else rows.tobytes())
        if key not in self._cache:
            terms = expand_weight(li.weight, li.spec, self.max_order, rows, self.method,
                                  first=self._first[li.name])
            self._cache[key] = (terms, _prefix_errors(li, terms))
        return self._cache[key]

    def option(self, orders: tuple[int, ...], gamma: float) -> Option:
        rows = self.rows(orders, gamma)
        err, macs, nbytes = 0.0, 0, 0
        for li, k in zip(self.unit.layers, orders, strict=True):
            terms, errs = self.terms(li, rows)
            err += errs[k - 1]
            if k > 1:
                frac = 1.0 if rows is None else len(rows) / li.weight.shape[0]
                macs += int(round((k - 1) * li.macs * frac))
                nbytes += term_bytes(terms[:k])
                err += li.round_noise(rows)
        if rows is not None:
            nbytes += self.unit.split_bytes
            err += self.unit.split_noise
        return Option(orders, 0.0 if rows is None else gamma, rows, macs, nbytes, err)

    def all_options(self, sparsities: Iterable[float]) -> list[Option]:
        grid = sorted(set(sparsities)) if self.unit.splittable else [0.0]
        out = []
        for idx in np.ndindex(*([self.max_order] * len(self.unit.layers))):
            orders = tuple(int(k) + 1 for k in idx)
            for gamma in grid if max(orders) > 1 else [0.0]:
                out.append(self.option(orders, gamma))
        return out


def _fits(macs: int, nbytes: int, max_macs: float | None, max_bytes: float | None) -> bool:
    return (max_macs is None or macs <= max_macs + 1e-9) and (
        max_bytes is None or nbytes <= max_bytes + 1e-9
    )


def greedy(options: list[list[Option]], max_macs: float | None,
           max_bytes: float | None) -> list[Option]:
    """Per unit, the option the greedy knapsack picks within the budget (K = 1 to start)."""
    chosen = [min(opts, key=lambda o: (sum(o.orders), o.sparsity)) for opts in options]
    used_macs = sum(o.extra_macs for o in chosen)
    used_bytes = sum(o.extra_bytes for o in chosen)
    while True:
        best: tuple[float, int, Option] | None = None
        for i, opts in enumerate(options):
            cur = chosen[i]
            for o in opts:
                gain = cur.error - o.error
                d_macs, d_bytes = o.extra_macs - cur.extra_macs, o.extra_bytes - cur.extra_bytes
                if gain <= 0 or not _fits(used_macs + d_macs, used_bytes + d_bytes, max_macs,
                                          max_bytes):
                    continue
                cost = 0.0
                if max_macs is not None:
                    cost += max(d_macs, 0) / max(max_macs, 1.0)
                if max_bytes is not None:
                    cost += max(d_bytes, 0) / max(max_bytes, 1.0)
                eff = gain / cost if cost > 0 else float("inf")
                if best is None or eff > best[0]:
                    best = (eff, i, o)
        if best is None:
            return chosen
        _, i, o = best
        used_macs += o.extra_macs - chosen[i].extra_macs
        used_bytes += o.extra_bytes - chosen[i].extra_bytes
        chosen[i] = o


def uniform(evals: list[UnitEvaluator], order: int, sparsity: float) -> list[Option]:
    """K = ``order`` everywhere; gamma where the unit can split, else 0 (same deployed cost)."""
    return [e.option(tuple([order] * len(e.unit.layers)), sparsity) for e in evals]


def finalize(evals: list[UnitEvaluator], picked: list[Option]) -> dict[str, LayerChoice]:
    """The chosen terms of every layer, by layer name."""
    choices: dict[str, LayerChoice] = {}
    for e, o in zip(evals, picked, strict=True):
        split = o.rows is not None
        for li, k in zip(e.unit.layers, o.orders, strict=True):
            terms, _ = e.terms(li, o.rows)
            choices[li.name] = LayerChoice(li.name, k, o.sparsity, o.rows, terms[:k], split)
    return choices


def check_budget(budget: float | None, what: str) -> None:
    if budget is not None and budget < 0:
        raise UserError(f"REx {what} must be >= 0 (extra cost allowed), got {budget}")


# -- calibration statistics for the error proxy ---------------------------------------------

MAX_PATCH = 2304  # patch sizes above this keep only the diagonal (memory: D^2 doubles)


@dataclass(frozen=True, eq=False)
class PatchMoments:
    """Second moments of a layer's input patches, so ``E[(dW x)^2]`` is exact, not the
    diagonal guess: inputs after ReLU6 are far from white (positive means, correlated
    neighbours and channels), and the diagonal underestimates their output noise severalfold.

    ``kind``: "full" (``second`` [D, D] over the flattened patch, the OIHW weight order),
    "depthwise" ([C, k, k]: channel c's own patch), "diag" ([D]: the diagonal only).
    ``centered``: subtract the mean (the bias correction removes the mean shift ``dW mu``).
    """

    kind: str
    second: Tensor
    mean: Tensor
    centered: bool = True

    def _cov(self) -> Tensor:
        if not self.centered:
            return self.second
        if self.kind == "full":
            return self.second - torch.outer(self.mean, self.mean)
        if self.kind == "depthwise":
            return self.second - self.mean[:, :, None] * self.mean[:, None, :]
        return self.second - self.mean**2

    def noise(self, dw: Tensor) -> Tensor:
        """Per output channel ``E[(dW_o x)^2]`` (centred if ``centered``)."""
        cov = self._cov()
        d = dw.detach().to(torch.float64).reshape(dw.shape[0], -1)
        if self.kind == "full":
            return ((d @ cov) * d).sum(dim=1)
        if self.kind == "depthwise":
            return torch.einsum("ck,ckj,cj->c", d, cov, d)
        groups = cov.numel() // d.shape[1]
        return (d * d * cov.reshape(groups, -1).repeat_interleave(d.shape[0] // groups, 0)).sum(1)


def _patches(node: Node, x: Tensor) -> tuple[str, Tensor]:
    """The input patches a conv/linear multiplies: [P, D] rows, or [C, P, k] (depthwise)."""
    if node.op == "linear":
        return "full", x.reshape(-1, x.shape[-1])
    w = node.params["weight"]
    t, l, b, r = node.attrs["padding"]
    xp = torch.nn.functional.pad(x, (l, r, t, b)) if (t, l, b, r) != (0, 0, 0, 0) else x
    cols = torch.nn.functional.unfold(xp, tuple(w.shape[2:]), dilation=node.attrs["dilation"],
                                      stride=node.attrs["stride"])  # [N, C*kh*kw, L]
    groups = node.attrs["groups"]
    if groups == 1:
        return "full", cols.transpose(1, 2).reshape(-1, cols.shape[1])
    k = w.shape[2] * w.shape[3]
    per = cols.reshape(x.shape[0], x.shape[1], k, -1)  # [N, C, k, L]
    if groups == x.shape[1] and w.shape[0] == groups:
        return "depthwise", per.permute(1, 0, 3, 2).reshape(x.shape[1], -1, k)
    return "diag", cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass
class _Moments:
    kind: str = ""
    second: Tensor | None = None
    total: Tensor | None = None
    count: int = 0
    ch_total: Tensor | None = None
    ch_count: int = 0
    lo: float = 0.0
    hi: float = 0.0

    def add_input(self, node: Node, x: Tensor) -> None:
        axis = 1 if x.dim() == 4 else x.dim() - 1
        dims = [d for d in range(x.dim()) if d != axis]
        s = x.sum(dim=dims).double()
        self.ch_total = s if self.ch_total is None else self.ch_total + s
        self.ch_count += x.numel() // x.shape[axis]
        kind, p = _patches(node, x.double())
        if kind == "full" and p.shape[1] > MAX_PATCH:
            kind = "diag"
        if kind == "full":
            sec, tot, n = p.T @ p, p.sum(0), p.shape[0]
        elif kind == "depthwise":
            sec, tot, n = torch.einsum("cpk,cpj->ckj", p, p), p.sum(1), p.shape[1]
        else:
            sec, tot, n = (p * p).sum(0), p.sum(0), p.shape[0]
        self.kind = kind
        self.second = sec if self.second is None else self.second + sec
        self.total = tot if self.total is None else self.total + tot
        self.count += n

    def add_output(self, y: Tensor) -> None:
        self.lo, self.hi = min(self.lo, float(y.min())), max(self.hi, float(y.max()))


@dataclass(frozen=True, eq=False)
class LayerStats:
    """Per input channel mean, input patch moments, and the output range, of one layer."""

    in_mean: Tensor
    moments: PatchMoments
    out_range: float

    def round_var(self, bits: int = 8) -> float:
        """Noise power of rounding the output on a ``bits``-wide grid over its range."""
        step = self.out_range / (2**bits - 1)
        return step * step / 12.0


def layer_stats(graph: Graph, layers: list[Node], calib: Tensor,
                batch: int = 32) -> dict[str, LayerStats]:
    """One float pass over ``calib``: what the error proxy and the bias correction need."""

    inputs: dict[str, list[str]] = {}
    outputs: dict[str, str] = {}
    acc = {n.name: _Moments() for n in layers}
    by_name = {n.name: n for n in layers}
    for n in layers:
        inputs.setdefault(n.inputs[0], []).append(n.name)
        outputs[n.output] = n.name

    def observe(name: str, value: Tensor) -> None:
        for layer in inputs.get(name, ()):
            acc[layer].add_input(by_name[layer], value)
        if name in outputs:
            acc[outputs[name]].add_output(value)

    for i in range(0, calib.shape[0], batch):
        run_graph(graph, calib[i : i + batch], dtype=STATS_DTYPE, observe=observe)
    out = {}
    for name, m in acc.items():
        assert m.total is not None and m.second is not None and m.ch_total is not None
        pm = PatchMoments(m.kind, m.second / m.count, m.total / m.count)
        out[name] = LayerStats(m.ch_total / m.ch_count, pm, m.hi - m.lo)
    return out


def measure_layer_noise(graph: Graph, overrides: dict[str, dict[str, Tensor]], calib: Tensor,
                        max_samples: int = 64) -> dict[str, float]:
    """Output noise (relative to the output's power) of each overridden layer alone.

    Why measure: weight errors are not white noise. They are linear in the input, so they
    point along the signal, which the network propagates far more than a random direction;
    the analytic proxy gets a layer's shape of error right but can miss its level severalfold
    (MobileNetV2's stem and first depthwise conv carry most of its per-tensor weight noise).
    One forward pass per layer on a few calibration samples calibrates each layer's level.
    """
    per_sample = max(1, calib[0].numel())
    n = max(8, min(max_samples, 4_000_000 // per_sample))
    x = calib[:n]
    ref = run_graph(graph, x, dtype=STATS_DTYPE)
    power = sum(float((y.double() ** 2).sum()) for y in ref.values())
    out = {}
    for name, p in overrides.items():
        y = run_graph(graph, x, params={name: p}, dtype=STATS_DTYPE)
        err = sum(float(((y[k].double() - ref[k].double()) ** 2).sum()) for k in ref)
        out[name] = err / max(power, 1e-30)
    return out


def calibrate_levels(infos: dict[str, LayerInfo], firsts: dict[str, RExTerm],
                     measured: dict[str, float]) -> dict[str, LayerInfo]:
    """Scale each layer's weight-noise proxy so that its K = 1 value is the measured one."""
    out = dict(infos)
    for name, m in measured.items():
        li = infos[name]
        predicted = float(li.noise(li.weight.detach().to(torch.float64)
                                   - firsts[name].dequantized()).sum())
        if predicted > 1e-30 and m > 0:
            out[name] = replace(li, weight_scale=li.weight_scale * m / predicted)
    return out


def _preactivation_copy(graph: Graph, layers: list[Node]) -> tuple[Graph, dict[str, str]]:
    """A copy where each layer's fused activation is a node of its own, so the layer's
    pre-activation output (where weight noise enters) is a tensor; layer -> that tensor."""
    g = graph.copy()
    names = {n.name for n in layers}
    nodes, pre = [], {}
    for node in g.nodes:
        nodes.append(node)
        if node.name not in names:
            continue
        act = node.attrs.get("act", "none")
        pre[node.name] = node.output
        if act == "none":
            continue
        out, node.output = node.output, f"{node.output}#pre"
        node.attrs = dict(node.attrs, act="none")
        g.shapes[node.output] = g.shapes[out]
        nodes.append(Node(f"{node.name}#act", "act", [node.output], out, {"kind": act}))
        pre[node.name] = node.output
    g.nodes = nodes
    return g, pre


def layer_gains(graph: Graph, layers: list[Node], calib: Tensor,
                max_samples: int = 64, seed: int = 0) -> dict[str, Tensor]:
    """Per layer and output channel: output noise power per unit of noise power at the
    layer's pre-activation output, relative to the output's power.

    One backward pass of ``v . logits`` with ``v ~ N(0, 1)``: ``E[(dL/dz)^2]`` is the sum of
    the squared Jacobian rows, i.e. the gain of white noise at ``z`` (Hutchinson).
    """
    g, pre = _preactivation_copy(graph, layers)
    wanted = {t: name for name, t in pre.items()}
    kept: dict[str, Tensor] = {}

    def observe(name: str, value: Tensor) -> None:
        if name in wanted and value.requires_grad:
            value.retain_grad()
            kept[wanted[name]] = value

    x = calib[:max_samples].detach().to(torch.float32).clone().requires_grad_(True)
    with torch.enable_grad():
        outs = run_graph(g, x, dtype=STATS_DTYPE, observe=observe)
        gen = torch.Generator().manual_seed(seed)
        power = sum(float((y.detach() ** 2).sum()) for y in outs.values()) / x.shape[0]
        loss = sum((y * torch.randn(y.shape, generator=gen)).sum() for y in outs.values())
        loss.backward()  # type: ignore[union-attr]
    gains = {}
    for name, z in kept.items():
        grad = z.grad if z.grad is not None else torch.zeros_like(z)
        axis = 1 if grad.dim() == 4 else grad.dim() - 1
        dims = [d for d in range(grad.dim()) if d != axis]
        gains[name] = (grad.double() ** 2).sum(dim=dims) / x.shape[0] / max(power, 1e-30)
    return gains


__all__ = [
    "SPARSITY_GRID",
    "LayerStats",
    "calibrate_levels",
    "measure_layer_noise",
    "PatchMoments",
    "layer_gains",
    "layer_stats",
    "LayerChoice",
    "LayerInfo",
    "Option",
    "Unit",
    "UnitEvaluator",
    "check_budget",
    "finalize",
    "greedy",
    "uniform",
]
