"""ONNX Runtime runner: int8 weights run as uint8 where ORT's U8S8 kernels saturate.

Oracles: ONNX's ``ReferenceEvaluator`` (the rewrite must not change a single output value),
the QModel simulation (ORT on the rewritten file within 1 LSB, on any CPU), and the exact
integer result of a conv built to overflow VPMADDUBSW's int16 pairs (what this host's
kernels really do, checked against what :func:`u8s8_saturates_here` claims).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from qmodel_factory import GraphBuilder
from test_export_onnx import SHAPE, build_case, inverted_residual, lsb_error, sample

from edgeres.export.onnx import export_onnx
from edgeres.export.onnx_uint8 import has_int8_weights
from edgeres.runtime.onnxruntime import (
    fused_op_counts,
    run_onnx,
    saturation_note,
    u8s8_saturates_here,
    weights_as_uint8,
)

CASES = ["conv_relu6", "depthwise", "linear", "add_relu", "gelu", "inverted_residual"]


def saturating_conv(c_in: int = 32) -> onnx.ModelProto:
    """x (float, quantized uint8 at scale 1) -> 1x1 conv with int8 weights of 127 -> uint8 out.

    Fed 255 everywhere, each pair of products is 2 x 255 x 127 = 64770 > int16's 32767: the
    exact output is 255 x 127 x c_in, which a saturating kernel cannot reach.
    """
    w = np.full((1, c_in, 1, 1), 127, np.int8)
    scale_out = float(255 * 127 * c_in) / 250  # the exact result lands on code 250
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "one", "zp_u8"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "one", "zp_u8"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wd"], axis=0),
        helper.make_node("Conv", ["xd", "wd"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s_out", "zp_u8"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_out", "zp_u8"], ["out"]),
    ]
    inits = [
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.uint8), "zp_u8"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones(1, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(1, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(scale_out, np.float32), "s_out"),
    ]
    graph = helper.make_graph(
        nodes, "saturating_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines()
                 if line.startswith("flags")), set())


@pytest.mark.parametrize("name", CASES)
def test_uint8_weights_compute_the_same_values(name: str, tmp_path: Path) -> None:
    """The rewrite changes storage, not numbers: ONNX's reference evaluator gives identical
    outputs, no int8 weight is left, and ORT still fuses the same integer kernels."""
    path = tmp_path / f"{name}.onnx"
    export_onnx(build_case(name), path)
    model = onnx.load(str(path))
    assert weights_as_uint8(model) >= 1
    dq_inputs = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert not [i.name for i in model.graph.initializer
                if i.name in dq_inputs and i.data_type == TensorProto.INT8]
    onnx.checker.check_model(model)
    x = sample().numpy().astype(np.float32)
    before = ReferenceEvaluator(str(path)).run(None, {"x": x})[0]
    after = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_array_equal(after, before)
    assert integer_kernels(model.SerializeToString()) == integer_kernels(path)


def integer_kernels(model: Path | bytes) -> dict[str, int]:
    """ORT's fused integer ops (QLinearConv, QGemm, ...) in the graph it runs."""
    return {k: v for k, v in fused_op_counts(model).items()
            if k.startswith("QLinear") or k == "QGemm"}


@pytest.mark.parametrize("name", CASES)
def test_uint8_weights_match_the_simulation_on_any_cpu(name: str, tmp_path: Path) -> None:
    """Whatever this CPU's ORT kernels are, the uint8-weight file stays within 1 LSB."""
    qm = build_case(name)
    path = tmp_path / f"{name}.onnx"
    export_onnx(qm, path)
    model = onnx.load(str(path))
    weights_as_uint8(model)
    x = sample()
    got = run_onnx(model.SerializeToString(), [x.numpy().astype(np.float32)], exact=False)[0]
    assert lsb_error(qm, got, x).max() <= 1 + 1e-4


def test_the_detector_tells_the_truth_about_this_cpu() -> None:
    """A conv built to overflow int16 pairs: where the detector says 'no saturation' ORT's
    own kernels must give the exact result; on an AVX2 CPU without AVX-512 or VNNI (the
    kernel that uses VPMADDUBSW) they must not, and the exact path must."""
    model = saturating_conv()
    x = np.full((1, 32, 4, 4), 255.0, np.float32)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert np.allclose(want, 255 * 127 * 32, rtol=1e-6)
    raw = run_onnx(model.SerializeToString(), [x], exact=False)[0]
    exact = run_onnx(model.SerializeToString(), [x])[0]
    np.testing.assert_allclose(exact, want, rtol=1e-6)
    flags = cpu_flags()
    if not u8s8_saturates_here():
        assert saturation_note() is None
        np.testing.assert_allclose(raw, want, rtol=1e-6)
    elif "avx2" in flags and "avx512f" not in flags:
        assert saturation_note() and "VNNI" in saturation_note()
        assert np.abs(raw - want).max() > 0.1 * np.abs(want).max(), "expected saturation"
    else:
        pytest.skip("x86 CPU with unknown or AVX-512 (non-VNNI) kernels: saturation not "
                    "asserted either way; the exact path was checked above")


