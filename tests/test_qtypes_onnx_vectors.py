"""edgeres.qtypes against ONNX's own QuantizeLinear / DequantizeLinear test vectors.

The vectors ship with the ``onnx`` package (the node test cases every ONNX backend must pass);
``QParams.quantize`` / ``dequantize`` must reproduce them bit for bit, because the exporters
write our scales and zero points into exactly those ops. ONNX has no int8 vector, so int8 is
checked against ``onnx.reference.ReferenceEvaluator`` and ONNX Runtime on values placed on
rounding ties and beyond saturation.
"""

from __future__ import annotations

import importlib
from functools import cache

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.case.test_case import TestCase
from onnx.reference import ReferenceEvaluator

from edgeres.qtypes import QParams, QSpec

INTEGER_TYPES = {  # numpy / ml_dtypes name -> (bits, signed)
    "uint8": (8, False), "int8": (8, True), "uint16": (16, False), "int16": (16, True),
    "uint4": (4, False), "int4": (4, True), "uint2": (2, False), "int2": (2, True),
}
VECTORS = [
    f"test_{op}{suffix}"
    for op in ("quantizelinear", "dequantizelinear")
    for suffix in ("", "_axis", "_uint16", "_int16", "_uint4", "_int4", "_uint2", "_int2")
]


@cache
def onnx_cases() -> dict[str, TestCase]:
    """Only the two Q/DQ case modules: importing them registers their cases (the full
    ``load_node_model_tests()`` builds all ~1,900 node cases and takes ~20 s)."""
    import onnx.backend.test.case.node as node_cases

    for module in ("quantizelinear", "dequantizelinear"):
        importlib.import_module(f"{node_cases.__name__}.{module}")
    return {c.name: c for c in node_cases._NodeTestCases}


def as_array(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def spec_of(dtype: np.dtype, axis: int | None) -> QSpec:
    bits, signed = INTEGER_TYPES[np.dtype(dtype).name]
    return QSpec(bits, signed, axis=axis)


def qparams_of(node: onnx.NodeProto, data_rank: int, scale, zero_point, dtype) -> QParams:
    scale = as_array(scale).astype(np.float32)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axis = attrs.get("axis", 1) % data_rank if scale.ndim == 1 else None
    zp = as_array(zero_point).astype(np.int64).reshape(scale.shape)
    return QParams(spec_of(dtype, axis), scale, zp)


@pytest.mark.parametrize("name", VECTORS)
def test_onnx_vector(name: str) -> None:
    case = onnx_cases()[name]
    node = case.model.graph.node[0]
    assert node.op_type in ("QuantizeLinear", "DequantizeLinear")
    for inputs, outputs in case.data_sets:
        x, scale, zero_point = inputs
        want = as_array(outputs[0])
        if node.op_type == "QuantizeLinear":
            x = as_array(x).astype(np.float32)
            qp = qparams_of(node, x.ndim, scale, zero_point, want.dtype)
            got = qp.quantize(torch.from_numpy(x)).numpy()
            np.testing.assert_array_equal(got, want.astype(np.int64))
        else:
            codes = as_array(x)
            qp = qparams_of(node, codes.ndim, scale, zero_point, codes.dtype)
            got = qp.dequantize(torch.from_numpy(codes.astype(np.int64))).numpy()
            # (q - zp) * scale is exact in float64, so rounding it once to float32 must give
            # the float32 product ONNX specifies.
            np.testing.assert_array_equal(got.astype(np.float32), want)


def _int8_model(scale: np.ndarray, zp: np.ndarray, shape: tuple[int, ...]) -> onnx.ModelProto:
    axis = {"axis": 1} if scale.ndim else {}
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **axis),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], **axis)],
        "qdq_int8",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("q", TensorProto.INT8, list(shape)),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))],
        [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("per_axis", [False, True], ids=["per_tensor", "per_axis"])
def test_int8_against_reference_and_onnxruntime(per_axis: bool) -> None:
    rng = np.random.default_rng(0)
    channels = 3
    scale = (np.array([0.05, 0.1, 0.25], np.float32) if per_axis else np.float32(0.1))
    zp = np.array([-3, 0, 7], np.int8) if per_axis else np.int8(-5)
    # Exact ties (k + 0.5) * scale, plain values, and values far past both ends.
    k = rng.integers(-140, 140, size=(2, channels, 40)).astype(np.float32)
    s_b = scale.reshape(1, -1, 1) if per_axis else scale
    x = np.concatenate([(k + 0.5) * s_b, rng.normal(0, 8, (2, channels, 40)) * s_b,
                        np.full((2, channels, 4), 1e4, np.float32) * np.array([1, -1, 1, -1])
                        .reshape(1, 1, 4)], axis=2).astype(np.float32)
    spec = QSpec(8, True, axis=1 if per_axis else None)
    qp = QParams(spec, np.asarray(scale), np.asarray(zp, np.int64))
    q = qp.quantize(torch.from_numpy(x)).numpy()
    y = qp.dequantize(torch.from_numpy(q)).numpy().astype(np.float32)
    assert {-128, 127} <= set(np.unique(q).tolist()), "saturation not exercised"

    model = _int8_model(np.asarray(scale), np.asarray(zp), x.shape)
    ref_q, ref_y = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_array_equal(q, ref_q.astype(np.int64))
    np.testing.assert_array_equal(y, ref_y)

    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ort_q, ort_y = sess.run(None, {"x": x})
    np.testing.assert_array_equal(q, ort_q.astype(np.int64))
    np.testing.assert_array_equal(y, ort_y)
