"""IR node -> TFLite operators: one lowering function per IR op, int8 or float.

Every lowering writes the node's output as a value of the requested kind (``Q``: int8 with
the QModel's QParams, ``F``: float32) and leaves dtype conversions to the caller. Numbers are
copied, never recomputed: weight codes, their scales, int32 bias codes and activation QParams
come from the QModel; runtime constraints that the QModel could violate are checked here and
raised as :class:`UserError` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgeres.errors import UserError
from edgeres.export.tflite_acts import check_fixed_qparams, fused_act, lower_act
from edgeres.export.tflite_builder import Quant
from edgeres.export.tflite_values import NHWC, F, Layout, Q, Values, identity, same_memory
from edgeres.graph.ir import Node
from edgeres.quant.qmodel import QuantWeight

# Why some nodes can never be int8 in TFLite (they become float islands).
FLOAT_ONLY = {
    "layernorm": "TFLite has no int8 LayerNorm kernel",
    "silu": "TFLite has no int8 SiLU kernel (a profile with ops.lowering.silu = "
    "'lookup-table' or 'sigmoid-mul' keeps it integer)",
}


# -- shared checks ---------------------------------------------------------------------------
def check_same_qparams(v: Values, node: Node) -> None:
    """Data-movement ops copy int8 codes, so input and output must share scale and zp."""
    a, b = v.q.act_qparams[node.inputs[0]], v.q.act_qparams[node.output]
    if a != b:
        raise UserError(
            f"{node.describe()}: TFLite {node.op} copies int8 codes, so '{node.output}' needs "
            f"the same scale/zero point as '{node.inputs[0]}' ({float(a.scale):.6g}/"
            f"{int(a.zero_point)} vs {float(b.scale):.6g}/{int(b.zero_point)}); tie them in "
            "the plan"
        )


def float_reason(v: Values, node: Node) -> str | None:
    """Why ``node`` cannot run as an int8 TFLite op (None: it can)."""
    key = node.attrs.get("kind") if node.op == "act" else node.op
    if key in FLOAT_ONLY and key not in v.lut:
        return FLOAT_ONLY[key]
    if not v.quantized(node.output):
        return f"output '{node.output}' is float in the QModel"
    for t in node.inputs:
        if not v.quantized(t):
            return f"input '{t}' is float in the QModel"
    if node.op in ("conv2d", "linear") and node.name not in v.q.weights:
        return "its weights are float in the QModel"
    return None


# -- parameters ------------------------------------------------------------------------------
def _weights(v: Values, node: Node, kind: str) -> tuple[np.ndarray, Quant | None]:
    """Weight array (int8 codes or float32) and its quantization."""
    if kind == F:
        qw = v.q.weights.get(node.name)
        w = qw.dequantized()["weight"] if qw is not None else node.params["weight"]
        return w.detach().numpy().astype(np.float32), None
    qw = v.q.weights[node.name]
    spec = qw.qparams.spec
    if spec.bits > 8 or not spec.signed:
        raise UserError(
            f"{node.describe()}: weights are {spec.describe()}; TFLite int8 kernels need signed "
            "weights of at most 8 bits"
        )
    if np.any(qw.qparams.zero_point != 0):
        raise UserError(f"{node.describe()}: weights have non-zero zero points; TFLite needs 0")
    if spec.per_channel and spec.axis != 0:
        raise UserError(f"{node.describe()}: per-channel weight axis {spec.axis}; expected 0")
    codes = np.asarray(qw.codes)
    if codes.min(initial=0) < -127 or codes.max(initial=0) > 127:
        raise UserError(
            f"{node.describe()}: weight codes outside [-127, 127]; TFLite's int8 spec needs "
            "narrow-range weights"
        )
    return codes.astype(np.int8), Quant(qw.qparams.scale, qw.qparams.zero_point)


def _bias(v: Values, node: Node, kind: str, w_quant: Quant | None, n_out: int) -> int:
    """The bias tensor: int32 codes on the input x weight scale grid, or float32."""
    name = f"{node.name}/bias"
    qw: QuantWeight | None = v.q.weights.get(node.name)
    if kind == F:
        if qw is not None and qw.bias_codes is not None:
            b = qw.dequantized()["bias"].numpy()
        else:
            b = node.params.get("bias")
            b = np.zeros(n_out) if b is None else b.detach().numpy()
        return v.b.const(name, b.astype(np.float32))
    assert qw is not None and w_quant is not None
    s_in = np.float64(v.q.act_qparams[node.inputs[0]].scale)
    expected = s_in * w_quant.scale.astype(np.float64)
    if qw.bias_codes is None:
        codes, scale = np.zeros(n_out, np.int64), expected.astype(np.float32)
    else:
        codes, scale = np.asarray(qw.bias_codes), np.asarray(qw.bias_qparams.scale)
        got = scale.astype(np.float64)
        if np.any(np.abs(got - expected) > 1e-6 * np.minimum(got, expected)):
            raise UserError(
                f"{node.describe()}: bias scale must equal input scale x weight scale (the "
                "TFLite int8 rule); recompute the bias codes with edgeres.qtypes.bias_qparams"
            )
        if np.abs(codes).max(initial=0) > 2**31 - 1:
            raise UserError(f"{node.describe()}: bias codes overflow int32")
    scale = np.broadcast_to(scale, (n_out,)) if w_quant.scale.size > 1 else scale
    return v.b.const(name, codes.astype(np.int32), Quant(scale, np.zeros(np.size(scale))))


# -- convolution -----------------------------------------------------------------------------
def _padding(v: Values, node: Node, src: int, kind: str, ksize: tuple[int, int]) -> tuple[int, int]:
    """TFLite padding for the IR's explicit (t, l, b, r): SAME, VALID, or PAD + VALID."""
    x = node.inputs[0]
    _, _, h, w = v.shapes[x]
    t, l, b, r = node.attrs["padding"]
    sh, sw = node.attrs["stride"]
    dh, dw = node.attrs["dilation"]
    pads = []
    for size, lead, trail, k, s, d in ((h, t, b, ksize[0], sh, dh), (w, l, r, ksize[1], sw, dw)):
        eff = (k - 1) * d + 1
        out = (size + lead + trail - eff) // s + 1
        used_trail = max(0, min(trail, (out - 1) * s + eff - size - lead))  # drop unread rows
        same_total = max((-(-size // s) - 1) * s + eff - size, 0)
        same = (same_total // 2, same_total - same_total // 2)
        pads.append(((lead, used_trail), same))
    if all(p == (0, 0) for p, _ in pads):
        return fb.Padding.VALID, src
    if all(p == same for p, same in pads):
        return fb.Padding.SAME, src
    (pt, pb), (pl, pr) = pads[0][0], pads[1][0]
    shape = list(v.b.shape_of(src))
    shape[1] += pt + pb
    shape[2] += pl + pr
    quant = v.quant(x) if kind == Q else None
    dst = v.b.tensor(f"{x}/pad_{node.name}", tuple(shape), np.int8 if kind == Q else np.float32,
                     quant)
    paddings = v.i32(f"{node.name}/paddings", [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    v.b.op("PAD", [src, paddings], [dst])
    return fb.Padding.VALID, dst


def lower_conv2d(v: Values, node: Node, kind: str) -> None:
    x = node.inputs[0]
    c_in = v.shapes[x][1]
    groups = node.attrs["groups"]
    w, w_quant = _weights(v, node, kind)
    c_out, _, kh, kw = w.shape
    depthwise = groups == c_in and groups > 1
    if groups != 1 and not depthwise:
        raise UserError(
            f"{node.describe()}: grouped convolution (groups={groups}, {c_in} channels) has no "
            "TFLite int8 kernel on every runtime; split it into groups=1 or depthwise convs"
        )
    padding, src = _padding(v, node, v.get(x, NHWC, kind), kind, (kh, kw))
    sh, sw = node.attrs["stride"]
    dh, dw = node.attrs["dilation"]
    if depthwise:
        data, axis = w.transpose(1, 2, 3, 0), 3  # OIHW (I=1) -> 1HWO
        opts, op = fb.DepthwiseConv2DOptionsT(), "DEPTHWISE_CONV_2D"
        opts.depthMultiplier = c_out // c_in
    else:
        data, axis = w.transpose(0, 2, 3, 1), 0  # OIHW -> OHWI
        opts, op = fb.Conv2DOptionsT(), "CONV_2D"
    if w_quant is not None:
        w_quant.axis = axis
    weight = v.b.const(f"{node.name}/weight", np.ascontiguousarray(data), w_quant)
    bias = _bias(v, node, kind, w_quant, c_out)
    opts.padding, opts.strideH, opts.strideW = padding, sh, sw
    opts.dilationHFactor, opts.dilationWFactor = dh, dw
    opts.fusedActivationFunction = fused_act(v, node, kind)
    out = v.new(node.output, NHWC, kind)
    v.b.op(op, [src, weight, bias], [out], opts)
    v.define(node.output, out, NHWC, kind)


def lower_linear(v: Values, node: Node, kind: str) -> None:
    x = node.inputs[0]
    rank = v.rank(x)
    layout = v.layout(x) if v.layout(x)[-1] == rank - 1 else identity(rank)
    src = v.get(x, layout, kind)
    w, w_quant = _weights(v, node, kind)
    weight = v.b.const(f"{node.name}/weight", w, w_quant)
    bias = _bias(v, node, kind, w_quant, w.shape[0])
    opts = fb.FullyConnectedOptionsT()
    opts.fusedActivationFunction = fused_act(v, node, kind)
    opts.keepNumDims = rank > 2
    out = v.new(node.output, layout, kind)
    v.b.op("FULLY_CONNECTED", [src, weight, bias], [out], opts)
    v.define(node.output, out, layout, kind)


# -- elementwise -----------------------------------------------------------------------------
def _binary(v: Values, node: Node, kind: str, op: str, opts: object) -> None:
    a, b = node.inputs
    if v.rank(a) != v.rank(b):
        raise UserError(
            f"{node.describe()}: inputs of rank {v.rank(a)} and {v.rank(b)}; the TFLite export "
            "needs equal ranks (reshape the smaller operand in the model)"
        )
    layout = v.layout(a)
    ins = [v.get(a, layout, kind), v.get(b, layout, kind)]
    out = v.new(node.output, layout, kind)
    v.b.op(op, ins, [out], opts)
    v.define(node.output, out, layout, kind)


def lower_add(v: Values, node: Node, kind: str) -> None:
    opts = fb.AddOptionsT()
    opts.fusedActivationFunction = fused_act(v, node, kind)
    _binary(v, node, kind, "ADD", opts)


def lower_sub(v: Values, node: Node, kind: str) -> None:
    opts = fb.SubOptionsT()
    opts.fusedActivationFunction = fused_act(v, node, kind)
    _binary(v, node, kind, "SUB", opts)


def lower_mul(v: Values, node: Node, kind: str) -> None:
    if len(node.inputs) == 2:
        _binary(v, node, kind, "MUL", fb.MulOptionsT())
        return
    x = node.inputs[0]
    layout = v.layout(x)
    s = float(node.attrs["scalar"])
    shape = (1,) * v.rank(x)
    if kind == Q:  # symmetric int8 constant: code +-127 (or 0) with scale |s| / 127
        scale = np.float32(abs(s) / 127) if s != 0 else np.float32(1.0)
        code = np.full(shape, 127 * np.sign(s), np.int8)
        const = v.b.const(f"{node.name}/scalar", code, Quant(scale, 0))
    else:
        const = v.b.const(f"{node.name}/scalar", np.full(shape, s, np.float32))
    out = v.new(node.output, layout, kind)
    v.b.op("MUL", [v.get(x, layout, kind), const], [out], fb.MulOptionsT())
    v.define(node.output, out, layout, kind)


# -- reductions, normalization ---------------------------------------------------------------
def _mean(v: Values, src: int, dst: int, axes: list[int], keep: bool, name: str) -> None:
    opts = fb.ReducerOptionsT()
    opts.keepDims = keep
    v.b.op("MEAN", [src, v.i32(f"{name}/axes", sorted(axes))], [dst], opts)


def lower_mean(v: Values, node: Node, kind: str) -> None:
    x = node.inputs[0]
    rank, layout = v.rank(x), v.layout(x)
    axes = sorted({a % rank for a in node.attrs["axes"]})
    keep = bool(node.attrs["keepdims"])
    if keep:
        out_layout = layout
    else:
        kept = [d for d in range(rank) if d not in axes]
        out_layout = tuple(kept.index(d) for d in layout if d in kept)
    out = v.new(node.output, out_layout, kind)
    _mean(v, v.get(x, layout, kind), out, [layout.index(a) for a in axes], keep, node.name)
    v.define(node.output, out, out_layout, kind)


def lower_softmax(v: Values, node: Node, kind: str) -> None:
    x = node.inputs[0]
    rank, layout = v.rank(x), v.layout(x)
    axis = node.attrs["axis"] % rank
    if layout[-1] != axis:  # TFLite SOFTMAX works on the last dim
        layout = tuple(d for d in range(rank) if d != axis) + (axis,)
    if kind == Q:
        check_fixed_qparams(v, node, "SOFTMAX", (1.0 / 256, -128))
    opts = fb.SoftmaxOptionsT()
    opts.beta = 1.0
    out = v.new(node.output, layout, kind)
    v.b.op("SOFTMAX", [v.get(x, layout, kind)], [out], opts)
    v.define(node.output, out, layout, kind)


def lower_layernorm(v: Values, node: Node, kind: str) -> None:
    """Float island: mean, variance, rsqrt(var + eps), scale and shift, as TFLite float ops."""
    x = node.inputs[0]
    rank, layout = v.rank(x), v.layout(x)
    axis = layout.index(node.attrs["axis"] % rank)
    src = v.get(x, layout, F)
    shape = v.b.shape_of(src)
    red = tuple(1 if i == axis else d for i, d in enumerate(shape))
    p = dict(node.params)
    if node.name in v.q.weights:
        p.update(v.q.weights[node.name].dequantized())
    bshape = [1] * rank
    bshape[axis] = shape[axis]

    def t(suffix: str, s: tuple[int, ...]) -> int:
        return v.b.tensor(f"{node.output}/{suffix}", s, np.float32)

    def c(suffix: str, arr: np.ndarray) -> int:
        return v.b.const(f"{node.name}/{suffix}", np.asarray(arr, np.float32))

    mean, sqd, var, vareps, inv, cen, norm, scaled = (
        t("mean", red), t("sqdiff", shape), t("var", red), t("var_eps", red), t("rsqrt", red),
        t("centered", shape), t("normalized", shape), t("scaled", shape),
    )
    _mean(v, src, mean, [axis], True, f"{node.name}/mean")
    v.b.op("SQUARED_DIFFERENCE", [src, mean], [sqd])
    _mean(v, sqd, var, [axis], True, f"{node.name}/var")
    v.b.op("ADD", [var, c("eps", np.full([1] * rank, node.attrs["eps"]))], [vareps],
           fb.AddOptionsT())
    v.b.op("RSQRT", [vareps], [inv])
    v.b.op("SUB", [src, mean], [cen], fb.SubOptionsT())
    v.b.op("MUL", [cen, inv], [norm], fb.MulOptionsT())
    gamma = p["weight"].detach().numpy().reshape(bshape)
    beta = p["bias"].detach().numpy().reshape(bshape)
    v.b.op("MUL", [norm, c("weight", gamma)], [scaled], fb.MulOptionsT())
    out = v.new(node.output, layout, F)
    v.b.op("ADD", [scaled, c("bias", beta)], [out], fb.AddOptionsT())
    v.define(node.output, out, layout, F)


# -- data movement ---------------------------------------------------------------------------
def lower_reshape(v: Values, node: Node, kind: str) -> None:
    x = node.inputs[0]
    if kind == Q:
        check_same_qparams(v, node)
    rank, layout = v.rank(x), v.layout(x)
    if not same_memory(v.shapes[x], layout, identity(rank)):
        layout = identity(rank)  # the IR's element order needs a TRANSPOSE first
    src = v.get(x, layout, kind)
    out_shape = v.shapes[node.output]
    out_rank = len(out_shape)
    out_layout = identity(out_rank)
    if out_rank == 4 and [d for d in NHWC if out_shape[d] != 1] == [
        d for d in range(4) if out_shape[d] != 1
    ]:
        out_layout = NHWC  # images stay NHWC when that costs nothing
    out = v.new(node.output, out_layout, kind)
    v.reshape(src, out)
    v.define(node.output, out, out_layout, kind)


def lower_transpose(v: Values, node: Node, kind: str) -> None:
    """Free: the output is the input relabelled with a new layout (materialized on demand)."""
    x = node.inputs[0]
    if kind == Q:
        check_same_qparams(v, node)
    perm = [p % v.rank(x) for p in node.attrs["perm"]]
    layout: Layout = tuple(perm.index(d) for d in v.layout(x))
    v.define(node.output, v.get(x, v.layout(x), kind), layout, kind)


def lower_matmul(v: Values, node: Node, kind: str) -> None:
    ins, adj = [], []
    for t in node.inputs:
        r = v.rank(t)
        swapped = identity(r)[:-2] + (r - 1, r - 2)
        use_adj = v.layout(t) == swapped  # BATCH_MATMUL reads it transposed for free
        ins.append(v.get(t, swapped if use_adj else identity(r), kind))
        adj.append(use_adj)
    opts = fb.BatchMatMulOptionsT()
    opts.adjX, opts.adjY = adj
    out_layout = identity(v.rank(node.output))
    out = v.new(node.output, out_layout, kind)
    v.b.op("BATCH_MATMUL", ins, [out], opts)
    v.define(node.output, out, out_layout, kind)


LOWERINGS: dict[str, Callable[[Values, Node, str], None]] = {
    "conv2d": lower_conv2d,
    "linear": lower_linear,
    "add": lower_add,
    "sub": lower_sub,
    "mul": lower_mul,
    "mean": lower_mean,
    "reshape": lower_reshape,
    "transpose": lower_transpose,
    "matmul": lower_matmul,
    "softmax": lower_softmax,
    "layernorm": lower_layernorm,
    "act": lower_act,
}
