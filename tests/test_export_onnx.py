"""ONNX export: the QDQ file computes what ``QModel.simulate`` computes, on ORT's integer kernels.

Oracles: the simulation (float64 fake-quant), ONNX's own ``ReferenceEvaluator`` on the written
file, ONNX Runtime (its optimized graph shows which integer kernels it fused), and for the
float export ``run_graph`` and the torch module itself.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator
from qmodel_factory import GraphBuilder, calibration_inputs, quantize_minmax

from edgeres.errors import UserError
from edgeres.export.onnx import export_onnx
from edgeres.graph.ir import Graph, Node, TensorInfo, run_graph
from edgeres.qtypes import QParams, QSpec
from edgeres.quant.qmodel import QModel
from edgeres.runtime.onnxruntime import fused_op_counts, run_onnx

SHAPE = (2, 8, 9, 9)
EPS = 1e-4  # in LSB: float32 rounding of a dequantized value of up to 2^15 codes


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The small float64 convs here run ~100x faster on one thread than contended on many."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def to_uint8(qm: QModel) -> QModel:
    """The same grids as uint8 (zero point + 128): what the ONNX CPU/NPU targets use."""
    act = {
        t: QParams(QSpec(8, False, qp.spec.symmetric, qp.spec.axis), qp.scale, qp.zero_point + 128)
        for t, qp in qm.act_qparams.items()
    }
    return QModel(qm.graph, act, qm.weights)


def inverted_residual(gb: GraphBuilder) -> tuple[list[str], tuple[str, ...]]:
    e = gb.conv(gb.x, 32, k=1, act="relu6")
    d = gb.conv(e, 32, groups=32, act="relu6")
    p = gb.conv(d, 8, k=1)
    return [gb.binary("add", gb.x, p)], ()


def _attention(gb: GraphBuilder) -> tuple[list[str], tuple[str, ...]]:
    a = gb.reshape(gb.x, (-1, 8, 81))
    return [gb.matmul(a, gb.transpose(a, (0, 2, 1)))], ()


def _layernorm_channel(gb: GraphBuilder) -> tuple[list[str], tuple[str, ...]]:
    ln = gb.layernorm(gb.x, axis=1)
    return [gb.conv(ln, 8, k=1)], (ln,)


def _layernorm_last(gb: GraphBuilder) -> tuple[list[str], tuple[str, ...]]:
    t = gb.transpose(gb.reshape(gb.x, (-1, 8, 81)), (0, 2, 1))
    ln = gb.layernorm(t, axis=-1)
    return [gb.linear(ln, 8)], (ln,)


def _float_reshape_output(gb: GraphBuilder) -> tuple[list[str], tuple[str, ...]]:
    r = gb.reshape(gb.conv(gb.x, 8, k=1), (-1, 8, 81))
    return [r], (r,)


# name -> (graph body, integer kernels ORT must fuse with uint8 activations)
CASES: dict[str, tuple[Callable, dict[str, int]]] = {
    "conv_relu6": (lambda gb: ([gb.conv(gb.x, 16, act="relu6")], ()), {"QLinearConv": 1}),
    "conv_relu": (lambda gb: ([gb.conv(gb.x, 16, act="relu")], ()), {"QLinearConv": 1}),
    "conv_dilated_no_bias": (lambda gb: ([gb.conv(gb.x, 8, bias=False, dilation=2)], ()),
                             {"QLinearConv": 1}),
    "depthwise": (lambda gb: ([gb.conv(gb.x, 8, groups=8, act="relu6")], ()),
                  {"QLinearConv": 1}),
    "stride2_same_pad": (
        lambda gb: ([gb.conv(gb.x, 16, stride=2, padding=(0, 0, 1, 1), act="relu")], ()),
        {"QLinearConv": 1}),
    "linear": (lambda gb: ([gb.linear(gb.reshape(gb.mean(gb.x, [2, 3]), (-1, 8)), 10)], ()),
               {"QGemm": 1, "QLinearGlobalAveragePool": 1}),
    "linear_rank3": (lambda gb: ([gb.linear(gb.reshape(gb.x, (-1, 8, 81)), 5)], ()), {}),
    "add": (lambda gb: ([gb.binary("add", gb.x, gb.conv(gb.x, 8, k=1))], ()),
            {"QLinearAdd": 1, "QLinearConv": 1}),
    "add_relu": (lambda gb: ([gb.binary("add", gb.x, gb.conv(gb.x, 8, k=1), act="relu")], ()),
                 {"QLinearAdd": 1, "QLinearConv": 1}),
    "mean": (lambda gb: ([gb.mean(gb.x, [2, 3])], ()), {"QLinearGlobalAveragePool": 1}),
    "mean_nokeep": (lambda gb: ([gb.mean(gb.x, [2, 3], keepdims=False)], ()), {}),
    "reshape_transpose": (lambda gb: ([gb.transpose(gb.reshape(gb.x, (-1, 8, 81)),
                                                    (0, 2, 1))], ()), {}),
    "reshape_float_output": (_float_reshape_output, {"QLinearConv": 1}),
    "softmax": (lambda gb: ([gb.softmax(gb.reshape(gb.x, (-1, 8, 81)), -1)], ()),
                {"QLinearSoftmax": 1}),
    "matmul": (_attention, {"QLinearMatMul": 1}),
    "sigmoid": (lambda gb: ([gb.act(gb.x, "sigmoid")], ()), {"QLinearSigmoid": 1}),
    "gelu": (lambda gb: ([gb.act(gb.conv(gb.x, 8, k=1), "gelu")], ()), {"QLinearConv": 1}),
    "silu": (lambda gb: ([gb.act(gb.x, "silu")], ()), {}),
    "hardswish": (lambda gb: ([gb.act(gb.x, "hardswish")], ()), {}),
    "hardsigmoid_gate": (lambda gb: ([gb.mul(gb.x, gb.act(gb.mul(gb.x, scalar=3.0),
                                                          "hardsigmoid"))], ()), {}),
    "tanh": (lambda gb: ([gb.act(gb.x, "tanh")], ()), {}),
    "mul_sub": (lambda gb: ([gb.mul(gb.x, gb.binary("sub", gb.x, gb.mul(gb.x, scalar=0.5)))],
                            ()), {"QLinearMul": 1}),
    "layernorm_channel_float": (_layernorm_channel, {}),
    "layernorm_last_float": (_layernorm_last, {}),
    "inverted_residual": (inverted_residual, {"QLinearConv": 3, "QLinearAdd": 1}),
}


FLOAT_KERNELS = {  # what ORT runs instead when it cannot fuse
    "QLinearConv": ("Conv", "FusedConv"), "QGemm": ("Gemm",), "QLinearAdd": ("Add",),
    "QLinearGlobalAveragePool": ("GlobalAveragePool",), "QLinearSoftmax": ("Softmax",),
    "QLinearMatMul": ("MatMul",), "QLinearSigmoid": ("Sigmoid",),
}


def build_case(name: str, per_channel: bool = True, signed: bool = False) -> QModel:
    gb = GraphBuilder(SHAPE)
    outputs, float_tensors = CASES[name][0](gb)
    qm = quantize_minmax(gb.build(outputs), per_channel=per_channel,
                         float_tensors=float_tensors)
    return qm if signed else to_uint8(qm)


def sample(seed: int = 7, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def lsb_error(qm: QModel, got: np.ndarray, x: torch.Tensor) -> np.ndarray:
    """|got - simulation| in units of the output's scale (per element)."""
    out = qm.graph.outputs[0]
    sim = qm.simulate(x)[out].numpy()
    assert got.shape == sim.shape
    # A float output of a shape op keeps its input's grid.
    qp = qm.act_qparams.get(out) or qm.act_qparams[qm.graph.producer(out).inputs[0]]
    return np.abs(got.astype(np.float64) - sim) / float(qp.scale)


