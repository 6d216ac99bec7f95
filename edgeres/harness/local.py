"""Benchmark a model on this host, on the runtime its target names.

* ONNX Runtime and LiteRT (XNNPACK or reference kernels): ``targets/runners/bench_runner.py``
  runs in a fresh subprocess of this python, one per thread count. Why a subprocess: this
  process holds torch and everything else edgeres imported, so its resident memory says
  nothing about the model; a fresh process measured against its own post-import baseline
  does (see the runner's docstring), and the device harness runs the very same script.
* TFLite Micro: the tensor arena TFLM's allocator reports (the figure a microcontroller build
  must reserve), plus the latency of TFLM's host build, labelled as such: it is x86 reference
  kernels, not CMSIS-NN on a Cortex-M, so it ranks models but is not checked against
  ``latency_ms``.
* Vela: cycles, estimated inference time, SRAM and flash for the target's Ethos-U
  configuration. There is no NPU here, so there is no wall-clock latency.

Latency is the median / p90 / min of ``runs`` warm inferences after ``warmup`` untimed ones
(``time.perf_counter_ns`` around each invoke), on random inputs of each input's dtype and shape.

>>> r = bench_local(Path("model.tflite"), load_target("arm-cpu-tflite"), runs=20)  # doctest: +SKIP
>>> print("\\n".join(r.budget_lines()))                                          # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgeres.bundle import Bundle
from edgeres.errors import UserError
from edgeres.export.tflite import tflite_io_details
from edgeres.harness.result import BenchResult, LatencyStats, VelaEstimate, check_budget
from edgeres.harness.runner_io import (
    RUNNER_RUNTIMES,
    parse_runner_output,
    result_from_runner,
    runner_args,
    runner_path,
    sha256_file,
)
from edgeres.targets import RUNTIME_FORMATS, Target, load_target, target_names

SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite"}
TFLM_HOST_NOTE = (
    "latency is TFLite Micro's host build ({machine}, reference kernels), not the "
    "microcontroller's: compare models with it, do not read it as device latency"
)


def bench_local(
    model: Path,
    target: Target,
    threads: tuple[int, ...] = (1, 2),
    warmup: int = 5,
    runs: int = 50,
    progress: bool = False,
    timeout_s: float = 600.0,
) -> BenchResult:
    """Benchmark ``model`` on ``target.runtime`` here; the budget is checked against ``target``.

    ``threads`` applies to ONNX Runtime and LiteRT XNNPACK; reference kernels, TFLite Micro
    and Vela are single-threaded or not timed. ``timeout_s`` bounds each measurement.
    """
    model = _check_model(Path(model), target)
    threads = check_threads(tuple(dict.fromkeys(threads)))  # each count once, in given order
    with status(progress, f"benchmarking {model.name} on {target.runtime} ({target.name})"):
        if target.runtime in ("onnxruntime", "litert-xnnpack", "litert-ref"):
            return _bench_runner(model, target, threads, warmup, runs, timeout_s)
        if target.runtime == "tflm":
            return _bench_tflm(model, target, warmup, runs)
        return _bench_vela(model, target, timeout_s)


def max_threads() -> int:
    """The most threads a benchmark may ask for: 4 per CPU here. Far more is a typo, and the
    runtimes crash on it (LiteRT: a segfault at 100000) instead of saying so."""
    return 4 * (os.cpu_count() or 1)


def check_threads(threads: tuple[int, ...]) -> tuple[int, ...]:
    """``threads`` if every count is in 1..:func:`max_threads`, else a one-line UserError."""
    if not threads or not all(isinstance(t, int) and not isinstance(t, bool) for t in threads):
        raise UserError(f"--threads must be comma-separated whole numbers, got {threads}")
    limit = max_threads()
    for t in threads:
        if not 1 <= t <= limit:
            raise UserError(f"--threads {t} is out of range: use 1 to {limit} (4 x this "
                            f"machine's {os.cpu_count() or 1} CPUs)")
    return threads


def parse_threads(text: str) -> tuple[int, ...]:
    """``--threads 1,2,4`` as a checked tuple."""
    try:
        threads = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--threads must be comma-separated whole numbers, got '{text}'") from None
    return check_threads(threads)


def bundle_target(bundle: Bundle, override: str | None = None) -> Target:
    """The target to benchmark ``bundle`` for: ``override`` (a name or a .toml path), else the
    manifest's, which must then be a built-in profile: a custom profile's file is not in the
    bundle, so its name alone cannot be loaded."""
    if override:
        return load_target(override)
    name = bundle.manifest["target"]
    if name not in target_names():
        raise UserError(f"{bundle.root / 'manifest.json'}: target '{name}' is not a built-in "
                        "profile (a custom .toml?): pass its profile with --target PATH")
    return load_target(name)


def _check_model(model: Path, target: Target) -> Path:
    if not model.is_file():
        raise UserError(f"model file '{model}' does not exist")
    formats = RUNTIME_FORMATS[target.runtime]
    wanted = [SUFFIXES[f] for f in formats if f in SUFFIXES]
    if model.suffix.lower() not in wanted:
        raise UserError(
            f"'{model}' cannot run on {target.runtime} (target {target.name}): it needs a "
            f"{' or '.join(wanted)} file"
        )
    return model


@contextlib.contextmanager
def status(progress: bool, text: str) -> Iterator[None]:
    """A spinner with ``text`` on stderr while the block runs, when ``progress`` is on."""
    if not progress:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(text):
        yield


# -- ONNX Runtime and LiteRT: the runner script in a fresh process ----------------------------


def _bench_runner(
    model: Path, target: Target, threads: tuple[int, ...], warmup: int, runs: int,
    timeout_s: float,
) -> BenchResult:
    runtime, kernels = RUNNER_RUNTIMES[target.runtime]
    notes: list[str] = []
    if kernels == "ref" and tuple(threads) != (1,):
        threads = (1,)
        notes.append("reference kernels are single-threaded: measured at 1 thread only")
    results = []
    for t in threads:  # one process per thread count: each memory figure is its own
        cmd = [sys.executable, str(runner_path()),
               *runner_args(str(model), runtime, kernels, (t,), warmup, runs)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired as exc:
            raise UserError(
                f"benchmark of {model.name} on {target.runtime} ({t} threads) did not finish "
                f"within the {timeout_s:g} s timeout"
            ) from exc
        results.append(parse_runner_output(proc.stdout, proc.stderr, proc.returncode, "host"))
    data = dict(results[0], results=[r["results"][0] for r in results])
    if target.family == "npu":
        notes.append(f"{target.runtime} on this host's CPU stands in for the NPU: "
                     "its latency is not the NPU's")
    return result_from_runner(data, model, target, "host", target.runtime, tuple(notes))


# -- TFLite Micro: arena bytes, host-build latency --------------------------------------------


def random_inputs(specs: list[tuple[tuple[int, ...], str]], seed: int = 0) -> list[np.ndarray]:
    """Random arrays for (shape, dtype) pairs: integers over the dtype's full range, floats
    standard normal (the same rule as the device runner)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape, dtype in specs:
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            info = np.iinfo(dt)
            out.append(rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt))
        else:
            out.append(rng.standard_normal(shape).astype(dt))
    return out


