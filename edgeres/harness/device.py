"""Benchmark (and run) a model on a real device: a Linux board over SSH, a phone over adb.

Linux boards: ``targets/runners/bench_runner.py`` and the model are copied to the device's
work directory and the runner runs there with the device's python (numpy plus
``ai_edge_litert`` or ``onnxruntime``); it prints one JSON line that becomes a
:class:`BenchResult`. This is the same script the local harness runs, so host and board
numbers are measured the same way.

Android phones: LiteRT's own ``benchmark_model`` binary (``/data/local/tmp/benchmark_model``
by default), whose "Inference timings in us" and statistics lines are parsed; phones have no
python to run the runner.

The device's python command comes from the ``python`` argument, else the environment
variable ``EDGERES_DEVICE_PYTHON``, else ``python3``.

>>> target = load_target("arm-cpu-tflite")                                # doctest: +SKIP
>>> with open_transport(target, host="root@192.168.1.20") as t:           # doctest: +SKIP
...     r = bench_on_device(Path("model.tflite"), target, t, threads=(1, 2, 4))
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeres.errors import UserError
from edgeres.harness.local import SUFFIXES, status
from edgeres.harness.result import BenchResult, LatencyStats, check_budget
from edgeres.harness.runner_io import (
    RUNNER_RUNTIMES,
    Kernels,
    RunnerRuntime,
    parse_runner_output,
    result_from_runner,
    runner_args,
    runner_path,
    sha256_file,
)
from edgeres.harness.transport import ADBTransport, SSHTransport, Transport
from edgeres.targets import Target

PYTHON_ENV = "EDGERES_DEVICE_PYTHON"
BENCHMARK_MODEL = "/data/local/tmp/benchmark_model"
DEFAULT_WORKDIR = {"ssh": "/tmp/edgeres", "adb": "/data/local/tmp/edgeres"}
BENCHMARK_MODEL_HELP = (
    "download the android_aarch64 benchmark_model binary matching your LiteRT version "
    "(https://ai.google.dev/edge/litert/models/measurement#native_benchmark_binary), then "
    "`adb push android_aarch64_benchmark_model {path}` and `adb shell chmod +x {path}`"
)


def device_python(python: str | None = None) -> list[str]:
    """The device's python command as argv: ``python``, $EDGERES_DEVICE_PYTHON or python3."""
    cmd = python or os.environ.get(PYTHON_ENV) or "python3"
    return shlex.split(cmd)


def open_transport(
    target: Target,
    *,
    host: str | None = None,
    port: int | None = None,
    key: Path | None = None,
    known_hosts: Path | None = None,
    options: tuple[str, ...] = (),
    config_file: Path | None = None,
    connect_timeout_s: float = 5.0,
) -> Transport:
    """The transport ``target.device`` describes; ``host`` (``[user@]host[:port]`` for SSH,
    the serial for adb) and ``port`` override the profile."""
    dev = target.device
    kind = dev.transport
    if kind == "local":
        raise UserError(
            f"target {target.name} runs on this host ([device] transport = \"local\"): "
            "benchmark it locally, or set transport = \"ssh\" (host = \"user@board\") or "
            "\"adb\" in a copy of the profile"
        )
    where = host if host is not None else dev.host
    workdir = dev.workdir or DEFAULT_WORKDIR[kind]
    if kind == "adb":
        return ADBTransport(where or None, workdir=workdir,
                            connect_timeout_s=max(connect_timeout_s, 5.0))
    user, name, parsed_port = _split_host(where, target.name)
    return SSHTransport(name, port=port or parsed_port or 22, user=user, key=key,
                        workdir=workdir, connect_timeout_s=connect_timeout_s,
                        known_hosts=known_hosts, options=options, config_file=config_file)


