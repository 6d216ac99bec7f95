"""What a benchmark measured, and whether it fits the target's budget.

One result type for every harness (local runtimes, a board over SSH, a phone over adb, Vela's
estimate), so the CLI, the report and BENCHMARKS.md render them the same way. Each number says
where it came from: ``where`` ("host", "ssh:root@board", "adb:SERIAL", "vela estimate") and
``notes`` (e.g. that a TFLite Micro latency is the host build's, not the microcontroller's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edgeres.targets import Target

SCHEMA = "edgeres.bench/1"


@dataclass(frozen=True)
class LatencyStats:
    """Warm-run latency at one thread count, in milliseconds.

    ``peak_rss_delta_bytes``: resident-memory high-water mark of a fresh process after loading
    and running the model, minus its resident set after importing the runtime (see
    ``targets/runners/bench_runner.py``). None where the harness cannot measure it.
    """

    threads: int
    runs: int
    warmup: int
    median_ms: float | None
    p90_ms: float | None
    min_ms: float
    mean_ms: float
    max_ms: float | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    peak_rss_bytes: int | None = None
    peak_rss_delta_bytes: int | None = None


@dataclass(frozen=True)
class VelaEstimate:
    """Vela's performance estimate for one Ethos-U configuration (no wall-clock latency)."""

    accelerator: str
    system_config: str
    memory_mode: str
    cycles: int
    inference_time_ms: float
    macs: int
    sram_bytes: int
    flash_bytes: int
    dram_bytes: int
    npu_ops: int
    cpu_ops: int
    cpu_op_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class BudgetCheck:
    """One comparison against the target profile: ``value <= limit``."""

    what: str  # "model size", "tensor arena", "latency", ...
    value: float
    limit: float
    unit: str  # "B" or "ms"
    source: str  # the profile key, e.g. "memory.arena_bytes"
    passed: bool

    def line(self) -> str:
        """E.g. ``PASS tensor arena 81,920 B <= 458,752 B (memory.arena_bytes)``."""
        verdict = "PASS" if self.passed else "FAIL"
        op = "<=" if self.passed else ">"
        return (f"{verdict} {self.what} {_fmt(self.value, self.unit)} {op} "
                f"{_fmt(self.limit, self.unit)} ({self.source})")


@dataclass(frozen=True)
class BenchResult:
    """A benchmark of one model file on one target's runtime.

    >>> r = bench_local(Path("model.tflite"), load_target("arm-cpu-tflite"))  # doctest: +SKIP
    >>> r.best.median_ms, r.passed, r.to_json()["schema"]                       # doctest: +SKIP
    (0.41, True, 'edgeres.bench/1')
    """

    model: str  # file name
    model_bytes: int
    model_sha256: str
    target: str
    runtime: str  # the target's runtime name, e.g. "litert-xnnpack"
    runtime_version: str
    where: str  # "host", "ssh:user@board", "adb:SERIAL", "vela estimate"
    platform: dict[str, Any] = field(default_factory=dict)
    latency: tuple[LatencyStats, ...] = ()
    memory_method: str = ""  # how peak memory was measured ("vmhwm", "getrusage", ...)
    arena_bytes: int | None = None  # TFLite Micro tensor arena
    vela: VelaEstimate | None = None
    budget: tuple[BudgetCheck, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def best(self) -> LatencyStats | None:
        """The thread count with the lowest median (mean where no median), if any latency."""
        if not self.latency:
            return None
        return min(self.latency, key=_center)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.budget)

    def budget_lines(self) -> list[str]:
        return [c.line() for c in self.budget]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency"] = [asdict(x) for x in self.latency]
        d["budget"] = [asdict(c) for c in self.budget]
        d["notes"] = list(self.notes)
        if self.vela is not None:
            d["vela"]["cpu_op_types"] = list(self.vela.cpu_op_types)
        return {"schema": SCHEMA, **d, "passed": self.passed}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchResult:
        d = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        d["latency"] = tuple(LatencyStats(**x) for x in d.get("latency", ()))
        d["budget"] = tuple(BudgetCheck(**x) for x in d.get("budget", ()))
        d["notes"] = tuple(d.get("notes", ()))
        if d.get("vela") is not None:
            v = dict(d["vela"])
            v["cpu_op_types"] = tuple(v.get("cpu_op_types", ()))
            d["vela"] = VelaEstimate(**v)
        return cls(**d)


def _center(s: LatencyStats) -> float:
    return s.median_ms if s.median_ms is not None else s.mean_ms


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        return f"{int(value):,} B"
    return f"{value:.3f} {unit}"


def check_budget(
    target: Target,
    *,
    model_bytes: int | None = None,
    working_bytes: int | None = None,
    working_what: str = "tensor arena",
    latency_ms: float | None = None,
    latency_what: str = "latency (median)",
) -> tuple[BudgetCheck, ...]:
    """Compare measured numbers to ``target.memory`` and ``target.latency_ms``.

    ``model_bytes`` (the model file, or Vela's flash use) goes against ``memory.model_bytes``,
    else ``memory.flash_bytes``; ``working_bytes`` (TFLite Micro arena, Vela SRAM, process
    memory) against ``memory.arena_bytes``, else ``memory.sram_bytes``; ``latency_ms`` against
    ``latency_ms``. A budget the profile does not state is not checked. Pass None for a
    number that says nothing about the device (e.g. the host latency of TFLite Micro).
    """
    mem = target.memory
    out: list[BudgetCheck] = []

    def add(what: str, value: float | None, unit: str, *limits: tuple[str, float | None]) -> None:
        if value is None:
            return
        for source, limit in limits:
            if limit is not None:
                out.append(BudgetCheck(what, value, limit, unit, source, value <= limit))
                return

    add("model size", model_bytes, "B", ("memory.model_bytes", mem.model_bytes),
        ("memory.flash_bytes", mem.flash_bytes))
    add(working_what, working_bytes, "B", ("memory.arena_bytes", mem.arena_bytes),
        ("memory.sram_bytes", mem.sram_bytes))
    add(latency_what, latency_ms, "ms", ("latency_ms", target.latency_ms))
    return tuple(out)
