"""Show benchmark results: a rich table for the terminal, a latency-vs-threads PNG for reports.

The plot is written deterministically (no timestamp or software version in the PNG metadata)
and atomically, so a bundle that embeds it stays byte-stable when the numbers are.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from edgeres.harness.result import BenchResult
from edgeres.paths import write_bytes_atomic


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if x < 1000 else f"{x:.0f}"


def render_bench_table(results: Sequence[BenchResult], title: str = "Benchmark") -> Table:
    """One row per (result, thread count); Vela results show the estimate instead. Model and
    target columns only when the results differ in them (the title names a single one), so
    the figures stay readable in an 80-column terminal."""
    table = Table(title=title)
    named = len({(r.model, r.target) for r in results}) > 1
    columns = [("model", "left"), ("target", "left")] if named else []
    columns += [("runtime", "left"), ("where", "left"), ("threads", "right"),
                ("median ms", "right"), ("p90 ms", "right"), ("min ms", "right"),
                ("memory", "right"), ("size", "right"), ("budget", "left")]
    for col, justify in columns:
        table.add_column(col, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in results:
        verdict = ("pass" if r.passed else "[red]FAIL[/red]") if r.budget else "-"
        size = _bytes(r.model_bytes)
        first = (r.model, r.target) if named else ()
        if r.vela is not None:
            v = r.vela
            table.add_row(*first, r.runtime, r.where, "-", f"{_ms(v.inference_time_ms)} (est.)",
                          "-", "-", f"SRAM {_bytes(v.sram_bytes)}", size, verdict)
            continue
        for s in r.latency:
            memory = (f"arena {_bytes(r.arena_bytes)}" if r.arena_bytes is not None
                      else _bytes(s.peak_rss_delta_bytes))
            table.add_row(*first, r.runtime, r.where, str(s.threads), _ms(s.median_ms),
                          _ms(s.p90_ms), _ms(s.min_ms), memory, size, verdict)
    return table


def summary_lines(result: BenchResult) -> list[str]:
    """The budget verdicts, Vela's figures and the notes, one line each (for the CLI)."""
    lines = result.budget_lines() or [f"no memory or latency budget in target {result.target}"]
    if result.vela is not None:
        v = result.vela
        lines.insert(0, f"Vela {v.accelerator}: {v.cycles:,} cycles, "
                        f"{v.inference_time_ms:.3f} ms estimated, SRAM {v.sram_bytes:,} B, "
                        f"flash {v.flash_bytes:,} B, DRAM {v.dram_bytes:,} B, "
                        f"{v.npu_ops} NPU / {v.cpu_ops} CPU ops")
    return lines + [f"note: {n}" for n in result.notes]


def plot_latency_vs_threads(results: Sequence[BenchResult], path: Path) -> Path:
    """Median latency against thread count (bars from min to p90), one line per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    try:
        plotted = 0
        values: list[float] = []
        for r in results:
            pts = sorted((s for s in r.latency), key=lambda s: s.threads)
            if not pts:
                continue
            xs = [s.threads for s in pts]
            mid = [s.median_ms if s.median_ms is not None else s.mean_ms for s in pts]
            lo = [m - s.min_ms for m, s in zip(mid, pts, strict=True)]
            hi = [(s.p90_ms - m) if s.p90_ms is not None else 0.0
                  for m, s in zip(mid, pts, strict=True)]
            ax.errorbar(xs, mid, yerr=[lo, hi], marker="o", capsize=3,
                        label=f"{r.model} - {r.runtime} ({r.where})")
            plotted += 1
            values += [s.min_ms for s in pts if s.min_ms > 0]
        if not plotted:
            ax.text(0.5, 0.5, "no wall-clock latency (estimates only)", ha="center",
                    va="center", transform=ax.transAxes)
        ax.set_xlabel("threads")
        ax.set_ylabel("latency, median ms (bars: min to p90)")
        ax.set_title("Latency vs threads")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if plotted:
            ax.legend(fontsize="small")
        if values and max(values) / min(values) > 20:  # runtimes differ by orders of magnitude
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", metadata={"Software": None})
        write_bytes_atomic(path, png.getvalue())
    finally:
        plt.close(fig)
    return path
