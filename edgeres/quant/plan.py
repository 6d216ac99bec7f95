"""QuantPlan: which tensors are quantized, in which format, and why (or why not).

The plan is decided from the graph, the target profile and the config before any data is
seen, so that what a target cannot honour is reported up front ("layer X: depthwise
per-channel not supported on npu-int8-per-tensor -> per-tensor").
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from edgeres.errors import UserError
from edgeres.graph.ir import Graph, Node
from edgeres.qtypes import QParams, QSpec
from edgeres.targets import Target

# Ops whose integer kernels take the input's scale for the output (TFLite requires it for
# RESHAPE and TRANSPOSE; it is exact for both formats since these ops only move values).
SHARE_INPUT_QPARAMS = ("reshape", "transpose")


@dataclass(frozen=True)
class Decision:
    """One line of the PlanReport: what was decided for a node or tensor, and why."""

    subject: str
    decision: str
    reason: str = ""


@dataclass
class QuantPlan:
    """Every quantized tensor's QSpec, weight QSpecs, shared and runtime-fixed QParams."""

    target: str
    act_specs: dict[str, QSpec]
    weight_specs: dict[str, QSpec]
    shared: dict[str, str]  # tensor -> tensor whose QParams it reuses
    fixed: dict[str, QParams]
    float_nodes: dict[str, str]  # node -> why it runs in float
    report: list[Decision] = field(default_factory=list)

    def integer_nodes(self, graph: Graph) -> list[Node]:
        return [n for n in graph.nodes if n.name not in self.float_nodes]

    def render(self) -> Table:
        table = Table(title=f"Quantization plan for {self.target}")
        for col in ("layer / tensor", "decision", "why"):
            table.add_column(col)
        for d in self.report:
            table.add_row(d.subject, d.decision, d.reason)
        return table

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "float_nodes": self.float_nodes,
            "report": [d.__dict__ for d in self.report],
            "weights": {k: v.describe() for k, v in self.weight_specs.items()},
        }


def _check_integer_io(graph: Graph, target: Target, act_specs: dict[str, QSpec],
                      float_nodes: dict[str, str]) -> None:
    """A target with integer I/O needs its model's inputs read, and its outputs written, by
    integer layers; say so at planning time rather than when the exporter finds no QParams."""
    if target.io_dtype == "float32":
        return
    fix = ("keep it integer, or pick a target with float I/O (io_dtype float32 in "
           "`edgeres targets`)")
    for info in graph.inputs:
        if info.name not in act_specs:
            readers = [n.name for n in graph.nodes if info.name in n.inputs]
            why = "; ".join(f"'{r}' {float_nodes.get(r, 'stays float')}" for r in readers)
            raise UserError(f"the model input '{info.name}' is read only by float layers ({why}),"
                            f" but {target.name} has {target.io_dtype} I/O: {fix}")
    for name in graph.outputs:
        if name not in act_specs:
            writer = next((n.name for n in graph.nodes if n.output == name), name)
            raise UserError(f"the model output '{name}' is written by a float layer "
                            f"('{writer}' {float_nodes.get(writer, 'stays float')}), but "
                            f"{target.name} has {target.io_dtype} I/O: {fix}")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def is_depthwise(node: Node) -> bool:
    w = node.params.get("weight")
    return node.op == "conv2d" and w is not None and node.attrs["groups"] > 1 and w.shape[1] == 1


def _fixed_output(node: Node, spec: QSpec) -> QParams | None:
    """Outputs whose QParams the integer kernels fix (TFLite SOFTMAX/LOGISTIC/TANH rules), and
    hardsigmoid's [0, 1] on the whole code range: exported as ADD(x, 3) onto a [0, 6] grid of
    6x the step, then MUL by 1/6, which keeps every code, so the pair rounds once."""
    kind = node.attrs.get("kind") if node.op == "act" else None
    if kind == "hardsigmoid":
        return QParams(spec, np.float32(1.0 / (spec.qmax - spec.qmin)), np.int64(spec.qmin))
    if node.op == "softmax" or kind == "sigmoid":
        zp = spec.qmin  # [0, 1) over the whole code range
        return QParams(spec, np.float32(1.0 / 2**spec.bits), np.int64(zp))
    if kind == "tanh":
        mid = (spec.qmin + spec.qmax + 1) // 2
        return QParams(spec, np.float32(2.0 / 2**spec.bits), np.int64(mid))
    return None


