"""Export benchmark (issue 4): edgeres vs litert-torch PT2E int8, and int8 vs fp32 latency.

    python tools/bench_export.py                      # both parts, one run
    python tools/bench_export.py --part peers         # edgeres vs litert-torch side by side
    python tools/bench_export.py --part ratio         # int8 vs fp32 in LiteRT and ONNX Runtime

Model: MobileNetV2-1.0 224x224 with the ImageNet weights; calibration: the same 128 photo crops
(``photo_calibration_set(IMAGENET, n=128, seed=0)``) for both converters.

* ``peers``: conversion time from the float model to the written .tflite. Each converter runs
  in a fresh process and is timed inside it, so imports and model loading are not counted
  (they are reported apart): edgeres ``quantize`` + ``export_tflite`` here, litert-torch in
  ``.venv-peer`` (made by ``tools/setup_peers.sh``). Rounds go A-B-B-A to share the machine's
  drift; the table shows each side's fastest round. Then: file size; LiteRT XNNPACK latency at
  1 and 2 threads; agreement with the float torch model (top-1 agreement and logits SQNR on
  the 240-view agreement set, top-1 on the 20 labelled samples), run on XNNPACK.
* ``ratio``: fp32 vs int8 latency of the same model in LiteRT (XNNPACK) and ONNX Runtime.

Latency: every file goes through ``edgeres.harness.local.bench_local`` (a fresh runner process
per measurement), in ``--rounds`` rounds that rotate the order of the files, ``--runs`` timed
inferences each. A row's median / p90 is the median over rounds of each round's median / p90;
a ratio is the median of the per-round ratios (paired, so load drift cancels).
"""

from __future__ import annotations

import argparse
import os
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
    console,
    imagenet_sets,
    machine,
    print_table,
    sqnr,
    top1,
    write_record,
)

from edgeres.config import PTQConfig  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.harness.local import bench_local  # noqa: E402
from edgeres.targets import Target, load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "tools" / "peers" / "litert_torch_pt2e.py"
MODEL = "mobilenet_v2_100"
THREADS = (1, 2)


# -- conversions -------------------------------------------------------------------------------


