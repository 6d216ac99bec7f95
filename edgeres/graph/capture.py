"""Capture a PyTorch module into the edgeres IR (torch.fx symbolic trace + one concrete run).

The fx graph is walked once; every call becomes an IR node named after the module path it
came from (``features.3.conv.1.0``, ``features.3.add``). Shapes and shape arguments come
from a concrete run on the example input, so Python arithmetic on shapes is allowed, but
control flow on tensor values is not (fx cannot trace it). BatchNorm is folded and ReLU /
ReLU6 fused afterwards by :mod:`edgeres.graph.rewrites`.
"""

from __future__ import annotations

import math
import operator
import re
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from edgeres.errors import UserError
from edgeres.graph.ir import MAX_RANK, Graph, Node, TensorInfo
from edgeres.graph.rewrites import canonicalize

_ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu6",
    nn.GELU: "gelu",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
    nn.Hardswish: "hardswish",
    nn.Hardsigmoid: "hardsigmoid",
    nn.Tanh: "tanh",
}
_ACT_FUNCTIONS: dict[Any, str] = {
    F.relu: "relu",
    torch.relu: "relu",
    F.relu6: "relu6",
    F.gelu: "gelu",
    F.silu: "silu",
    torch.sigmoid: "sigmoid",
    F.sigmoid: "sigmoid",
    F.hardswish: "hardswish",
    F.hardsigmoid: "hardsigmoid",
    torch.tanh: "tanh",
}
_ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
_IDENTITY_MODULES = (nn.Dropout, nn.Identity)
_IDENTITY_NAMES = {"DropPath"}  # stochastic depth: identity in eval (edgeres.zoo.emo and timm)
_LAYERNORM2D_NAMES = {"LayerNorm2d"}


class _Tracer(fx.Tracer):
    """Keeps edgeres's own norm / drop-path modules as leaves so capture sees them whole."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m).__name__ in _IDENTITY_NAMES | _LAYERNORM2D_NAMES:
            return True
        return super().is_leaf_module(m, qualname)


class _Recorder(fx.Interpreter):
    """Runs the traced graph once and keeps every node's concrete value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.values[n.name] = value
        return value


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in \S+\n(?P<code>[^\n]*)')


def _source(n: fx.Node) -> str:
    """`` at net.py:11 (y = torch.fft.fft2(x))``: the user's line that made ``n``, taken from
    the trace's recorded stack (torch's and edgeres's own frames skipped); "" if unknown."""
    frames = [m for m in _FRAME.finditer(n.stack_trace or "")
              if not re.search(r"[/\\](torch|edgeres[/\\]graph)[/\\]", m["file"])]
    if not frames:
        return ""
    last = frames[-1]
    code = last["code"].strip()
    return f" at {Path(last['file']).name}:{last['line']}" + (f" ({code})" if code else "")


def _scope(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack") or {}
    return list(stack)[-1] if stack else ""


class _Builder:
    """Turns fx nodes into IR nodes; ``alias`` maps fx names of pass-through nodes to tensors."""

    def __init__(self, gm: fx.GraphModule, values: dict[str, Any]) -> None:
        self.gm = gm
        self.values = values
        self.nodes: list[Node] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.alias: dict[str, str] = {}
        self.used_names: set[str] = set()

    def tensor(self, arg: Any, where: fx.Node) -> str:
        if isinstance(arg, fx.Node) and isinstance(self.values.get(arg.name), Tensor):
            return self.alias.get(arg.name, arg.name)
        raise UserError(f"{self.where(where)}: expected a tensor argument, got {arg!r}")

    def concrete(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values[arg.name]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.concrete(a) for a in arg)
        return arg

    def where(self, n: fx.Node) -> str:
        target = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.target)
        scope = f" in '{_scope(n)}'" if _scope(n) else ""
        return f"{n.op} '{target}'{scope}{_source(n)}"

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def emit(
        self,
        n: fx.Node,
        op: str,
        inputs: list[str],
        attrs: dict | None = None,
        params: dict[str, Tensor] | None = None,
        name: str | None = None,
    ) -> None:
        value = self.values[n.name]
        if not isinstance(value, Tensor):
            raise UserError(f"{self.where(n)} does not produce a tensor")
        if value.dim() > MAX_RANK:
            raise UserError(
                f"{self.where(n)} produces a rank-{value.dim()} tensor; edgeres targets allow "
                f"rank <= {MAX_RANK}. Rewrite it with rank-4 reshapes/permutes."
            )
        if name is None:
            scope = _scope(n)
            name = f"{scope}.{op}" if scope else op
        name = self.unique(name)
        self.nodes.append(Node(name, op, inputs, name, attrs or {}, params or {}))
        self.shapes[name] = tuple(value.shape)
        self.alias[n.name] = name

    def static_shape(self, n: fx.Node) -> list[int]:
        """Concrete output shape with the batch-carrying leading dim as -1."""
        shape = list(self.values[n.name].shape)
        return [-1, *shape[1:]]


