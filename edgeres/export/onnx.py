"""Exact ONNX export: the float graph, or a QModel as QDQ ONNX with exactly its integers.

A QModel becomes the QDQ format ONNX Runtime (and QNN-style NPU compilers) turn into integer
kernels: every tensor in ``qmodel.act_qparams`` gets QuantizeLinear -> DequantizeLinear where it
is produced; weights are integer initializers (per-axis scales) feeding DequantizeLinear; biases
are int32 codes on the input x weight scale; the ops in between are the float ops of the IR.
That is the same computation as :meth:`QModel.simulate` (fake-quant at each quantized tensor),
so ORT matches the simulation within one LSB of requantization rounding.

Example::

    info = export_onnx(qmodel, Path("model.onnx"))   # QDQ, float in / float out
    info = export_onnx(qmodel.graph, Path("float.onnx"))
"""

from __future__ import annotations

import hashlib
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import TensorProto, helper

from edgeres.errors import UserError
from edgeres.export.common import ExportInfo, FloatOp, TensorIO
from edgeres.export.onnx_ops import SHAPE_OPS, OnnxBuilder, ParamFn, batch_is_free, emit_node
from edgeres.export.onnx_uint8 import weights_as_uint8
from edgeres.graph.ir import Graph, Node
from edgeres.paths import write_bytes_atomic
from edgeres.qtypes import QParams
from edgeres.quant.qmodel import QModel

MIN_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear
PRODUCER = "edgeres"
BATCH_DIM = "batch"




def _act_dtype(t: str, qp: QParams, opset: int) -> np.dtype:
    """Storage dtype of an activation's codes; refuses widths QuantizeLinear cannot saturate."""
    spec = qp.spec
    if spec.bits not in (8, 16) or spec.narrow_range:
        raise UserError(
            f"ONNX export: tensor '{t}' is quantized as {spec.describe()}"
            f"{' narrow-range' if spec.narrow_range else ''}; QuantizeLinear saturates to the "
            "full int8/uint8/int16/uint16 range, so use 8- or 16-bit full-range activations"
        )
    if spec.bits == 16 and opset < 21:
        raise UserError(f"ONNX export: 16-bit tensor '{t}' needs opset >= 21 (got {opset})")
    return spec.storage_dtype()


class _QdqWriter:
    """Writes QuantizeLinear / DequantizeLinear nodes with one scale/zero-point pair per tensor."""

    def __init__(self, b: OnnxBuilder) -> None:
        self.b = b
        self._consts: dict[tuple[str, str], tuple[str, str]] = {}

    def _qconsts(self, t: str, qp: QParams, dtype: np.dtype) -> tuple[str, str]:
        key = (t, dtype.str)
        if key not in self._consts:
            s = self.b.const(f"{t}_scale", qp.scale.astype(np.float32))
            z = self.b.const(f"{t}_zero_point", qp.zero_point.astype(dtype))
            self._consts[key] = (s, z)
        return self._consts[key]

    @staticmethod
    def _axis(qp: QParams, axis: int | None = None) -> dict:
        """The ``axis`` attribute of a per-axis Q/DQ (``axis`` overrides the spec's)."""
        if qp.spec.axis is None:
            return {}
        return {"axis": qp.spec.axis if axis is None else axis}

    def quantize(self, x: str, t: str, qp: QParams, out: str) -> str:
        s, z = self._qconsts(t, qp, _act_dtype(t, qp, self.b.opset))
        return self.b.op("QuantizeLinear", [x, s, z], f"{t}_QuantizeLinear", out,
                         **self._axis(qp))

    def dequantize(self, q: str, t: str, qp: QParams, out: str, dtype: np.dtype | None = None,
                   axis: int | None = None) -> str:
        dt = dtype if dtype is not None else _act_dtype(t, qp, self.b.opset)
        s, z = self._qconsts(t, qp, dt)
        return self.b.op("DequantizeLinear", [q, s, z], f"{t}_DequantizeLinear", out,
                         **self._axis(qp, axis))


