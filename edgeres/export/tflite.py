"""Exact int8 TFLite export: the QModel's own integers, written as a .tflite flatbuffer.

Why not the TensorFlow converter: it re-calibrates and re-rounds; here every weight code,
bias code, scale and zero point is copied from the QModel, so LiteRT, XNNPACK and TFLite
Micro compute what :meth:`QModel.simulate` computes (within 1 LSB of the output scale where
a kernel rounds its requantization differently). The file is built with the schema bindings
that ai-edge-litert ships; no TensorFlow.

Layout: IR graphs are NCHW; the file is NHWC for every image tensor (graph I/O included),
with no TRANSPOSE around convolutions. Nodes that cannot run in int8 (LayerNorm, SiLU, nodes
the QModel keeps float) become float islands between DEQUANTIZE and QUANTIZE and are listed
in :attr:`ExportInfo.float_ops`.

>>> info = export_tflite(qmodel, Path("model.tflite"))            # doctest: +SKIP
>>> info.ops, info.inputs[0].scale, info.float_ops                  # doctest: +SKIP
({'CONV_2D': 10, ...}, 0.0186..., [])
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
from ai_edge_litert import schema_py_generated as fb

from edgeres.errors import UserError
from edgeres.export.common import ExportInfo, FloatOp, TensorIO
from edgeres.export.tflite_acts import LUT_ACTS
from edgeres.export.tflite_builder import ModelBuilder, op_name, type_name
from edgeres.export.tflite_ops import LOWERINGS, float_reason
from edgeres.export.tflite_values import F, Q, Values, io_layout
from edgeres.paths import write_bytes_atomic
from edgeres.quant.qmodel import QModel

IODtype = Literal["int8", "float32"]




def _check_qparams(qmodel: QModel) -> None:
    tensors = set(qmodel.graph.tensors())
    for name, qp in qmodel.act_qparams.items():
        if name not in tensors:
            continue
        spec = qp.spec
        if spec.bits != 8 or not spec.signed or spec.per_channel:
            raise UserError(
                f"tensor '{name}' is quantized as {spec.describe()}; the TFLite export writes "
                "int8 per-tensor activations: choose a target with signed int8 activations"
            )


def lookup_table_acts(qmodel: QModel, lut_activations: bool | None) -> frozenset[str]:
    """Activation kinds to write as lookup tables: all or none when asked, else what the
    target profile the QModel was planned for says (``meta["lowering"]``)."""
    if lut_activations is not None:
        return frozenset(LUT_ACTS) if lut_activations else frozenset()
    lowering = qmodel.meta.get("lowering") or {}
    return frozenset(k for k, how in lowering.items() if how == "lookup-table")


def build_tflite(
    qmodel: QModel, io_dtype: IODtype = "int8", *, lut_activations: bool | None = None
) -> tuple[bytes, list[FloatOp]]:
    """The model bytes (deterministic) and the float islands; see :func:`export_tflite`."""
    if io_dtype not in ("int8", "float32"):
        raise UserError(f"io_dtype must be 'int8' or 'float32', got '{io_dtype}'")
    _check_qparams(qmodel)
    graph = qmodel.graph
    b = ModelBuilder()
    v = Values(b, qmodel, lut=lookup_table_acts(qmodel, lut_activations))
    inputs = []
    for info in graph.inputs:
        layout = io_layout(len(info.shape))
        quantized = v.quantized(info.name)
        if io_dtype == "int8" and not quantized:
            raise UserError(f"graph input '{info.name}' has no QParams; int8 I/O needs them")
        kind = Q if io_dtype == "int8" else F
        idx = v.new(info.name, layout, kind)
        v.define(info.name, idx, layout, kind)
        if kind == F and quantized:
            v.quantize_primary(info.name)
        inputs.append((info.name, idx))
    float_ops: list[FloatOp] = []
    for node in graph.nodes:
        lower = LOWERINGS.get(node.op)
        if lower is None:
            raise UserError(
                f"{node.describe()}: op '{node.op}' has no TFLite lowering "
                f"(supported: {', '.join(LOWERINGS)})"
            )
        reason = float_reason(v, node)
        kind = F if reason else Q
        if reason:
            op = f"act:{node.attrs['kind']}" if node.op == "act" else node.op
            float_ops.append(FloatOp(node.name, op, reason))
        lower(v, node, kind)
        if kind == F and v.quantized(node.output):  # back to int8 where the QModel says so
            v.quantize_primary(node.output)
    outputs = []
    for name in graph.outputs:
        if io_dtype == "int8" and not v.quantized(name):
            raise UserError(f"graph output '{name}' has no QParams; int8 I/O needs them")
        kind = Q if io_dtype == "int8" else F
        outputs.append((name, v.get(name, io_layout(v.rank(name)), kind)))
    return b.finish(inputs, outputs), float_ops


def export_tflite(
    qmodel: QModel, path: Path, io_dtype: IODtype = "int8", *, lut_activations: bool | None = None
) -> ExportInfo:
    """Write ``qmodel`` as an int8 .tflite at ``path`` (atomically) and describe the result.

    ``io_dtype="int8"``: inputs/outputs are int8 with the QModel's QParams (an app quantizes
    with ``q = round(x / scale) + zero_point``); ``"float32"``: the model quantizes and
    dequantizes at its boundary itself.

    ``lut_activations``: write GELU and SiLU as exact int8 lookup tables (CAST, ADD, GATHER)
    (True) or as the GELU op / a float SiLU island (False); None (the default) does what the
    target's profile says (``[ops.lowering]``, recorded in the QModel when it was planned). A
    table keeps the graph integer where TFLite has no int8 kernel (TFLite Micro has no GELU,
    TFLite no int8 SiLU); it costs an int32 index tensor per activation.
    """
    data, float_ops = build_tflite(qmodel, io_dtype, lut_activations=lut_activations)
    path = Path(path)
    write_bytes_atomic(path, data)
    ins, outs = tflite_io_details(data)
    model = fb.ModelT.InitFromPackedBuf(data, 0)
    g = model.subgraphs[0]
    ops: dict[str, int] = {}
    for o in g.operators:
        name = op_name(model.operatorCodes[o.opcodeIndex].builtinCode)
        ops[name] = ops.get(name, 0) + 1
    return ExportInfo(
        path=path,
        io_dtype=io_dtype,
        ops=ops,
        tensors=len(g.tensors),
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        inputs=ins,
        outputs=outs,
        float_ops=float_ops,
    )


def tflite_io_details(model: Path | bytes) -> tuple[list[TensorIO], list[TensorIO]]:
    """Inputs and outputs of a .tflite (path or bytes), read from the file itself.

    Names come from the serving signature when there is one. The layout is edgeres's
    convention (rank-4 tensors are NHWC), not something the file records.
    """
    data = model if isinstance(model, bytes | bytearray) else Path(model).read_bytes()
    what = "model" if isinstance(model, bytes | bytearray) else f"'{model}'"
    try:
        m = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
        g = m.subgraphs[0]
        [g.tensors[i] for i in [*g.inputs, *g.outputs]]  # noqa: B018 - random bytes may parse
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a tflite file"
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{what} is not a readable .tflite model (truncated or "
                        f"corrupt: {detail[:60].rstrip()})") from exc
    names: dict[int, str] = {}
    for sig in m.signatureDefs or []:
        for tm in list(sig.inputs or []) + list(sig.outputs or []):
            names[tm.tensorIndex] = _text(tm.name)

    def describe(idx: int) -> TensorIO:
        t = g.tensors[idx]
        q = t.quantization
        scale = zp = None
        if q is not None and q.scale is not None and len(q.scale) == 1:
            scale, zp = float(np.float32(q.scale[0])), int(q.zeroPoint[0])
        shape = tuple(int(d) for d in t.shape)
        return TensorIO(
            name=names.get(idx, _text(t.name)),
            shape=shape,
            dtype=type_name(t.type).lower(),
            layout="NHWC" if len(shape) == 4 else "ND",
            scale=scale,
            zero_point=zp,
        )

    return [describe(i) for i in g.inputs], [describe(i) for i in g.outputs]


def _text(s: str | bytes | None) -> str:
    return s.decode() if isinstance(s, bytes) else (s or "")