def _conv_params(m: nn.Conv2d) -> tuple[dict, dict[str, Tensor]]:
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        if m.padding == "valid":
            pads = (0, 0, 0, 0)
        else:
            raise UserError(f"Conv2d padding {m.padding!r}/{m.padding_mode} is not supported")
    else:
        ph, pw = m.padding
        pads = (ph, pw, ph, pw)
    bias = m.bias.detach().clone() if m.bias is not None else torch.zeros(m.out_channels)
    attrs = {
        "stride": tuple(m.stride),
        "padding": pads,
        "dilation": tuple(m.dilation),
        "groups": m.groups,
        "act": "none",
    }
    return attrs, {"weight": m.weight.detach().clone(), "bias": bias}


def _call_module(b: _Builder, n: fx.Node, m: nn.Module) -> None:
    x = b.tensor(n.args[0], n)
    name = str(n.target)
    cls = type(m).__name__
    if isinstance(m, nn.Conv2d):
        attrs, params = _conv_params(m)
        b.emit(n, "conv2d", [x], attrs, params, name=name)
    elif isinstance(m, nn.Linear):
        bias = m.bias.detach().clone() if m.bias is not None else torch.zeros(m.out_features)
        b.emit(
            n,
            "linear",
            [x],
            {"act": "none"},
            {"weight": m.weight.detach().clone(), "bias": bias},
            name=name,
        )
    elif isinstance(m, nn.BatchNorm2d):
        # float64 (folded in float64 too, then float32): MKL's vector sqrt rounds float32
        # differently on AVX2 and AVX-512 CPUs, and a 1-ulp different weight made the same
        # command write a different bundle on another machine
        var, mean = m.running_var.detach().double(), m.running_mean.detach().double()
        scale = m.weight.detach().double() / torch.sqrt(var + m.eps)
        shift = m.bias.detach().double() - mean * scale
        b.emit(n, "batchnorm", [x], {}, {"scale": scale, "shift": shift}, name=name)
    elif type(m) in _ACT_MODULES:
        b.emit(n, "act", [x], {"kind": _ACT_MODULES[type(m)]}, name=name)
    elif isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
        b.emit(n, "act", [x], {"kind": "relu6"}, name=name)
    elif isinstance(m, _IDENTITY_MODULES) or cls in _IDENTITY_NAMES:
        b.alias[n.name] = x
    elif isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
        b.emit(n, "mean", [x], {"axes": [2, 3], "keepdims": True}, name=name)
    elif isinstance(m, nn.Flatten):
        b.emit(n, "reshape", [x], {"shape": b.static_shape(n)}, name=name)
    elif isinstance(m, nn.Softmax):
        b.emit(n, "softmax", [x], {"axis": m.dim % b.values[n.name].dim()}, name=name)
    elif cls in _LAYERNORM2D_NAMES or isinstance(m, nn.LayerNorm):
        axis = 1 if cls in _LAYERNORM2D_NAMES else -1
        if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
            raise UserError(f"{b.where(n)}: LayerNorm over more than one dim is not supported")
        b.emit(
            n,
            "layernorm",
            [x],
            {"axis": axis, "eps": float(m.eps)},
            {"weight": m.weight.detach().clone(), "bias": m.bias.detach().clone()},
            name=name,
        )
    else:
        raise UserError(
            f"unsupported module {cls} at '{name}': edgeres captures Conv2d, Linear, "
            "BatchNorm2d, LayerNorm(2d), ReLU/ReLU6/GELU/SiLU/Sigmoid/Hardswish/Hardsigmoid, "
            "pooling to 1x1, "
            "Flatten, Softmax, Dropout. Replace it, or keep it outside the exported model."
        )