def _weight_dtype(node: Node, key: str, qp: QParams, opset: int) -> np.dtype:
    dt = np.dtype(np.int32) if key == "bias" else qp.spec.storage_dtype()
    if dt.itemsize == 2 and opset < 21:
        raise UserError(f"ONNX export: 16-bit {key} of {node.describe()} needs opset >= 21")
    return dt


class _Exporter:
    """One export: walks the IR once, keeping float names and integer-code names per tensor."""

    def __init__(self, graph: Graph, qmodel: QModel | None, opset: int, io: str) -> None:
        self.g = graph
        self.qm = qmodel
        self.act = dict(qmodel.act_qparams) if qmodel is not None else {}
        self.io = io
        self.b = OnnxBuilder(opset)
        self.qdq = _QdqWriter(self.b)
        self.dynamic = batch_is_free(graph.nodes, graph.shapes)
        self.env: dict[str, str] = {}  # IR tensor -> float ONNX name its consumers read
        self.codes: dict[str, tuple[str, QParams]] = {}  # IR tensor -> (int ONNX name, qparams)
        self.float_ops: list[FloatOp] = []
        self.n_consumers = Counter(i for n in graph.nodes for i in n.inputs)

    # -- naming --------------------------------------------------------------------------------
    def _names(self, t: str) -> tuple[str, str, str]:
        """(raw float, int codes, dequantized) ONNX names for IR tensor ``t``."""
        b = self.b
        if t not in self.g.outputs:
            return b.fresh(t), b.fresh(f"{t}_quantized"), b.fresh(f"{t}_dequantized")
        if t not in self.act:
            return t, "", ""
        if self.io == "int":
            return b.fresh(f"{t}_float"), t, b.fresh(f"{t}_dequantized")
        return b.fresh(f"{t}_float"), b.fresh(f"{t}_quantized"), t

    def _value_info(self, t: str, elem: int) -> onnx.ValueInfoProto:
        shape: list[int | str] = list(self.g.shapes[t])
        if self.dynamic:
            # A tensor whose dim 0 is not the batch (windows folded into it) gets its own name.
            batch = self.g.inputs[0].shape[0]
            shape[0] = BATCH_DIM if shape[0] == batch else f"{t}_dim0"
        return helper.make_tensor_value_info(t, elem, shape)

    def _publish_codes(self, t: str, q: str, qp: QParams, dq: str) -> None:
        """Record the int codes of ``t`` and dequantize them for float consumers."""
        self.codes[t] = (q, qp)
        needs_float = self.n_consumers[t] > 0 or (t in self.g.outputs and self.io == "float")
        if needs_float:
            self.env[t] = self.qdq.dequantize(q, t, qp, dq)

    # -- parameters ----------------------------------------------------------------------------
    def _param_fn(self, node: Node) -> ParamFn:
        qw = self.qm.weights.get(node.name) if self.qm is not None else None

        def param(key: str, perm: tuple[int, ...] | None = None,
                  shape: tuple[int, ...] | None = None) -> str:
            codes, qp = None, None
            if qw is not None and key == "weight":
                codes, qp = qw.codes, qw.qparams
            elif qw is not None and key == "bias" and qw.bias_codes is not None:
                codes, qp = qw.bias_codes, qw.bias_qparams
            def layout(a: np.ndarray) -> np.ndarray:
                a = a.transpose(perm) if perm else a
                return a.reshape(shape) if shape else a

            if codes is None or qp is None:
                value = node.params[key].detach().cpu().numpy().astype(np.float32)
                return self.b.const(f"{node.name}.{key}", layout(value))
            dt = _weight_dtype(node, key, qp, self.b.opset)
            arr = np.asarray(codes)
            if np.any(arr < qp.spec.qmin) or np.any(arr > qp.spec.qmax):
                raise UserError(f"ONNX export: {key} codes of {node.describe()} leave "
                                f"[{qp.spec.qmin}, {qp.spec.qmax}]; re-run quantization")
            c = self.b.const(f"{node.name}.{key}_quantized", layout(arr.astype(dt)))
            tname = f"{node.name}.{key}"
            axis = qp.spec.axis
            if axis is not None and perm:
                axis = perm.index(axis)
            if axis is not None and shape:  # a 1-D per-channel param: its axis is the -1
                axis = list(shape).index(-1)
            return self.qdq.dequantize(c, tname, qp, self.b.fresh(f"{tname}_dequantized"),
                                       dtype=dt, axis=axis)

        return param

    # -- graph ---------------------------------------------------------------------------------
    def _inputs(self) -> list[onnx.ValueInfoProto]:
        infos = []
        for info in self.g.inputs:
            t = self.b.reserve(info.name)
            qp = self.act.get(t)
            if self.io == "int":
                dt = _act_dtype(t, qp, self.b.opset)
                infos.append(self._value_info(t, helper.np_dtype_to_tensor_dtype(dt)))
                self._publish_codes(t, t, qp, self.b.fresh(f"{t}_dequantized"))
                continue
            infos.append(self._value_info(t, TensorProto.FLOAT))
            self.env[t] = t
            if qp is not None:
                q = self.qdq.quantize(t, t, qp, self.b.fresh(f"{t}_quantized"))
                self._publish_codes(t, q, qp, self.b.fresh(f"{t}_dequantized"))
        return infos

    def _node(self, node: Node) -> None:
        t = node.output
        qp = self.act.get(t)
        raw, q_name, dq_name = self._names(t)
        ranks = [len(self.g.shapes[i]) for i in node.inputs]
        src = self.codes.get(node.inputs[0]) if node.op in SHAPE_OPS else None
        float_output = qp is None and t in self.g.outputs
        if src is not None and src[1].spec.axis is None and (qp is None or qp == src[1]) \
                and not float_output:
            # Values already on the input's grid: move the codes (ORT drops Q/DQ around these).
            q_out = q_name or raw
            emit_node(self.b, node, [src[0]], self._param_fn(node), q_out, ranks, self.dynamic)
            self._publish_codes(t, q_out, src[1], dq_name or self.b.fresh(f"{t}_dequantized"))
            return
        xs = [self.env[i] for i in node.inputs]
        self._record_float(node, qp)
        y = emit_node(self.b, node, xs, self._param_fn(node), raw, ranks, self.dynamic)
        if qp is None:
            self.env[t] = y
            return
        q = self.qdq.quantize(y, t, qp, q_name)
        self._publish_codes(t, q, qp, dq_name)

    def _record_float(self, node: Node, qp: QParams | None) -> None:
        floats = [i for i in node.inputs if i not in self.codes]
        if self.qm is None:
            reason = "float model"
        elif floats:
            reason = f"input '{floats[0]}' is not quantized"
        elif qp is None:
            reason = "output is not quantized"
        else:
            return
        self.float_ops.append(FloatOp(node.name, node.op, reason))

    def _output_info(self, t: str) -> onnx.ValueInfoProto:
        if self.io == "int":
            dt = _act_dtype(t, self.act[t], self.b.opset)
            return self._value_info(t, helper.np_dtype_to_tensor_dtype(dt))
        return self._value_info(t, TensorProto.FLOAT)

    def build(self) -> onnx.ModelProto:
        if self.io == "int":
            missing = [t.name for t in self.g.inputs if t.name not in self.act]
            missing += [t for t in self.g.outputs if t not in self.act]
            if missing:
                raise UserError(f"ONNX export with integer I/O: tensors {missing} are not "
                                "quantized in the QModel; quantize them or use io='float'")
            io_names = [t.name for t in self.g.inputs] + list(self.g.outputs)
            per_channel = [t for t in io_names if self.act[t].spec.per_channel]
            if per_channel:
                raise UserError(f"ONNX export with integer I/O: tensors {per_channel} are "
                                "quantized per channel; model inputs/outputs need one scale")
        input_names = {t.name for t in self.g.inputs}
        for t in self.g.outputs:
            if t not in input_names:
                self.b.reserve(t)
        inputs = self._inputs()
        for node in self.g.nodes:
            self._node(node)
        outputs = [self._output_info(t) for t in self.g.outputs]
        graph = helper.make_graph(self.b.nodes, "edgeres", inputs, outputs, self.b.initializers)
        opsets = [helper.make_opsetid("", self.b.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=PRODUCER,
                                  producer_version=_version())
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    def io_records(self) -> tuple[list[TensorIO], list[TensorIO]]:
        def rec(t: str) -> TensorIO:
            shape = tuple(-1 if (self.dynamic and i == 0) else int(s)
                          for i, s in enumerate(self.g.shapes[t]))
            layout = "NCHW" if len(shape) == 4 else "ND"
            qp = self.act.get(t)
            if qp is None or self.io == "float":
                return TensorIO(t, shape, "float32", layout)
            return TensorIO(t, shape, str(qp.spec.storage_dtype()), layout,
                            float(qp.scale), int(qp.zero_point))

        return [rec(t.name) for t in self.g.inputs], [rec(t) for t in self.g.outputs]


def _version() -> str:
    try:
        return metadata.version("edgeres")
    except metadata.PackageNotFoundError:  # a source checkout that is not installed
        return "0"


def _build(model: QModel | Graph, opset: int, io: str) -> tuple[onnx.ModelProto, _Exporter]:
    """The checked ModelProto and the exporter that knows its I/O and float islands."""
    if io not in ("float", "int"):
        raise UserError(f"ONNX export: io must be 'float' or 'int', got '{io}'")
    if not MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise UserError(f"ONNX export: opset {opset} is outside "
                        f"[{MIN_OPSET}, {onnx.defs.onnx_opset_version()}]")
    if isinstance(model, QModel):
        exporter = _Exporter(model.graph, model, opset, io)
    elif isinstance(model, Graph):
        if io == "int":
            raise UserError("ONNX export: a float Graph has no integer I/O; pass a QModel")
        exporter = _Exporter(model, None, opset, io)
    else:
        raise UserError(f"ONNX export needs a QModel or a Graph, got {type(model).__name__}")
    proto = exporter.build()
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:  # a bug in edgeres, not in the user's model
        raise RuntimeError(f"edgeres wrote an invalid ONNX model: {exc}") from exc
    return proto, exporter


def export_onnx(model: QModel | Graph, path: Path, opset: int = 21,
                io: Literal["float", "int"] = "float",
                uint8_weights: bool | None = None) -> ExportInfo:
    """Write ``model`` to ``path``: float ONNX for a Graph, QDQ ONNX for a QModel.

    ``io="int"`` leaves the input and output quantized (int8/uint8 tensors, for NPUs);
    their scales and zero points are in ``ExportInfo.inputs/outputs``. ``uint8_weights``
    stores int8 weight codes as uint8 + 128, the same values (:mod:`.onnx_uint8`: exact in
    ONNX Runtime on x86 CPUs without VNNI); ``None`` does what the target the QModel was
    planned for says (``weights.uint8_storage``, e.g. ``x86-cpu-onnx``). The same model
    always gives the same bytes.
    """
    path = Path(path)
    proto, exporter = _build(model, opset, io)
    if uint8_weights is None:
        uint8_weights = isinstance(model, QModel) and bool(model.meta.get("uint8_weight_storage"))
    if uint8_weights and weights_as_uint8(proto):
        onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString(deterministic=True)
    write_bytes_atomic(path, data)
    counts = Counter(n.op_type for n in proto.graph.node)
    inputs, outputs = exporter.io_records()
    return ExportInfo(
        path=path, io_dtype=inputs[0].dtype if inputs else "float32", ops=dict(sorted(
            counts.items())), size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        opset=opset, inputs=inputs, outputs=outputs, float_ops=list(exporter.float_ops),
    )
