"""Local benchmark harness: every target runtime on a tiny int8 model (runs kept small)."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from qmodel_factory import GraphBuilder, quantize_minmax

from edgeres.errors import UserError
from edgeres.export.onnx import export_onnx
from edgeres.export.tflite import export_tflite
from edgeres.harness import (
    BenchResult,
    bench_local,
    plot_latency_vs_threads,
    render_bench_table,
    summary_lines,
)
from edgeres.harness.runner_io import runner_path
from edgeres.runtime.litert import run_tflite
from edgeres.runtime.onnxruntime import run_onnx
from edgeres.runtime.tflm import run_tflm
from edgeres.targets import Memory, load_target

RUNS = 5


def tiny_models(out: Path) -> tuple[Path, Path]:
    """An inverted-residual-like int8 net (expand, depthwise, project, pool, classifier) as
    .tflite (int8 I/O) and QDQ .onnx (float I/O)."""
    gb = GraphBuilder((1, 8, 16, 16))
    e = gb.conv(gb.x, 32, 1, act="relu6", gain=4)
    d = gb.conv(e, 32, 3, 2, groups=32, act="relu6", gain=2)
    p = gb.conv(d, 16, 1)
    pooled = gb.reshape(gb.mean(p, [2, 3]), (1, 16))
    qm = quantize_minmax(gb.build([gb.linear(pooled, 10)]))
    tfl, onx = out / "tiny.tflite", out / "tiny.onnx"
    export_tflite(qm, tfl)
    export_onnx(qm, onx)
    return tfl, onx


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_models(tmp_path_factory.mktemp("harness"))


def assert_sane(r: BenchResult, model: Path, threads: tuple[int, ...]) -> None:
    assert r.model == model.name
    assert r.model_bytes == model.stat().st_size
    assert r.model_sha256 == hashlib.sha256(model.read_bytes()).hexdigest()
    assert tuple(s.threads for s in r.latency) == threads
    for s in r.latency:
        assert s.runs == RUNS
        assert 0 < s.min_ms <= s.median_ms <= s.p90_ms <= s.max_ms
        assert s.min_ms <= s.mean_ms <= s.max_ms
        assert s.median_ms < 1000  # a 100k-MAC model: anything near a second is broken
    assert BenchResult.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_onnxruntime(models) -> None:
    _, onx = models
    r = bench_local(onx, load_target("arm-cpu-onnx"), threads=(1,), runs=RUNS)
    assert_sane(r, onx, (1,))
    assert r.runtime == "onnxruntime" and r.where == "host"
    assert r.runtime_version.startswith("onnxruntime ")
    s = r.latency[0]
    # a fresh process: its peak covers at least the model it loaded, and is not the whole
    # host process (torch alone is hundreds of MiB)
    assert r.memory_method in ("vmhwm", "getrusage")
    assert 0 < s.peak_rss_delta_bytes < s.peak_rss_bytes < 512 << 20
    assert s.load_ms > 0 and s.first_ms > 0


def test_litert_xnnpack_threads(models) -> None:
    tfl, _ = models
    r = bench_local(tfl, load_target("arm-cpu-tflite"), threads=(1, 2), runs=RUNS)
    assert_sane(r, tfl, (1, 2))
    assert r.runtime == "litert-xnnpack"
    assert r.best in r.latency
    assert r.budget == ()  # the profile states no memory or latency budget
    assert summary_lines(r)[0] == "no memory or latency budget in target arm-cpu-tflite"


def test_reference_kernels_are_single_threaded_and_slower(models) -> None:
    tfl, _ = models
    ref = bench_local(tfl, load_target("npu-int8-per-tensor"), threads=(1, 2), runs=RUNS)
    assert_sane(ref, tfl, (1,))
    assert any("single-threaded" in n for n in ref.notes)
    assert any("stands in for the NPU" in n for n in ref.notes)
    xnn = bench_local(tfl, load_target("arm-cpu-tflite"), threads=(1,), runs=RUNS)
    # the kernels option really reaches the runtime: reference kernels are ~50x slower here
    assert ref.latency[0].median_ms > 3 * xnn.latency[0].median_ms


def test_latency_budget(models) -> None:
    tfl, _ = models
    target = load_target("arm-cpu-tflite")
    slow = bench_local(tfl, dataclasses.replace(target, latency_ms=1e4), threads=(1,), runs=RUNS)
    assert slow.passed and slow.budget_lines()[0].startswith("PASS latency (median, 1 thread)")
    fast = bench_local(tfl, dataclasses.replace(target, latency_ms=1e-6), threads=(1,), runs=RUNS)
    assert not fast.passed
    assert fast.budget_lines()[0].startswith("FAIL latency")
    assert "(latency_ms)" in fast.budget_lines()[0]


def test_tflm_arena_and_budget(models) -> None:
    tfl, _ = models
    target = load_target("cortex-m7")
    r = bench_local(tfl, target, runs=RUNS)
    assert_sane(r, tfl, (1,))
    x = np.zeros((1, 16, 16, 8), np.int8)
    assert r.arena_bytes == run_tflm(tfl, [x]).arena_bytes > 0  # TFLM's own allocator figure
    assert any("not the microcontroller's" in n for n in r.notes)
    lines = r.budget_lines()
    assert lines == [
        f"PASS model size {r.model_bytes:,} B <= 1,835,008 B (memory.model_bytes)",
        f"PASS tensor arena {r.arena_bytes:,} B <= 458,752 B (memory.arena_bytes)",
    ]
    tight = dataclasses.replace(target, memory=Memory(arena_bytes=1024, model_bytes=1 << 20))
    r2 = bench_local(tfl, tight, runs=RUNS)
    assert not r2.passed
    assert f"FAIL tensor arena {r2.arena_bytes:,} B > 1,024 B" in "\n".join(r2.budget_lines())


@pytest.mark.skipif(importlib.util.find_spec("ethosu") is None, reason="ethos-u-vela missing")
def test_vela_estimate(models) -> None:
    tfl, _ = models
    r = bench_local(tfl, load_target("ethos-u55-128"))
    v = r.vela
    assert v is not None and r.latency == () and r.where == "vela estimate"
    assert v.cycles > 0 and v.sram_bytes > 0 and v.flash_bytes > 0 and v.macs > 0
    assert v.npu_ops > 0 and v.cpu_ops == 0 and v.cpu_op_types == ()
    # Ethos_U55_High_End_Embedded clocks the NPU at 500 MHz: time = cycles / clock
    assert v.inference_time_ms == pytest.approx(v.cycles / 500e6 * 1e3, rel=1e-3)
    assert BenchResult.from_json(r.to_json()) == r
    assert summary_lines(r)[0].startswith(f"Vela ethos-u55-128: {v.cycles:,} cycles")


def test_bad_model_files(models, tmp_path) -> None:
    tfl, onx = models
    with pytest.raises(UserError, match="does not exist"):
        bench_local(tmp_path / "missing.tflite", load_target("arm-cpu-tflite"))
    with pytest.raises(UserError, match="needs a .tflite file"):
        bench_local(onx, load_target("arm-cpu-tflite"))
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer")
    with pytest.raises(UserError, match="benchmark runner on host failed: LiteRT"):
        bench_local(broken, load_target("arm-cpu-tflite"), threads=(1,), runs=1)


def test_runner_check_mode_matches_runtimes(models, tmp_path) -> None:
    """``--check`` (what `edgeres check --device` uses) gives the runtimes' own outputs,
    running a batch-1 model once per sample."""
    tfl, onx = models
    rng = np.random.default_rng(3)
    xq = rng.integers(-128, 127, size=(3, 16, 16, 8), dtype=np.int8)
    xf = rng.standard_normal((3, 8, 16, 16)).astype(np.float32)
    for model, x, expected in [
        (tfl, xq, run_tflite(tfl, [xq], kernels="ref")[0]),
        # the file as it is (exact=False): the runner runs it on this host's own kernels
        (onx, xf, np.concatenate([run_onnx(onx, [x[None]], exact=False)[0] for x in xf])),
    ]:
        inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
        np.savez(inp, input_0=x)
        proc = subprocess.run(
            [sys.executable, str(runner_path()), str(model), "--check", str(inp), "--out",
             str(out), "--kernels", "ref"], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        assert info["samples"] == 3 and info["outputs"][0]["shape"] == list(expected.shape)
        with np.load(out) as got:
            np.testing.assert_array_equal(got["output_0"], expected)
    np.savez(inp, input_0=xq.astype(np.float32))  # not quantized: refused, not cast
    proc = subprocess.run([sys.executable, str(runner_path()), str(tfl), "--check", str(inp),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "input x must be int8, got float32" in json.loads(proc.stdout)["error"]


def test_table_and_plot(models, tmp_path) -> None:
    tfl, onx = models
    results = [
        bench_local(tfl, load_target("arm-cpu-tflite"), threads=(1, 2), runs=RUNS),
        bench_local(onx, load_target("arm-cpu-onnx"), threads=(1, 2), runs=RUNS),
        bench_local(tfl, load_target("cortex-m7"), runs=RUNS),
    ]
    table = render_bench_table(results)
    assert table.row_count == 5
    assert [c.header for c in table.columns][:2] == ["model", "target"]  # they differ here
    single = render_bench_table(results[:1], title="one model on one target")
    assert "target" not in [c.header for c in single.columns] and single.row_count == 2
    a = plot_latency_vs_threads(results, tmp_path / "plots" / "latency.png")
    data = a.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"matplotlib" not in data and b"Software" not in data  # no version stamp
    b = plot_latency_vs_threads(results, tmp_path / "again.png")
    assert b.read_bytes() == data  # deterministic for the same numbers
    assert not list(tmp_path.glob("**/*.tmp"))