def reference_run(path: Path, x: torch.Tensor, name: str = "x") -> np.ndarray:
    return ReferenceEvaluator(str(path)).run(None, {name: x.numpy().astype(np.float32)})[0]


# --- QDQ numerics --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_qdq_matches_simulation(name: str, tmp_path: Path) -> None:
    qm = build_case(name)
    path = tmp_path / f"{name}.onnx"
    export_onnx(qm, path)
    x = sample()
    ort_err = lsb_error(qm, run_onnx(path, [x.numpy().astype(np.float32)])[0], x)
    assert ort_err.max() <= 1 + EPS, f"ORT differs from the simulation by {ort_err.max()} LSB"
    ref_err = lsb_error(qm, reference_run(path, x), x)
    assert ref_err.max() <= 1 + EPS
    assert (ref_err < 0.5).mean() >= 0.99, "the reference evaluator should agree almost exactly"


@pytest.mark.parametrize("name", [n for n, (_, fused) in CASES.items() if fused])
def test_ort_fuses_integer_kernels(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    export_onnx(build_case(name), path)
    counts = fused_op_counts(path)
    for op, n in CASES[name][1].items():
        assert counts.get(op, 0) == n, f"ORT ran {counts}, expected {n} x {op}"
        assert not set(FLOAT_KERNELS.get(op, ())) & set(counts), f"float kernel left: {counts}"


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("signed", [False, True], ids=["uint8", "int8"])
def test_depthwise_granularity_and_signedness(per_channel: bool, signed: bool,
                                              tmp_path: Path) -> None:
    qm = build_case("inverted_residual", per_channel=per_channel, signed=signed)
    path = tmp_path / "ir.onnx"
    export_onnx(qm, path)
    scales = [n for n in onnx.load(str(path)).graph.initializer
              if n.name.endswith("weight_scale")]
    assert all(len(s.dims) == (1 if per_channel else 0) for s in scales)
    x = sample(3)
    assert lsb_error(qm, run_onnx(path, [x.numpy().astype(np.float32)])[0], x).max() <= 1 + EPS
    dtype = onnx.TensorProto.INT8 if signed else onnx.TensorProto.UINT8
    q_types = {v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(
        onnx.load(str(path))).graph.value_info if v.name.endswith("_quantized")}
    assert dtype in q_types


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("name", ["gelu", "layernorm_channel_float", "layernorm_last_float"])
def test_older_opsets_decompose_exactly(name: str, opset: int, tmp_path: Path) -> None:
    qm = build_case(name)
    path = tmp_path / "m.onnx"
    info = export_onnx(qm, path, opset=opset)
    model = onnx.load(str(path))
    assert info.opset == opset == model.opset_import[0].version
    ops = {n.op_type for n in model.graph.node}
    assert ("Gelu" in ops) == (name == "gelu" and opset >= 20)
    assert ("LayerNormalization" in ops) == (name == "layernorm_last_float" and opset >= 17)
    x = sample(5)
    assert lsb_error(qm, run_onnx(path, [x.numpy().astype(np.float32)])[0], x).max() <= 1 + EPS
    if opset >= 19:  # onnx.reference implements QuantizeLinear/DequantizeLinear from v19
        assert lsb_error(qm, reference_run(path, x), x).max() <= 1 + EPS


def test_int16_activations(tmp_path: Path) -> None:
    qm = build_case("inverted_residual")
    spec16 = QSpec(16, True, False)
    act = {}
    for t, qp in qm.act_qparams.items():  # same range, 256x finer grid
        lo = float(qp.scale) * (qp.spec.qmin - int(qp.zero_point))
        scale = np.float32(float(qp.scale) * 255 / 65535)
        zp = int(np.clip(round(spec16.qmin - lo / float(scale)), spec16.qmin, spec16.qmax))
        act[t] = QParams(spec16, scale, np.int64(zp))
    qm16 = QModel(qm.graph, act, qm.weights)
    with pytest.raises(UserError, match="opset >= 21"):
        export_onnx(qm16, tmp_path / "old.onnx", opset=19)
    path = tmp_path / "m16.onnx"
    export_onnx(qm16, path)
    x = sample(9)
    # ORT computes these convs in float32: ~1e-7 relative error on values of up to 2^15 codes.
    assert lsb_error(qm16, run_onnx(path, [x.numpy().astype(np.float32)])[0], x).max() <= 1.01


def test_integer_io(tmp_path: Path) -> None:
    qm = build_case("inverted_residual")
    path = tmp_path / "int.onnx"
    info = export_onnx(qm, path, io="int")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.node[0].op_type == "DequantizeLinear"
    assert model.graph.node[-1].op_type == "QuantizeLinear"
    in_qp, out = qm.act_qparams["x"], qm.graph.outputs[0]
    out_qp = qm.act_qparams[out]
    assert (info.io_dtype, info.inputs[0].scale, info.inputs[0].zero_point) == (
        "uint8", float(in_qp.scale), int(in_qp.zero_point))
    assert info.outputs[0].zero_point == int(out_qp.zero_point)
    codes = in_qp.quantize(sample(11)).numpy().astype(np.uint8)
    got = run_onnx(path, [codes])[0]
    x = in_qp.dequantize(torch.from_numpy(codes.astype(np.int64)))
    want = out_qp.quantize(qm.simulate(x)[out]).numpy()
    assert got.dtype == np.uint8
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def test_dynamic_batch(tmp_path: Path) -> None:
    qm = build_case("linear")
    path = tmp_path / "m.onnx"
    info = export_onnx(qm, path)
    assert info.inputs[0].shape[0] == -1
    x = sample(4, (5, *SHAPE[1:]))
    assert lsb_error(qm, run_onnx(path, [x.numpy().astype(np.float32)])[0], x).max() <= 1 + EPS


def test_float_islands_are_reported(tmp_path: Path) -> None:
    info = export_onnx(build_case("layernorm_channel_float"), tmp_path / "m.onnx")
    assert [(f.op, f.reason) for f in info.float_ops] == [
        ("layernorm", "output is not quantized"),
        ("conv2d", f"input '{info.float_ops[0].node}' is not quantized"),
    ]
    assert export_onnx(build_case("conv_relu6"), tmp_path / "c.onnx").float_ops == []


def test_file_is_valid_and_deterministic(tmp_path: Path) -> None:
    qm = build_case("inverted_residual")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    info = export_onnx(qm, a)
    export_onnx(build_case("inverted_residual"), b)
    assert a.read_bytes() == b.read_bytes()
    model = onnx.load(str(a))
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "edgeres"
    assert info.size_bytes == a.stat().st_size
    assert info.ops == dict(Counter(n.op_type for n in model.graph.node))
    assert not list(tmp_path.glob(".*.tmp")), "temp files must not be left behind"
    assert a.stat().st_mode & 0o444 == 0o444
    weights = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in qm.graph.nodes if n.op == "conv2d")
    stored = onnx.numpy_helper.to_array(weights[f"{conv.name}.weight_quantized"])
    assert stored.dtype == np.int8
    np.testing.assert_array_equal(stored, qm.weights[conv.name].codes)
    bias = onnx.numpy_helper.to_array(weights[f"{conv.name}.bias_quantized"])
    assert bias.dtype == np.int32
    np.testing.assert_array_equal(bias, qm.weights[conv.name].bias_codes)