def _bench_tflm(model: Path, target: Target, warmup: int, runs: int) -> BenchResult:
    from edgeres.runtime.tflm import DEFAULT_ARENA, run_tflm

    if runs < 1 or warmup < 0:
        raise UserError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    data = model.read_bytes()
    ins, _ = tflite_io_details(data)
    xs = random_inputs([(t.shape, t.dtype) for t in ins])
    arena = run_tflm(data, xs).arena_bytes  # also proves the model runs in TFLM
    if arena <= 0:
        raise UserError(f"TFLite Micro did not report the arena size of {model.name}")
    # Timing needs the interpreter itself; run_tflm already turned load errors into UserErrors.
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(data, arena_size=max(DEFAULT_ARENA, 2 * arena))
    for i, x in enumerate(xs):
        interp.set_input(x, i)
    for _ in range(warmup):
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        interp.invoke()
        times.append(time.perf_counter_ns() - t0)
    ms = np.asarray(times, dtype=np.float64) / 1e6
    stats = LatencyStats(
        threads=1, runs=runs, warmup=warmup, median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)), min_ms=float(ms.min()), mean_ms=float(ms.mean()),
        max_ms=float(ms.max()),
    )  # fmt: skip
    budget = check_budget(target, model_bytes=len(data), working_bytes=arena,
                          working_what="tensor arena")
    return BenchResult(
        model=model.name, model_bytes=len(data), model_sha256=sha256_file(model),
        target=target.name, runtime="tflm", runtime_version=_pkg_version("tflite-micro"),
        where="host", platform=_host_platform(), latency=(stats,),
        memory_method="tflm arena (RecordingMicroAllocator)", arena_bytes=arena, budget=budget,
        notes=(TFLM_HOST_NOTE.format(machine=platform.machine()),),
    )  # fmt: skip


