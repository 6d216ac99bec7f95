"""Activations in the TFLite export: fused, standalone int8, lookup tables, float SiLU.

Why a module of their own: activations carry most of the runtime quirks: fixed output
QParams (LOGISTIC, TANH), TFLite Micro's RELU6 that does not requantize, the int32 overflow
of a RELU6 bound on tiny scales, and kernels missing on some runtimes (GELU in TFLite Micro,
int8 SiLU everywhere), which an exact 256-entry lookup table replaces.
"""

from __future__ import annotations

import numpy as np
import torch
from ai_edge_litert import schema_py_generated as fb

from edgeres.errors import UserError
from edgeres.export.tflite_builder import Quant
from edgeres.export.tflite_values import F, Layout, Q, Values
from edgeres.graph.ir import Node, apply_activation

_FUSED = {
    "none": fb.ActivationFunctionType.NONE,
    "relu": fb.ActivationFunctionType.RELU,
    "relu6": fb.ActivationFunctionType.RELU6,
}
# Activations with an int8 kernel, and the output QParams the runtime fixes (None: free).
_ACT_OPS: dict[str, tuple[str, tuple[float, int] | None]] = {
    "relu": ("RELU", None),
    "relu6": ("RELU6", None),
    "sigmoid": ("LOGISTIC", (1.0 / 256, -128)),
    "tanh": ("TANH", (1.0 / 128, 0)),
    "hardswish": ("HARD_SWISH", None),
    "gelu": ("GELU", None),
}
# Activations written as int8 lookup tables when the export asks for it: GELU has no
# TFLite Micro kernel and SiLU has no int8 kernel anywhere.
LUT_ACTS = ("gelu", "silu")


def fused_act(v: Values, node: Node, kind: str) -> int:
    act = node.attrs.get("act", "none")
    if act not in _FUSED:
        raise UserError(
            f"{node.describe()}: activation '{act}' cannot be fused into a TFLite op "
            "(only none/relu/relu6); capture it as a separate act node"
        )
    if act == "relu6" and kind == Q and _six_unreachable(v, node.output):
        return _FUSED["relu"]
    return _FUSED[act]


def _six_unreachable(v: Values, tensor: str) -> bool:
    """True when the int8 range of ``tensor`` ends below 6, so ReLU6 == ReLU exactly.

    Why it matters: TFLite quantizes the bound 6 into int32 at prepare time, which overflows
    (and fails) for tiny output scales; the clamp is a no-op there anyway.
    """
    qp = v.q.act_qparams[tensor]
    return float(np.float64(qp.spec.qmax - int(qp.zero_point)) * np.float64(qp.scale)) <= 6.0


def check_fixed_qparams(v: Values, node: Node, op: str, fixed: tuple[float, int]) -> None:
    """TFLite int8 kernels such as SOFTMAX and LOGISTIC only accept one output scale/zp."""
    qp = v.q.act_qparams[node.output]
    scale, zp = float(qp.scale), int(qp.zero_point)
    if scale != np.float32(fixed[0]) or zp != fixed[1]:
        raise UserError(
            f"{node.describe()}: TFLite int8 {op} needs output scale {fixed[0]:.8g} and zero "
            f"point {fixed[1]}, the QModel has scale {scale:.8g}, zero point {zp} for "
            f"'{node.output}'; fix the quantization plan for this tensor"
        )


def lower_act(v: Values, node: Node, kind: str) -> None:
    x, act = node.inputs[0], node.attrs["kind"]
    layout = v.layout(x)
    src = v.get(x, layout, kind)
    if act == "none":
        if kind == F or v.q.act_qparams[x] == v.q.act_qparams[node.output]:
            v.define(node.output, src, layout, kind)
            return
        out = v.new(node.output, layout, kind)
        v.b.op("QUANTIZE", [src], [out])  # int8 -> int8 requantization
        v.define(node.output, out, layout, kind)
        return
    if kind == Q and act in v.lut:
        _lookup_table(v, node, src, layout)
        return
    if act == "relu6" and kind == Q and _six_unreachable(v, node.output):
        act = "relu"
    if kind == Q and act == "relu6" and v.q.act_qparams[x] != v.q.act_qparams[node.output]:
        # TFLite Micro's int8 RELU6 clamps without requantizing: requantize first.
        src = _requantize(v, node, src, layout)
    if act == "hardsigmoid":
        _hardsigmoid(v, node, src, layout, kind)
        return
    out = v.new(node.output, layout, kind)
    if act == "silu":  # float only: x * sigmoid(x)
        sig = v.b.tensor(f"{node.output}/sigmoid", v.b.shape_of(src), np.float32)
        v.b.op("LOGISTIC", [src], [sig])
        v.b.op("MUL", [src, sig], [out], fb.MulOptionsT())
        v.define(node.output, out, layout, kind)
        return
    if act not in _ACT_OPS:
        raise UserError(f"{node.describe()}: activation '{act}' has no TFLite op")
    op, fixed = _ACT_OPS[act]
    if kind == Q and fixed is not None:
        check_fixed_qparams(v, node, op, fixed)
    opts = None
    if op == "GELU":
        opts = fb.GeluOptionsT()
        opts.approximate = False  # the IR's gelu is the exact erf form
    v.b.op(op, [src], [out], opts)
    v.define(node.output, out, layout, kind)


