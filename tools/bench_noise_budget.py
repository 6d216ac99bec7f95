"""Where MobileNetV2-1.0's int8 error comes from: a leave-one-in activation noise budget.

    python tools/bench_noise_budget.py                  # default PTQ, every 4th of the 260 views
    python tools/bench_noise_budget.py --smooth 0       # without activation smoothing
    python tools/bench_noise_budget.py --stride 1       # all 260 views: every flip explained

Each activation tensor is quantized alone (weights and every other tensor float) and the
logits' noise power against the float model is measured on the same views. The budget is
additive when the per-tensor noise powers sum to about the total (both are printed), which
tells whether fixing one tensor can pay. Rows are sorted by share of the summed noise.

The same runs also explain each *flip*, a view whose simulated top-1 differs from float's:
how far the float winner's lead over the quantized winner moves with everything quantized,
with the weights only, and with each tensor alone (the tensors that move it most are
printed). A flip that one tensor explains is a systematic error, not near-tie noise
(session 16: ImageNet image 14, spoonbill vs white stork, is the stem output's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from rich.progress import track

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import imagenet_sets, print_table, sqnr, write_record  # noqa: E402

from edgeres.config import PTQConfig  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.graph.ir import run_graph  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.quant.qmodel import QModel  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                    help="activation smoothing alpha (default: the PTQ default, 0.5 here)")
    ap.add_argument("--stride", type=int, default=4, help="score every Nth of the 260 views")
    ap.add_argument("--top", type=int, default=15, help="rows to print")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_noise_budget.json"))
    args = ap.parse_args()
    if args.stride < 1 or not 0.0 <= (args.smooth or 0.0) < 1.0:
        ap.error("--stride must be >= 1 and --smooth in [0, 1)")  # one line, exit 2
    torch.set_num_threads(args.threads)

    s20, crops, calib = imagenet_sets()
    x = torch.cat([s20.x, crops.x])[:: args.stride]
    graph = capture(create_model("mobilenet_v2_100", pretrained=True), calib[:1])
    qm = quantize_graph(graph, PTQConfig(smooth_alpha=args.smooth), load_target("arm-cpu-tflite"),
                        calib)
    out = qm.graph.outputs[0]

    def logits(act_qparams: dict, weights: dict) -> torch.Tensor:
        m = QModel(qm.graph, act_qparams, weights)
        return torch.cat([m.simulate(x[i : i + 20])[out] for i in range(0, len(x), 20)])

    ref = torch.cat([run_graph(qm.graph, x[i : i + 20])[out] for i in range(0, len(x), 20)])
    full, wq = logits(qm.act_qparams, qm.weights), logits({}, qm.weights)
    total, weights_only = sqnr(ref, full), sqnr(ref, wq)
    alone_logits = {t: logits({t: qm.act_qparams[t]}, {})
                    for t in track(list(qm.act_qparams), description="one tensor at a time")}
    alone = {t: sqnr(ref, lg) for t, lg in alone_logits.items()}
    power = {t: 10 ** (-db / 10) for t, db in alone.items()}
    summed = sum(power.values())
    rows = [{"tensor": t, "sqnr_db": round(alone[t], 2),
             "share_pct": round(100 * p / summed, 1)}
            for t, p in sorted(power.items(), key=lambda kv: -kv[1])]
    print_table(f"MobileNetV2-1.0 int8 noise budget ({len(x)} views, smooth "
                f"{qm.meta['config']['smooth_alpha']}): "
                f"all {total:.2f} dB, weights only {weights_only:.2f} dB, "
                f"sum of single tensors {-10 * torch.log10(torch.tensor(summed)):.2f} dB",
                rows[: args.top], ["tensor", "sqnr_db", "share_pct"])
    flips = explain_flips(ref, full, wq, alone_logits, stride=args.stride)
    if flips:
        print_table("Flips: the float winner's lead over the quantized winner, and what moves "
                    "it (view: index in the 260; 0-19 are the labelled images)", flips,
                    ["view", "float_lead", "all", "weights_only", "largest single tensors"])
    write_record(args.out, "bench_noise_budget.py", None,
                 smooth_alpha=qm.meta["config"]["smooth_alpha"], all_db=total,
                 weights_only_db=weights_only, rows=rows, flips=flips)


def explain_flips(ref: torch.Tensor, full: torch.Tensor, weights_only: torch.Tensor,
                  alone: dict[str, torch.Tensor], top: int = 3, stride: int = 1
                  ) -> list[dict]:
    """For each view whose top-1 changes, the float winner's lead over the quantized winner
    in float, and how much it moves with everything quantized, the weights only, and each
    tensor alone (the ``top`` largest moves). Negative = towards the flip. Views are
    numbered in the full set the rows were taken from every ``stride``-th of."""
    rows = []
    for v in torch.nonzero(full.argmax(1) != ref.argmax(1)).flatten().tolist():
        win, rival = int(ref[v].argmax()), int(full[v].argmax())

        def lead(lg: torch.Tensor, v: int = v, win: int = win, rival: int = rival) -> float:
            return float(lg[v, win] - lg[v, rival])

        base = lead(ref)
        moves = sorted(((t, lead(lg) - base) for t, lg in alone.items()), key=lambda m: m[1])
        rows.append({"view": v * stride, "float_winner": win, "quantized_winner": rival,
                     "float_lead": round(base, 3), "all": round(lead(full) - base, 3),
                     "weights_only": round(lead(weights_only) - base, 3),
                     "largest single tensors": ", ".join(f"{t} {m:+.2f}"
                                                         for t, m in moves[:top])})
    return rows


if __name__ == "__main__":
    main()
