"""``edgeres check``: what it runs and how it prints (kept apart from the check primitives)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from edgeres.bundle import load_bundle
from edgeres.check import (
    RUNTIMES,
    check_golden,
    evaluate,
    golden_tolerance,
    layer_report,
    load_golden,
    missing_channel_scales,
)
from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError
from edgeres.gates import floor_failures, recorded_rejection


def check_options(runtime: str | None, data: str | None, min_agreement: float | None,
                  max_drop: float | None) -> None:
    """The options' own mistakes, before any work (same ranges as convert's floors)."""
    if runtime is not None and runtime not in RUNTIMES:
        raise UserError(f"--runtime must be one of {' | '.join(RUNTIMES)}, got '{runtime}'")
    for flag, value in (("--min-agreement", min_agreement), ("--max-drop", max_drop)):
        if value is not None and not math.isfinite(value):
            raise UserError(f"{flag} must be a finite number, got {value}")
    if min_agreement is not None and not 0.0 <= min_agreement <= 100.0:
        raise UserError(f"--min-agreement is a percentage in [0, 100], got {min_agreement}")
    if max_drop is not None and max_drop < 0:
        raise UserError(f"--max-drop is the largest top-1 loss in points allowed, >= 0; "
                        f"got {max_drop}")
    if max_drop is not None and not data:
        raise UserError("--max-drop needs labelled data: pass --data SPEC (the golden inputs "
                        "have no labels)")


def failures(report: dict, min_agreement: float | None, max_drop: float | None) -> list[str]:
    """Why the bundle fails the check (exit 1), one phrase each: golden outputs beyond their
    tolerance, agreement below --min-agreement, a top-1 drop above --max-drop."""
    out = []
    diff, tol = report["golden_max_code_diff"], report["golden_tolerance"]
    if diff > tol:
        out.append(f"golden vectors differ by up to {diff:.0f} codes (tolerance {tol}): the "
                   "model on this runtime, as the manifest quantizes its inputs, does not give "
                   "the bundle's golden outputs; rebuild the bundle with `edgeres convert`")
    if rejected := report.get("rejected_by_convert"):
        out.append(rejected)
    return out + floor_failures(report["agreement"], min_agreement, max_drop)


def run_check(root: Path, runtime: str | None, data: str | None, layers: bool,
              min_agreement: float | None = None, max_drop: float | None = None) -> dict:
    """Verify hashes, golden vectors, float agreement and the per-layer SQNR. ``failed`` lists
    what misses a tolerance or a stated floor (the CLI prints the report, then exits 1)."""
    check_options(runtime, data, min_agreement, max_drop)
    bundle = load_bundle(root)
    m = bundle.manifest
    report: dict = {"bundle": str(root), "model": m["model"], "target": m["target"], "hashes": "ok"}
    if rejected := recorded_rejection(m):
        report["rejected_by_convert"] = rejected
    report["golden_max_code_diff"] = check_golden(bundle, runtime)
    report["golden_tolerance"] = golden_tolerance(bundle, runtime)
    entry = m["inputs"][0]
    if data:
        from edgeres.data.specs import load_spec

        pre = Preprocess.from_json(entry["preprocess"])
        shape = entry["shape"]
        chans, size = (shape[3], shape[1]) if entry["layout"] == "NHWC" else (shape[1], shape[2])
        ds = load_spec(data, pre, chans, size)
        x = ds.x.numpy().astype(np.float32)
        y = ds.y.numpy() if ds.y is not None else None
        if max_drop is not None and y is None:
            raise UserError(f"--max-drop needs labelled data, and '{data}' has no labels")
        centre = ds.centre
        report["data"] = ds.name
    else:
        x, y, centre = load_golden(bundle)[0], None, None
        report["data"] = "golden inputs"
    report["agreement"] = evaluate(bundle, x, y, runtime, centre=centre).to_json()
    if bundle.model_file.suffix == ".onnx":
        from edgeres.runtime.onnxruntime import saturation_note

        if note := saturation_note(bundle.model_file):
            report["host_note"] = note
    if layers and missing_channel_scales(bundle):
        report["layers"] = {"skipped": "the bundle's plan smoothed activation channels but it "
                            "predates golden/channel_scales.npz; convert it again"}
    elif layers:
        report["layers"] = layer_report(bundle, x).to_json()
    report["failed"] = failures(report, min_agreement, max_drop)
    return report


def print_check(report: dict, console: Console) -> None:
    a = report["agreement"]
    t = Table(title=f"check {report['bundle']}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("hashes", report["hashes"])
    diff, tol = report["golden_max_code_diff"], report["golden_tolerance"]
    t.add_row("golden vectors", f"max code difference {diff:.0f} (tolerance {tol})"
              + ("" if diff <= tol else ": FAIL"))
    t.add_row("data", f"{report['data']} ({a['samples']} samples)")
    t.add_row("top-1 agreement with float", f"{a['top1_agreement']:.2f} %")
    if a.get("expected_agreement") is not None:
        t.add_row("expected at this noise", f"{a['expected_agreement']:.1f} +- "
                  f"{a['agreement_sd']:.1f} % (near ties make one count a draw)")
    t.add_row("logits SQNR", f"{a['sqnr_db']:.2f} dB")
    if a.get("float_top1") is not None:
        t.add_row("top-1 float / quantized", f"{a['float_top1']:.2f} / {a['quant_top1']:.2f} %")
    if a.get("float_top1_centre") is not None:
        t.add_row(f"top-1 on the {a['centre_samples']} centre crops, float / quantized",
                  f"{a['float_top1_centre']:.2f} / {a['quant_top1_centre']:.2f} %")
    layers = report.get("layers", {})
    if "skipped" in layers:
        t.add_row("per-layer debugger", f"skipped: {layers['skipped']}")
    if "worst_local" in layers:
        worst = layers["worst_local"]
        sim = layers.get("sim_local_db")
        t.add_row("adds the most error here", "none measured" if worst is None else
                  f"{worst}: {layers['worst_local_db']:.1f} dB alone"
                  + ("" if sim is None else f" (simulation {sim:.1f} dB)"))
        low = sorted((x for x in layers["layers"] if x["sqnr_db"] is not None),
                     key=lambda x: x["sqnr_db"])[:3]
        t.add_row("lowest cumulative", ", ".join(f"{x['tensor']} {x['sqnr_db']:.1f} dB"
                                                  for x in low))
    if report.get("host_note"):
        t.add_row("this host", report["host_note"])
    console.print(t)


__all__ = ["run_check", "print_check", "UserError"]
