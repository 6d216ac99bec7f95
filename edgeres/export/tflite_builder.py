"""A small writer for TFLite flatbuffers on LiteRT's own schema bindings (no TensorFlow).

Why our own writer: the exporter must write exactly the QModel's integers and scales, which
a converter would recompute. This module knows nothing about the IR: it collects tensors,
constant buffers (inlined, 16-byte aligned, as TFLite Micro and Vela expect) and operators,
and packs them deterministically.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as fb

SCHEMA_VERSION = 3
_PLACEHOLDER = fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES  # codes > 127 store 127
BUFFER_ALIGNMENT = 16

_OPS = {k: v for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
_OP_NAMES = {v: k for k, v in _OPS.items()}
_TYPES = {
    np.dtype(np.int8): fb.TensorType.INT8,
    np.dtype(np.uint8): fb.TensorType.UINT8,
    np.dtype(np.int16): fb.TensorType.INT16,
    np.dtype(np.int32): fb.TensorType.INT32,
    np.dtype(np.int64): fb.TensorType.INT64,
    np.dtype(np.float32): fb.TensorType.FLOAT32,
}
_TYPE_NAMES = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}


def op_name(code: int) -> str:
    """BuiltinOperator code -> name (``CONV_2D``)."""
    return _OP_NAMES.get(code, f"OP_{code}")


def type_name(code: int) -> str:
    return _TYPE_NAMES.get(code, f"TYPE_{code}")


class _AlignedBufferT(fb.BufferT):
    """A BufferT whose bytes start on a 16-byte boundary (int32 bias, SIMD loads, Vela)."""

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - flatbuffers API name
        data = None
        if self.data is not None:
            payload = self.data.tobytes()
            builder.StartVector(1, len(payload), BUFFER_ALIGNMENT)
            builder.head = builder.head - len(payload)
            builder.Bytes[builder.head : builder.head + len(payload)] = payload
            data = builder.EndVector()
        fb.BufferStart(builder)
        if data is not None:
            fb.BufferAddData(builder, data)
        return fb.BufferEnd(builder)


class Quant:
    """Quantization of one tensor as TFLite stores it: float32 scales, int64 zero points."""

    def __init__(self, scale: np.ndarray, zero_point: np.ndarray, axis: int = 0) -> None:
        self.scale = np.atleast_1d(np.asarray(scale, np.float32))
        self.zero_point = np.atleast_1d(np.asarray(zero_point, np.int64))
        self.axis = axis

    def to_fb(self) -> fb.QuantizationParametersT:
        q = fb.QuantizationParametersT()
        q.scale = [float(s) for s in self.scale]  # float32 -> float -> float32: exact
        q.zeroPoint = [int(z) for z in self.zero_point]
        q.quantizedDimension = self.axis
        return q

    def same(self, other: Quant | None) -> bool:
        return (
            other is not None
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )


class ModelBuilder:
    """Collects one subgraph's tensors and operators; :meth:`finish` returns the file bytes."""

    def __init__(self) -> None:
        self.buffers: list[fb.BufferT] = [_AlignedBufferT()]  # buffer 0: the empty sentinel
        self.tensors: list[fb.TensorT] = []
        self.operators: list[fb.OperatorT] = []
        self.opcodes: dict[int, int] = {}  # builtin code -> index, in order of first use
        self.tensor_names: set[str] = set()
        self.op_counts: dict[str, int] = {}
        self.versions: dict[int, int] = {}

    def _unique(self, name: str) -> str:
        base, i = name, 1
        while name in self.tensor_names:
            name = f"{base}_{i}"
            i += 1
        self.tensor_names.add(name)
        return name

    def tensor(
        self, name: str, shape: tuple[int, ...], dtype: np.dtype, quant: Quant | None = None
    ) -> int:
        """A runtime tensor (activation); returns its index."""
        t = fb.TensorT()
        t.name = self._unique(name)
        t.shape = [int(d) for d in shape]
        t.type = _TYPES[np.dtype(dtype)]
        t.buffer = 0
        t.quantization = quant.to_fb() if quant is not None else None
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, quant: Quant | None = None) -> int:
        """A constant tensor whose bytes are inlined in the file; returns its index."""
        arr = np.ascontiguousarray(data)
        buf = _AlignedBufferT()
        buf.data = np.frombuffer(arr.astype(arr.dtype.newbyteorder("<")).tobytes(), np.uint8)
        self.buffers.append(buf)
        idx = self.tensor(name, arr.shape, arr.dtype, quant)
        self.tensors[idx].buffer = len(self.buffers) - 1
        return idx

    def shape_of(self, idx: int) -> tuple[int, ...]:
        return tuple(self.tensors[idx].shape)

    def dtype_of(self, idx: int) -> int:
        return self.tensors[idx].type

    def op(
        self,
        name: str,
        inputs: list[int],
        outputs: list[int],
        options: object | None = None,
        version: int = 1,
    ) -> None:
        """Append an operator. ``options`` is a ``*OptionsT``; its union type is derived."""
        code = _OPS[name]
        if code not in self.opcodes:
            self.opcodes[code] = len(self.opcodes)
        self.versions[code] = max(self.versions.get(code, 1), version)
        o = fb.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = list(inputs)
        o.outputs = list(outputs)
        if options is not None:
            o.builtinOptionsType = getattr(fb.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.operators.append(o)
        self.op_counts[name] = self.op_counts.get(name, 0) + 1

    def finish(
        self,
        inputs: list[tuple[str, int]],
        outputs: list[tuple[str, int]],
        description: str = "edgeres",
    ) -> bytes:
        """Pack the model (one subgraph, one serving signature) into flatbuffer bytes.

        ``inputs``/``outputs`` are (signature name, tensor index) pairs.
        """
        codes = []
        for code in self.opcodes:  # dicts keep insertion order: deterministic
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, _PLACEHOLDER)
            oc.version = self.versions[code]
            codes.append(oc)
        sg = fb.SubGraphT()
        sg.tensors = self.tensors
        sg.inputs = [i for _, i in inputs]
        sg.outputs = [i for _, i in outputs]
        sg.operators = self.operators
        sg.name = "main"
        sig = fb.SignatureDefT()
        sig.signatureKey = "serving_default"
        sig.subgraphIndex = 0
        sig.inputs = [_tensor_map(n, i) for n, i in inputs]
        sig.outputs = [_tensor_map(n, i) for n, i in outputs]
        model = fb.ModelT()
        model.version = SCHEMA_VERSION
        model.operatorCodes = codes
        model.subgraphs = [sg]
        model.buffers = self.buffers
        model.description = description
        model.signatureDefs = [sig]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def _tensor_map(name: str, idx: int) -> fb.TensorMapT:
    m = fb.TensorMapT()
    m.name = name
    m.tensorIndex = idx
    return m
