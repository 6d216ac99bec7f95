"""The REx graph transform: each expanded layer becomes K integer layers summed by Adds.

Dense layout (any conv2d / linear): ``<layer>.rex1 .. .rexK`` read the same input; term 1
carries the bias; the small terms are summed first, then added to term 1 by an Add that
carries the layer's fused activation and writes the layer's original output tensor. Every
term's output is an int8 tensor with its own calibrated QParams, exactly what an int8 device
computes (it requantizes between each convolution and the Add).

Split layout (group sparsity that really saves MACs): a sparse term only has the kept rows
A, and neither IR nor TFLite has a scatter. But when the layer's output channels only flow
through channel-wise nodes (depthwise convs, activations, a global mean, a flatten) into one
channel-mixing consumer (conv or linear), the channels can be split into two branches: A
(expanded) and B (plain), each a copy of the channel-wise chain, and the consumer becomes
``consumer[:, A] @ a + consumer[:, B] @ b``. That costs no MACs (the consumer's halves add up
to the whole) and uses only conv2d and add, so every exporter handles it. In MobileNetV2 the
expand conv -> depthwise -> project chain of every block is such a region, and the REx terms of
the expand and the depthwise convs both live on branch A. Layers whose outputs feed a residual
stream (the projections, the classifier) can only use the dense layout.

Stacked kernels (one conv with K x C output channels, summed afterwards) were rejected: the
stacked output is one int8 tensor with one scale, so the small terms (2^b times smaller) fall
below its LSB and the expansion is lost; and the sum would need a slice or a channel-mixing
conv that costs more than the terms themselves.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from edgeres.config import RExConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.ir import Graph, Node, conv_macs, graph_macs
from edgeres.qtypes import QParams
from edgeres.quant.plan import Decision, is_depthwise, make_plan
from edgeres.quant.primitives import qparams_from_range
from edgeres.quant.ptq import check_calibration_data, quantize_graph, weight_shift
from edgeres.quant.qmodel import QModel, QuantWeight
from edgeres.quant.rex import RExTerm, check_bits, expand_weight, reconstruct, term_spec
from edgeres.quant.rex_budget import (
    SPARSITY_GRID,
    LayerChoice,
    LayerInfo,
    Option,
    Unit,
    UnitEvaluator,
    calibrate_levels,
    check_budget,
    finalize,
    greedy,
    layer_gains,
    layer_stats,
    measure_layer_noise,
    uniform,
)
from edgeres.targets import Target

_PARTIAL = re.compile(r"\.rex(\d+|_sum\d+|_add\d+)(\.|$)")  # ".rex2.a", ".rex_sum1", ".rex_add1"


def is_partial_term(node_name: str) -> bool:
    """A REx term or a sum of small terms: part of a layer whose error the remaining terms
    cancel, so its own error says nothing about the layer (the closing ``rex_add`` does)."""
    return bool(_PARTIAL.search(node_name))


@dataclass(frozen=True)
class Region:
    """A layer whose output channels can be split: ``head -> chain -> consumer``."""

    head: str
    chain: tuple[str, ...]
    consumer: str
    depthwise: tuple[str, ...]  # chain nodes that are depthwise convs (expandable too)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.head, *self.depthwise)


def is_depthwise_conv(node: Node) -> bool:
    """A depthwise conv with multiplier 1 (channel c of the output reads channel c only)."""
    w = node.params.get("weight")
    return (
        node.op == "conv2d" and w is not None and w.shape[1] == 1 and node.attrs["groups"] > 1
        and w.shape[0] == node.attrs["groups"]
    )


def _mixes_channels(graph: Graph, node: Node) -> bool:
    """A consumer that reads the channel axis as its reduction axis (conv groups=1, linear)."""
    if node.op == "conv2d":
        return node.attrs["groups"] == 1
    return node.op == "linear" and len(graph.shapes[node.inputs[0]]) == 2


def _channelwise(graph: Graph, node: Node) -> bool:
    """Nodes that act on each channel separately and keep the channel on axis 1."""
    shape = graph.shapes[node.inputs[0]]
    if node.op == "act" or is_depthwise_conv(node):
        return True
    if node.op == "mean":
        return len(shape) == 4 and sorted(node.attrs["axes"]) == [2, 3]
    if node.op == "reshape":
        out = graph.shapes[node.output]
        return shape[1] == out[1] and len(shape) in (2, 4) and len(out) in (2, 4) and all(
            d == 1 for d in (*shape[2:], *out[2:])
        )
    return False


def _sole_consumer(graph: Graph, tensor: str) -> Node | None:
    users = graph.consumers(tensor)
    if len(users) != 1 or tensor in graph.outputs or len(users[0].inputs) != 1:
        return None
    return users[0]


def find_regions(graph: Graph, eligible: set[str]) -> dict[str, Region]:
    """Non-overlapping split regions by head name; regions through a depthwise conv first.

    A layer cannot both be a region's consumer and another region's head (its output would
    need a split of a split), so heads of regions that contain depthwise convs (the ones that
    matter on per-tensor targets) are claimed before the others.
    """
    found: list[Region] = []
    for head in graph.nodes:
        if head.name not in eligible or not (
            (head.op == "conv2d" and head.attrs["groups"] == 1) or _mixes_channels(graph, head)
        ):
            continue
        if len(graph.shapes[head.output]) not in (2, 4):
            continue
        chain: list[Node] = []
        node = _sole_consumer(graph, head.output)
        while node is not None and _channelwise(graph, node):
            chain.append(node)
            node = _sole_consumer(graph, node.output)
        if node is None or not _mixes_channels(graph, node) or node.name not in eligible:
            continue
        dws = tuple(n.name for n in chain if is_depthwise_conv(n))
        if any(n not in eligible for n in dws):
            continue
        found.append(Region(head.name, tuple(n.name for n in chain), node.name, dws))
    regions: dict[str, Region] = {}
    heads, consumers = set(), set()
    for r in sorted(found, key=lambda r: not r.depthwise):  # stable: graph order within
        if r.head in consumers or r.consumer in heads:
            continue
        regions[r.head] = r
        heads.add(r.head)
        consumers.add(r.consumer)
    return {r.head: regions[r.head] for r in found if r.head in regions}


@dataclass
class Expanded:
    """The expanded graph, the integer weights of its new nodes, and the Adds REx created."""

    graph: Graph
    overrides: dict[str, QuantWeight]
    sums: list[str] = field(default_factory=list)  # add nodes, in creation order
    nodes_of: dict[str, list[str]] = field(default_factory=dict)  # layer -> its new nodes


def _with_channels(shape: tuple[int, ...], c: int) -> tuple[int, ...]:
    return (shape[0], c, *shape[2:])


class _Builder:
    def __init__(self, graph: Graph, biases: dict[str, Tensor]) -> None:
        self.src = graph
        self.biases = biases
        self.nodes: list[Node] = []
        self.shapes = dict(graph.shapes)
        self.overrides: dict[str, QuantWeight] = {}
        self.sums: list[str] = []
        self.nodes_of: dict[str, list[str]] = {}

    def _emit(self, layer: str, node: Node, shape: tuple[int, ...]) -> str:
        self.nodes.append(node)
        self.shapes[node.output] = shape
        self.nodes_of.setdefault(layer, []).append(node.name)
        return node.output

    def term(self, base: Node, name: str, inp: str, codes: np.ndarray, qp, bias: Tensor | None,
             act: str, shape: tuple[int, ...]) -> str:
        """One integer conv/linear node with given codes; float params = their exact value."""
        weight = qp.dequantize(torch.from_numpy(codes.astype(np.int64)))
        attrs = dict(base.attrs, act=act)
        if base.op == "conv2d" and base.attrs["groups"] > 1:  # depthwise branch
            attrs["groups"] = codes.shape[0]
        b = torch.zeros(codes.shape[0], dtype=torch.float64) if bias is None else bias
        node = Node(name, base.op, [inp], name, attrs, {"weight": weight, "bias": b.double()})
        self.overrides[name] = QuantWeight(codes, qp)
        return self._emit(base.name, node, shape)

    def add(self, layer: str, name: str, a: str, b: str, act: str, out: str) -> str:
        node = Node(name, "add", [a, b], out, {"act": act})
        self.sums.append(name)
        return self._emit(layer, node, self.shapes[a])

    def sum_terms(self, layer: str, prefix: str, big: list[str], small: list[str], act: str,
                  out: str) -> str:
        """act(big[0] + ... + (small[0] + ...)): the small terms first, so their sum keeps
        a fine scale; the last Add carries the activation and writes ``out``."""
        s = small[0] if small else None
        for i, t in enumerate(small[1:]):
            name = f"{prefix}.rex_sum{i + 1}"
            s = self.add(layer, name, s, t, "none", name)
        acc = big[0]
        rest = big[1:] + ([s] if s is not None else [])
        for i, t in enumerate(rest):
            last = i == len(rest) - 1
            name = f"{prefix}.rex_add" if last else f"{prefix}.rex_add{i + 1}"
            acc = self.add(layer, name, acc, t, act if last else "none", out if last else name)
        return acc

    def copy(self, node: Node) -> None:
        self.nodes.append(Node(node.name, node.op, list(node.inputs), node.output,
                               dict(node.attrs), dict(node.params)))


def _dense(b: _Builder, node: Node, choice: LayerChoice) -> None:
    shape = b.src.shapes[node.output]
    act = node.attrs.get("act", "none")
    outs = []
    for k, t in enumerate(choice.terms, start=1):
        name = f"{node.name}.rex{k}"
        outs.append(b.term(node, name, node.inputs[0], t.codes, t.qparams,
                           b.biases[node.name] if k == 1 else None, "none", shape))
    b.sum_terms(node.name, node.name, outs[:1], outs[1:], act, node.output)


def _branch_layer(b: _Builder, node: Node, terms: list[RExTerm], rows: np.ndarray, inp: str,
                  tag: str, out: str, expand: bool) -> str:
    """Rows ``rows`` of a layer (all its terms when ``expand``) as branch ``tag``."""
    shape = _with_channels(b.src.shapes[node.output], len(rows))
    act = node.attrs.get("act", "none")
    bias = b.biases[node.name][torch.from_numpy(rows)]
    use = terms if expand else terms[:1]
    if len(use) == 1:
        codes, qp = use[0].select(rows)
        b.term(node, out, inp, codes, qp, bias, act, shape)
        return out
    outs = []
    for k, t in enumerate(use, start=1):
        codes, qp = t.select(rows)
        outs.append(b.term(node, f"{node.name}.rex{k}.{tag}", inp, codes, qp,
                           bias if k == 1 else None, "none", shape))
    return b.sum_terms(node.name, f"{node.name}.{tag}", outs[:1], outs[1:], act, out)


def _split(b: _Builder, region: Region, choices: dict[str, LayerChoice]) -> None:
    """Emit a region as branches A (kept rows, expanded) and B (the rest, plain)."""
    src = b.src
    rows_a = choices[region.head].rows
    assert rows_a is not None
    channels = src.node(region.head).params["weight"].shape[0]
    rows_b = np.setdiff1d(np.arange(channels), rows_a)
    branches = {"a": rows_a, "b": rows_b}
    cur: dict[str, str] = {}
    for tag, rows in branches.items():
        head = src.node(region.head)
        c = choices[region.head]
        cur[tag] = _branch_layer(b, head, c.terms, rows, head.inputs[0], tag,
                                 f"{head.name}.{tag}", tag == "a")
    for name in region.chain:
        node = src.node(name)
        for tag, rows in branches.items():
            out = f"{name}.{tag}"
            if is_depthwise_conv(node):
                cur[tag] = _branch_layer(b, node, choices[name].terms, rows, cur[tag], tag, out,
                                         tag == "a")
                continue
            attrs = dict(node.attrs)
            if node.op == "reshape":
                attrs["shape"] = [-1, len(rows), *list(attrs["shape"])[2:]]
            shape = _with_channels(src.shapes[node.output], len(rows))
            b._emit(name, Node(out, node.op, [cur[tag]], out, attrs, dict(node.params)), shape)
            cur[tag] = out
    consumer = src.node(region.consumer)
    c = choices[region.consumer]
    shape = src.shapes[consumer.output]
    outs: dict[int, list[str]] = {}
    all_rows = np.arange(consumer.params["weight"].shape[0])
    for k, t in enumerate(c.terms, start=1):
        for tag, rows in branches.items():
            codes, qp = t.select(all_rows, rows)
            bias = b.biases[consumer.name] if (k == 1 and tag == "a") else None
            outs.setdefault(k, []).append(b.term(consumer, f"{consumer.name}.rex{k}.{tag}",
                                                 cur[tag], codes, qp, bias, "none", shape))
    small = [t for k in sorted(outs) if k > 1 for t in outs[k]]
    b.sum_terms(consumer.name, consumer.name, outs[1], small, consumer.attrs.get("act", "none"),
                consumer.output)


def expand_graph(graph: Graph, choices: dict[str, LayerChoice], regions: dict[str, Region],
                 biases: dict[str, Tensor]) -> Expanded:
    """Rewrite ``graph`` with the chosen terms (see the module docstring for the layouts).

    ``biases``: the (bias-corrected) float bias of every layer that is rewritten. Layers
    with one term that no split touches are left as they are, for PTQ to quantize.
    """
    active = {h: r for h, r in regions.items() if choices.get(h) is not None
              and choices[h].split}
    in_region = {n: r for r in active.values() for n in (r.head, *r.chain, r.consumer)}
    b = _Builder(graph, biases)
    for node in graph.nodes:
        region = in_region.get(node.name)
        if region is not None:
            if node.name == region.head:
                _split(b, region, choices)
            continue
        c = choices.get(node.name)
        if c is not None and c.order > 1:
            _dense(b, node, c)
        else:
            b.copy(node)
    out = Graph(b.nodes, list(graph.inputs), list(graph.outputs), b.shapes)
    live = set(out.tensors())
    out.shapes = {k: v for k, v in b.shapes.items() if k in live}
    return Expanded(out, b.overrides, b.sums, b.nodes_of)


def tighten_sums(qm: QModel, sums: list[str]) -> int:
    """Narrow the QParams of each REx Add's inputs to what can still change its output.

    For ``out = Q(act(u + v))`` with act none/relu/relu6, ``u`` beyond ``[lo - M, hi + M]``
    (``[lo, hi]`` the output's range, ``M`` the largest ``|v|``) saturates the output either
    way, so ``u`` may saturate there too: term 1 of a ReLU6 layer then gets a scale near the
    output's instead of the pre-activation range's. Returns how many tensors were narrowed.
    """
    by_name = {n.name: n for n in qm.graph.nodes}
    qp = qm.act_qparams
    narrowed = 0
    for name in reversed(sums):
        node = by_name[name]
        if node.attrs.get("act", "none") not in ("none", "relu", "relu6"):
            continue
        if node.output not in qp or any(t not in qp for t in node.inputs):
            continue
        lo, hi = _qrange(qp[node.output])
        new = {}
        for u, v in (node.inputs, node.inputs[::-1]):
            lo_u, hi_u = _qrange(qp[u])
            lo_v, hi_v = _qrange(qp[v])
            margin = max(-lo_v, hi_v) + 2 * float(qp[v].scale)
            t_lo, t_hi = max(lo_u, lo - margin), min(hi_u, hi + margin)
            if t_hi - t_lo < 0.999 * (hi_u - lo_u):
                new[u] = qparams_from_range(qp[u].spec, t_lo, t_hi)
        for t, q in new.items():
            qp[t] = q
            narrowed += 1
    return narrowed


def _qrange(q: QParams) -> tuple[float, float]:
    s, z = float(q.scale), int(q.zero_point)
    return s * (q.spec.qmin - z), s * (q.spec.qmax - z)


def _bias_for(node: Node, terms: list[RExTerm], mean: Tensor | None) -> Tensor:
    """The layer's float bias, minus the mean output shift of the expansion's weight error."""
    bias = node.params["bias"].detach().to(torch.float64)
    if mean is None:
        return bias
    dw = reconstruct(terms) - node.params["weight"].detach().to(torch.float64)
    return bias - weight_shift(node, dw, mean)


def _weight_bytes(graph: Graph) -> int:
    """Stored bytes of conv/linear constants: int8 codes and an int32 bias per row."""
    return sum(
        n.params["weight"].numel() + 4 * n.params["weight"].shape[0]
        for n in graph.nodes if n.op in ("conv2d", "linear")
    )


def _bytes_cap(cfg: RExConfig, target: Target, plain_bytes: int) -> float | None:
    """Extra weight bytes allowed: ``budget_bytes`` and the target's model_bytes room."""
    cap = None if cfg.budget_bytes is None else float(cfg.budget_bytes)
    room = target.memory.model_bytes
    if room is None:
        return cap
    if plain_bytes > room:
        raise UserError(
            f"REx: the plain model already stores {plain_bytes} B of weights, more than "
            f"{target.name}'s model budget of {room} B; no expansion can fit"
        )
    if cap is None and cfg.budget_macs is None:
        return None  # uniform expansion: checked against the room once built
    return min(cap, room - plain_bytes) if cap is not None else float(room - plain_bytes)


def _units(graph: Graph, eligible: list[Node], regions: dict[str, Region],
           infos: dict[str, LayerInfo], max_order: int) -> list[Unit]:
    """One unit per split region, one per other layer. A split region pays one more int32
    bias per consumer term (the consumer's second half, counted at the largest order) and
    two more roundings (the consumer's halves)."""
    in_region = {n for r in regions.values() for n in r.layers}
    units = [
        Unit(tuple(infos[n] for n in r.layers), True,
             4 * graph.node(r.consumer).params["weight"].shape[0] * max_order,
             2 * infos[r.consumer].round_noise())
        for r in regions.values()
    ]
    units += [Unit((infos[n.name],), False) for n in eligible if n.name not in in_region]
    return units


def quantize_rex(model_or_graph: nn.Module | Graph, cfg: RExConfig, target: Target,
                 calib: Tensor, progress: bool = False) -> QModel:
    """REx-expand the weights for ``target`` and calibrate activations as PTQ does.

    Without a budget every integer conv/linear gets ``cfg.order`` terms and sparsity
    ``cfg.sparsity`` (where its channels can split; see the module docstring). With
    ``budget_macs`` (extra MACs as a fraction of the model's) and/or ``budget_bytes`` (extra
    weight bytes), K <= ``cfg.order`` and gamma are chosen per layer by
    :mod:`edgeres.quant.rex_budget`. The target's ``memory.model_bytes`` always caps the total.

    >>> qm = quantize_rex(create_model("mobilenet_v2_fmnist"), RExConfig(order=2),
    ...                   load_target("npu-int8-per-tensor"), calib)   # doctest: +SKIP
    """
    graph = model_or_graph if isinstance(model_or_graph, Graph) else capture(
        model_or_graph, calib[:1])
    check_calibration_data(calib, graph)
    check_budget(cfg.budget_macs, "budget_macs")
    check_budget(cfg.budget_bytes, "budget_bytes")
    check_bits(target, cfg.weight_bits)
    # the terms expand the unsmoothed weights; said here, not left to quantize_graph's
    # given-weights rule, because a budget may choose no term at all (no given weights)
    ptq = replace(cfg.ptq, weight_bits=cfg.weight_bits,
                  smooth_alpha=0.0 if cfg.ptq.smooth_alpha is None else cfg.ptq.smooth_alpha)
    started = time.perf_counter()
    plan = make_plan(graph, target, ptq.weight_bits, ptq.act_bits, ptq.per_channel, ptq.ignore)
    eligible = [n for n in graph.nodes if n.name in plan.weight_specs]
    specs = {n.name: term_spec(target, cfg.weight_bits, ptq.per_channel, layer=n.name,
                               depthwise=is_depthwise(n)) for n in eligible}
    stats = layer_stats(graph, eligible, calib, ptq.calib_batch)
    stats_seconds = time.perf_counter() - started
    t0 = time.perf_counter()
    method = ptq.weight_observer
    gains = layer_gains(graph, eligible, calib)
    infos = {
        n.name: LayerInfo(n.name, n.params["weight"], n.attrs.get("groups", 1), specs[n.name],
                          conv_macs(n, graph.shapes[n.output]),
                          replace(stats[n.name].moments, centered=ptq.bias_correction),
                          gains[n.name], stats[n.name].round_var(ptq.act_bits))
        for n in eligible
    }
    firsts = {n.name: expand_weight(n.params["weight"], specs[n.name], 1, method=method)[0]
              for n in eligible}
    means = {n: (s.in_mean if ptq.bias_correction else None) for n, s in stats.items()}
    base_macs, plain_bytes = graph_macs(graph), _weight_bytes(graph)
    max_macs = None if cfg.budget_macs is None else cfg.budget_macs * base_macs
    max_bytes = _bytes_cap(cfg, target, plain_bytes)
    budgeted = max_macs is not None or max_bytes is not None
    measure_seconds = 0.0
    if budgeted:  # the search compares layers: calibrate each layer's noise level first
        t1 = time.perf_counter()
        k1 = {n.name: {"weight": firsts[n.name].dequantized(),
                       "bias": _bias_for(n, [firsts[n.name]], means[n.name])} for n in eligible}
        infos = calibrate_levels(infos, firsts, measure_layer_noise(graph, k1, calib))
        measure_seconds = time.perf_counter() - t1
    regions = find_regions(graph, set(infos))
    units = _units(graph, eligible, regions, infos, cfg.order)
    evals = [UnitEvaluator(u, cfg.order, method, firsts) for u in units]
    if budgeted:
        grid = (*SPARSITY_GRID, cfg.sparsity)
        picked = greedy([e.all_options(grid) for e in evals], max_macs, max_bytes)
    else:
        picked = uniform(evals, cfg.order, cfg.sparsity)
    choices = finalize(evals, picked)
    extra_bytes = sum(o.extra_bytes for o in picked)
    room = target.memory.model_bytes
    if room is not None and extra_bytes > room - plain_bytes:
        raise UserError(
            f"REx order {cfg.order} needs {plain_bytes + extra_bytes} B of weights; "
            f"{target.name} allows {room} B. Set RExConfig.budget_bytes (or budget_macs) to let "
            "edgeres choose which layers to expand, or lower the order"
        )
    by_name = {n.name: n for n in graph.nodes}
    biases = {n: _bias_for(by_name[n], c.terms, means[n]) for n, c in choices.items()}
    expanded = expand_graph(graph, choices, regions, biases)
    expand_seconds = time.perf_counter() - t0 - measure_seconds
    qm = quantize_graph(expanded.graph, ptq, target, calib, progress,
                        weight_overrides=expanded.overrides)
    narrowed = tighten_sums(qm, expanded.sums)
    qm.scheme = "rex"
    summary = _summary(cfg, units, picked, choices, evals, base_macs, plain_bytes,
                       graph_macs(expanded.graph) - base_macs,
                       _weight_bytes(expanded.graph) - plain_bytes, budgeted)
    summary.update(expand_seconds=round(expand_seconds, 3), narrowed_tensors=narrowed,
                   stats_seconds=round(stats_seconds, 3),
                   measure_seconds=round(measure_seconds, 3))
    qm.meta.update(scheme="rex", rex=summary, config=replace(cfg, ptq=ptq).to_json(),
                   quantize_seconds=round(time.perf_counter() - started, 3))
    report = qm.plan.report  # type: ignore[attr-defined]
    report.extend(_decisions(summary, regions, cfg))
    qm.meta["plan"] = qm.plan.to_json()  # type: ignore[attr-defined]
    return qm


def _summary(cfg: RExConfig, units: list[Unit], picked: list[Option],
             choices: dict[str, LayerChoice], evals: list[UnitEvaluator], base_macs: int,
             plain_bytes: int, extra_macs: int, extra_bytes: int, budgeted: bool) -> dict:
    layers = {}
    for u, o, e in zip(units, picked, evals, strict=True):
        for li, k in zip(u.layers, o.orders, strict=True):
            _, errs = e.terms(li, o.rows)
            frac = 1.0 if o.rows is None else len(o.rows) / li.weight.shape[0]
            layers[li.name] = {
                "order": k,
                "sparsity": choices[li.name].sparsity,
                "layout": "split" if choices[li.name].split else "dense",
                "splittable": u.splittable,
                "extra_macs": int(round((k - 1) * li.macs * frac)),
                "error_k1": errs[0],
                "error": errs[k - 1],
            }
    return {
        "budgeted": budgeted,
        "budget_macs": cfg.budget_macs,
        "budget_bytes": cfg.budget_bytes,
        "base_macs": base_macs,
        "base_weight_bytes": plain_bytes,
        "extra_macs": extra_macs,
        "extra_macs_fraction": extra_macs / max(base_macs, 1),
        "extra_bytes": extra_bytes,
        "error_proxy": sum(o.error for o in picked),
        "layers": layers,
    }


def _decisions(summary: dict, regions: dict[str, Region], cfg: RExConfig) -> list[Decision]:
    out = []
    for name, d in summary["layers"].items():
        if d["order"] <= 1 and d["layout"] == "dense":
            continue
        gain = 10 * np.log10(max(d["error_k1"], 1e-30) / max(d["error"], 1e-30))
        why = f"+{d['extra_macs']} MACs; output error proxy -{gain:.1f} dB"
        if not d["splittable"] and cfg.sparsity > 0 and not summary["budgeted"]:
            why += ("; sparsity not realizable (output channels do not flow into one "
                    "channel-mixing layer): dense terms, same deployed cost")
        out.append(Decision(name, f"REx K={d['order']} gamma={d['sparsity']:.3g} "
                                  f"({d['layout']})", why))
    frac = summary["extra_macs_fraction"]
    what = f"+{frac:.1%} MACs, +{summary['extra_bytes']} B weights"
    if summary["budgeted"]:
        limits = []
        if cfg.budget_macs is not None:
            limits.append(f"budget +{cfg.budget_macs:.1%} MACs")
        if cfg.budget_bytes is not None:
            limits.append(f"budget +{cfg.budget_bytes} B")
        why = ", ".join(limits) or "target model_bytes"
    else:
        why = f"uniform order {cfg.order}, sparsity {cfg.sparsity}"
    out.append(Decision("REx expansion", what, f"{why}; {len(regions)} splittable regions"))
    return out


__all__ = [
    "Expanded",
    "Region",
    "expand_graph",
    "find_regions",
    "is_depthwise_conv",
    "quantize_rex",
    "tighten_sums",
]
