"""Per-target table (issue 7): a bundle for each model on every target, in one run.

    python tools/bench_targets.py                       # both models, every target
    python tools/bench_targets.py --models mobilenet_v2_fmnist --targets arm-cpu-tflite

Each row is `edgeres convert` with the target's defaults: accuracy against the float model on
the model's evaluation set (in the runtime that checks that target on this host), model size,
latency (LiteRT/ORT on this CPU; TFLM host build; Vela's cycle estimate) and memory (process
peak, TFLM arena or Vela SRAM). Bundles go to runs/bundles/<model>-<target>.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import console, print_table, write_record  # noqa: E402

from edgeres.convert import ConvertOptions, convert  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.targets import target_names  # noqa: E402

EVAL = {
    "mobilenet_v2_fmnist": "fmnist:test",
    "mobilenet_v2_100": "imagenet-10crop",  # what edgeres convert checks it on by default
    "emo_1m_fmnist": "fmnist:test",
}
CALIB = {
    "mobilenet_v2_fmnist": "fmnist:train@512",
    "mobilenet_v2_100": "photos@128",
    "emo_1m_fmnist": "fmnist:train@512",
}


def row_for(model: str, target: str, out_root: Path, limit: int | None) -> dict:
    spec = EVAL[model] + (f"@{limit}" if limit else "")
    t0 = time.perf_counter()
    res = convert(
        ConvertOptions(
            model,
            target,
            calib=CALIB[model],
            eval=spec,
            out=out_root / f"{model}-{target}",
            threads=(1, 2),
        ),
        progress=False,
    )
    m, b = res.manifest, res.bench or {}
    row = {
        "model": model,
        "target": target,
        "eval": spec,
        "float_top1": m["metrics"].get("float_top1"),
        "quant_top1": m["metrics"].get("quant_top1"),
        "agree": m["metrics"]["top1_agreement"],
        "expected": m["metrics"].get("expected_agreement"),
        "sqnr_db": m["metrics"].get("sqnr_db"),
        "centre_top1": m["metrics"].get("quant_top1_centre"),  # ten-crop sets: the 20 centres
        "float_centre_top1": m["metrics"].get("float_top1_centre"),
        "size_kb": m["size_bytes"] / 1024,
        "convert_s": round(time.perf_counter() - t0, 1),
        "runtime": b.get("runtime"),
    }
    lat = {x["threads"]: x for x in b.get("latency", [])}
    if 1 in lat:
        row["lat1_ms"] = lat[1]["median_ms"]
    if 2 in lat:
        row["lat2_ms"] = lat[2]["median_ms"]
    if b.get("vela"):
        row["lat1_ms"] = b["vela"]["inference_time_ms"]
        row["memory"] = f"SRAM {b['vela']['sram_bytes'] / 1024:.0f} KiB (Vela)"
        row["npu_ops"] = f"{b['vela']['npu_ops']} NPU / {b['vela']['cpu_ops']} CPU"
    elif b.get("arena_bytes"):
        row["memory"] = f"arena {b['arena_bytes'] / 1024:.0f} KiB (TFLM)"
    elif 1 in lat and lat[1].get("peak_rss_delta_bytes"):
        row["memory"] = f"peak +{lat[1]['peak_rss_delta_bytes'] / 2**20:.1f} MiB"
    row["budget"] = "; ".join(
        ("PASS " if c["passed"] else "FAIL ") + c["what"] for c in b.get("budget", [])
    )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=["mobilenet_v2_fmnist", "mobilenet_v2_100"])
    ap.add_argument("--targets", nargs="*", default=None)
    ap.add_argument("--limit", type=int, default=None, help="evaluation samples per model")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_targets.json"))
    args = ap.parse_args()
    rows = []
    for model in args.models:
        for target in args.targets or target_names():
            console.print(f"[bold]{model} -> {target}")
            try:
                rows.append(row_for(model, target, Path("runs/bundles"), args.limit))
            except UserError as exc:  # a target that cannot take the model is a finding
                rows.append({"model": model, "target": target, "error": str(exc)})
    cols = [
        "model",
        "target",
        "float_top1",
        "quant_top1",
        "agree",
        "size_kb",
        "lat1_ms",
        "lat2_ms",
        "memory",
        "budget",
        "error",
    ]
    print_table("edgeres bundles per target", rows, cols)
    write_record(args.out, "bench_targets.py", None, rows=rows)


if __name__ == "__main__":
    main()