def convert_edgeres(calib_npz: Path, out: Path) -> dict:
    """edgeres PTQ + exact TFLite export in a fresh process, timed from float model to file.

    A fresh process, like the peer's: neither side profits from warm caches of this one.
    """
    import json

    cmd = [sys.executable, __file__, "--edgeres-child", str(out), "--calib", str(calib_npz)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise UserError(f"edgeres conversion failed (exit {proc.returncode}):\n{tail}")
    return dict(json.loads(lines[-1]), process_wall_s=wall)


def peak_rss_mb() -> float | None:
    """This process's resident high-water mark (VmHWM: its own, unlike ru_maxrss, which a
    child inherits from the parent it was forked from)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def edgeres_child(out: Path, calib_npz: Path) -> None:
    """The timed edgeres conversion (run by :func:`convert_edgeres`); prints one JSON line."""
    import json

    from edgeres.export.tflite import export_tflite
    from edgeres.quant.ptq import quantize

    calib = torch.from_numpy(np.load(calib_npz)["x"])
    model = create_model(MODEL, pretrained=True).eval()
    target = load_target("arm-cpu-tflite")
    c0, t0 = time.process_time(), time.perf_counter()
    qm = quantize(model, PTQConfig(), target, calib)
    t1 = time.perf_counter()
    info = export_tflite(qm, out, io_dtype=target.io_dtype)
    t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({
        "convert_s": t2 - t0, "quantize_s": t1 - t0, "export_s": t2 - t1, "cpu_s": c2 - c0,
        "peak_rss_mb": peak_rss_mb(),
        "ops": info.ops, "float_ops": len(info.float_ops), "torch_threads": torch.get_num_threads(),
    }))


def peer_python() -> Path:
    py = ROOT / ".venv-peer" / "bin" / "python"
    if not py.is_file():
        raise UserError(f"the peer venv is missing ({py}): run `bash tools/setup_peers.sh`")
    return py


def convert_peer(calib_npz: Path, out: Path, float_out: Path | None = None) -> dict:
    """litert-torch PT2E int8 in the peer venv; its own JSON line plus the process wall time."""
    import json

    from edgeres.zoo.models import imagenet_mobilenet_v2_weights

    cmd = [str(peer_python()), str(PEER_SCRIPT), "--weights", str(imagenet_mobilenet_v2_weights()),
           "--calib", str(calib_npz), "--out", str(out)]
    if float_out is not None:
        cmd += ["--float-out", str(float_out)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise UserError(f"litert-torch conversion failed (exit {proc.returncode}):\n{tail}")
    return dict(json.loads(lines[-1]), process_wall_s=wall)


def timed_rounds(rounds: int, calib_npz: Path, work: Path) -> tuple[list[dict], list[dict]]:
    """Conversions in A-B-B-A order (edgeres, peer, peer, edgeres, ...)."""
    ours, peer = [], []
    for r in range(rounds):
        order = ("edgeres", "peer") if r % 2 == 0 else ("peer", "edgeres")
        for who in order:
            console.print(f"[dim]round {r + 1}/{rounds}: converting with {who}[/dim]")
            if who == "edgeres":
                ours.append(convert_edgeres(calib_npz, work / "edgeres_int8.tflite"))
            else:
                fo = work / "litert_torch_fp32.tflite" if r == 0 else None
                peer.append(convert_peer(calib_npz, work / "litert_torch_int8.tflite", fo))
    return ours, peer


# -- accuracy in LiteRT ------------------------------------------------------------------------


def tflite_logits(path: Path, x: torch.Tensor, threads: int = 2) -> torch.Tensor:
    """Float logits of a .tflite on NCHW float inputs: NHWC, (de)quantized per the file."""
    from edgeres.runtime.litert import make_interpreter

    it = make_interpreter(path, "xnnpack", threads)
    din, dout = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = din["quantization"]
    s_out, z_out = dout["quantization"]
    nhwc = x.permute(0, 2, 3, 1).numpy().astype(np.float64)
    outs = []
    for i in range(len(nhwc)):
        xi = nhwc[i : i + 1]
        if np.dtype(din["dtype"]).kind == "i":
            info = np.iinfo(din["dtype"])
            xi = np.clip(np.rint(xi / s_in) + z_in, info.min, info.max)
        it.set_tensor(din["index"], xi.astype(din["dtype"]))
        it.invoke()
        y = it.get_tensor(dout["index"]).astype(np.float64)
        outs.append((y - z_out) * s_out if s_out else y)
    return torch.from_numpy(np.concatenate(outs))


def float_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i : i + 40]) for i in range(0, len(x), 40)]).double()


def agreement_row(path: Path, ref20: torch.Tensor, refa: torch.Tensor, s20: EvalSet,
                  crops: EvalSet) -> dict:
    l20, la = tflite_logits(path, s20.x), tflite_logits(path, crops.x)
    return {"top1_20": top1(l20, s20.y), "agree_240": agreement(refa, la),
            "sqnr_db": sqnr(refa, la), "float_top1_20": top1(ref20, s20.y)}


# -- latency -----------------------------------------------------------------------------------


def interleaved_latency(files: dict[str, tuple[Path, Target]], rounds: int, runs: int,
                        warmup: int) -> dict[str, dict[int, list[dict]]]:
    """Per label and thread count, one stats dict per round; the order rotates each round."""
    labels = list(files)
    out: dict[str, dict[int, list[dict]]] = {k: {t: [] for t in THREADS} for k in labels}
    for r in range(rounds):
        order = labels[r % len(labels):] + labels[: r % len(labels)]
        for t in THREADS:
            for label in order:
                path, target = files[label]
                res = bench_local(path, target, threads=(t,), warmup=warmup, runs=runs)
                s = res.latency[0]
                out[label][t].append({"median_ms": s.median_ms, "p90_ms": s.p90_ms,
                                      "min_ms": s.min_ms, "runtime": res.runtime_version})
        console.print(f"[dim]latency round {r + 1}/{rounds} done[/dim]")
    return out


def summary(lat: dict[int, list[dict]]) -> dict:
    row = {}
    for t, rs in lat.items():
        row[f"median_ms_{t}t"] = float(np.median([r["median_ms"] for r in rs]))
        row[f"p90_ms_{t}t"] = float(np.median([r["p90_ms"] for r in rs]))
    return row


def paired_ratio(a: dict[int, list[dict]], b: dict[int, list[dict]], t: int) -> float:
    """Median over rounds of a/b medians at ``t`` threads."""
    return float(np.median([x["median_ms"] / y["median_ms"]
                            for x, y in zip(a[t], b[t], strict=True)]))


# -- parts -------------------------------------------------------------------------------------


def part_peers(args: argparse.Namespace, ctx: dict) -> dict:
    work = ctx["work"]
    ours, peer = timed_rounds(args.conv_rounds, ctx["calib_npz"], work)
    files = {"edgeres": work / "edgeres_int8.tflite",
             "litert-torch": work / "litert_torch_int8.tflite"}
    console.print("[dim]agreement with float on XNNPACK[/dim]")
    acc = {k: agreement_row(p, ctx["ref20"], ctx["refa"], ctx["s20"], ctx["crops"])
           for k, p in files.items()}
    target = load_target("arm-cpu-tflite")
    lat = interleaved_latency({k: (p, target) for k, p in files.items()}, args.rounds,
                              args.runs, args.warmup)
    conv = {"edgeres": ours, "litert-torch": peer}
    rows = []
    for k, p in files.items():
        best = min(conv[k], key=lambda c: c["convert_s"])
        rows.append({"converter": k, "convert_s": best["convert_s"],
                     "convert_cpu_s": best["cpu_s"],
                     "size_kb": p.stat().st_size / 1024, **summary(lat[k]), **acc[k]})
    split = [split_row("edgeres", c) for c in ours] + [split_row("litert-torch", c) for c in peer]
    ratio = {"converter": "edgeres / litert-torch",
             "convert_s": rows[0]["convert_s"] / rows[1]["convert_s"],
             "convert_cpu_s": rows[0]["convert_cpu_s"] / rows[1]["convert_cpu_s"],
             "size_kb": rows[0]["size_kb"] / rows[1]["size_kb"],
             **{f"median_ms_{t}t": paired_ratio(lat["edgeres"], lat["litert-torch"], t)
                for t in THREADS}}
    ctx["peer_float"] = work / "litert_torch_fp32.tflite"
    ctx["tflite_int8"] = files["edgeres"]
    return {"rows": rows, "ratio": ratio, "split": split, "conversions": conv,
            "latency_rounds": lat,
            "peer_versions": {k: peer[0].get(k) for k in
                              ("litert_torch", "torch", "torchao", "ai_edge_litert")},
            "peer_import_s": peer[0]["import_s"]}


def split_row(who: str, c: dict) -> dict:
    """Where a conversion's time goes: quantization (capture + calibration + integer weights)
    vs writing the file (edgeres: the flatbuffer; litert-torch: MLIR lowering + its converter)."""
    if who == "edgeres":
        q, e = c["quantize_s"], c["export_s"]
    else:
        q = c["export_s"] + c["prepare_s"] + c["calibrate_s"] + c["convert_pt2e_s"]
        e = c["litert_convert_s"] + c["write_s"]
    return {"converter": who, "quantize_s": q, "export_s": e, "convert_s": c["convert_s"],
            "cpu_s": c["cpu_s"], "peak_rss_mb": c["peak_rss_mb"],
            "process_wall_s": c["process_wall_s"]}


def fp32_tflite(ctx: dict, graph: object) -> tuple[Path, str]:
    """edgeres's float export (a QModel with no qparams); the peer's float file if refused."""
    from edgeres.export.tflite import export_tflite
    from edgeres.quant.qmodel import QModel

    path = ctx["work"] / "edgeres_fp32.tflite"
    try:
        export_tflite(QModel(graph, {}, {}), path, io_dtype="float32")
        return path, "edgeres export_tflite(QModel(graph, {}, {}), io_dtype='float32')"
    except UserError as exc:
        console.print(f"[yellow]edgeres float TFLite refused ({exc}); using litert-torch's[/]")
        peer = ctx.get("peer_float")
        if peer is None or not peer.is_file():
            convert_peer(ctx["calib_npz"], ctx["work"] / "peer_int8_unused.tflite",
                         ctx["work"] / "litert_torch_fp32.tflite")
            peer = ctx["work"] / "litert_torch_fp32.tflite"
        return peer, "litert_torch.convert (no quantization)"


def part_ratio(args: argparse.Namespace, ctx: dict) -> dict:
    from edgeres.export.onnx import export_onnx
    from edgeres.export.tflite import export_tflite
    from edgeres.graph.capture import capture
    from edgeres.quant.ptq import quantize

    work, model, calib = ctx["work"], ctx["model"], ctx["calib"]
    graph = capture(model, calib[:1])
    t_tfl, t_onnx = load_target("arm-cpu-tflite"), load_target("arm-cpu-onnx")
    int8_tfl = ctx.get("tflite_int8")
    if int8_tfl is None:
        int8_tfl = work / "edgeres_int8.tflite"
        export_tflite(quantize(graph, PTQConfig(), t_tfl, calib), int8_tfl,
                      io_dtype=t_tfl.io_dtype)
    fp32_tfl, fp32_how = fp32_tflite(ctx, graph)
    fp32_onnx, int8_onnx = work / "float.onnx", work / "edgeres_qdq.onnx"
    export_onnx(graph, fp32_onnx)
    export_onnx(quantize(graph, PTQConfig(), t_onnx, calib), int8_onnx)
    files = {"LiteRT fp32": (fp32_tfl, t_tfl), "LiteRT int8": (int8_tfl, t_tfl),
             "ORT fp32": (fp32_onnx, t_onnx), "ORT int8 (QDQ)": (int8_onnx, t_onnx)}
    lat = interleaved_latency(files, args.rounds, args.runs, args.warmup)
    rows = [{"model": k, "size_kb": p.stat().st_size / 1024, **summary(lat[k])}
            for k, (p, _) in files.items()]
    ratios = [{"model": f"{rt} fp32 / int8", **{f"speedup_{t}t": paired_ratio(
        lat[f"{rt} fp32"], lat[f"{rt} int8" + (" (QDQ)" if rt == "ORT" else "")], t)
        for t in THREADS}} for rt in ("LiteRT", "ORT")]
    return {"rows": rows, "ratios": ratios, "latency_rounds": lat, "fp32_tflite": fp32_how}


# -- output ------------------------------------------------------------------------------------


def plot(path: Path, peers: dict | None, ratio: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(r["converter"] + " int8", r) for r in (peers or {}).get("rows", [])]
    bars += [(r["model"], r) for r in (ratio or {}).get("rows", [])
             if not (peers and r["model"] == "LiteRT int8")]
    fig, ax = plt.subplots(figsize=(1.6 * len(bars) + 2, 4.2))
    w = 0.38
    for j, t in enumerate(THREADS):
        xs = np.arange(len(bars)) + (j - 0.5) * w
        med = [r[f"median_ms_{t}t"] for _, r in bars]
        p90 = [r[f"p90_ms_{t}t"] - r[f"median_ms_{t}t"] for _, r in bars]
        ax.bar(xs, med, w, yerr=[np.zeros(len(bars)), p90], capsize=3, label=f"{t} thread(s)")
        for x, m, d in zip(xs, med, p90, strict=True):
            ax.text(x, m + d, f"{m:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(np.arange(len(bars)), [b for b, _ in bars], rotation=15, fontsize=8)
    ax.set_ylabel("latency, ms (median; bar to p90)")
    ax.set_title("MobileNetV2-1.0 224x224 on this host's CPU (LiteRT XNNPACK / ONNX Runtime)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)
    console.print(f"wrote {path}")


def host() -> dict:
    info = machine()
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    info["cpu"] = names[0] if names else info["cpu"]
    info["load_avg_start"] = os.getloadavg()
    return info


def print_results(peers: dict | None, ratio: dict | None) -> None:
    console.width = max(console.width, 170)  # a log file is not a terminal: keep columns whole
    lat_cols = [f"{s}_ms_{t}t" for t in THREADS for s in ("median", "p90")]
    if peers:
        print_table("edgeres vs litert-torch PT2E int8 (MobileNetV2-1.0 224, 128 calib images)",
                    peers["rows"] + [peers["ratio"]],
                    ["converter", "convert_s", "convert_cpu_s", "size_kb", *lat_cols,
                     "top1_20", "float_top1_20", "agree_240", "sqnr_db"])
        print_table("conversion split, every round (s; process_wall_s adds imports + model load)",
                    peers["split"], ["converter", "quantize_s", "export_s", "convert_s", "cpu_s",
                                     "peak_rss_mb", "process_wall_s"])
    if ratio:
        print_table("int8 vs fp32 latency", ratio["rows"], ["model", "size_kb", *lat_cols])
        print_table("fp32 / int8 latency (speed-up)", ratio["ratios"],
                    ["model", *[f"speedup_{t}t" for t in THREADS]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "peers", "ratio"], default="all")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_export.json")
    ap.add_argument("--conv-rounds", type=int, default=2, help="conversions per converter")
    ap.add_argument("--rounds", type=int, default=5, help="latency rounds per file")
    ap.add_argument("--runs", type=int, default=30, help="timed inferences per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--edgeres-child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--calib", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.edgeres_child:
        edgeres_child(args.edgeres_child, args.calib)
        return

    info = host()
    s20, crops, calib = imagenet_sets()
    model = create_model(MODEL, pretrained=True).eval()
    peers = ratio = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ctx = {"work": work, "model": model, "calib": calib, "s20": s20, "crops": crops,
               "calib_npz": work / "calib.npz"}
        np.savez(ctx["calib_npz"], x=calib.numpy().astype(np.float32))
        if args.part in ("all", "peers"):
            ctx["ref20"], ctx["refa"] = float_logits(model, s20.x), float_logits(model, crops.x)
            peers = part_peers(args, ctx)
        if args.part in ("all", "ratio"):
            ratio = part_ratio(args, ctx)
    info["load_avg_end"] = os.getloadavg()
    print_results(peers, ratio)
    write_record(args.out, "bench_export.py", None, model=MODEL, calibration="photos@128 seed 0",
                 machine=info, settings=vars(args) | {"out": str(args.out)}, peers=peers,
                 ratio=ratio)
    plot(args.out.with_suffix(".png"), peers, ratio)


if __name__ == "__main__":
    main()
