"""The host side of ``targets/runners/bench_runner.py``: where it is, how to call it, what it says.

Local benchmarks of ONNX Runtime and LiteRT run that same script in a fresh subprocess of this
python, and device benchmarks run it with the board's python; both parse its JSON line here,
so host and device numbers come from one measurement code path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from edgeres.errors import UserError
from edgeres.harness.result import BenchResult, LatencyStats, check_budget
from edgeres.targets import Target, targets_dir

RUNNER_SCHEMA = "edgeres.bench_runner/1"
RunnerRuntime = Literal["litert", "onnxruntime"]
Kernels = Literal["xnnpack", "ref", "builtin"]

# The runner's (runtime, kernels) for each target runtime it can measure.
RUNNER_RUNTIMES: dict[str, tuple[RunnerRuntime, Kernels | None]] = {
    "onnxruntime": ("onnxruntime", None),
    "litert-xnnpack": ("litert", "xnnpack"),
    "litert-ref": ("litert", "ref"),
}


def runner_path() -> Path:
    """The runner script shipped in ``targets/runners/`` (``edgeres/_targets`` in a wheel)."""
    path = targets_dir() / "runners" / "bench_runner.py"
    if not path.is_file():
        raise UserError(f"the device runner {path} is missing: reinstall edgeres")
    return path


def runner_args(
    model: str,
    runtime: RunnerRuntime,
    kernels: Kernels | None,
    threads: tuple[int, ...],
    warmup: int,
    runs: int,
) -> list[str]:
    """Arguments after ``python bench_runner.py`` for a benchmark."""
    if not threads or min(threads) < 1:
        raise UserError(f"thread counts must be positive integers, got {threads}")
    if runs < 1 or warmup < 0:
        raise UserError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    args = [model, "--runtime", runtime, "--threads", ",".join(str(t) for t in threads),
            "--warmup", str(warmup), "--runs", str(runs)]
    if kernels is not None:
        args += ["--kernels", kernels]
    return args


def parse_runner_output(stdout: str, stderr: str, rc: int, where: str) -> dict[str, Any]:
    """The runner's JSON line; UserError with the runner's own message when it failed."""
    data = None
    for line in reversed(stdout.splitlines()):
        if line.startswith(f'{{"schema": "{RUNNER_SCHEMA}"'):
            data = json.loads(line)
            break
    if data is not None and "error" in data:
        raise UserError(f"benchmark runner on {where} failed: {data['error']}")
    if data is None or rc != 0:
        tail = " | ".join((stderr or stdout).strip().splitlines()[-4:]) or "no output"
        raise UserError(f"benchmark runner on {where} exited with code {rc}: {tail}")
    return data


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def result_from_runner(
    data: dict[str, Any],
    model: Path,
    target: Target,
    where: str,
    runtime: str,
    notes: tuple[str, ...] = (),
) -> BenchResult:
    """A BenchResult (budget checked against ``target``) from the runner's JSON.

    ``runtime`` names what ran, in the targets' vocabulary (``litert-xnnpack``, ...).
    """
    stats = tuple(
        LatencyStats(**{k: r[k] for k in LatencyStats.__dataclass_fields__ if k in r})
        for r in data["results"]
    )
    methods = sorted({r.get("rss_method", "") for r in data["results"]} - {""})
    best = min(stats, key=lambda s: s.median_ms or s.mean_ms)
    peak = max((s.peak_rss_delta_bytes or 0) for s in stats) or None
    budget = check_budget(
        target,
        model_bytes=data["model_bytes"],
        working_bytes=peak,
        working_what="peak memory (RSS delta)",
        latency_ms=best.median_ms,
        latency_what=f"latency (median, {best.threads} thread{'s' * (best.threads > 1)})",
    )
    return BenchResult(
        model=model.name,
        model_bytes=int(data["model_bytes"]),
        model_sha256=sha256_file(model),
        target=target.name,
        runtime=runtime,
        runtime_version=str(data.get("runtime_version", "")),
        where=where,
        platform=dict(data.get("platform", {})),
        latency=stats,
        memory_method=", ".join(methods),
        budget=budget,
        notes=notes,
    )
