"""IR op -> ONNX node emitters, shared by the float and the QDQ export.

Each emitter writes the *float* computation of one IR node from named ONNX inputs to a named
output. The QDQ exporter (:mod:`edgeres.export.onnx`) wraps those float ops in
QuantizeLinear/DequantizeLinear exactly where the QModel quantizes, which is the layout ONNX
Runtime's QDQ transformers fuse into integer kernels (QLinearConv, QLinearAdd, QGemm, ...).
Fused activations are separate nodes (Conv -> Relu / Clip(0, 6)) because that is what ORT's
Relu/Clip + QuantizeLinear fusion removes before it fuses the Conv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeres.errors import UserError
from edgeres.graph.ir import Node


@dataclass
class OnnxBuilder:
    """Collects nodes and initializers; hands out unique, readable names."""

    opset: int
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    _used: set[str] = field(default_factory=set)

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._used:
            name = f"{base}_{i}"
            i += 1
        self._used.add(name)
        return name

    def reserve(self, name: str) -> str:
        """Claim an exact name (graph inputs and outputs must keep theirs)."""
        if name in self._used:
            raise UserError(f"ONNX export: tensor name '{name}' is used twice; rename the tensor")
        self._used.add(name)
        return name

    def const(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], name: str, output: str | None = None, **attrs
    ) -> str:
        """Add one node; returns its output name (a fresh one derived from ``name`` if None)."""
        out = output if output is not None else self.fresh(f"{name}_out")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.fresh(name), **attrs))
        return out


class ParamFn(Protocol):
    """ONNX name of a node parameter: a float initializer, or DequantizeLinear of its codes.

    ``perm`` transposes it and ``shape`` reshapes it (adding unit dims) in the stored
    initializer itself, so a DequantizeLinear still feeds the op directly (what ORT fuses).
    """

    def __call__(self, key: str, perm: tuple[int, ...] | None = None,
                 shape: tuple[int, ...] | None = None) -> str: ...


def emit_activation(b: OnnxBuilder, kind: str, x: str, name: str, out: str | None) -> str:
    """One IR activation as ONNX ops; ``out`` names the final output (None: fresh)."""
    if kind == "none":
        return b.op("Identity", [x], name, out)
    if kind == "relu":
        return b.op("Relu", [x], name, out)
    if kind == "relu6":
        lo = b.const(f"{name}_min", np.array(0.0, np.float32))
        hi = b.const(f"{name}_max", np.array(6.0, np.float32))
        return b.op("Clip", [x, lo, hi], name, out)
    if kind == "sigmoid":
        return b.op("Sigmoid", [x], name, out)
    if kind == "tanh":
        return b.op("Tanh", [x], name, out)
    if kind == "silu":
        s = b.op("Sigmoid", [x], f"{name}_sigmoid")
        return b.op("Mul", [x, s], name, out)
    if kind == "hardswish":
        return b.op("HardSwish", [x], name, out)
    if kind == "hardsigmoid":  # max(0, min(1, x / 6 + 1/2)): PyTorch's relu6(x + 3) / 6
        return b.op("HardSigmoid", [x], name, out, alpha=1.0 / 6.0, beta=0.5)
    if kind == "gelu":
        if b.opset >= 20:
            return b.op("Gelu", [x], name, out)
        # 0.5 * x * (1 + erf(x / sqrt(2))): the exact (erf) GELU PyTorch uses by default.
        inv = b.const(f"{name}_inv_sqrt2", np.array(1.0 / math.sqrt(2.0), np.float32))
        one = b.const(f"{name}_one", np.array(1.0, np.float32))
        half = b.const(f"{name}_half", np.array(0.5, np.float32))
        e = b.op("Erf", [b.op("Mul", [x, inv], f"{name}_scale")], f"{name}_erf")
        t = b.op("Mul", [x, b.op("Add", [e, one], f"{name}_add")], f"{name}_mul")
        return b.op("Mul", [t, half], name, out)
    raise UserError(f"ONNX export: activation '{kind}' at '{name}' has no ONNX mapping")


def _with_act(b: OnnxBuilder, node: Node, y_name: str, make: Callable[[str | None], str],
              out: str) -> str:
    act = node.attrs.get("act", "none")
    if act == "none":
        return make(out)
    return emit_activation(b, act, make(None), f"{y_name}_{act}", out)


def _conv2d(b: OnnxBuilder, node: Node, xs: list[str], param: ParamFn, out: str) -> str:
    a = node.attrs
    w = node.params["weight"]
    t, l, bot, r = a["padding"]
    ins = [xs[0], param("weight")]
    if "bias" in node.params:
        ins.append(param("bias"))
    return _with_act(b, node, node.name, lambda o: b.op(
        "Conv", ins, node.name, o,
        kernel_shape=[int(w.shape[2]), int(w.shape[3])], strides=list(a["stride"]),
        pads=[int(t), int(l), int(bot), int(r)], dilations=list(a["dilation"]),
        group=int(a["groups"])), out)


def _linear(b: OnnxBuilder, node: Node, xs: list[str], param: ParamFn, out: str,
            rank: int) -> str:
    has_bias = "bias" in node.params
    if rank == 2:
        ins = [xs[0], param("weight")] + ([param("bias")] if has_bias else [])
        return _with_act(b, node, node.name,
                         lambda o: b.op("Gemm", ins, node.name, o, transB=1), out)

    def make(o: str | None) -> str:
        w_t = param("weight", perm=(1, 0))
        if not has_bias:
            return b.op("MatMul", [xs[0], w_t], node.name, o)
        y = b.op("MatMul", [xs[0], w_t], f"{node.name}_matmul")
        return b.op("Add", [y, param("bias")], node.name, o)

    return _with_act(b, node, node.name, make, out)


def _axes_const(b: OnnxBuilder, name: str, axes: list[int]) -> str:
    return b.const(f"{name}_axes", np.asarray(axes, np.int64))


def reduce_mean(b: OnnxBuilder, x: str, axes: list[int], keepdims: bool, name: str,
                out: str | None) -> str:
    if b.opset >= 18:
        return b.op("ReduceMean", [x, _axes_const(b, name, axes)], name, out,
                    keepdims=int(keepdims))
    return b.op("ReduceMean", [x], name, out, axes=list(axes), keepdims=int(keepdims))


def _mean(b: OnnxBuilder, node: Node, xs: list[str], out: str, rank: int) -> str:
    axes = sorted(a % rank for a in node.attrs["axes"])
    if rank == 4 and axes == [2, 3] and node.attrs["keepdims"]:
        return b.op("GlobalAveragePool", [xs[0]], node.name, out)
    return reduce_mean(b, xs[0], axes, bool(node.attrs["keepdims"]), node.name, out)


def _layernorm(b: OnnxBuilder, node: Node, xs: list[str], param: ParamFn, out: str,
               rank: int) -> str:
    axis = node.attrs["axis"] % rank
    eps = float(node.attrs["eps"])
    if axis == rank - 1 and b.opset >= 17:
        ins = [xs[0], param("weight"), param("bias")]
        return b.op("LayerNormalization", ins, node.name, out, axis=-1, epsilon=eps)
    # Channel LayerNorm (LayerNorm2d): ONNX's op normalizes over *all* trailing dims, so
    # spell out PyTorch's per-position normalization over one axis.
    n = node.name
    mean = reduce_mean(b, xs[0], [axis], True, f"{n}_mean", None)
    d = b.op("Sub", [xs[0], mean], f"{n}_center")
    var = reduce_mean(b, b.op("Mul", [d, d], f"{n}_square"), [axis], True, f"{n}_var", None)
    eps_c = b.const(f"{n}_eps", np.array(eps, np.float32))
    std = b.op("Sqrt", [b.op("Add", [var, eps_c], f"{n}_add_eps")], f"{n}_std")
    y = b.op("Div", [d, std], f"{n}_normalize")
    shape = [1] * rank
    shape[axis] = -1
    g, beta = param("weight", shape=tuple(shape)), param("bias", shape=tuple(shape))
    return b.op("Add", [b.op("Mul", [y, g], f"{n}_scale"), beta], n, out)


def emit_node(b: OnnxBuilder, node: Node, xs: list[str], param: ParamFn, out: str,
              in_ranks: list[int], dynamic_batch: bool) -> str:
    """Write one IR node's float computation; returns its output name (== ``out``)."""
    op = node.op
    if op == "conv2d":
        return _conv2d(b, node, xs, param, out)
    if op == "linear":
        return _linear(b, node, xs, param, out, in_ranks[0])
    if op in ("add", "sub"):
        return _with_act(b, node, node.name,
                         lambda o: b.op(op.capitalize(), xs, node.name, o), out)
    if op == "mul":
        if len(xs) == 1:
            c = b.const(f"{node.name}_scalar", np.array(node.attrs["scalar"], np.float32))
            return b.op("Mul", [xs[0], c], node.name, out)
        return b.op("Mul", xs, node.name, out)
    if op == "mean":
        return _mean(b, node, xs, out, in_ranks[0])
    if op == "reshape":
        shape = [int(s) for s in node.attrs["shape"]]
        if dynamic_batch:
            shape[0] = -1
        c = b.const(f"{node.name}_shape", np.asarray(shape, np.int64))
        return b.op("Reshape", [xs[0], c], node.name, out)
    if op == "transpose":
        return b.op("Transpose", xs, node.name, out, perm=[int(p) for p in node.attrs["perm"]])
    if op == "matmul":
        return b.op("MatMul", xs, node.name, out)
    if op == "softmax":
        return b.op("Softmax", xs, node.name, out, axis=int(node.attrs["axis"]))
    if op == "layernorm":
        return _layernorm(b, node, xs, param, out, in_ranks[0])
    if op == "act":
        return emit_activation(b, node.attrs["kind"], xs[0], node.name, out)
    raise UserError(
        f"ONNX export: {node.describe()} uses op '{op}', which has no ONNX mapping; "
        "lower it with edgeres.graph.rewrites before exporting"
    )


SHAPE_OPS = ("reshape", "transpose")
"""Ops that only move values: a quantized input stays on its grid, so they run on codes."""


def batch_is_free(nodes: list[Node], shapes: dict[str, tuple[int, ...]]) -> bool:
    """True when no node mixes the batch dim with others, so dim 0 can be left dynamic."""
    for n in nodes:
        rank = len(shapes[n.inputs[0]]) if n.inputs else 0
        if n.op == "reshape" and int(n.attrs["shape"][0]) not in (-1, shapes[n.inputs[0]][0]):
            return False
        if n.op == "transpose" and int(n.attrs["perm"][0]) != 0:
            return False
        if n.op == "mean" and 0 in [a % rank for a in n.attrs["axes"]]:
            return False
        if n.op in ("softmax", "layernorm") and n.attrs["axis"] % rank == 0:
            return False
        if n.op == "matmul" and min(len(shapes[i]) for i in n.inputs) < 3:
            return False
    return True