def _hardsigmoid(v: Values, node: Node, src: int, layout: Layout, kind: str) -> None:
    """relu6(x + 3) / 6 as ADD then MUL: TFLite has no hard-sigmoid op (its own converter
    writes the same pair for MobileNetV3). In int8 the ADD lands on a [0, 6] grid of 6x the
    output step with the output's zero point, so int8 saturation is the ReLU6, and the MUL
    by 1/6 keeps every code: the pair rounds once, as the simulation does."""
    ones = (1,) * len(v.b.shape_of(src))
    add_opts = fb.AddOptionsT()
    if kind == Q:
        qp = v.q.act_qparams[node.output]
        if qp.spec.bits != 8 or not qp.spec.signed or int(qp.zero_point) != qp.spec.qmin:
            raise UserError(f"{node.describe()}: TFLite hardsigmoid needs an int8 output on "
                            f"[0, 1] (zero point -128), the plan gave {qp.spec.describe()}")
        three = v.b.const(f"{node.name}/three", np.full(ones, 127, np.int8),
                          Quant(np.float32(3.0 / 127), 0))
        sixth = v.b.const(f"{node.name}/sixth", np.full(ones, 127, np.int8),
                          Quant(np.float32(1.0 / 6.0 / 127), 0))
        mid = v.b.tensor(f"{node.output}/relu6", v.b.shape_of(src), np.int8,
                         Quant(np.float32(6.0 * float(qp.scale)), int(qp.zero_point)))
    else:
        three = v.b.const(f"{node.name}/three", np.full(ones, 3.0, np.float32))
        sixth = v.b.const(f"{node.name}/sixth", np.full(ones, 1.0 / 6.0, np.float32))
        mid = v.b.tensor(f"{node.output}/relu6", v.b.shape_of(src), np.float32)
        add_opts.fusedActivationFunction = _FUSED["relu6"]
    v.b.op("ADD", [src, three], [mid], add_opts)
    out = v.new(node.output, layout, kind)
    v.b.op("MUL", [mid, sixth], [out], fb.MulOptionsT())
    v.define(node.output, out, layout, kind)


def _requantize(v: Values, node: Node, src: int, layout: Layout) -> int:
    """int8 -> int8 QUANTIZE of ``src`` onto the node's output QParams."""
    dst = v.b.tensor(f"{node.output}/requant", v.b.shape_of(src), np.int8,
                     v.quant(node.output))
    v.b.op("QUANTIZE", [src], [dst])
    return dst


def _lookup_table(v: Values, node: Node, src: int, layout: Layout) -> None:
    """out = table[x + 128]: CAST, ADD, GATHER over the 256 codes, bit-equal to the simulation."""
    qin, qout = v.q.act_qparams[node.inputs[0]], v.q.act_qparams[node.output]
    codes = torch.arange(-128, 128, dtype=torch.int64)
    y = apply_activation(node.attrs["kind"], qin.dequantize(codes))
    table = qout.quantize(y.to(torch.float32)).numpy().astype(np.int8)
    shape = v.b.shape_of(src)
    as_i32 = v.b.tensor(f"{node.output}/codes_i32", shape, np.int32)
    index = v.b.tensor(f"{node.output}/index", shape, np.int32)
    cast = fb.CastOptionsT()
    cast.inDataType, cast.outDataType = fb.TensorType.INT8, fb.TensorType.INT32
    v.b.op("CAST", [src], [as_i32], cast)
    offset = v.b.const(f"{node.name}/offset", np.array([128], np.int32))
    v.b.op("ADD", [as_i32, offset], [index], fb.AddOptionsT())
    out = v.new(node.output, layout, Q)
    lut = v.b.const(f"{node.name}/table", table, v.quant(node.output))
    v.b.op("GATHER", [lut, index], [out], fb.GatherOptionsT())
    v.define(node.output, out, layout, Q)
