"""The TFLite runners (LiteRT, TFLite Micro, Vela) and the end-to-end MobileNetV2 export.

End to end, the reference kernels' double-rounding requantization differs from the
simulation by 1 LSB on ~0.3% of elements per layer, and those differences compound over 50
layers; so the whole network is checked layer by layer: every node's output in the
reference kernels is within 1 LSB of the node recomputed from the runtime's own inputs.
"""

from __future__ import annotations

import builtins
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from qmodel_factory import GraphBuilder, quantize_minmax, random_codes, simulate_codes

from edgeres.errors import UserError
from edgeres.export.tflite import build_tflite, export_tflite
from edgeres.graph.ir import OPS, run_graph
from edgeres.graph.rewrites import silu_as_sigmoid_mul
from edgeres.quant.qmodel import QModel
from edgeres.runtime.litert import io_quantization, run_tflite, run_tflite_all_tensors
from edgeres.runtime.tflm import run_tflm
from edgeres.runtime.vela import compile_vela


def to_file(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def to_ir(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if a.ndim == 4 else a


def inverted_residual(batch: int = 1) -> QModel:
    """A MobileNetV2 block with a classifier head: every op the zoo's MobileNetV2 uses."""
    gb = GraphBuilder((batch, 16, 12, 12))
    e = gb.conv(gb.x, 96, 1, act="relu6", gain=4)
    d = gb.conv(e, 96, 3, 2, groups=96, act="relu6", gain=2)
    p = gb.conv(d, 24, 1)
    e2 = gb.conv(p, 96, 1, act="relu6", gain=4)
    d2 = gb.conv(e2, 96, 3, 1, groups=96, act="relu6", gain=2)
    y = gb.binary("add", p, gb.conv(d2, 24, 1))
    pooled = gb.reshape(gb.mean(y, [2, 3]), (batch, 24))
    return quantize_minmax(gb.build([gb.linear(pooled, 10)]))


@pytest.fixture(scope="module")
def block() -> tuple[QModel, bytes]:
    qm = inverted_residual()
    return qm, build_tflite(qm)[0]


# -- LiteRT ----------------------------------------------------------------------------------
def test_run_tflite_splits_batches_for_batch1_models(block, tmp_path) -> None:
    qm, data = block
    codes = np.concatenate([to_file(random_codes(qm, seed=s)["x"]) for s in range(3)])
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    together = run_tflite(path, [codes], "ref")[0]
    assert together.shape == (3, 10)
    for i in range(3):
        np.testing.assert_array_equal(run_tflite(data, [codes[i : i + 1]], "ref")[0],
                                      together[i : i + 1])


def test_kernel_sets_agree_with_the_simulation(block) -> None:
    qm, data = block
    codes = random_codes(qm)
    want = simulate_codes(qm, codes)[qm.graph.outputs[0]]
    for kernels, tol in (("ref", 1), ("builtin", 1), ("xnnpack", 2)):
        got = run_tflite(data, [to_file(codes["x"])], kernels, threads=2)[0]
        assert np.abs(got.astype(int) - want).max() <= tol, kernels


def test_runner_errors_are_user_errors(block, tmp_path) -> None:
    _, data = block
    with pytest.raises(UserError, match="unknown LiteRT kernels"):
        run_tflite(data, [], "gpu")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="1 inputs, got 2"):
        run_tflite(data, [np.zeros((1, 12, 12, 16), np.int8)] * 2)
    with pytest.raises(UserError, match="does not fit"):
        run_tflite(data, [np.zeros((1, 16, 12, 12), np.int8)])
    with pytest.raises(UserError, match="does not exist"):
        run_tflite(tmp_path / "missing.tflite", [])
    with pytest.raises(UserError, match="cannot load"):
        run_tflite(b"not a model", [])


def test_io_quantization_reads_the_file(block) -> None:
    qm, data = block
    (inp,), (out,) = io_quantization(data)
    assert inp.dtype == "int8" and np.float32(inp.scale) == qm.act_qparams["x"].scale
    assert out.zero_point == int(qm.act_qparams[qm.graph.outputs[0]].zero_point)


# -- TFLite Micro ----------------------------------------------------------------------------
def test_tflm_matches_reference_and_reports_its_arena(block) -> None:
    qm, data = block
    x = np.concatenate([to_file(random_codes(qm, seed=s)["x"]) for s in range(2)])
    res = run_tflm(data, [x])
    ref = run_tflite(data, [x], "ref")[0]
    assert np.abs(res.outputs[0].astype(int) - ref).max() <= 1  # per-channel FC: see CASES
    biggest = 96 * 12 * 12  # the expanded int8 feature map must fit in the arena
    assert biggest < res.arena_bytes < 1 << 20
    with pytest.raises(UserError, match="TFLite Micro"):
        run_tflm(data, [x], arena_size=1024)


def test_missing_tflm_names_the_extra(block, monkeypatch) -> None:
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        if name.startswith("tflite_micro"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UserError, match=r"edgeres\[mcu\]"):
        run_tflm(block[1], [])


# -- Vela ------------------------------------------------------------------------------------
@pytest.mark.parametrize("accelerator", ["ethos-u55-128", "ethos-u65-256"])
def test_vela_puts_the_whole_block_on_the_npu(block, accelerator, tmp_path) -> None:
    _, data = block
    r = compile_vela(data, accelerator, out_dir=tmp_path)
    assert r.all_on_npu, (r.cpu_op_types, r.placements)
    assert r.npu_ops >= 7 and r.cpu_ops == 0
    assert {p[0] for p in r.placements} == {"NPU"}
    assert r.cycles_total > 0 and 0 < r.inference_time_s < 0.1
    assert r.sram_bytes >= 96 * 6 * 6
    assert (r.dram_bytes if r.weights_area == "DRAM" else r.flash_bytes) > 0
    assert r.optimized_model is not None and r.optimized_model.is_file()


def test_vela_reports_cpu_fallbacks() -> None:
    gb = GraphBuilder((1, 8, 6, 6))
    y = gb.layernorm(gb.conv(gb.x, 8, 1), 1)  # a float island: Ethos-U runs no float
    r = compile_vela(build_tflite(quantize_minmax(gb.build([y])))[0], "ethos-u55-128")
    assert not r.all_on_npu
    assert {"DEQUANTIZE", "RSQRT", "QUANTIZE"} <= set(r.cpu_op_types)
    with pytest.raises(UserError, match="unknown Ethos-U"):
        compile_vela(b"", "ethos-u99")


def test_silu_runs_on_the_npu_as_sigmoid_times_x() -> None:
    """A SiLU (EMO's activation) written as float on the CPU by default (Ethos-U has no int8
    SiLU and no GATHER for the lookup table) runs on the NPU once split into LOGISTIC and MUL,
    and the split graph computes the same function."""
    gb = GraphBuilder((1, 8, 6, 6))
    graph = gb.build([gb.act(gb.conv(gb.x, 8, 1), "silu")])
    split = silu_as_sigmoid_mul(graph)
    assert [n.op for n in split.nodes] == ["conv2d", "act", "mul"]
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    out = graph.outputs[0]
    assert torch.allclose(run_graph(split, x)[out], run_graph(graph, x)[out], atol=1e-12)
    whole = compile_vela(build_tflite(quantize_minmax(graph))[0], "ethos-u55-128")
    assert {"LOGISTIC", "DEQUANTIZE"} <= set(whole.cpu_op_types)  # float SiLU on the CPU
    r = compile_vela(build_tflite(quantize_minmax(split))[0], "ethos-u55-128")
    assert r.all_on_npu, r.cpu_op_types


def test_missing_vela_names_the_extra(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ethosu") else real(name, *a))
    with pytest.raises(UserError, match=r"edgeres\[mcu\]"):
        compile_vela(b"", "ethos-u55-128")


# -- end to end: the zoo's MobileNetV2 through the lead's PTQ -------------------------------
def layerwise_lsb(qm: QModel, tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """Per node: |runtime output - Q(op(DQ(runtime inputs)))| in LSB of the output scale."""
    params = qm.param_overrides()
    worst: dict[str, int] = {}
    for node in qm.graph.nodes:
        names = [*node.inputs, node.output]
        if not all(n in tensors and n in qm.act_qparams for n in names):
            continue
        xs = [qm.act_qparams[i].dequantize(torch.from_numpy(to_ir(tensors[i]).astype(np.int64)))
              for i in node.inputs]
        p = {k: v.to(torch.float64) for k, v in params.get(node.name, node.params).items()}
        want = qm.act_qparams[node.output].quantize(OPS[node.op](node, xs, p)).numpy()
        worst[node.name] = int(np.abs(to_ir(tensors[node.output]).astype(int) - want).max())
    return worst


@pytest.fixture(scope="module")
def mobilenet() -> QModel:
    ptq = pytest.importorskip("edgeres.quant.ptq")
    from edgeres.config import PTQConfig
    from edgeres.targets import load_target
    from edgeres.zoo import create_model

    torch.manual_seed(0)  # random init: shipped weights are not needed for exactness
    model = create_model("mobilenet_v2_fmnist")
    cfg = PTQConfig(weight_observer="minmax", act_observer="minmax")
    return ptq.quantize(model, cfg, load_target("ethos-u55-128"), torch.randn(8, 1, 28, 28))


def test_mobilenet_v2_every_layer_within_1_lsb(mobilenet, tmp_path: Path) -> None:
    qm = mobilenet
    info = export_tflite(qm, tmp_path / "mnv2.tflite")
    assert "TRANSPOSE" not in info.ops and info.float_ops == []
    assert info.ops["CONV_2D"] + info.ops["DEPTHWISE_CONV_2D"] == qm.graph.op_counts()["conv2d"]
    codes = qm.act_qparams["input"].quantize(torch.randn(1, 1, 28, 28, dtype=torch.float64))
    x = to_file(codes.numpy().astype(np.int8))
    tensors = run_tflite_all_tensors(info.path, [x], "ref")
    worst = layerwise_lsb(qm, tensors)
    assert len(worst) == len(qm.graph.nodes)
    assert max(worst.values()) <= 1, {k: v for k, v in worst.items() if v > 1}
    ref = run_tflite(info.path, [x], "ref")[0]
    micro = run_tflm(info.path, [x]).outputs[0]
    assert np.abs(micro.astype(int) - ref).max() <= 1
    sim = simulate_codes(qm, {"input": codes.numpy().astype(np.int8)})["logits"]
    assert np.abs(run_tflite(info.path, [x], "xnnpack")[0].astype(int) - sim).max() <= 2


def test_mobilenet_v2_runs_entirely_on_ethos_u(mobilenet) -> None:
    r = compile_vela(build_tflite(mobilenet)[0], "ethos-u55-128", config="Arm/vela.ini",
                     system_config="Ethos_U55_High_End_Embedded", memory_mode="Shared_Sram")
    assert r.all_on_npu, r.cpu_op_types
    assert r.macs > 0 and r.sram_bytes > 0 and r.inference_time_s > 0