def _binary(b: _Builder, n: fx.Node, op: str) -> None:
    lhs, rhs = n.args[0], n.args[1]
    lhs_t = isinstance(lhs, fx.Node) and isinstance(b.values.get(lhs.name), Tensor)
    rhs_t = isinstance(rhs, fx.Node) and isinstance(b.values.get(rhs.name), Tensor)
    if lhs_t and rhs_t:
        b.emit(n, op, [b.tensor(lhs, n), b.tensor(rhs, n)], {"act": "none"} if op != "mul" else {})
        return
    scalar = b.concrete(rhs if lhs_t else lhs)
    tensor_arg = lhs if lhs_t else rhs
    if op == "mul" and isinstance(scalar, (int, float)):
        b.emit(n, "mul", [b.tensor(tensor_arg, n)], {"scalar": float(scalar)})
    elif op == "div" and lhs_t and isinstance(scalar, (int, float)):
        b.emit(n, "mul", [b.tensor(tensor_arg, n)], {"scalar": 1.0 / float(scalar)})
    else:
        raise UserError(f"{b.where(n)}: '{op}' with a constant operand is not supported")


_BINARY = {
    operator.add: "add",
    torch.add: "add",
    operator.iadd: "add",
    operator.sub: "sub",
    torch.sub: "sub",
    operator.mul: "mul",
    torch.mul: "mul",
    operator.truediv: "div",
}


def _call(b: _Builder, n: fx.Node) -> None:
    """call_function and call_method nodes."""
    target = n.target
    value = b.values[n.name]
    if not isinstance(value, Tensor):
        return  # shape arithmetic: only its concrete value matters
    method = target if n.op == "call_method" else None
    if target in _BINARY:
        _binary(b, n, _BINARY[target])
    elif method in ("add", "sub", "mul"):
        _binary(b, n, method)
    elif target in _ACT_FUNCTIONS or method in _ACT_METHODS:
        kind = _ACT_FUNCTIONS[target] if method is None else _ACT_METHODS[method]
        b.emit(n, "act", [b.tensor(n.args[0], n)], {"kind": kind})
    elif method in ("reshape", "view", "flatten") or target in (torch.flatten, torch.reshape):
        src = b.tensor(n.args[0], n)
        if tuple(b.values[n.args[0].name].shape) == tuple(value.shape):
            b.alias[n.name] = src
        else:
            b.emit(n, "reshape", [src], {"shape": b.static_shape(n)})
    elif method in ("permute", "transpose") or target in (torch.permute, torch.transpose):
        src_node = n.args[0]
        rank = b.values[src_node.name].dim()
        args = b.concrete(list(n.args[1:]))
        if method == "transpose" or target is torch.transpose:
            perm = list(range(rank))
            i, j = (a % rank for a in args[:2])
            perm[i], perm[j] = perm[j], perm[i]
        else:
            perm = [a % rank for a in (args[0] if len(args) == 1 else args)]
        if perm[0] != 0:
            raise UserError(f"{b.where(n)}: permutes must keep the batch dim first, got {perm}")
        b.emit(n, "transpose", [b.tensor(src_node, n)], {"perm": perm})
    elif method == "contiguous":
        b.alias[n.name] = b.tensor(n.args[0], n)
    elif target in (torch.matmul, operator.matmul) or method == "matmul":
        b.emit(n, "matmul", [b.tensor(n.args[0], n), b.tensor(n.args[1], n)])
    elif target in (F.softmax, torch.softmax) or method == "softmax":
        dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        b.emit(n, "softmax", [b.tensor(n.args[0], n)], {"axis": int(dim) % value.dim()})
    elif method == "mean" or target is torch.mean:
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keep = bool(n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False))
        rank = b.values[n.args[0].name].dim()
        dims = [dims] if isinstance(dims, int) else list(dims)
        b.emit(
            n,
            "mean",
            [b.tensor(n.args[0], n)],
            {"axes": [d % rank for d in dims], "keepdims": keep},
        )
    elif target is F.adaptive_avg_pool2d and b.concrete(n.args[1]) in (1, (1, 1)):
        b.emit(n, "mean", [b.tensor(n.args[0], n)], {"axes": [2, 3], "keepdims": True})
    else:
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        raise UserError(f"unsupported operation '{name}' ({b.where(n)}): edgeres has no IR op "
                        "for it; replace it, or keep it outside the exported model")


