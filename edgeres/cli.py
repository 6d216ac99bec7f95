"""The ``edgeres`` command line: convert | bench | check | targets | zoo | explain | qat.

Exit codes: 0 ok, 1 a stated accuracy floor was missed, 2 bad input (one-line message).
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgeres.errors import AccuracyFloorError, BundleWrittenInterrupt, UserError
from edgeres.signals import interrupt_status, one_interrupt_unwinds

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Quantize residual mobile networks and ship them, checked, to devices.",
)
out = Console()
MAX_BENCH_RUNS = 100_000  # timed runs per thread count; more is a typo, not a benchmark
# OS errors about a path the user gave: one line, not a traceback
USER_OS_ERRORS = {errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EPERM, errno.EROFS,
                  errno.ENOSPC, errno.EDQUOT}
InputOption = Annotated[str, typer.Option(
    "--input", help="normalized: the model takes (pixel/255-mean)/std; pixels: it takes "
    "pixel - P at scale 1, camera bytes as they are (README: --input pixels)")]
# The options convert, qat and explain share, declared once so their help stays the same.
ModelArg = Annotated[str, typer.Argument(help="zoo name, checkpoint or module:factory")]
TargetOption = Annotated[str, typer.Option("--target", "-t", help="a name from `edgeres targets`")]
WeightsOption = Annotated[str | None, typer.Option(help="weights name or path")]
CalibOption = Annotated[str | None, typer.Option(help="calibration data spec")]
OutOption = Annotated[Path | None, typer.Option("--out", help="bundle folder")]
BenchOption = Annotated[bool, typer.Option(help="measure latency/memory")]
JsonOption = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def _print_version(show: bool) -> None:
    if show:
        import edgeres

        print(f"edgeres {edgeres.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    )] = False,
) -> None:
    """Quantize residual mobile networks and ship them, checked, to devices."""


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


@app.command()
def zoo() -> None:
    """List zoo models with parameters, MACs, input size and shipped weights."""
    import torch

    from edgeres.graph.capture import capture
    from edgeres.graph.ir import graph_macs
    from edgeres.zoo import get_entry, list_models

    table = Table(title="edgeres model zoo")
    table.add_column("model", no_wrap=True)  # typed back into convert: never cut
    for col in ("params", "MMACs", "input", "weights", "description"):
        table.add_column(col, overflow="fold")
    for name in list_models():
        e = get_entry(name)
        m = e.factory(num_classes=e.num_classes, in_chans=e.in_chans, img_size=e.img_size).eval()
        g = capture(m, torch.zeros(1, e.in_chans, e.img_size, e.img_size))
        params = sum(p.numel() for p in m.parameters())
        avail = []
        for wname, locate in e.weights.items():
            try:
                locate()
                avail.append(wname)
            except UserError:
                avail.append(f"{wname} (missing)")
        table.add_row(
            name,
            f"{params:,}",
            f"{graph_macs(g) / 1e6:.1f}",
            f"{e.in_chans}x{e.img_size}x{e.img_size}",
            ", ".join(avail) or "-",
            e.description,
        )
    out.print(table)


@app.command()
def targets(
    names: Annotated[bool, typer.Option("--names", help="one name per line")] = False,
) -> None:
    """List target profiles (targets/*.toml)."""
    from edgeres.targets import list_targets, target_names
    from edgeres.targets_table import render_targets_table

    if names:
        for n in target_names():
            print(n)
        return
    out.print(render_targets_table(list_targets(), width=out.width))


@app.command()
def explain(
    model: ModelArg,
    target: TargetOption = "arm-cpu-tflite",
    bits: Annotated[str, typer.Option(help="w8a8, w4a8, ...")] = "w8a8",
    ignore: Annotated[list[str] | None, typer.Option(help="layers kept in float")] = None,
) -> None:
    """Show every op, where it runs on the target and why (no data needed)."""
    import torch

    from edgeres.graph.capture import capture
    from edgeres.quant.plan import make_plan
    from edgeres.resolve import parse_bits, resolve_model
    from edgeres.targets import load_target

    t = load_target(target)
    rm = resolve_model(model, load=False)
    g = capture(rm.module, torch.zeros(1, rm.in_chans, rm.img_size, rm.img_size))
    w, a = parse_bits(bits)
    plan = make_plan(g, t, w, a, None, tuple(ignore or ()))
    engine = {"npu": "NPU", "mcu": "MCU int8", "cpu": "CPU int8"}[t.family]
    table = Table(title=f"{rm.name} on {t.name}")
    for col in ("node", "op", "runs on", "weights", "why"):
        table.add_column(col, overflow="fold", no_wrap=col == "node")  # node: for --ignore
    reasons = {d.subject: d.reason for d in plan.report}
    for n in g.nodes:
        kind = n.attrs.get("kind") if n.op == "act" else None
        label = (f"{n.op}({kind})" if kind else n.op) + (
            f"+{n.attrs['act']}" if n.attrs.get("act", "none") != "none" else ""
        )
        if n.name in plan.float_nodes:
            where, why = "CPU float", plan.float_nodes[n.name]
        else:
            place = t.placement(n.op, kind)
            where = engine if place == "integer" else "host CPU int8"
            why = reasons.get(n.name, "")
        spec = plan.weight_specs.get(n.name)
        table.add_row(n.name, label, where, spec.describe() if spec else "", why)
    out.print(table)


@app.command()
def convert(
    model: ModelArg = "mobilenet_v2_fmnist",
    target: TargetOption = "arm-cpu-tflite",
    scheme: Annotated[str, typer.Option(help="ptq | rex | qat | rex+qat")] = "ptq",
    weights: WeightsOption = None,
    calib: CalibOption = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="evaluation data spec")] = None,
    bits: Annotated[str, typer.Option(help="w8a8, w4a8, w8a16, ...")] = "w8a8",
    out_dir: OutOption = None,
    ignore: Annotated[list[str] | None, typer.Option(help="layers kept in float")] = None,
    adaround: Annotated[
        int, typer.Option(help="learn weight rounding: AdaRound steps per layer (0: off)")
    ] = 0,
    smooth: Annotated[
        float | None, typer.Option(help="PTQ: move activation outliers into weights, alpha "
                                        "(default 0.5 for W8A8 per-channel plans, else 0; 0: off)")
    ] = None,
    reconstruct: Annotated[
        int, typer.Option(help="PTQ: block reconstruction (BRECQ+QDrop), steps per block (0: off)")
    ] = 0,
    output_bias: Annotated[
        bool, typer.Option("--output-bias",
                           help="PTQ: take the mean logit error out of the output layer's bias")
    ] = False,
    observer: Annotated[
        str, typer.Option(help="activation ranges: percentile | mse | minmax | entropy "
                               "(the model's inputs and outputs are never clipped)")
    ] = "percentile",
    percentile: Annotated[
        float, typer.Option(help="the percentile observer's coverage, in %")
    ] = 99.99,
    input_mode: InputOption = "normalized",
    rex_order: Annotated[int, typer.Option(help="REx expansion order K")] = 2,
    rex_sparsity: Annotated[float, typer.Option(help="REx group sparsity gamma")] = 0.5,
    rex_budget: Annotated[
        float | None, typer.Option(help="REx extra-MAC budget (0.25=+25%)")
    ] = None,
    min_agreement: Annotated[float | None, typer.Option(help="fail (exit 1) below this %")] = None,
    max_drop: Annotated[float | None, typer.Option(help="fail (exit 1) above this drop")] = None,
    bench: BenchOption = True,
    as_json: JsonOption = False,
) -> None:
    """Quantize MODEL for TARGET, export it, check it against float, write the app bundle."""
    from edgeres.convert import ConvertOptions

    opts = ConvertOptions(
        model,
        target,
        scheme,
        weights,
        calib,
        eval_data,
        bits,
        out_dir,  # type: ignore[arg-type]
        tuple(ignore or ()),
        adaround,
        rex_order,
        rex_sparsity,
        rex_budget,
        min_agreement=min_agreement,
        max_drop=max_drop,
        bench=bench,
        smooth_alpha=smooth,
        reconstruct_iters=reconstruct,
        output_bias_correction=output_bias,
        act_observer=observer,  # type: ignore[arg-type]  # checked by ConvertOptions
        percentile=percentile,
        input=input_mode,  # type: ignore[arg-type]  # checked by ConvertOptions
    )
    _run_convert(opts, as_json)


def _run_convert(opts, as_json: bool) -> None:  # noqa: ANN001 - ConvertOptions
    """Convert and print the summary; a missed accuracy floor still prints, then exits 1."""
    from edgeres.convert import convert as run

    floor_error: AccuracyFloorError | None = None
    try:
        result = run(opts, progress=not as_json)
    except AccuracyFloorError as exc:
        floor_error = exc
        result = exc.result  # type: ignore[attr-defined]
    if result is None:  # a torchrun worker rank: rank 0 writes and prints the bundle
        return
    from edgeres.staging import after_publish

    with after_publish(result.bundle):
        if as_json:
            print(json.dumps(result.summary(), sort_keys=True))
        else:
            _print_summary(result)
    if floor_error is not None:
        _fail(f"edgeres: {floor_error}")  # one line, as every other error
        raise typer.Exit(1)


@app.command()
def qat(
    model: ModelArg = "mobilenet_v2_fmnist",
    target: TargetOption = "arm-cpu-tflite",
    bits: Annotated[str, typer.Option(help="w8a8, w4a8, ...")] = "w8a8",
    epochs: Annotated[int, typer.Option(help="epochs of the cosine schedule")] = 3,
    steps: Annotated[int | None, typer.Option(help="stop after this many steps")] = None,
    batch: Annotated[int | None, typer.Option(
        help="images per step over all processes, 128 unless given (the lr stays the same)")
    ] = None,
    train: Annotated[
        str | None, typer.Option(help="training data spec (unlabelled: distillation only)")
    ] = None,
    eval_data: Annotated[str | None, typer.Option("--eval", help="labelled val. data")] = None,
    weights: WeightsOption = None,
    rex: Annotated[bool, typer.Option(help="fine-tune a REx-expanded model")] = False,
    out_dir: OutOption = None,
    checkpoints: Annotated[
        Path | None, typer.Option(help="checkpoint folder (default: <out>.qat)")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="continue from this checkpoint")] = None,
    bench: BenchOption = True,
    as_json: JsonOption = False,
    input_mode: InputOption = "normalized",
) -> None:
    """Quantization-aware training for TARGET, then the same checked bundle as convert.

    Runs data-parallel under `torchrun --nproc_per_node N -m edgeres.cli qat ...`.
    """
    from edgeres.convert import ConvertOptions

    opts = ConvertOptions(
        model=model,
        target=target,
        scheme="rex+qat" if rex else "qat",  # type: ignore[arg-type]
        weights=weights,
        eval=eval_data,
        bits=bits,
        out=out_dir,
        qat_steps=steps,
        qat_epochs=epochs,
        qat_batch=batch,
        train=train,
        qat_dir=checkpoints,
        resume=resume,
        bench=bench,
        input=input_mode,  # type: ignore[arg-type]  # checked by ConvertOptions
    )
    _run_convert(opts, as_json)


def _print_summary(result) -> None:  # noqa: ANN001 - ConvertResult
    s = result.summary()
    table = Table(title=f"{s['model']} -> {s['target']} ({s['scheme']})", show_header=False)
    table.add_column("what")
    table.add_column("value")
    for key in (
        "bundle",
        "model_file",
        "size_bytes",
        "input",
        "samples",
        "float_top1",
        "quant_top1",
        "float_top1_centre",
        "quant_top1_centre",
        "top1_agreement",
        "sqnr_db",
    ):
        if s.get(key) is not None:
            table.add_row(key, _fmt(s[key]))
    if s.get("expected_agreement") is not None:
        table.add_row("expected_agreement",
                      f"{s['expected_agreement']:.1f} +- {s['agreement_sd']:.1f} (at this noise)")
    if s.get("worst_layer"):
        table.add_row("worst_layer", s["worst_layer"])
    for key in ("tflm_arena_bytes", "arena_budget_bytes"):
        if key in result.manifest:
            table.add_row(key, _fmt(result.manifest[key]))
    if "vela" in result.manifest:
        v = result.manifest["vela"]
        table.add_row(
            "vela",
            f"{v['npu_ops']} ops on NPU, {v['cpu_ops']} on CPU, "
            f"{v['inference_ms']:.2f} ms est., SRAM {v['sram_bytes']:,} B",
        )
    if result.bench:
        for row in result.bench.get("latency", []):
            mem = row.get("peak_rss_delta_bytes")
            table.add_row(
                f"latency, {row['threads']} thread(s) ({result.bench['runtime']})",
                f"median {row['median_ms']:.3f} ms, p90 {row['p90_ms']:.3f} ms"
                + (f", peak +{mem / 2**20:.1f} MiB" if mem else ""),
            )
        for c in result.bench.get("budget", []):
            verdict = "PASS" if c["passed"] else "FAIL"
            table.add_row(
                "budget",
                f"{verdict} {c['what']} {c['value']:,.0f} {c['unit']} vs "
                f"{c['limit']:,.0f} {c['unit']} ({c['source']})",
            )
    where: dict[str, int] = {}
    for op in result.manifest["ops"]:
        where[op["where"]] = where.get(op["where"], 0) + 1
    table.add_row("ops", ", ".join(f"{k}: {v}" for k, v in sorted(where.items())))
    out.print(table)


@app.command()
def check(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    runtime: Annotated[
        str | None, typer.Option(help="onnxruntime | litert-xnnpack | litert-ref | tflm")
    ] = None,
    data: Annotated[str | None, typer.Option(help="data spec (default: the bundle's)")] = None,
    layers: Annotated[bool, typer.Option(help="per-layer float-vs-int debugger")] = True,
    min_agreement: Annotated[float | None, typer.Option(help="fail (exit 1) below this %")] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="fail (exit 1) above this drop (needs labelled --data)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-check a bundle: hashes, golden vectors, agreement with float.onnx, per-layer SQNR.

    Exits 1 (after printing) when the golden outputs differ beyond their tolerance or a floor
    is missed."""
    from edgeres.check_cli import run_check

    report = run_check(bundle, runtime, data, layers, min_agreement, max_drop)
    if as_json:
        print(json.dumps(report, sort_keys=True))
    else:
        from edgeres.check_cli import print_check

        print_check(report, out)
    if report["failed"]:
        raise AccuracyFloorError("; ".join(report["failed"]))


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="bundle folder")],
    threads: Annotated[str, typer.Option(help="comma-separated thread counts")] = "1,2",
    runs: Annotated[int, typer.Option(help="timed runs per setting")] = 50,
    target: Annotated[str | None, typer.Option(
        "--target", "-t", help="target name or .toml profile (default: the bundle's target)")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Measure latency, memory and size of a bundle's model on its target's runtime."""
    from edgeres.bundle import load_bundle
    from edgeres.harness.local import bench_local, bundle_target, parse_threads

    thr = parse_threads(threads)  # cheap checks first
    if not 1 <= runs <= MAX_BENCH_RUNS:
        raise UserError(f"--runs must be in [1, {MAX_BENCH_RUNS}], got {runs}")
    b = load_bundle(bundle)
    t = bundle_target(b, target)
    if t.device.transport == "local":
        res = bench_local(b.model_file, t, threads=thr, runs=runs)
    else:  # [device] transport = "ssh" | "adb": on the board or phone, not on this host
        from edgeres.harness.device import bench_on_device, open_transport

        with open_transport(t) as transport:
            res = bench_on_device(b.model_file, t, transport, threads=thr, runs=runs,
                                  progress=not as_json)
    if as_json:
        print(json.dumps(res.to_json(), sort_keys=True))
    else:
        from edgeres.harness import render_bench_table, summary_lines

        out.print(render_bench_table([res], title=f"{b.manifest['model']} on {t.name}"))
        for line in summary_lines(res):
            out.print(line, highlight=False)


def _fail(message: str) -> None:
    """One line on stderr, never wrapped (scripts grep it)."""
    print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    restore = one_interrupt_unwinds()
    try:
        return _run(argv)
    finally:
        restore()


def _run(argv: list[str] | None) -> int:
    try:
        rc = app(args=argv, standalone_mode=False)
    except UserError as exc:
        _fail(f"edgeres: error: {exc}")
        return 2
    except (AccuracyFloorError, BundleWrittenInterrupt) as exc:
        _fail(f"edgeres: {exc}")
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except OSError as exc:
        if exc.errno not in USER_OS_ERRORS:
            raise
        where = f" '{exc.filename}'" if exc.filename else ""
        _fail(f"edgeres: error:{where}: {exc.strerror} (check the path and its permissions)")
        return 2
    except Exception as exc:
        if (status := interrupt_status(exc)) is not None:  # wrapped by an extension module
            return status
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):  # click usage errors
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "edgeres"
            message = " ".join(exc.format_message().split())
            if not message:  # no arguments at all: the help is the answer
                exc.show()
            else:
                _fail(f"edgeres: error: {message} (see '{where} --help')")
            return int(exc.exit_code) or 2
        raise
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
