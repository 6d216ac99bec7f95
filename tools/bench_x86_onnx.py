"""`arm-cpu-onnx` vs `x86-cpu-onnx` files on this host: accuracy as written, and latency.

    python tools/bench_x86_onnx.py                                  # all three models
    python tools/bench_x86_onnx.py --models mobilenet_v2_fmnist --runs 100

One PTQ plan per model (the defaults, as ``edgeres convert`` calibrates: ``fmnist:train@512``
or ``photos@128``), exported twice: int8 weights (the ``arm-cpu-onnx`` file) and the same
codes stored as uint8 + 128 (the ``x86-cpu-onnx`` file). Both run in ONNX Runtime exactly as
written, as an app or ``evalbundle.py`` runs them, beside the int8 file computed exactly
(uint8 weights, i.e. what an ARM or VNNI x86 CPU computes) and the float model. On an x86
CPU without VNNI the int8 file's U8S8 kernels saturate; the uint8 one's U8U8 kernels do not.
Latency: batch 1, the two files' sessions alternating run by run (idle threads sleep, not
spin), medians, at 1 and 2 threads; the ratio is the price of exactness on this CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

sys.path.insert(0, str(Path(__file__).parent))
from bench_ptq import graph_float  # noqa: E402
from benchlib import (  # noqa: E402
    agreement,
    batched_logits,
    fmnist_calib,
    fmnist_test,
    imagenet_ten_crop,
    machine,
    print_table,
    sqnr,
    top1,
    write_record,
)

from edgeres.config import PTQConfig  # noqa: E402
from edgeres.export.onnx import export_onnx  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.runtime.onnxruntime import run_onnx, u8s8_saturates_here  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402

MODELS = ("mobilenet_v2_fmnist", "emo_1m_fmnist", "mobilenet_v2_100")


def eval_and_calib(model: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, labels, calibration inputs) as ``edgeres convert`` checks and calibrates."""
    if model == "mobilenet_v2_100":
        from edgeres.data.photos import photo_calibration_set
        from edgeres.data.preprocess import IMAGENET

        ten, _ = imagenet_ten_crop()
        return ten.x, ten.y, photo_calibration_set(IMAGENET, n=128, seed=0)
    test = fmnist_test(model)
    return test.x, test.y, fmnist_calib(model)


def timing_session(path: Path, threads: int):  # noqa: ANN201 - an ORT InferenceSession
    """A session on the file as written whose idle threads sleep instead of spinning: with
    two sessions alternating on few cores, a spinning pool would slow the other one."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency_ms(files: dict[str, Path], x: np.ndarray, threads: int, runs: int) -> dict[str, float]:
    """Median batch-1 latency of each file as written, the sessions alternating run by run."""
    sessions = {k: timing_session(p, threads) for k, p in files.items()}
    feed = {k: {s.get_inputs()[0].name: x} for k, s in sessions.items()}
    times: dict[str, list[float]] = {k: [] for k in files}
    for i in range(runs + 5):
        for k, s in sessions.items():
            t0 = time.perf_counter_ns()
            s.run(None, feed[k])
            if i >= 5:  # warm-up runs are not timed
                times[k].append((time.perf_counter_ns() - t0) / 1e6)
    return {k: statistics.median(v) for k, v in times.items()}


def model_rows(model: str, runs: int, tmp: Path) -> list[dict]:
    x, y, calib = eval_and_calib(model)
    graph = capture(create_model(model, pretrained=True), x[:1])
    qm = quantize_graph(graph, PTQConfig(), load_target("arm-cpu-onnx"), calib)
    files = {"int8 weights (arm-cpu-onnx)": tmp / f"{model}_s8.onnx",
             "uint8 + 128 (x86-cpu-onnx)": tmp / f"{model}_u8.onnx"}
    for path, u8 in zip(files.values(), (False, True), strict=True):
        export_onnx(qm, path, uint8_weights=u8)
    ref = batched_logits(lambda b: graph_float(graph, b), x)

    def logits(path: Path, exact: bool) -> torch.Tensor:
        return batched_logits(lambda b: torch.from_numpy(
            run_onnx(path, [b.numpy().astype(np.float32)], exact=exact)[0]), x, batch=100)

    runs_of = {f"{k}, as written": logits(p, exact=False) for k, p in files.items()}
    runs_of["int8 weights, computed exactly"] = logits(files["int8 weights (arm-cpu-onnx)"], True)
    one = x[:1].numpy().astype(np.float32)
    lat = {t: latency_ms(files, one, t, runs) for t in (1, 2)}
    rows = [{"model": model, "file": "float", "top1": top1(ref, y), "agree": 100.0,
             "sqnr_db": float("inf")}]
    for name, lg in runs_of.items():
        row = {"model": model, "file": name, "top1": top1(lg, y), "agree": agreement(ref, lg),
               "sqnr_db": sqnr(ref, lg)}
        key = next((k for k in files if name.startswith(k)), None)
        if key and name.endswith("as written"):
            row["ms 1 thread"], row["ms 2 threads"] = lat[1][key], lat[2][key]
            base = next(iter(files))
            row["x int8 file (1 / 2 threads)"] = (
                f"{lat[1][key] / lat[1][base]:.2f} / {lat[2][key] / lat[2][base]:.2f}")
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--runs", type=int, default=200, help="timed runs per file and thread count")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for calibration")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_x86_onnx.json"))
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    torch.set_num_threads(args.threads)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="edgeres-x86-") as tmp:
        for model in track(args.models, description="models"):
            rows += model_rows(model, args.runs, Path(tmp))
    host = "x86 without VNNI (U8S8 saturates)" if u8s8_saturates_here() else \
        "ARM or VNNI x86 (U8S8 exact)"
    print_table(f"ONNX Runtime on this host: {host}", rows,
                ["model", "file", "top1", "agree", "sqnr_db", "ms 1 thread", "ms 2 threads",
                 "x int8 file (1 / 2 threads)"])
    write_record(args.out, "bench_x86_onnx.py", argv, machine={**machine(), "host": host},
                 rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
