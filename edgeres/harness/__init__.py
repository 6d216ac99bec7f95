"""Benchmark harnesses: measure a model on its target's runtime, here or on a real device.

- :func:`bench_local`: ONNX Runtime / LiteRT (XNNPACK, reference kernels) in a fresh process,
  TFLite Micro (arena bytes, host-build latency), Vela (cycles, estimated time, SRAM, flash).
- :func:`bench_on_device`: the same runner on a Linux board over SSH, or LiteRT's
  ``benchmark_model`` on an Android phone over adb; :func:`check_on_device` runs a model on
  given inputs there.
- :class:`BenchResult`: one result type (JSON via ``to_json``), with budget checks against the
  target profile; :func:`render_bench_table` and :func:`plot_latency_vs_threads` show it.
"""

from edgeres.harness.device import (
    bench_android,
    bench_on_device,
    check_on_device,
    device_python,
    open_transport,
    parse_benchmark_model,
)
from edgeres.harness.local import bench_local
from edgeres.harness.render import plot_latency_vs_threads, render_bench_table, summary_lines
from edgeres.harness.result import (
    BenchResult,
    BudgetCheck,
    LatencyStats,
    VelaEstimate,
    check_budget,
)
from edgeres.harness.transport import ADBTransport, SSHTransport, Transport

__all__ = [
    "ADBTransport",
    "BenchResult",
    "BudgetCheck",
    "LatencyStats",
    "SSHTransport",
    "Transport",
    "VelaEstimate",
    "bench_android",
    "bench_local",
    "bench_on_device",
    "check_budget",
    "check_on_device",
    "device_python",
    "open_transport",
    "parse_benchmark_model",
    "plot_latency_vs_threads",
    "render_bench_table",
    "summary_lines",
]
