"""Benchmark REx against PTQ and a DFQ-style baseline (CLE + bias correction).

    python tools/bench_rex.py --part rescue                  # the per-tensor NPU rescue case
    python tools/bench_rex.py --part lowbit --models mobilenet_v2_fmnist --limit 2000
    python tools/bench_rex.py --part timing                  # REx expansion of MobileNetV2-1.0

Parts (run any subset; each is long on a 2-core machine, hence --limit and --models):
- rescue: mobilenet_v2_fmnist (or --rescue-models) on npu-int8-per-tensor. Per-tensor PTQ,
  DFQ-style per-tensor, REx order 2 under MAC budgets, uniform REx, and per-channel PTQ on
  arm-cpu-tflite; top-1 on the test set (QModel.simulate), extra MACs / bytes, LiteRT
  latency, and the REx model's top-1 in LiteRT itself (reference kernels, the target's
  runtime; Fashion-MNIST only). mobilenet_v2_100 is scored as in lowbit.
- lowbit: W4A8 / W3A8 / W2A8 per-channel: naive PTQ, DFQ-style, REx K in {2, 3} x gamma in
  {0, .25, .5, .75}. Fashion-MNIST models: top-1 (test set), agreement and SQNR vs float;
  mobilenet_v2_100: top-1 on the 20 labelled ImageNet samples, agreement and SQNR on the
  240-view crop set, calibrated on the photo set. Sub-8-bit grids run as int8 kernels: the
  target is arm-cpu-tflite with the lower bit width added to its weight bits.
- timing: seconds of the REx expansion itself (weights + graph transform, calibration apart)
  for MobileNetV2-1.0.

Writes JSON (--out, atomically) and a PNG plot of accuracy vs extra MACs next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgeres.config import PTQConfig, RExConfig
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.graph.equalize import equalize
from edgeres.graph.ir import Graph, graph_macs, run_graph
from edgeres.graph.rex_expand import quantize_rex
from edgeres.quant.primitives import sqnr_db
from edgeres.quant.ptq import quantize_graph
from edgeres.quant.qmodel import QModel
from edgeres.targets import Target, load_target
from edgeres.zoo import create_model, get_entry

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import write_record  # noqa: E402

FMNIST_MODELS = ("mobilenet_v2_fmnist", "emo_1m_fmnist")
LOWBIT_MODELS = (*FMNIST_MODELS, "mobilenet_v2_100")
RESCUE_BUDGETS = (0.02, 0.05, 0.1, 0.25)
console = Console(width=200)


@dataclass
class Data:
    """Evaluation inputs, their labels (None where unlabelled), the float logits, calibration."""

    x: torch.Tensor
    y: torch.Tensor | None
    calib: torch.Tensor
    x_agree: torch.Tensor  # agreement / SQNR set (FMNIST: the test images themselves)
    float_logits: torch.Tensor | None = None
    float_agree: torch.Tensor | None = None


def load_data(name: str, limit: int | None, n_calib: int) -> Data:
    entry = get_entry(name)
    if entry.labels == "fmnist":
        from edgeres.data.fmnist import load_fmnist

        images, labels = load_fmnist("test")
        if limit:
            images, labels = images[:limit], labels[:limit]
        train, _ = load_fmnist("train")
        pick = np.random.default_rng(0).choice(len(train), n_calib, replace=False)
        x = entry.preprocess(images[..., None])
        return Data(x, torch.from_numpy(labels), entry.preprocess(train[pick][..., None]), x)
    from edgeres.data.imagenet import imagenet_agreement_set, load_imagenet_samples
    from edgeres.data.photos import photo_calibration_set

    images, labels = load_imagenet_samples()
    x = torch.cat([entry.preprocess(im) for im in images])
    agree, _ = imagenet_agreement_set(entry.preprocess)
    if limit:
        agree = agree[:limit]
    return Data(x, torch.from_numpy(labels), photo_calibration_set(entry.preprocess, n_calib),
                agree)


def load_model(name: str, random_init: bool) -> torch.nn.Module:
    try:
        return create_model(name, pretrained=True)
    except UserError as exc:
        if not random_init:
            raise UserError(f"{exc} (or pass --random-init to develop without weights)") from exc
        console.print(f"[yellow]{name}: no weights ({exc}); using a random init[/]")
        torch.manual_seed(0)
        return create_model(name)


def logits(run, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([run(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def graph_logits(graph: Graph, x: torch.Tensor, batch: int) -> torch.Tensor:
    out = graph.outputs[0]
    return logits(lambda xb: run_graph(graph, xb)[out], x, batch)


def sim_logits(qm: QModel, x: torch.Tensor, batch: int) -> torch.Tensor:
    out = qm.graph.outputs[0]
    return logits(lambda xb: qm.simulate(xb)[out], x, batch)


def scores(data: Data, lg: torch.Tensor, lg_agree: torch.Tensor) -> dict:
    """top-1 (labelled set), agreement and SQNR with the float model (agreement set)."""
    assert data.float_agree is not None
    out = {
        "agreement": float((lg_agree.argmax(1) == data.float_agree.argmax(1)).float().mean()),
        "sqnr_db": sqnr_db(data.float_agree, lg_agree),
    }
    if data.y is not None:
        out["top1"] = float((lg.argmax(1) == data.y).float().mean()) * 100
    return out


def evaluate(qm: QModel | Graph, data: Data, batch: int) -> dict:
    run = sim_logits if isinstance(qm, QModel) else graph_logits
    lg = run(qm, data.x, batch)  # type: ignore[arg-type]
    same = data.x_agree is data.x
    lg_agree = lg if same else run(qm, data.x_agree, batch)  # type: ignore[arg-type]
    return scores(data, lg, lg_agree)


def weight_bytes(graph: Graph) -> int:
    return sum(n.params["weight"].numel() + 4 * n.params["weight"].shape[0]
               for n in graph.nodes if n.op in ("conv2d", "linear"))


def cost(qm: QModel | Graph, base: Graph) -> dict:
    g = qm.graph if isinstance(qm, QModel) else qm
    return {
        "extra_macs": (graph_macs(g) - graph_macs(base)) / graph_macs(base),
        "extra_bytes": weight_bytes(g) - weight_bytes(base),
        "nodes": len(g.nodes),
    }


def litert_latency(path: Path, kernels: str, runs: int) -> float:
    """Median ms of one batch-1 inference (1 thread) in LiteRT."""
    from edgeres.runtime.litert import make_interpreter

    it = make_interpreter(path, kernels, threads=1)
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
    for _ in range(3):
        it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def litert_top1(qm: QModel, path: Path, data: Data) -> dict:
    """The exported model in LiteRT's reference kernels on the labelled set (int8 I/O)."""
    from edgeres.runtime.litert import run_tflite

    iq = qm.act_qparams[qm.graph.inputs[0].name]
    oq = qm.act_qparams[qm.graph.outputs[0]]
    codes = iq.quantize(data.x).numpy().astype(np.int8).transpose(0, 2, 3, 1)
    out = run_tflite(path, [codes], kernels="ref")[0]
    lg = oq.dequantize(torch.from_numpy(out.astype(np.int64)))
    sim = sim_logits(qm, iq.dequantize(torch.from_numpy(codes.transpose(0, 3, 1, 2)
                                                        .astype(np.int64))), 256)
    res = {"agreement_with_simulation": float((lg.argmax(1) == sim.argmax(1)).float().mean())}
    if data.y is not None:
        res["top1"] = float((lg.argmax(1) == data.y).float().mean()) * 100
    return res