def _pkg_version(name: str) -> str:
    """``"name version"`` of an installed distribution."""
    try:
        return f"{name} {version(name)}"
    except PackageNotFoundError:
        return f"{name} (version unknown)"


def _host_platform() -> dict[str, object]:
    return {"system": platform.system(), "machine": platform.machine(),
            "python": platform.python_version(), "cpus": os.cpu_count() or 0}


# -- Vela: the compiler's estimate -------------------------------------------------------------


def _bench_vela(model: Path, target: Target, timeout_s: float) -> BenchResult:
    from edgeres.runtime.vela import compile_vela

    cfg = target.vela
    assert cfg is not None  # Target guarantees a [vela] table for runtime "vela"
    r = compile_vela(model, cfg.accelerator_config, system_config=cfg.system_config,
                     memory_mode=cfg.memory_mode, config=cfg.config, timeout_s=timeout_s)
    est = VelaEstimate(
        accelerator=r.accelerator, system_config=r.system_config, memory_mode=r.memory_mode,
        cycles=r.cycles_total, inference_time_ms=r.inference_time_s * 1e3, macs=r.macs,
        sram_bytes=r.sram_bytes, flash_bytes=r.flash_bytes, dram_bytes=r.dram_bytes,
        npu_ops=r.npu_ops, cpu_ops=r.cpu_ops, cpu_op_types=tuple(r.cpu_op_types),
    )  # fmt: skip
    size = model.stat().st_size
    stored = r.flash_bytes or r.dram_bytes  # weights + command stream where the mode keeps them
    budget = check_budget(target, model_bytes=stored or size, working_bytes=r.sram_bytes,
                          working_what="SRAM", latency_ms=est.inference_time_ms,
                          latency_what="estimated inference time")
    notes = [f"Vela estimate for {r.accelerator} ({r.system_config}, {r.memory_mode}): "
             "no wall-clock latency without the NPU"]
    if r.cpu_op_types:
        expected = sorted(set(r.cpu_op_types) & set(cfg.npu_ops))
        notes.append(f"ops left on the CPU: {', '.join(r.cpu_op_types)}"
                     + (f" (the profile expects {', '.join(expected)} on the NPU)"
                        if expected else ""))
    return BenchResult(
        model=model.name, model_bytes=size, model_sha256=sha256_file(model), target=target.name,
        runtime="vela", runtime_version=_pkg_version("ethos-u-vela"),
        where="vela estimate",
        platform={"accelerator": r.accelerator}, memory_method="vela sram estimate", vela=est,
        budget=budget, notes=tuple(notes),
    )  # fmt: skip
