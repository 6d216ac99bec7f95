"""The edgeres graph IR: a flat, topologically ordered list of nodes over named tensors.

Why an IR of our own rather than torch.fx nodes: exporters (ONNX, TFLite, C) need a closed,
documented op set with static shapes, fused activations and folded BatchNorm; fx graphs carry
arbitrary Python. Capture (``edgeres.graph.capture``) lowers fx into this IR once.

Semantics are PyTorch's (NCHW). Op vocabulary (``Node.op``), attributes and params:

=============  ==========================================  ==================
op             attrs                                       params
=============  ==========================================  ==================
conv2d         stride (h, w), padding (t, l, b, r),        weight OIHW, bias
               dilation (h, w), groups, act
linear         act                                         weight [out, in], bias
add / sub      act                                         -
mul            scalar (float) or none for 2-tensor mul     -
mean           axes (list), keepdims                       -
reshape        shape (full static shape)                   -
transpose      perm                                        -
matmul         -                                           -
softmax        axis                                        -
layernorm      axis, eps                                   weight, bias
act            kind                                        -
=============  ==========================================  ==================

``act`` is one of ACTIVATIONS. Ranks never exceed 4 (the limit of TFLite and most NPUs).

:func:`run_graph` evaluates a graph in float64. Given activation QParams it fake-quantizes
every quantized tensor where it is produced; given quantized parameters it uses them. That
evaluation *is* the integer-exact simulation: with int32 bias on the input x weight scale
grid, a float64 conv over dequantized codes equals the integer accumulator times its scale
exactly, and every runtime's kernel only differs in how it rounds the requantization.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeres.qtypes import QParams

ACTIVATIONS = (
    "none", "relu", "relu6", "gelu", "silu", "sigmoid", "hardswish", "hardsigmoid", "tanh"
)
MAX_RANK = 4
# Calibration statistics (ranges, samples, channel means, layer gains) are measured in float64:
# float32 convolutions give results that differ in the last bits between CPUs (AVX2 and AVX-512
# kernels sum in different orders), those bits move percentiles and so the scales, and a bundle
# built on one machine would not be byte-identical to the same command's bundle on another
# (MobileNetV2-1.0: three CPUs, three files, 97.0 to 98.5 % agreement). In float64 the same
# differences stay below float32's resolution, where the scales are stored.
STATS_DTYPE = torch.float64


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's static shape (batch included) as captured."""

    name: str
    shape: tuple[int, ...]


@dataclass
class Node:
    """One operation. ``name`` is the module path it came from (e.g. ``features.3.conv.1.0``)."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)
    params: dict[str, Tensor] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.op} '{self.name}'"


@dataclass
class Graph:
    """Nodes in execution order, the graph's inputs and outputs, and every tensor's shape."""

    nodes: list[Node]
    inputs: list[TensorInfo]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(f"no node named '{name}' in the graph")

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if n.output == tensor:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def tensors(self) -> list[str]:
        """Every activation tensor: graph inputs, then node outputs in order."""
        return [t.name for t in self.inputs] + [n.output for n in self.nodes]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def copy(self) -> Graph:
        """A structural copy; parameter tensors are shared (rewrites replace, never mutate them)."""
        nodes = [
            Node(n.name, n.op, list(n.inputs), n.output, dict(n.attrs), dict(n.params))
            for n in self.nodes
        ]
        return Graph(nodes, list(self.inputs), list(self.outputs), dict(self.shapes))


def apply_activation(kind: str, x: Tensor, inplace: bool = False) -> Tensor:
    """``inplace`` lets ReLU/ReLU6 overwrite ``x`` (a fresh conv, linear or add result that
    nothing else holds): calibration's float64 pass then allocates one tensor per layer
    instead of two; ReLU6 on fresh allocations (page faults) was a sixth of its time."""
    if kind == "none":
        return x
    if kind == "relu":
        return F.relu_(x) if inplace else F.relu(x)
    if kind == "relu6":
        return x.clamp_(0.0, 6.0) if inplace else x.clamp(0.0, 6.0)
    if kind == "gelu":
        return F.gelu(x)
    if kind == "silu":
        return F.silu(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    if kind == "hardswish":
        return F.hardswish(x)
    if kind == "hardsigmoid":  # relu6(x + 3) / 6: MobileNetV3's squeeze-excite gate
        return F.hardsigmoid(x)
    if kind == "tanh":
        return torch.tanh(x)
    raise ValueError(f"unknown activation '{kind}' (known: {', '.join(ACTIVATIONS)})")


def _conv2d(node: Node, xs: list[Tensor], p: Mapping[str, Tensor]) -> Tensor:
    a = node.attrs
    t, l, b, r = a["padding"]
    x, pad = xs[0], (t, l)
    if (t, l) != (b, r):  # asymmetric padding: pad explicitly (conv2d pads symmetrically)
        x, pad = F.pad(x, (l, r, t, b)), (0, 0)
    return _fresh_act(
        node, F.conv2d(x, p["weight"], p.get("bias"), a["stride"], pad, a["dilation"], a["groups"])
    )


def _fresh_act(node: Node, y: Tensor) -> Tensor:
    """The node's fused activation on its own fresh result (in place where no graph records)."""
    return apply_activation(node.attrs.get("act", "none"), y, inplace=not y.requires_grad)