def _split_host(text: str, target: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (IPv6 as ``[addr]:port``)."""
    m = re.fullmatch(r"(?:([^@\s]+)@)?(\[[^\]]+\]|[^:@\s\[\]]+)(?::(\d+))?", text.strip())
    if not text.strip() or m is None:
        raise UserError(
            f"target {target}: SSH host '{text}' is not [user@]host[:port]; set [device] host "
            "in the profile or pass the host"
        )
    user, host, port = m.groups()
    return user, host.strip("[]"), int(port) if port else None


def _runner_runtime(
    target: Target, runtime: RunnerRuntime | None
) -> tuple[RunnerRuntime, Kernels | None, str]:
    """(runner runtime, kernels, the runtime name the result records)."""
    if runtime is None:
        if target.runtime not in RUNNER_RUNTIMES:
            raise UserError(
                f"target {target.name} uses {target.runtime}, which runs on a microcontroller "
                "or NPU toolchain, not on a Linux board's python: pass runtime='litert' or "
                "'onnxruntime' to time the model on the board's CPU"
            )
        rt, kernels = RUNNER_RUNTIMES[target.runtime]
        return rt, kernels, target.runtime
    if runtime not in ("litert", "onnxruntime"):
        raise UserError(f"device runtime must be litert or onnxruntime, got '{runtime}'")
    if runtime == "onnxruntime":
        return "onnxruntime", None, "onnxruntime"
    kernels = RUNNER_RUNTIMES.get(target.runtime, ("litert", "xnnpack"))[1] or "xnnpack"
    return "litert", kernels, f"litert-{kernels}"


def _upload(transport: Transport, model: Path) -> tuple[str, str]:
    """Copy the runner and the model to the work directory; their remote paths."""
    runner = posixpath.join(transport.workdir, "bench_runner.py")
    remote_model = posixpath.join(transport.workdir, model.name)
    transport.put(runner_path(), runner)
    transport.put(model, remote_model)
    return runner, remote_model


def _run_runner(transport: Transport, python: list[str], args: list[str],
                timeout_s: float) -> dict[str, Any]:
    rc, out, err = transport.run([*python, *args], timeout_s)
    if rc == 127 or (rc != 0 and "not found" in err and python[0] in err):
        raise UserError(
            f"{transport.name}: '{shlex.join(python)}' was not found on the device: install "
            "Python 3 with numpy and ai-edge-litert (or onnxruntime) there, or name the "
            f"device's python (the python argument / ${PYTHON_ENV})"
        )
    return parse_runner_output(out, err, rc, transport.name)


def bench_on_device(
    model: Path,
    target: Target,
    transport: Transport,
    runtime: RunnerRuntime | None = None,
    threads: tuple[int, ...] = (1, 2),
    runs: int = 50,
    warmup: int = 5,
    python: str | None = None,
    timeout_s: float = 600.0,
    progress: bool = False,
) -> BenchResult:
    """Benchmark ``model`` on the device behind ``transport``; budget checked against ``target``.

    ``runtime`` (``litert`` | ``onnxruntime``) defaults to the target's; LiteRT uses the
    target's kernels (XNNPACK, or reference for ``litert-ref``). Over adb this runs LiteRT's
    ``benchmark_model`` instead (see :func:`bench_android`). ``timeout_s`` bounds the run.
    """
    model = Path(model)
    if not model.is_file():
        raise UserError(f"model file '{model}' does not exist")
    if transport.kind == "adb":
        return bench_android(model, target, transport, threads=threads, runs=runs,
                             warmup=warmup, timeout_s=timeout_s, progress=progress)
    rt, kernels, name = _runner_runtime(target, runtime)
    want = ".onnx" if rt == "onnxruntime" else ".tflite"
    if model.suffix.lower() != want:
        raise UserError(f"'{model}' cannot run on {rt}: it needs a {want} file")
    with status(progress, f"benchmarking {model.name} on {transport.name}"):
        runner, remote_model = _upload(transport, model)
        args = [runner, *runner_args(remote_model, rt, kernels, tuple(threads), warmup, runs)]
        data = _run_runner(transport, device_python(python), args, timeout_s)
    return result_from_runner(data, model, target, transport.name, name)


def check_on_device(
    model: Path,
    inputs: list[np.ndarray],
    transport: Transport,
    runtime: RunnerRuntime | None = None,
    kernels: Kernels = "xnnpack",
    python: str | None = None,
    timeout_s: float = 300.0,
) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` (model dtype and layout, in input order) on the device and
    return its outputs in output order. Batch-1 models run once per sample.

    Needs the device's python (the runner's ``--check`` mode), over SSH or adb alike.
    """
    model = Path(model)
    if not model.is_file():
        raise UserError(f"model file '{model}' does not exist")
    rt = runtime or ("onnxruntime" if model.suffix.lower() == SUFFIXES["onnx"] else "litert")
    runner, remote_model = _upload(transport, model)
    remote_in = posixpath.join(transport.workdir, "check_inputs.npz")
    remote_out = posixpath.join(transport.workdir, "check_outputs.npz")
    with tempfile.TemporaryDirectory(prefix="edgeres-check-") as tmp:
        local_in, local_out = Path(tmp) / "inputs.npz", Path(tmp) / "outputs.npz"
        np.savez(local_in, **{f"input_{i}": np.asarray(x) for i, x in enumerate(inputs)})
        transport.put(local_in, remote_in)
        args = [runner, remote_model, "--runtime", rt, "--check", remote_in, "--out", remote_out]
        if rt == "litert":
            args += ["--kernels", kernels]
        data = _run_runner(transport, device_python(python), args, timeout_s)
        transport.get(remote_out, local_out)
        with np.load(local_out) as out:
            return [out[o["key"]] for o in data["outputs"]]


# -- Android: LiteRT's benchmark_model ----------------------------------------------------------

_TIMINGS_RE = re.compile(
    r"Inference timings in us: Init: ([\d.]+), First inference: ([\d.]+), "
    r"Warmup \(avg\): ([\d.eE+-]+), Inference \(avg\): ([\d.eE+-]+)"
)
_STATS_RE = re.compile(r"count=(\d+)(?: first=\d+)? curr=\d+(?: min=(\d+) max=(\d+) "
                       r"avg=([\d.eE+-]+) std=\d+(?: p5=\d+ median=(\d+) p95=(\d+))?)?")
_MEMORY_RE = re.compile(r"Memory footprint delta from the start of the tool \(MB\): "
                        r"init=([\d.]+) overall=([\d.]+)")


def parse_benchmark_model(text: str) -> dict[str, float | int | None]:
    """Numbers from ``benchmark_model``'s log: the "Inference timings in us" line, the
    statistics line of the timed runs (``count=... min=... avg=... [median=...]``) and the
    memory footprint line when present. Times in microseconds, memory in MB."""
    timings = _TIMINGS_RE.search(text)
    if timings is None:
        raise UserError("benchmark_model printed no 'Inference timings in us' line: "
                        + (" | ".join(text.strip().splitlines()[-4:]) or "no output"))
    # The last statistics line before the timings line is the timed (not warmup) run.
    stats = [m for m in _STATS_RE.finditer(text, 0, timings.start())]
    s = stats[-1] if stats else None
    mem = _MEMORY_RE.search(text)

    def num(i: int) -> float | None:
        return float(s.group(i)) if s is not None and s.group(i) is not None else None

    return {
        "init_us": float(timings.group(1)), "first_us": float(timings.group(2)),
        "warmup_avg_us": float(timings.group(3)), "avg_us": float(timings.group(4)),
        "count": int(s.group(1)) if s is not None else None,
        "min_us": num(2), "max_us": num(3), "median_us": num(5), "p95_us": num(6),
        "memory_overall_mb": float(mem.group(2)) if mem else None,
    }  # fmt: skip


def bench_android(
    model: Path,
    target: Target,
    transport: Transport,
    threads: tuple[int, ...] = (1, 2),
    runs: int = 50,
    warmup: int = 5,
    binary: str = BENCHMARK_MODEL,
    timeout_s: float = 600.0,
    progress: bool = False,
) -> BenchResult:
    """Benchmark a .tflite on an Android phone with LiteRT's ``benchmark_model`` (XNNPACK,
    unless the target names reference kernels, which the tool lacks: then LiteRT's builtin
    kernels). p90 is not reported by the tool (it gives p5/median/p95 at best)."""
    if model.suffix.lower() != ".tflite":
        raise UserError(f"'{model}': benchmark_model on Android runs .tflite models only")
    rc, _, _ = transport.run(["ls", binary], timeout_s=30)
    if rc != 0:
        raise UserError(f"{transport.name}: LiteRT's benchmark_model is not on the device at "
                        f"{binary}: {BENCHMARK_MODEL_HELP.format(path=binary)}")
    xnnpack = target.runtime != "litert-ref"
    stats, memory = [], []
    with status(progress, f"benchmarking {model.name} on {transport.name}"):
        remote = posixpath.join(transport.workdir, model.name)
        transport.put(model, remote)
        for t in threads:
            cmd = [binary, f"--graph={remote}", f"--num_threads={t}", f"--num_runs={runs}",
                   f"--warmup_runs={warmup}", "--min_secs=0", "--warmup_min_secs=0",
                   f"--use_xnnpack={'true' if xnnpack else 'false'}"]
            rc, out, err = transport.run(cmd, timeout_s)
            if rc != 0:
                tail = " | ".join((err or out).strip().splitlines()[-4:])
                raise UserError(f"{transport.name}: benchmark_model failed ({rc}): {tail}")
            p = parse_benchmark_model(out + "\n" + err)
            us = 1e-3
            stats.append(LatencyStats(
                threads=t, runs=int(p["count"] or runs), warmup=warmup,
                median_ms=p["median_us"] * us if p["median_us"] is not None else None,
                p90_ms=None, min_ms=(p["min_us"] or p["avg_us"]) * us, mean_ms=p["avg_us"] * us,
                max_ms=p["max_us"] * us if p["max_us"] is not None else None,
                load_ms=p["init_us"] * us, first_ms=p["first_us"] * us,
                peak_rss_delta_bytes=int(p["memory_overall_mb"] * 2**20)
                if p["memory_overall_mb"] is not None else None,
            ))  # fmt: skip
            memory.append(stats[-1].peak_rss_delta_bytes)
    best = min(stats, key=lambda s: s.median_ms or s.mean_ms)
    peak = max((m for m in memory if m is not None), default=None)
    kernels = "xnnpack" if xnnpack else "builtin"
    return BenchResult(
        model=model.name, model_bytes=model.stat().st_size, model_sha256=sha256_file(model),
        target=target.name, runtime=f"litert-{kernels}", runtime_version="benchmark_model",
        where=transport.name, platform={"system": "Android"}, latency=tuple(stats),
        memory_method="benchmark_model footprint delta" if peak is not None else "",
        budget=check_budget(target, model_bytes=model.stat().st_size, working_bytes=peak,
                            working_what="peak memory (footprint delta)",
                            latency_ms=best.median_ms or best.mean_ms,
                            latency_what=f"latency ({best.threads} threads)"),
        notes=("benchmark_model reports mean, min and (newer builds) median; no p90",),
    )  # fmt: skip