# --- errors --------------------------------------------------------------------------------


def test_unwritable_path_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(UserError, match="file/m.onnx"):
        export_onnx(build_case("conv_relu"), blocker / "m.onnx")


def test_unmapped_op_names_node_and_op(tmp_path: Path) -> None:
    gb = GraphBuilder(SHAPE)
    y = gb.conv(gb.x, 8, k=1)
    g = gb.build([y])
    g.nodes.append(Node("features.3.norm", "batchnorm", [y], "z", {},
                        {"scale": torch.ones(8), "shift": torch.zeros(8)}))
    g.outputs, g.shapes["z"] = ["z"], g.shapes[y]
    with pytest.raises(UserError, match=r"features\.3\.norm.*'batchnorm'"):
        export_onnx(g, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_bad_requests_are_user_errors(tmp_path: Path) -> None:
    qm = build_case("layernorm_channel_float")
    with pytest.raises(UserError, match="io must be"):
        export_onnx(qm, tmp_path / "m.onnx", io="int16")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="opset 9"):
        export_onnx(qm, tmp_path / "m.onnx", opset=9)
    with pytest.raises(UserError, match="float Graph"):
        export_onnx(qm.graph, tmp_path / "m.onnx", io="int")
    gb = GraphBuilder(SHAPE)
    ln = gb.layernorm(gb.x, axis=1)
    float_out = quantize_minmax(gb.build([ln]), float_tensors=(ln,))
    with pytest.raises(UserError, match=f"'{ln}'.*not quantized"):
        export_onnx(float_out, tmp_path / "m.onnx", io="int")
    four_bit = dict(qm.act_qparams)
    four_bit["x"] = QParams(QSpec(4, False), np.float32(0.5), np.int64(8))
    with pytest.raises(UserError, match="tensor 'x'"):
        export_onnx(QModel(qm.graph, four_bit, qm.weights), tmp_path / "m.onnx")