def _linear(node: Node, xs: list[Tensor], p: Mapping[str, Tensor]) -> Tensor:
    return _fresh_act(node, F.linear(xs[0], p["weight"], p.get("bias")))


def _layernorm(node: Node, xs: list[Tensor], p: Mapping[str, Tensor]) -> Tensor:
    axis = node.attrs["axis"] % xs[0].dim()
    x = xs[0]
    mean = x.mean(dim=axis, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=axis, keepdim=True)
    y = (x - mean) / torch.sqrt(var + node.attrs["eps"])
    shape = [1] * x.dim()
    shape[axis] = -1
    return y * p["weight"].reshape(shape) + p["bias"].reshape(shape)


def _mul(node: Node, xs: list[Tensor], p: Mapping[str, Tensor]) -> Tensor:
    if len(xs) == 1:
        return xs[0] * node.attrs["scalar"]
    return xs[0] * xs[1]


OpFn = Callable[[Node, list[Tensor], Mapping[str, Tensor]], Tensor]

OPS: dict[str, OpFn] = {
    "conv2d": _conv2d,
    "linear": _linear,
    "add": lambda n, xs, p: _fresh_act(n, xs[0] + xs[1]),
    "sub": lambda n, xs, p: _fresh_act(n, xs[0] - xs[1]),
    "mul": _mul,
    "mean": lambda n, xs, p: xs[0].mean(dim=tuple(n.attrs["axes"]), keepdim=n.attrs["keepdims"]),
    "reshape": lambda n, xs, p: xs[0].reshape(n.attrs["shape"]),
    "transpose": lambda n, xs, p: xs[0].permute(*n.attrs["perm"]),
    "matmul": lambda n, xs, p: torch.matmul(xs[0], xs[1]),
    "softmax": lambda n, xs, p: torch.softmax(xs[0], dim=n.attrs["axis"]),
    "layernorm": _layernorm,
    "act": lambda n, xs, p: apply_activation(n.attrs["kind"], xs[0]),
}


def run_graph(
    graph: Graph,
    inputs: Mapping[str, Tensor] | Tensor,
    act_qparams: Mapping[str, QParams] | None = None,
    params: Mapping[str, Mapping[str, Tensor]] | None = None,
    keep: bool = False,
    dtype: torch.dtype = torch.float64,
    observe: Callable[[str, Tensor], None] | None = None,
) -> dict[str, Tensor]:
    """Evaluate ``graph`` in float64; returns the outputs (every tensor when ``keep``).

    ``act_qparams`` maps tensor names to QParams: those tensors are fake-quantized where they
    are produced (graph inputs included). ``params`` overrides node parameters by node name
    (the quantized weights and biases of a QModel). ``dtype=float32`` is for speed where the
    last bits do not decide anything (calibration uses :data:`STATS_DTYPE`);
    ``observe(name, value)`` sees every tensor as it is produced.
    """
    if isinstance(inputs, Tensor):
        if len(graph.inputs) != 1:
            raise ValueError(f"graph has {len(graph.inputs)} inputs; pass a dict by name")
        inputs = {graph.inputs[0].name: inputs}
    qp = act_qparams or {}
    overrides = params or {}
    env: dict[str, Tensor] = {}
    for info in graph.inputs:
        if info.name not in inputs:
            raise ValueError(f"missing graph input '{info.name}'")
        x = inputs[info.name].to(dtype)
        if tuple(x.shape[1:]) != tuple(info.shape[1:]):
            raise ValueError(
                f"input '{info.name}' has shape {tuple(x.shape)}; the graph expects "
                f"[N, {', '.join(map(str, info.shape[1:]))}]"
            )
        env[info.name] = qp[info.name].fake_quantize(x) if info.name in qp else x
        if observe is not None:
            observe(info.name, env[info.name])
    last_use = {t: i for i, n in enumerate(graph.nodes) for t in n.inputs}
    for step, node in enumerate(graph.nodes):
        fn = OPS.get(node.op)
        if fn is None:
            raise ValueError(f"{node.describe()}: op '{node.op}' has no evaluator")
        node_params = overrides.get(node.name, node.params)
        typed = {k: v.to(dtype) for k, v in node_params.items()}
        y = fn(node, [env[i] for i in node.inputs], typed)
        env[node.output] = qp[node.output].fake_quantize(y) if node.output in qp else y
        if observe is not None:
            observe(node.output, env[node.output])
        if not keep:  # free what no later node reads, so calibration batches stay in memory
            for t in node.inputs:
                if last_use.get(t) == step and t not in graph.outputs:
                    env.pop(t, None)
    if keep:
        return env
    return {name: env[name] for name in graph.outputs}


def conv_macs(node: Node, out_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one conv2d or linear node for a single sample."""
    if node.op not in ("conv2d", "linear"):
        return 0
    w = node.params["weight"]
    if node.op == "conv2d":
        per_output = w.shape[1] * w.shape[2] * w.shape[3]
        return int(per_output * math.prod(out_shape[1:]))
    if node.op == "linear":
        return int(w.shape[0] * w.shape[1] * math.prod(out_shape[1:-1]))
    return 0


def graph_macs(graph: Graph) -> int:
    return sum(conv_macs(n, graph.shapes[n.output]) for n in graph.nodes)