def capture(model: nn.Module, example: Tensor, canonical: bool = True) -> Graph:
    """Trace ``model`` (eval mode) on ``example`` into an IR Graph.

    With ``canonical`` the standard rewrites run: BN folding, ReLU/ReLU6 fusion, leftover
    BatchNorm as a depthwise 1x1 conv.
    """
    model = model.eval()
    try:
        graph = _build(model, example, record_sources=False)
    except UserError:
        # Recording Python stacks makes tracing ~1 s slower, so only a failing model pays
        # for it: the same walk fails again at the same node, now naming the user's line.
        graph = _build(model, example, record_sources=True)
    if canonical:
        graph = canonicalize(graph)
    if len(graph.outputs) == 1 and graph.outputs[0] not in [i.name for i in graph.inputs]:
        graph = rename_tensor(graph, graph.outputs[0], "logits")
    return graph


def _build(model: nn.Module, example: Tensor, record_sources: bool) -> Graph:
    """fx-trace ``model``, run it once on ``example``, and walk the trace into IR nodes."""
    try:
        tracer = _Tracer()
        tracer.record_stack_traces = record_sources
        gm = fx.GraphModule(model, tracer.trace(model))
    except Exception as exc:  # noqa: BLE001 - fx raises many kinds; all mean "not traceable"
        raise UserError(
            f"cannot trace {type(model).__name__} with torch.fx: {exc}. Models must not branch "
            "on tensor values or shapes; compute geometry at construction."
        ) from exc
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(example)
    b = _Builder(gm, rec.values)
    inputs: list[TensorInfo] = []
    outputs: list[str] = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            name = "input" if len(placeholders) == 1 else n.name
            b.alias[n.name] = name
            b.used_names.add(name)
            shape = tuple(rec.values[n.name].shape)
            inputs.append(TensorInfo(name, shape))
            b.shapes[name] = shape
        elif n.op == "call_module":
            _call_module(b, n, gm.get_submodule(str(n.target)))
        elif n.op in ("call_function", "call_method"):
            _call(b, n)
        elif n.op == "output":
            result = n.args[0]
            results = result if isinstance(result, (tuple, list)) else [result]
            outputs = [b.tensor(r, n) for r in results]
    return Graph(b.nodes, inputs, outputs, b.shapes)


def rename_tensor(graph: Graph, old: str, new: str) -> Graph:
    """Rename a tensor (and its producing node's output) everywhere."""
    g = graph.copy()
    for node in g.nodes:
        node.inputs = [new if t == old else t for t in node.inputs]
        if node.output == old:
            node.output = new
    g.outputs = [new if t == old else t for t in g.outputs]
    g.shapes[new] = g.shapes.pop(old)
    return g


def param_count(graph: Graph) -> int:
    return sum(math.prod(p.shape) for n in graph.nodes for p in n.params.values())