def export_and_time(qm: QModel, tmp: Path, tag: str, runs: int) -> tuple[Path, dict]:
    from edgeres.export.tflite import export_tflite

    info = export_tflite(qm, tmp / f"{tag}.tflite")
    lat = {"xnnpack_ms": litert_latency(info.path, "xnnpack", runs),
           "ref_ms": litert_latency(info.path, "ref", max(runs // 5, 5)),
           "file_bytes": info.size_bytes, "ops": sum(info.ops.values())}
    return info.path, lat


def dfq_graph(graph: Graph) -> tuple[Graph, dict]:
    eq, report = equalize(graph, relu6_to_relu_first=True)
    return eq, {"pairs": len(report.pairs), "relu6_replaced": len(report.relu6_replaced),
                "iterations": report.iterations}


# -- parts ---------------------------------------------------------------------------------


def part_rescue(args: argparse.Namespace, tmp: Path) -> list[dict]:
    return [r for name in args.rescue_models for r in rescue_model(name, args, tmp)]


def rescue_model(name: str, args: argparse.Namespace, tmp: Path) -> list[dict]:
    data = load_data(name, args.limit, args.calib)
    model = load_model(name, args.random_init)
    g = capture(model, data.calib[:1])
    data.float_logits = graph_logits(g, data.x, args.batch)
    data.float_agree = (data.float_logits if data.x_agree is data.x
                        else graph_logits(g, data.x_agree, args.batch))
    rows = [{"config": "float", "bits": 32,
             **scores(data, data.float_logits, data.float_agree), **cost(g, g)}]
    npu, cpu = load_target("npu-int8-per-tensor"), load_target("arm-cpu-tflite")
    eq, eq_info = dfq_graph(g)
    eq_float = evaluate(eq, data, args.batch)
    rows.append({"config": "float, ReLU6->ReLU (DFQ's model)", "bits": 32, **eq_float,
                 **cost(eq, g)})
    runs: list[tuple[str, QModel, Graph]] = [
        ("PTQ int8 per-tensor (npu)", quantize_graph(g, PTQConfig(), npu, data.calib), g),
        ("DFQ-style CLE+BC per-tensor (npu)", quantize_graph(eq, PTQConfig(), npu, data.calib),
         g),
        ("PTQ int8 per-channel (arm-cpu-tflite)", quantize_graph(g, PTQConfig(), cpu,
                                                                  data.calib), g),
    ]
    for b in args.budgets:
        runs.append((f"REx K<=2 budget +{b:.0%} MACs (npu)",
                     quantize_rex(g, RExConfig(order=2, budget_macs=b), npu, data.calib), g))
    runs.append(("REx K=2 gamma=0.5 uniform (npu)",
                 quantize_rex(g, RExConfig(order=2, sparsity=0.5), npu, data.calib), g))
    runs.append(("REx K=2 gamma=0 uniform (npu)",
                 quantize_rex(g, RExConfig(order=2, sparsity=0.0), npu, data.calib), g))
    for label, qm, base in runs:
        t0 = time.perf_counter()
        row = {"config": label, "bits": 8, **evaluate(qm, data, args.batch), **cost(qm, base)}
        row["eval_s"] = round(time.perf_counter() - t0, 1)
        path, lat = export_and_time(qm, tmp, f"rescue{len(rows)}", args.latency_runs)
        row.update(lat)
        if qm.scheme == "rex":
            row["rex_expand_s"] = qm.meta["rex"]["expand_seconds"]
            if not args.no_litert_eval and "budget" in label and data.x_agree is data.x:
                row["litert_ref"] = litert_top1(qm, path, data)
        rows.append(row)
        console.print(row)
    for r in rows:
        r.update(model=name, part="rescue", dfq=eq_info if "DFQ" in r["config"] else None)
    return rows


def lowbit_target(bits: int) -> Target:
    t = load_target("arm-cpu-tflite")
    return replace(t, name=f"arm-cpu-tflite+w{bits}",
                   weights=replace(t.weights, bits=tuple(sorted({bits, *t.weights.bits}))))


def part_lowbit(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.models:
        data = load_data(name, args.limit, args.calib)
        g = capture(load_model(name, args.random_init), data.calib[:1])
        data.float_logits = graph_logits(g, data.x, args.batch)
        data.float_agree = (data.float_logits if data.x_agree is data.x
                            else graph_logits(g, data.x_agree, args.batch))
        rows.append({"model": name, "part": "lowbit", "config": "float", "bits": 32,
                     **scores(data, data.float_logits, data.float_agree), **cost(g, g)})
        console.print(rows[-1])
        eq, eq_info = dfq_graph(g)
        for bits in args.bits:
            t = lowbit_target(bits)
            ptq = PTQConfig(weight_bits=bits, per_channel=True)
            runs = [("PTQ", None, None, quantize_graph(g, ptq, t, data.calib)),
                    ("DFQ-style", None, None, quantize_graph(eq, ptq, t, data.calib))]
            for order in args.orders:
                for gamma in args.gammas:
                    cfg = RExConfig(order=order, sparsity=gamma, weight_bits=bits, ptq=ptq)
                    runs.append((f"REx K={order} gamma={gamma}", order, gamma,
                                 quantize_rex(g, cfg, t, data.calib)))
            for label, order, gamma, qm in runs:
                t0 = time.perf_counter()
                row = {"model": name, "part": "lowbit", "config": label, "bits": bits,
                       "order": order, "sparsity": gamma, **evaluate(qm, data, args.batch),
                       **cost(qm, g), "eval_s": 0.0}
                row["eval_s"] = round(time.perf_counter() - t0, 1)
                if label == "DFQ-style":
                    row["dfq"] = eq_info
                rows.append(row)
                console.print(row)
    return rows


def part_timing(args: argparse.Namespace) -> list[dict]:
    from edgeres.data.photos import photo_calibration_set

    name = "mobilenet_v2_100"
    model = load_model(name, args.random_init)
    calib = photo_calibration_set(get_entry(name).preprocess, 16)
    g = capture(model, calib[:1])
    t = load_target("arm-cpu-tflite")
    rows = []
    for label, cfg in (("K=2 gamma=0.5 uniform", RExConfig(order=2, sparsity=0.5)),
                       ("K=3 gamma=0.5 uniform", RExConfig(order=3, sparsity=0.5)),
                       ("K<=2 budget +25% MACs", RExConfig(order=2, budget_macs=0.25))):
        t0 = time.perf_counter()
        qm = quantize_rex(g, cfg, t, calib)
        r = qm.meta["rex"]
        rows.append({"model": name, "part": "timing", "config": label,
                     "expand_s": r["expand_seconds"], "stats_s": r["stats_seconds"],
                     "total_s": round(time.perf_counter() - t0, 2),
                     "calibration_images": int(calib.shape[0]),
                     "extra_macs": r["extra_macs_fraction"], "nodes": len(qm.graph.nodes)})
        console.print(rows[-1])
    return rows


def _layer_graph(kind: str, variant: str, c_in: int, c: int, hw: int) -> Graph:
    """One expanded layer of MobileNetV2-1.0's stage 2 in three layouts (weights random).

    ``plain``: the layer itself. ``separate``: two convs on the same input and an ADD (what
    edgeres exports). ``stacked``: one conv with both kernels (2C outputs) and a 1x1 conv
    that sums the pairs, the only sum the IR (and TFLite without SLICE) can express.
    """
    from edgeres.graph.ir import Node, TensorInfo

    gen = torch.Generator().manual_seed(0)
    k, groups, cin = (1, 1, c_in) if kind == "pointwise" else (3, c, c)
    attrs = {"stride": (1, 1), "padding": (k // 2,) * 4, "dilation": (1, 1), "groups": groups,
             "act": "relu6"}

    def conv(name: str, inp: str, out: int, g: int, kk: int, act: str, w: torch.Tensor | None
             = None) -> Node:
        w = torch.randn(out, (c if g > 1 else cin_of[inp]) // g, kk, kk, generator=gen) * 0.2 \
            if w is None else w
        a = dict(attrs, groups=g, act=act, padding=(kk // 2,) * 4)
        return Node(name, "conv2d", [inp], name, a, {"weight": w, "bias": torch.zeros(out)})

    cin_of = {"x": cin}
    nodes: list[Node] = []
    if variant == "plain":
        nodes.append(conv("y", "x", c, groups, k, "relu6"))
    elif variant == "separate":
        nodes += [conv("t1", "x", c, groups, k, "none"), conv("t2", "x", c, groups, k, "none"),
                  Node("y", "add", ["t1", "t2"], "y", {"act": "relu6"})]
    else:
        nodes.append(conv("t", "x", 2 * c, groups, k, "none"))
        cin_of["t"] = 2 * c
        pair = torch.zeros(c, 2 * c, 1, 1)
        idx = torch.arange(c)
        pick = (2 * idx, 2 * idx + 1) if groups > 1 else (idx, idx + c)
        pair[idx, pick[0]] = pair[idx, pick[1]] = 1.0
        nodes.append(conv("y", "t", c, 1, 1, "relu6", pair))
    shapes = {n.output: (1, c if n.output == "y" else n.params["weight"].shape[0], hw, hw)
              for n in nodes}
    shapes["x"] = (1, cin, hw, hw)
    return Graph(nodes, [TensorInfo("x", (1, cin, hw, hw))], ["y"], shapes)


def part_layout(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """LiteRT latency of the REx layouts for one layer (numbers: see _layer_graph)."""
    from edgeres.export.tflite import export_tflite

    rows = []
    target = load_target("arm-cpu-tflite")
    for kind, c_in, c, hw in (("pointwise", 32, 192, 28), ("depthwise", 192, 192, 28)):
        for variant in ("plain", "separate", "stacked"):
            g = _layer_graph(kind, variant, c_in, c, hw)
            calib = torch.randn(8, *g.inputs[0].shape[1:])
            qm = quantize_graph(g, PTQConfig(), target, calib)
            info = export_tflite(qm, tmp / f"layout-{kind}-{variant}.tflite")
            rows.append({"model": f"{kind} {c_in}->{c} @ {hw}x{hw}", "part": "layout",
                         "config": variant, "macs": graph_macs(g),
                         "xnnpack_ms": litert_latency(info.path, "xnnpack", args.latency_runs),
                         "ref_ms": litert_latency(info.path, "ref", max(args.latency_runs // 5,
                                                                        5)),
                         "ops": info.ops})
            console.print(rows[-1])
    return rows


# -- output --------------------------------------------------------------------------------


def render(rows: list[dict]) -> Table:
    table = Table(title="REx benchmark")
    cols = ("model", "config", "bits", "top1", "agreement", "sqnr_db", "extra_macs", "macs",
            "extra_bytes", "xnnpack_ms", "ref_ms", "rex_expand_s", "expand_s")
    for c in cols:
        table.add_column(c)

    def fmt(v: object) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    return table


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy (top row) and SQNR vs float (bottom row) against extra MACs, one column per
    model and weight bit width; squares: no expansion, circles: REx."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r.get("bits")) for r in rows
                     if r["part"] in ("lowbit", "rescue") and r.get("bits") not in (32, None)},
                    key=str)
    if not groups:
        return
    fig, axes = plt.subplots(2, len(groups), figsize=(5.5 * len(groups), 8), squeeze=False)
    for col, (model, bits) in enumerate(groups):
        sel = [r for r in rows if r["model"] == model and r.get("bits") == bits]
        ref = [r for r in rows if r["model"] == model and r["config"] == "float"]
        metric = "top1" if all("top1" in r for r in sel) else "agreement"
        for row, key in ((0, metric), (1, "sqnr_db")):
            ax = axes[row][col]
            for i, r in enumerate(sel):
                marker = "o" if "REx" in r["config"] else "s"
                ax.scatter(100 * r["extra_macs"], r[key], marker=marker, label=r["config"],
                           color=plt.cm.tab20(i % 20))
            if key == metric and ref and metric in ref[0]:
                ax.axhline(ref[0][metric], color="grey", lw=0.8, ls="--", label="float")
            ax.set_title(f"{model} w{bits}a8")
            ax.set_xlabel("extra MACs (%)")
            ax.set_ylabel(key)
        axes[1][col].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--part", action="append", choices=("rescue", "lowbit", "timing", "layout"))
    p.add_argument("--models", nargs="+", default=list(LOWBIT_MODELS), help="lowbit models")
    p.add_argument("--rescue-models", nargs="+", default=["mobilenet_v2_fmnist"])
    p.add_argument("--limit", type=int, default=None, help="evaluation images (default: all)")
    p.add_argument("--calib", type=int, default=512, help="calibration images")
    p.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    p.add_argument("--orders", nargs="+", type=int, default=[2, 3])
    p.add_argument("--gammas", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75])
    p.add_argument("--budgets", nargs="+", type=float, default=list(RESCUE_BUDGETS))
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-litert-eval", action="store_true")
    p.add_argument("--random-init", action="store_true", help="allow models without weights")
    p.add_argument("--out", type=Path, default=Path("runs/bench_rex.json"))
    p.add_argument("--replot", type=Path, help="only redraw the plot of an earlier JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.replot:
        plot(json.loads(args.replot.read_text())["rows"], args.replot.with_suffix(".png"))
        return 0
    torch.set_num_threads(args.threads)
    parts = args.part or ["rescue", "lowbit", "timing", "layout"]
    started = time.time()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-rex-") as tmp:
        try:
            if "rescue" in parts:
                rows += part_rescue(args, Path(tmp))
            if "lowbit" in parts:
                rows += part_lowbit(args)
            if "timing" in parts:
                rows += part_timing(args)
            if "layout" in parts:
                rows += part_layout(args, Path(tmp))
        except UserError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
    console.print(render(rows))
    write_record(args.out, "bench_rex.py", argv, parts=parts, limit=args.limit,
                 calibration_images=args.calib, threads=args.threads,
                 wall_s=round(time.time() - started, 1), rows=rows)
    plot(rows, args.out.with_suffix(".png"))
    console.print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