def test_missing_zero_point_becomes_128() -> None:
    """A weight DequantizeLinear without a zero point (int8 default 0) gets one of 128."""
    model = saturating_conv(4)
    dq = next(n for n in model.graph.node if n.input[0] == "w")
    del dq.input[2]
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    before = ReferenceEvaluator(model).run(None, {"x": x})[0]
    assert weights_as_uint8(model) == 1
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits[dq.input[2]].dtype == np.uint8 and (inits[dq.input[2]] == 128).all()
    assert "w" not in inits, "the int8 original is dropped"
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], before)
    assert torch.tensor(before).abs().sum() > 0


def test_one_weight_with_two_zero_points_gets_two_copies() -> None:
    """A weight read by two DequantizeLinears with different zero points keeps both values."""
    model = saturating_conv(4)
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.full(1, 3, np.int8), "w_zp3"))
    g.node.insert(3, helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zp3"], ["wd3"],
                                      axis=0))
    g.node.insert(4, helper.make_node("Conv", ["xd", "wd3"], ["y3"]))
    g.output.append(helper.make_tensor_value_info("y3", TensorProto.FLOAT, [1, 1, 4, 4]))
    x = np.arange(64, dtype=np.float32).reshape(1, 4, 4, 4)
    before = ReferenceEvaluator(model).run(None, {"x": x})
    assert weights_as_uint8(model) == 2
    onnx.checker.check_model(model)
    after = ReferenceEvaluator(model).run(None, {"x": x})
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(before[1]).sum() > 0, "the second conv computes something"


@pytest.mark.parametrize("name", ["conv_relu6", "inverted_residual"])
def test_export_with_uint8_weights_runs_exact_as_written(name: str, tmp_path: Path) -> None:
    """``export_onnx(uint8_weights=True)`` (the ``x86-cpu-onnx`` file): no int8 weight left,
    the reference evaluator gives the int8 file's outputs bit for bit, and ORT runs the file
    as written within 1 LSB of the simulation on any CPU, so no host note is due for it."""
    qm = build_case(name)
    s8, u8 = tmp_path / "s8.onnx", tmp_path / "u8.onnx"
    export_onnx(qm, s8)
    info = export_onnx(qm, u8, uint8_weights=True)
    assert has_int8_weights(onnx.load(str(s8))) and not has_int8_weights(onnx.load(str(u8)))
    assert info.size_bytes == u8.stat().st_size and info.ops == export_onnx(qm, s8).ops
    x = sample()
    xf = x.numpy().astype(np.float32)
    np.testing.assert_array_equal(ReferenceEvaluator(str(u8)).run(None, {"x": xf})[0],
                                  ReferenceEvaluator(str(s8)).run(None, {"x": xf})[0])
    got = run_onnx(u8, [xf], exact=False)[0]
    assert lsb_error(qm, got, x).max() <= 1 + 1e-4
    assert saturation_note(u8) is None
    assert (saturation_note(s8) is None) == (not u8s8_saturates_here())


@pytest.mark.parametrize(("target", "int8_left"), [("x86-cpu-onnx", False),
                                                   ("arm-cpu-onnx", True)])
def test_plain_export_follows_the_planned_target(target: str, int8_left: bool,
                                                 tmp_path: Path) -> None:
    """``edgeres.export(qmodel, "m.onnx")`` without options stores weights as the target the
    QModel was planned for says, so a Python-API user of ``x86-cpu-onnx`` gets the exact file."""
    import edgeres
    from edgeres.config import PTQConfig
    from edgeres.quant.ptq import quantize_graph
    from edgeres.targets import load_target

    gb = GraphBuilder(SHAPE)
    outputs, _ = inverted_residual(gb)
    graph = gb.build(outputs)
    calib = torch.cat([sample(seed) for seed in range(4)]).float()
    qm = quantize_graph(graph, PTQConfig(), load_target(target), calib)
    edgeres.export(qm, tmp_path / "m.onnx")
    assert has_int8_weights(onnx.load(str(tmp_path / "m.onnx"))) == int8_left
