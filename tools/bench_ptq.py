"""PTQ accuracy benchmark (issue 3): edgeres vs float, per-tensor NPUs, and ORT quantize_static.

    python tools/bench_ptq.py --part fmnist            # mobilenet_v2_fmnist (+ emo_1m_fmnist)
    python tools/bench_ptq.py --part imagenet          # mobilenet_v2_100 on the ImageNet samples
    python tools/bench_ptq.py --part timing            # PTQ wall time + peak RSS, 128 images,
                                                       # defaults vs the opt-ins, 3 rounds
    python tools/bench_ptq.py --part imagenet --smooth 0.5   # + activation smoothing rows
    python tools/bench_ptq.py --part fmnist --reconstruct 200  # + block reconstruction rows
    python tools/bench_ptq.py --part fmnist --smooth 0.5 --output-bias  # + output bias rows
    python tools/bench_ptq.py --part fmnist --fast --configs "act_observer='mse'"  # any PTQConfig

Every row of a part is measured in one run on the same data. Quantized accuracy is the
integer simulation (QModel.simulate); `litert` / `ort` columns run the exported file.
`sqnr_db` is against the float logits' power, `sqnr_c_db` against their power about each
row's mean (what `evalbundle.py` prints). The ImageNet part also
scores the standard ten-crop views (200) and their 20 plain centre crops.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import (  # noqa: E402
    EvalSet,
    agreement,
    batched_logits,
    console,
    fmnist_calib,
    fmnist_test,
    imagenet_sets,
    imagenet_ten_crop,
    paired_top1_test,
    parse_config,
    print_table,
    sqnr,
    sqnr_centred,
    top1,
    write_record,
)

from edgeres.check import expected_agreement  # noqa: E402
from edgeres.config import PTQConfig  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402


class _Reader:
    """ORT CalibrationDataReader over a float NCHW tensor."""

    def __init__(self, x: torch.Tensor, name: str, batch: int = 32) -> None:
        self.items = [
            {name: x[i : i + batch].numpy().astype(np.float32)} for i in range(0, len(x), batch)
        ]

    def get_next(self):  # noqa: ANN201 - ORT protocol
        return self.items.pop(0) if self.items else None


def ort_static(graph, calib: torch.Tensor, x: torch.Tensor, method: str) -> torch.Tensor:  # noqa: ANN001
    """ORT quantize_static (QDQ, per-channel int8 weights, uint8 activations) on float.onnx."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from edgeres.export.onnx import export_onnx
    from edgeres.runtime.onnxruntime import run_onnx

    with tempfile.TemporaryDirectory() as tmp:
        fp, qp = Path(tmp) / "float.onnx", Path(tmp) / "ort_int8.onnx"
        export_onnx(graph, fp)
        quantize_static(
            str(fp),
            str(qp),
            _Reader(calib, graph.inputs[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
        )
        return batched_logits(
            lambda b: torch.from_numpy(run_onnx(qp, [b.numpy().astype(np.float32)])[0]), x
        )


def edgeres_onnx(qm, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    from edgeres.export.onnx import export_onnx
    from edgeres.runtime.onnxruntime import run_onnx

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.onnx"
        export_onnx(qm, p)
        return batched_logits(
            lambda b: torch.from_numpy(run_onnx(p, [b.numpy().astype(np.float32)])[0]), x
        )


def edgeres_litert(qm, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    from edgeres.export.tflite import export_tflite
    from edgeres.runtime.litert import run_tflite

    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.tflite"
        export_tflite(qm, p, "float32")
        return batched_logits(
            lambda b: torch.from_numpy(
                run_tflite(
                    p, [b.permute(0, 2, 3, 1).numpy().astype(np.float32)], kernels="xnnpack"
                )[0]
            ),
            x,
        )


def edgeres_runs(smooth: float | None, recon: int | None = None, output_bias: bool = False,
                 unsmoothed: bool = False, configs: dict[str, PTQConfig] | None = None,
                 ) -> list[tuple[str, str, PTQConfig]]:
    """(target, row label, config) of every edgeres row; ``smooth`` adds smoothed rows,
    ``recon`` block-reconstructed ones (with and without smoothing), ``output_bias`` rows with
    output bias correction (alone, and with smoothing when asked); ``unsmoothed`` the
    per-channel plan without smoothing (the default before session 7); ``configs`` one
    per-channel row per named PTQConfig."""
    runs = [
        ("arm-cpu-tflite", "edgeres int8 per-channel", PTQConfig()),
        ("npu-int8-per-tensor", "edgeres int8 per-tensor (NPU)", PTQConfig()),
        ("arm-cpu-onnx", "edgeres uint8/int8 QDQ (ORT target)", PTQConfig()),
    ]
    if unsmoothed:
        runs.insert(1, ("arm-cpu-tflite", "edgeres int8 per-channel, smooth 0",
                        PTQConfig(smooth_alpha=0.0)))
    for k, (text, cfg) in enumerate((configs or {}).items()):
        runs.insert(1 + k, ("arm-cpu-tflite", f"edgeres int8 per-channel, {text}", cfg))
    if smooth:
        cfg = PTQConfig(smooth_alpha=smooth)
        runs.insert(1, ("arm-cpu-tflite", f"edgeres int8 per-channel, smooth {smooth}", cfg))
        runs.insert(3, ("npu-int8-per-tensor", f"edgeres int8 per-tensor, smooth {smooth}", cfg))
    if recon:
        extra = [("arm-cpu-tflite", f"edgeres int8 per-channel, reconstruct {recon}",
                  PTQConfig(reconstruct_iters=recon))]
        if smooth:
            extra.append(("arm-cpu-tflite",
                          f"edgeres int8 per-channel, smooth {smooth} + reconstruct {recon}",
                          PTQConfig(reconstruct_iters=recon, smooth_alpha=smooth)))
        k = 2 if smooth else 1
        runs[k:k] = extra
    if output_bias:
        runs.insert(1, ("arm-cpu-tflite", "edgeres int8 per-channel, output bias",
                        PTQConfig(output_bias_correction=True)))
        if smooth:
            runs.insert(2, ("arm-cpu-tflite", f"edgeres int8 per-channel, smooth {smooth} + "
                            "output bias",
                            PTQConfig(smooth_alpha=smooth, output_bias_correction=True)))
    return runs


def rows_for(model: str, graph, calib, sets: list[EvalSet], with_files: bool,  # noqa: ANN001
             smooth: float | None = None, recon: int | None = None,
             recon_calib: torch.Tensor | None = None, output_bias: bool = False,
             unsmoothed: bool = False, configs: dict[str, PTQConfig] | None = None,
             ) -> list[dict]:
    ref = {
        s.name: batched_logits(lambda b: torch.as_tensor(graph_float(graph, b)), s.x) for s in sets
    }
    rows = []
    logits: dict[tuple[str, str], torch.Tensor] = {}

    def add(label: str, logits_by_set: dict[str, torch.Tensor], **extra) -> None:  # noqa: ANN003
        for s in sets:
            lg = logits_by_set[s.name]
            logits[label, s.name] = lg
            row = {
                "model": model,
                "method": label,
                "data": s.name,
                "agree": agreement(ref[s.name], lg),
                "sqnr_db": sqnr(ref[s.name], lg),
                "sqnr_c_db": sqnr_centred(ref[s.name], lg),
                "expected": expected_agreement(ref[s.name].numpy(), lg.numpy())[0],
            }
            if s.y is not None:
                row["top1"] = top1(lg, s.y)
            rows.append({**row, **extra})

    add("float", ref)
    for target, label, cfg in edgeres_runs(smooth, recon, output_bias, unsmoothed, configs):
        t0 = time.perf_counter()
        data = recon_calib if cfg.reconstruct_iters and recon_calib is not None else calib
        qm = quantize_graph(graph, cfg, load_target(target), data)
        secs = time.perf_counter() - t0
        sim = {s.name: batched_logits(lambda b, qm=qm: qm.simulate(b)["logits"], s.x) for s in sets}
        add(label + " [sim]", sim, quantize_s=round(secs, 2), calib_n=len(data))
        if with_files and target == "arm-cpu-tflite":
            add(label + " [LiteRT XNNPACK]", {s.name: edgeres_litert(qm, s.x) for s in sets})
        if with_files and target == "arm-cpu-onnx":
            add(label + " [ORT]", {s.name: edgeres_onnx(qm, s.x) for s in sets})
    for method in ("MinMax", "Percentile", "Entropy"):
        try:
            add(
                f"ORT quantize_static {method} [ORT]",
                {s.name: ort_static(graph, calib, s.x, method) for s in sets},
            )
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
            console.print(f"ORT {method} failed: {exc}")
    compare_with_best_ort(rows, logits, sets)
    return rows


def compare_with_best_ort(rows: list[dict], logits: dict[tuple[str, str], torch.Tensor],
                          sets: list[EvalSet]) -> None:
    """Each edgeres row against the best ORT method on the same inputs, paired (McNemar):
    ``vs_ort`` = labelled inputs only edgeres gets right / only ORT does, ``vs_ort_p`` the
    chance of a split at least that uneven between equally accurate classifiers; and the same
    for agreement with float's top-1 (``vs_ort_agree``, ``vs_ort_agree_p``, against the ORT
    method that agrees most). Differences of a few inputs in 10k are the rule, and this says
    which ones are noise."""
    for s in sets:
        ort = [r for r in rows if r["data"] == s.name and r["method"].startswith("ORT")]
        if not ort:
            continue
        float_top1 = logits["float", s.name].argmax(1)
        mine = [r for r in rows if r["data"] == s.name and r["method"].startswith("edgeres")]
        for key, truth, score in (("vs_ort", s.y, "top1"), ("vs_ort_agree", float_top1, "agree")):
            if truth is None:
                continue
            best = max(ort, key=lambda r, score=score: r[score])
            for r in mine:
                only_e, only_o, p = paired_top1_test(logits[r["method"], s.name],
                                                     logits[best["method"], s.name], truth)
                r.update({key: f"+{only_e}/-{only_o} vs {best['method'].split()[2]}",
                          f"{key}_p": round(p, 3)})


def graph_float(graph, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    from edgeres.graph.ir import run_graph

    return run_graph(graph, x)[graph.outputs[0]]


def part_fmnist(args: argparse.Namespace) -> list[dict]:
    rows = []
    for model in args.models or ["mobilenet_v2_fmnist", "emo_1m_fmnist"]:
        try:
            net = create_model(model, pretrained=True)
        except Exception as exc:  # noqa: BLE001
            console.print(f"skip {model}: {exc}")
            continue
        calib = fmnist_calib(model, 512)
        graph = capture(net, calib[:1])
        rows += rows_for(model, graph, calib, [fmnist_test(model, args.limit)], not args.fast,
                         args.smooth, args.reconstruct, output_bias=args.output_bias,
                         unsmoothed=args.unsmoothed, configs=args.configs)
    return rows


def part_imagenet(args: argparse.Namespace) -> list[dict]:
    s20, crops, calib = imagenet_sets()
    net = create_model("mobilenet_v2_100", pretrained=True)
    graph = capture(net, calib[:1])
    recon_calib = None
    if args.recon_calib:
        from edgeres.data.photos import photo_calibration_set
        from edgeres.data.preprocess import IMAGENET

        recon_calib = photo_calibration_set(IMAGENET, n=args.recon_calib, seed=0)
    ten, centres = imagenet_ten_crop()
    return rows_for("mobilenet_v2_100", graph, calib, [s20, crops, centres, ten], not args.fast,
                    args.smooth, args.reconstruct, recon_calib, args.output_bias,
                    args.unsmoothed, args.configs)


TIMING_SNIPPET = """
import sys, time, resource, json, torch
from edgeres.zoo import create_model
from edgeres.data.photos import photo_calibration_set
from edgeres.data.preprocess import IMAGENET
from edgeres.config import PTQConfig
from edgeres.quant.ptq import quantize
from edgeres.targets import load_target
cfg = PTQConfig.from_json(json.loads(sys.argv[1]))
calib = photo_calibration_set(IMAGENET, n=128, seed=0)
model = create_model("mobilenet_v2_100", pretrained=True)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
quantize(model, cfg, load_target("arm-cpu-tflite"), calib)
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": secs, "peak_rss_mb": peak / 1024, "rss_before_mb": base / 1024,
                  "threads": torch.get_num_threads()}))
"""

TIMED_CONFIGS = {  # the default (smoothing on for this per-channel plan) and the options
    "defaults": PTQConfig(),
    "smooth 0": PTQConfig(smooth_alpha=0.0),
    "output bias": PTQConfig(output_bias_correction=True),
}


def part_timing(args: argparse.Namespace) -> list[dict]:
    """PTQ of MobileNetV2-1.0 with 128 photos, each config in a fresh process, the configs
    alternating over ``--rounds`` rounds (this machine's load drifts): median seconds and
    peak RSS (which varies by 20 % between identical runs), and each config's time as a ratio
    to the defaults of the same round."""
    import json

    runs: dict[str, list[dict]] = {name: [] for name in TIMED_CONFIGS}
    for _ in range(args.rounds):
        for name, cfg in TIMED_CONFIGS.items():
            proc = subprocess.run([sys.executable, "-c", TIMING_SNIPPET, cfg.dumps()],
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = [r["seconds"] for r in runs["defaults"]]
    rows = []
    for name, res in runs.items():
        secs = [r["seconds"] for r in res]
        ratios = [s / b for s, b in zip(secs, base, strict=True)]
        rows.append({
            "model": "mobilenet_v2_100",
            "method": f"edgeres PTQ, {name}",
            "data": "photos@128",
            "seconds": round(float(np.median(secs)), 2),
            "x_defaults": round(float(np.median(ratios)), 2),
            "peak_rss_mb": round(float(np.median([r["peak_rss_mb"] for r in res])), 1),
            "peak_rss_max_mb": round(max(r["peak_rss_mb"] for r in res), 1),  # varies by run
            "rss_before_mb": round(res[0]["rss_before_mb"], 1),
            "threads": res[0]["threads"],
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["fmnist", "imagenet", "timing"], required=True)
    ap.add_argument("--models", nargs="*")
    ap.add_argument("--limit", type=int, default=None, help="test images (default all 10k)")
    ap.add_argument("--fast", action="store_true", help="skip running exported files")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                    help="also run edgeres with PTQConfig(smooth_alpha=ALPHA), side by side")
    ap.add_argument("--reconstruct", type=int, default=None, metavar="STEPS",
                    help="also run edgeres with block reconstruction, STEPS per block")
    ap.add_argument("--recon-calib", type=int, default=None, metavar="N",
                    help="imagenet: reconstruction rows calibrate on N photo crops (default 128)")
    ap.add_argument("--output-bias", action="store_true",
                    help="also run edgeres with PTQConfig(output_bias_correction=True)")
    ap.add_argument("--unsmoothed", action="store_true",
                    help="also run the per-channel plan with smooth_alpha=0 (the old default)")
    ap.add_argument("--configs", nargs="+", default=[], metavar="KWARGS",
                    help="also run the per-channel plan with each PTQConfig keyword list, "
                         "e.g. \"act_observer='mse'\"")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="timing: alternating rounds")
    args = ap.parse_args()
    try:  # fail before any work, in one line
        args.configs = {text: parse_config(text) for text in args.configs}
    except (SyntaxError, ValueError, TypeError, UserError) as exc:
        ap.error(f"--configs: {exc} (want PTQConfig keywords, e.g. \"act_observer='mse'\")")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {"fmnist": part_fmnist, "imagenet": part_imagenet, "timing": part_timing}[args.part](
        args
    )
    cols = sorted(
        {k for r in rows for k in r},
        key=lambda c: (
            ["model", "method", "data", "top1", "agree", "sqnr_db"].index(c)
            if c in ("model", "method", "data", "top1", "agree", "sqnr_db")
            else 9
        ),
    )
    print_table(f"PTQ benchmark: {args.part}", rows, cols)
    write_record(args.out or Path(f"runs/bench_ptq_{args.part}.json"), "bench_ptq.py", None,
                 part=args.part, rows=rows)


if __name__ == "__main__":
    main()
