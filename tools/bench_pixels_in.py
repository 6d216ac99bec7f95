"""Pixels in vs normalized in: same PTQ, same calibration draw, LiteRT files side by side.

    python tools/bench_pixels_in.py                                   # 3 models, 4 draws, defaults
    python tools/bench_pixels_in.py --models mobilenet_v2_fmnist --draws 8
    python tools/bench_pixels_in.py --models mobilenet_v2_100 --config "output_bias_correction=True"

``edgeres convert --input pixels`` folds the input normalization into the first convs and fixes
the input at scale 1 (one code per camera byte) instead of calibrating it. Two things can move:
the fold itself (exact but where the first conv pads: a pad is the mean pixel, not each
channel's mean), measured float against float; and the quantized model, whose input grid is
now the camera's own. For each calibration draw (ImageNet: 128 photo crops, seed k;
Fashion-MNIST: ``fmnist:train@512`` seed k, what ``edgeres convert`` uses) both inputs are
quantized with the default PTQConfig (or ``--config``), exported as .tflite and run in LiteRT
(XNNPACK); both are scored against the *original* float model, so the pixels rows pay for
the fold too. The paired difference per draw is what to read: the draws move either model by
more than the input does.
Writes a table, JSON and a plot of the paired differences per draw.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

sys.path.insert(0, str(Path(__file__).parent))
from bench_ptq import edgeres_litert  # noqa: E402
from benchlib import (  # noqa: E402
    EvalSet,
    agreement,
    batched_logits,
    fmnist_calib,
    fmnist_test,
    imagenet_ten_crop,
    parse_config,
    print_table,
    save_figure,
    sqnr,
    top1,
    write_record,
)

from edgeres.check import expected_agreement  # noqa: E402
from edgeres.config import PTQConfig  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.graph.ir import run_graph  # noqa: E402
from edgeres.graph.pixels import fold_input_normalization, pixel_range, to_pixels  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model, get_entry  # noqa: E402

IMAGENET_MODELS = ("mobilenet_v2_100",)


def data(
    model: str, seeds: range, calib_n: int | None
) -> tuple[EvalSet, slice, list[torch.Tensor]]:
    """(evaluation set, which of its inputs score top-1, one calibration set per seed),
    normalized, as convert loads them; ImageNet scores top-1 on the 20 centre crops."""
    if model in IMAGENET_MODELS:
        from edgeres.data.photos import photo_calibration_set
        from edgeres.data.preprocess import IMAGENET

        ten, _ = imagenet_ten_crop()
        calibs = [photo_calibration_set(IMAGENET, n=calib_n or 128, seed=s) for s in seeds]
        return ten, slice(0, None, 10), calibs
    return fmnist_test(model, 1000), slice(None), [fmnist_calib(model, calib_n or 512, s)
                                                   for s in seeds]


def rows_for(
    model: str, seeds: range, calib_n: int | None, base: PTQConfig
) -> tuple[list[dict], dict]:
    pre = get_entry(model).preprocess
    evalset, scored, calibs = data(model, seeds, calib_n)
    x, y = evalset.x, evalset.y[scored]
    graph = capture(create_model(model, pretrained=True), x[:1])
    folded = fold_input_normalization(graph, pre)
    xp = to_pixels(x, pre)
    ref = batched_logits(lambda b: run_graph(graph, b)[graph.outputs[0]], x, batch=50)
    fl = batched_logits(lambda b: run_graph(folded, b)[folded.outputs[0]], xp, batch=50)
    fold = {"model": model, "float agree": agreement(ref, fl), "float sqnr_db": sqnr(ref, fl),
            "inputs": len(x), "float top1": top1(ref[scored], y)}
    target = load_target("arm-cpu-tflite")
    rows = []
    for seed, calib in zip(track(seeds, description=model), calibs, strict=True):
        row: dict = {"model": model, "seed": seed}
        for name, g, c, xin, cfg in (
            ("normalized", graph, calib, x, base),
            ("pixels", folded, to_pixels(calib, pre), xp,
             replace(base, input_range=pixel_range(pre))),
        ):
            qm = quantize_graph(g, cfg, target, c)
            lg = edgeres_litert(qm, xin)
            qp = qm.act_qparams[g.inputs[0].name]
            row[f"{name} agree"] = agreement(ref, lg)
            row[f"{name} expected"] = expected_agreement(ref.numpy(), lg.numpy())[0]
            row[f"{name} sqnr_db"] = sqnr(ref, lg)
            row[f"{name} top1"] = top1(lg[scored], y)
            # one input code in camera steps (normalized: per channel, here their mean)
            step = float(np.asarray(qp.scale).reshape(-1)[0])
            row[f"{name} input step (px)"] = step if name == "pixels" else (
                step * 255 * statistics.mean(pre.std))
        row["d agree"] = row["pixels agree"] - row["normalized agree"]
        row["d expected"] = row["pixels expected"] - row["normalized expected"]
        row["d sqnr_db"] = row["pixels sqnr_db"] - row["normalized sqnr_db"]
        rows.append(row)
    return rows, fold


def summarize(rows: list[dict], fold: dict) -> dict:
    def mean_sd(key: str) -> str:
        v = [r[key] for r in rows]
        sd = statistics.stdev(v) if len(v) > 1 else 0.0
        return f"{statistics.mean(v):+.2f} +- {sd:.2f}"

    return {
        "model": fold["model"],
        "fold: float agree": f"{fold['float agree']:.1f}",
        "fold: float sqnr_db": f"{fold['float sqnr_db']:.1f}",
        "normalized agree": statistics.mean(r["normalized agree"] for r in rows),
        "pixels agree": statistics.mean(r["pixels agree"] for r in rows),
        "d agree": mean_sd("d agree"),
        "d expected": mean_sd("d expected"),
        "normalized sqnr_db": statistics.mean(r["normalized sqnr_db"] for r in rows),
        "pixels sqnr_db": statistics.mean(r["pixels sqnr_db"] for r in rows),
        "d sqnr_db": mean_sd("d sqnr_db"),
        "top1 (float)": f"{statistics.mean(r['normalized top1'] for r in rows):.2f} -> "
                        f"{statistics.mean(r['pixels top1'] for r in rows):.2f} "
                        f"({fold['float top1']:.2f})",
        "draws": len(rows),
    }


def plot(rows: list[dict], path: Path) -> None:
    """The paired differences per draw, one column per model: above zero, pixels in gains."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in zip(axes, ("d sqnr_db", "d agree"),
                              ("logits SQNR vs float, pixels - normalized (dB)",
                               "top-1 agreement, pixels - normalized (points)"), strict=True):
        for i, model in enumerate(models):
            v = [r[key] for r in rows if r["model"] == model]
            ax.scatter(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, alpha=0.8)
            ax.hlines(statistics.mean(v), i - 0.3, i + 0.3, color="black", linewidth=1.5)
        ax.axhline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(models)), models)
        ax.set_ylabel(label)
    fig.suptitle("int8 LiteRT files, one point per calibration draw (bar: mean)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+",
                    default=["mobilenet_v2_100", "mobilenet_v2_fmnist", "emo_1m_fmnist"])
    ap.add_argument("--draws", type=int, default=4, help="calibration seeds 0..N-1")
    ap.add_argument("--calib-n", type=int, default=None,
                    help="calibration inputs per draw (default: what edgeres convert uses)")
    ap.add_argument("--config", default="",
                    help="PTQConfig keywords for both inputs (\"\" = the defaults)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_pixels_in.json"))
    args = ap.parse_args(argv)
    if args.draws < 1:
        ap.error("--draws must be at least 1")
    try:  # fail before any work, in one line
        base = parse_config(args.config)
    except (SyntaxError, ValueError, TypeError, UserError) as exc:
        ap.error(f"--config: {exc} (want PTQConfig keywords, e.g. \"output_bias_correction=True\")")
    torch.set_num_threads(args.threads)
    rows, summary = [], []
    for model in args.models:
        mine, fold = rows_for(model, range(args.draws), args.calib_n, base)
        rows += mine
        summary.append(summarize(mine, fold))
    print_table(f"int8 LiteRT files, PTQ {args.config or 'defaults'}, one row per model and "
                "calibration draw", rows,
                [c for c in rows[0] if "expected" not in c and "step" not in c])
    print_table("Pixels in minus normalized in (mean +- sd over draws)", summary, list(summary[0]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.out.with_suffix(".png"))
    write_record(args.out, "bench_pixels_in.py", argv, rows=rows, summary=summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