# --- float export --------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_float_export_matches_run_graph(name: str, tmp_path: Path) -> None:
    g = build_case(name).graph
    path = tmp_path / "f.onnx"
    info = export_onnx(g, path)
    assert info.io_dtype == "float32" and len(info.float_ops) == len(g.nodes)
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(info.ops)
    x = calibration_inputs(g, 1, seed=3)[0]["x"]
    want = run_graph(g, x)[g.outputs[0]].numpy()
    got = run_onnx(path, [x.numpy().astype(np.float32)])[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


# --- whole models --------------------------------------------------------------------------


# IR op -> the integer kernel ORT must run for every one of them in a whole model
WHOLE_MODEL_KERNELS = {"conv2d": "QLinearConv", "add": "QLinearAdd", "linear": "QGemm",
                       "matmul": "QLinearMatMul", "softmax": "QLinearSoftmax"}


@pytest.fixture(scope="module", params=["mobilenet_v2_fmnist", "emo_1m_fmnist"])
def zoo_model(request) -> tuple[torch.nn.Module, Graph, QModel]:
    """A zoo model at 28x28 (random init), captured, and min-max quantized to uint8."""
    from edgeres.graph.capture import capture
    from edgeres.zoo.registry import create_model

    torch.manual_seed(0)
    model = create_model(request.param, pretrained=False)
    graph = capture(model, torch.zeros(1, 1, 28, 28))
    calib = [{"input": sample(1, (8, 1, 28, 28))}]
    return model, graph, to_uint8(quantize_minmax(graph, calib))


def test_zoo_float_export_matches_torch(zoo_model, tmp_path: Path) -> None:
    model, graph, _ = zoo_model
    path = tmp_path / "float.onnx"
    info = export_onnx(graph, path)
    assert info.inputs[0].name == "input" and info.outputs[0].name == "logits"
    assert info.inputs[0].shape == (-1, 1, 28, 28)
    x = sample(2, (3, 1, 28, 28)).float()
    got = run_onnx(path, [x.numpy()])[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got, run_graph(graph, x)["logits"].numpy(), atol=1e-4, rtol=1e-4)


def test_zoo_qdq_runs_on_integer_kernels_and_matches(zoo_model, tmp_path: Path) -> None:
    """ORT runs every conv/add/gemm/matmul/softmax as an integer kernel. Its logits agree
    with the simulation to about one LSB: ORT requantizes with float32 multipliers, so rare
    rounding ties land one code apart inside the net and spread (exactness per node is
    checked against the reference evaluator below)."""
    _, graph, qm = zoo_model
    path = tmp_path / "model.onnx"
    assert export_onnx(qm, path).float_ops == []
    counts = fused_op_counts(path)
    for ir_op, n in graph.op_counts().items():
        if ir_op in WHOLE_MODEL_KERNELS:
            assert counts.get(WHOLE_MODEL_KERNELS[ir_op]) == n, (ir_op, counts)
    assert not {"Conv", "FusedConv", "Gemm"} & set(counts), counts
    x = sample(4, (16, 1, 28, 28))
    err = lsb_error(qm, run_onnx(path, [x.numpy().astype(np.float32)])[0], x)
    assert np.sqrt((err**2).mean()) <= 1.0 and (err <= 1 + EPS).mean() >= 0.8


def test_zoo_qdq_every_node_matches_simulation(zoo_model, tmp_path: Path) -> None:
    """Teacher-forced, node by node: feed each node the codes the reference evaluator computed
    for its inputs; the simulation of that node must give the file's output codes (ties
    aside). A wrong pad, scale, bias or layout anywhere shows up as a large miss here."""
    _, graph, qm = zoo_model
    path = tmp_path / "model.onnx"
    export_onnx(qm, path)
    model = onnx.load(str(path))
    produced = {o for n in model.graph.node for o in n.output}
    names = {t: f"{t}_quantized" for t in qm.act_qparams if f"{t}_quantized" in produced}
    x = sample(6, (2, 1, 28, 28))
    codes = dict(zip(names, ReferenceEvaluator(model).run(
        list(names.values()), {"input": x.numpy().astype(np.float32)}), strict=True))
    params = qm.param_overrides()
    checked, n_diff, n_total = 0, 0, 0
    for node in graph.nodes:
        if node.output not in codes or any(i not in codes for i in node.inputs):
            continue
        xs = {i: qm.act_qparams[i].dequantize(torch.from_numpy(codes[i].astype(np.int64)))
              for i in node.inputs}
        single = Graph([node], [TensorInfo(i, graph.shapes[i]) for i in dict.fromkeys(
            node.inputs)], [node.output], graph.shapes)
        y = run_graph(single, xs, {node.output: qm.act_qparams[node.output]}, params)
        want = qm.act_qparams[node.output].quantize(y[node.output]).numpy()
        diff = np.abs(codes[node.output].astype(np.int64) - want)
        assert diff.max() <= 1, f"{node.describe()}: {diff.max()} codes off"
        checked, n_diff, n_total = checked + 1, n_diff + int((diff > 0).sum()), n_total + diff.size
    assert checked >= 0.9 * len(graph.nodes)
    assert n_diff <= 1e-3 * n_total, f"{n_diff} of {n_total} codes differ: more than ties"


# --- runtime wrapper -----------------------------------------------------------------------


def test_runner_user_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.onnx"
    export_onnx(build_case("add"), path)
    with pytest.raises(UserError, match="takes 1 inputs"):
        run_onnx(path, [])
    with pytest.raises(UserError, match="missing.onnx"):
        run_onnx(tmp_path / "missing.onnx", [])
    x = sample().numpy().astype(np.float32)
    np.testing.assert_array_equal(run_onnx(path.read_bytes(), [x])[0], run_onnx(path, [x])[0])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match="pip install onnxruntime"):
        run_onnx(path, [x])