def make_plan(
    graph: Graph,
    target: Target,
    weight_bits: int = 8,
    act_bits: int = 8,
    per_channel: bool | None = None,
    ignore: tuple[str, ...] = (),
) -> QuantPlan:
    """Decide formats for every tensor of ``graph`` on ``target``.

    Nodes named in ``ignore`` (fnmatch patterns) and ops the target only runs in float stay
    float; their neighbours get Quantize/Dequantize at the boundary.
    """
    unknown = [p for p in ignore if not any(_matches(n.name, (p,)) for n in graph.nodes)]
    if unknown:
        raise UserError(f"ignore list entries match no layer: {unknown} (see `edgeres explain`)")
    act_spec = target.activation_qspec(act_bits)
    report: list[Decision] = []
    float_nodes: dict[str, str] = {}
    for node in graph.nodes:
        kind = node.attrs.get("kind") if node.op == "act" else None
        place = target.placement(node.op, kind)
        label = f"{node.op}({kind})" if kind else node.op
        if _matches(node.name, ignore):
            float_nodes[node.name] = "in the ignore list"
        elif place is None:
            raise UserError(
                f"{node.describe()}: {label} cannot run on {target.name} at all; add "
                f"'{node.name}' to the ignore list to keep it float, or pick another target"
            )
        elif place == "float":
            float_nodes[node.name] = f"{label} has no integer kernel on {target.name}"
        elif node.attrs.get("act", "none") != "none" and not target.fuses(node.attrs["act"]):
            float_nodes[node.name] = f"{target.name} cannot fuse {node.attrs['act']} into {label}"
    for name, why in float_nodes.items():
        report.append(Decision(name, "float", why))

    act_specs: dict[str, QSpec] = {}
    fixed: dict[str, QParams] = {}
    shared: dict[str, str] = {}
    integer = [n for n in graph.nodes if n.name not in float_nodes]
    for node in integer:
        for t in [*node.inputs, node.output]:
            act_specs[t] = act_spec
        fx = _fixed_output(node, act_spec)
        if fx is not None:
            fixed[node.output] = fx
        if node.op in SHARE_INPUT_QPARAMS and node.inputs[0] in act_specs:
            shared[node.output] = node.inputs[0]

    _check_integer_io(graph, target, act_specs, float_nodes)
    weight_specs: dict[str, QSpec] = {}
    for node in integer:
        if node.op not in ("conv2d", "linear"):
            continue
        dw = is_depthwise(node)
        base = target.weight_qspec(weight_bits, depthwise=dw)  # UserError for bits it lacks
        # Ask for per-channel unless told otherwise, so a target that cannot do it says why.
        axis = None if per_channel is False else 0
        wanted = QSpec(base.bits, base.signed, base.symmetric, axis, base.narrow_range)
        honoured = target.check_qspec(wanted, layer=node.name, depthwise=dw)
        if per_channel is not None and honoured.spec.per_channel != per_channel:
            asked = "per-channel" if per_channel else "per-tensor"  # asked for: not a default
            raise UserError(f"{asked} weights asked for, but {target.name} cannot quantize "
                            f"{node.name} {asked} (allowed: "
                            f"{', '.join(target.weight_granularities(dw))}); leave per_channel "
                            "unset for the target's default, or pick another target")
        weight_specs[node.name] = honoured.spec
        if honoured.reason:
            report.append(Decision(node.name, honoured.spec.describe(), honoured.reason))
    return QuantPlan(target.name, act_specs, weight_specs, shared, fixed, float_nodes, report)
