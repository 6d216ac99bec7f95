"""``edgeres convert``: model + target -> a checked app bundle, in one call.

>>> from edgeres.convert import ConvertOptions, convert
>>> result = convert(ConvertOptions("mobilenet_v2_fmnist", "arm-cpu-tflite", out=tmp_path))
>>> result.manifest["metrics"]["top1_agreement"] > 99
True
"""

from __future__ import annotations

import io
import math
import os
import time
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from edgeres.bundle import (
    CHANNEL_SCALES,
    MANIFEST,
    Bundle,
    check_replaceable,
    load_bundle,
    write_manifest,
)
from edgeres.check import (
    HOST_RUNTIME,
    encode_input,
    evaluate,
    run_model,
    sqnr_db,
)
from edgeres.config import PTQConfig, RExConfig
from edgeres.convert_options import ConvertOptions
from edgeres.data.preprocess import Preprocess
from edgeres.data.specs import UNLABELLED_KINDS, DataSet, DataSpec, load_spec
from edgeres.errors import AccuracyFloorError, UserError
from edgeres.gates import floor_failures
from edgeres.graph.capture import capture
from edgeres.graph.ir import run_graph
from edgeres.graph.pixels import (
    fold_input_normalization,
    input_gain,
    pad_pixel,
    pixel_preprocess,
    pixel_range,
    to_pixels,
)
from edgeres.graph.rewrites import lower_for_target
from edgeres.paths import check_output_folder, enclosing_bundle
from edgeres.quant.plan import is_depthwise, make_plan
from edgeres.quant.ptq import layer_errors, quantize_graph
from edgeres.quant.qmodel import QModel
from edgeres.report import write_report
from edgeres.resolve import ResolvedModel, parse_bits, resolve_model
from edgeres.staging import after_publish, staged_bundle
from edgeres.target_extras import mcu_extras, vela_extras
from edgeres.targets import Target, load_target

GOLDEN_SAMPLES = 8


@dataclass
class ConvertResult:
    bundle: Path
    manifest: dict
    report: dict
    bench: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)
    qmodel: QModel | None = None

    def summary(self) -> dict:
        m = self.manifest["metrics"]
        out = {
            "bundle": str(self.bundle),
            "model": self.manifest["model"],
            "target": self.manifest["target"],
            "scheme": self.manifest["scheme"],
            "model_file": self.manifest["model_file"],
            "size_bytes": self.manifest["size_bytes"],
            **({"input": self.report["summary"]["input"]}
               if "input" in self.report.get("summary", {}) else {}),
            **m,
            **({"gates": self.manifest["gates"]} if "gates" in self.manifest else {}),
        }
        scored = [d for d in self.report.get("layer_sqnr", [])
                  if d.get("local_sqnr_db") and not d.get("partial")]
        if scored:  # where to look first when the figures disappoint: where error enters
            worst = min(scored, key=lambda d: d["local_sqnr_db"])
            clipped = worst.get("clipped_pct")
            out["worst_layer"] = (
                f"{worst['layer']}: {worst['local_sqnr_db']} dB alone, {worst['sqnr_db']} dB "
                "cumulative" + ("" if clipped is None else f", {clipped:.2f} % of its values "
                                "clipped"))
        if self.bench:
            out["bench"] = self.bench
        return out


def default_calib(rm: ResolvedModel) -> str:
    return {"fmnist": "fmnist:train@512", "imagenet": "photos@128"}.get(
        rm.label_set or "", "synthetic@32"
    )


def default_eval(rm: ResolvedModel) -> str:
    return {"fmnist": "fmnist:test@1000", "imagenet": "imagenet-10crop"}.get(
        rm.label_set or "", "synthetic@16"
    )


def _quantize(
    rm: ResolvedModel, opts: ConvertOptions, target: Target, calib: DataSet, graph, progress: bool,
    folded: Preprocess | None = None,
) -> QModel:  # noqa: ANN001 - Graph
    """``folded``: for a pixels-in graph, the normalization folded into it: the input's range
    follows from it, and QAT loads its data in that space, as convert did, then moves it to
    pixels."""
    wbits, abits = parse_bits(opts.bits)
    ptq = PTQConfig(weight_bits=wbits, act_bits=abits, ignore=tuple(opts.ignore),
                    adaround_iters=opts.adaround_iters, smooth_alpha=opts.smooth_alpha,
                    reconstruct_iters=opts.reconstruct_iters,
                    output_bias_correction=opts.output_bias_correction,
                    act_observer=opts.act_observer, percentile=opts.percentile,
                    input_range=pixel_range(folded) if folded is not None else None)
    if opts.scheme == "ptq":
        return quantize_graph(graph, ptq, target, calib.x, progress)
    rex = RExConfig(
        order=opts.rex_order,
        sparsity=opts.rex_sparsity,
        weight_bits=wbits,
        budget_macs=opts.rex_budget_macs,
        ptq=ptq,
    )
    if opts.scheme == "rex":
        from edgeres.graph.rex_expand import quantize_rex

        return quantize_rex(graph, rex, target, calib.x, progress=progress)
    if opts.scheme in ("qat", "rex+qat"):
        return _qat(rm, graph, target, opts, progress, rex if opts.scheme == "rex+qat" else None,
                    folded)
    raise UserError(f"unknown scheme '{opts.scheme}' (ptq, rex, qat or rex+qat)")


def _qat(
    rm: ResolvedModel,
    graph,  # noqa: ANN001 - Graph
    target: Target,
    opts: ConvertOptions,
    progress: bool,
    rex: RExConfig | None = None,
    folded: Preprocess | None = None,
) -> QModel:
    """QAT on the model's labelled training data (or ``opts.train``), checkpointing every epoch
    into ``opts.qat_dir``; runs data-parallel when started by torchrun. Unlabelled training
    data trains by distillation from the float model alone (``distill_alpha=1``)."""
    from edgeres.quant.qat_train import run_qat

    cfg, train_spec, val_spec = qat_setup(rm, opts, folded)

    def load(spec: str) -> DataSet:
        ds = load_spec(spec, folded or rm.preprocess, rm.in_chans, rm.img_size, model=rm.module)
        return replace(ds, x=to_pixels(ds.x, folded)) if folded else ds

    train = load(train_spec)
    if train.y is None:  # unlabelled images (photos, a folder without classes): the float
        cfg = replace(cfg, distill_alpha=1.0)  # model is the only teacher
    val = load(val_spec)
    if val.y is None:
        raise UserError(f"QAT validation data '{val_spec}' has no labels; give --eval labelled "
                        "data (fmnist:test, a folder of class sub-folders, an .npz with y)")
    out = bundle_dir(opts, rm, target)
    ckpt_dir = Path(opts.qat_dir) if opts.qat_dir else out.with_name(out.name + ".qat")
    return run_qat(graph, target, cfg, train, val, ckpt_dir, resume=opts.resume,
                   progress=progress, rex=rex).qmodel


def qat_setup(  # noqa: ANN201 - (QATConfig, str, str)
    rm: ResolvedModel, opts: ConvertOptions, folded: Preprocess | None = None
):
    """The QAT config and data specs, checked before any data is loaded; ``folded``: the
    normalization a pixels-in graph has folded in."""
    from edgeres.config import QATConfig

    wbits, abits = parse_bits(opts.bits)
    cfg = QATConfig(weight_bits=wbits, act_bits=abits, epochs=opts.qat_epochs,
                    steps=opts.qat_steps)
    if opts.qat_batch is not None:
        cfg = replace(cfg, batch=opts.qat_batch)
    if folded is not None:  # pixels in: the input stays at one code per byte
        cfg = replace(cfg, input_range=pixel_range(folded), input_gain=input_gain(folded))
    train_spec = opts.train or ("fmnist:train" if rm.label_set == "fmnist" else None)
    if train_spec is None:
        raise UserError(
            f"QAT needs training data for '{rm.name}': pass --train SPEC (labelled: a folder "
            "of class sub-folders or an .npz with x and y; unlabelled images such as "
            "photos@1024 train by distillation from the float model alone), or use --scheme "
            "ptq|rex"
        )
    val_spec = opts.eval or default_eval(rm)
    for spec in (train_spec, val_spec):
        DataSpec.parse(spec)
    if DataSpec.parse(val_spec).kind in UNLABELLED_KINDS:  # before minutes of synthesis
        raise UserError(f"QAT validation data '{val_spec}' has no labels; pass --eval SPEC "
                        "(labelled: fmnist:test, a folder of class sub-folders, an .npz with y)")
    return cfg, train_spec, val_spec


def bundle_dir(opts: ConvertOptions, rm: ResolvedModel, target: Target) -> Path:
    """``--out`` with ``..`` folded (so ``a/b/../c`` makes no stray ``a/b``), or the default."""
    if opts.out is None:
        return Path("out") / f"{rm.name}-{target.name}"
    return Path(os.path.normpath(opts.out))


def _check_place(path: Path, flag: str) -> None:
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise UserError(f"{flag} {path} is the current folder or holds it; name a folder "
                        "beside it, e.g. out/my-bundle")
    if (inside := enclosing_bundle(path)) is not None:
        raise UserError(f"{flag} {path} is inside the bundle {inside}; name a folder outside it")


def check_output_paths(opts: ConvertOptions, out: Path) -> None:
    """The bundle folder (its .rejected twin when gated, QAT's checkpoint folder and the
    checkpoint to resume) can be used: said in a second, not after calibration or training."""
    check_output_folder(out, "--out")
    _check_place(out, "--out")
    check_replaceable(out)
    if opts.min_agreement is not None or opts.max_drop is not None:
        check_replaceable(rejected_dir(out))  # where a missed gate puts the bundle
    if opts.scheme in ("qat", "rex+qat"):
        ckpt = Path(opts.qat_dir) if opts.qat_dir else out.with_name(out.name + ".qat")
        a, b = ckpt.resolve(), out.resolve()
        if (ckpt / MANIFEST).exists():
            raise UserError(f"--checkpoints {ckpt} is a bundle folder; checkpoints go beside "
                            "the bundle (the default is <out>.qat)")
        if a == b or b in a.parents or a in b.parents:
            raise UserError(f"--checkpoints {ckpt} is, holds or is inside the bundle folder "
                            f"{out}; checkpoints go beside the bundle (the default is <out>.qat)")
        _check_place(ckpt, "--checkpoints")
        check_output_folder(ckpt, "--checkpoints")
    if opts.resume is not None:
        from edgeres.quant.qat_train import CHECKPOINT_NAME

        resume = Path(opts.resume)
        if not (resume.is_file() or (resume / CHECKPOINT_NAME).is_file()):
            raise UserError(f"--resume {resume}: no checkpoint there (give the "
                            f"{CHECKPOINT_NAME} an edgeres qat run wrote, or its folder)")


def is_worker_rank() -> bool:
    """True in a torchrun process other than rank 0: it trains but writes no bundle."""
    return int(os.environ.get("RANK", "0")) != 0


def _export(qmodel: QModel, graph, target: Target, stage: Path) -> tuple[str, dict]:  # noqa: ANN001
    from edgeres.export.onnx import export_onnx

    export_onnx(graph, stage / "float.onnx")
    if target.format == "onnx":
        io_mode = "float" if target.io_dtype == "float32" else "int"
        # weight storage (int8, or uint8 + 128 for x86-cpu-onnx) follows the QModel's target
        info = export_onnx(qmodel, stage / "model.onnx", io=io_mode)
        return "model.onnx", _portable(info.to_json())
    from edgeres.export.tflite import export_tflite

    io_dtype = "float32" if target.io_dtype == "float32" else "int8"
    # GELU / SiLU as the profile's [ops.lowering] says (recorded in the QModel's meta)
    info = export_tflite(qmodel, stage / "model.tflite", io_dtype)
    return "model.tflite", _portable(info.to_json())


def _portable(info: dict) -> dict:
    """Export info without the staging path, so bundles are byte-identical across runs."""
    info = dict(info)
    info["path"] = Path(info["path"]).name
    return info


def _io_entries(
    info: dict, rm: ResolvedModel, pixel_offset: int | None = None
) -> tuple[list[dict], list[dict]]:
    def entry(t: dict, pre: bool) -> dict:
        e = {
            "name": t["name"],
            "shape": list(t["shape"]),
            "layout": t["layout"],
            "dtype": t["dtype"],
            "scale": t["scale"],
            "zero_point": t["zero_point"],
        }
        if pre:
            e["preprocess"] = rm.preprocess.to_json()
            if pixel_offset is not None:
                e["pixel_offset"] = pixel_offset
        return e

    return [entry(t, True) for t in info["inputs"]], [entry(t, False) for t in info["outputs"]]


FOLD_CHECK_SAMPLES = 256  # ImageNet's 200 ten-crop views, all of them
FOLD_CHECK_BATCH = 50


def _pixels_in(
    graph, calib: DataSet, evalset: DataSet, rm: ResolvedModel  # noqa: ANN001 - Graph
) -> tuple:  # (Graph, DataSet, DataSet, ResolvedModel, dict)
    """Fold the input normalization into the first convs (:mod:`edgeres.graph.pixels`), move
    the data into pixel space, and measure what the fold changed (only border pads move):
    float.onnx is then the folded model, so the bundle's metrics are against it, and this
    note is what ties it to the model the user gave."""
    pre = rm.preprocess
    folded = fold_input_normalization(graph, pre)
    calib = replace(calib, x=to_pixels(calib.x, pre))
    normalized = evalset.x[:FOLD_CHECK_SAMPLES]
    evalset = replace(evalset, x=to_pixels(evalset.x, pre))

    def logits(g, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001 - Graph
        return torch.cat([run_graph(g, x[i : i + FOLD_CHECK_BATCH])[g.outputs[0]]
                          for i in range(0, len(x), FOLD_CHECK_BATCH)]).double().numpy()

    ref = logits(graph, normalized)
    got = logits(folded, evalset.x[:FOLD_CHECK_SAMPLES])
    top2 = np.sort(ref, axis=-1)[:, -2:]
    flips = np.nonzero(ref.argmax(-1) != got.argmax(-1))[0]
    note = {
        "pixel_offset": pad_pixel(pre),
        "normalization_folded": pre.to_json(),
        "samples": len(ref),
        "float_sqnr_db": None if math.isinf(db := sqnr_db(ref, got)) else round(db, 2),
        "float_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean() * 100),
        "float_flips": [{"input": int(i), "float_margin": round(float(top2[i, 1] - top2[i, 0]), 4)}
                        for i in flips],
        "why": "float.onnx and model take pixel - pixel_offset; a conv pads with pixel "
               "pixel_offset where the float model padded each channel's mean",
    }
    return folded, calib, evalset, replace(rm, preprocess=pixel_preprocess(pre)), note


def _ops(qmodel: QModel, target: Target) -> list[dict]:
    """Where each IR node runs on the target, and why."""
    plan = qmodel.meta["plan"]
    engine = {"npu": "npu", "mcu": "mcu-int8", "cpu": "cpu-int8"}[target.family]
    out = []
    for node in qmodel.graph.nodes:
        kind = node.attrs.get("kind") if node.op == "act" else None
        label = f"{node.op}({kind})" if kind else node.op
        if node.name in plan["float_nodes"]:
            out.append(
                {
                    "node": node.name,
                    "op": label,
                    "where": "cpu-float",
                    "why": plan["float_nodes"][node.name],
                }
            )
            continue
        place = target.placement(node.op, kind)
        where = engine if place == "integer" else "cpu-int8"
        why = "" if place == "integer" else f"{target.name} runs {label} on the host CPU"
        if is_depthwise(node) and node.name in plan["weights"]:
            why = why or f"depthwise, weights {plan['weights'][node.name]}"
        out.append({"node": node.name, "op": label, "where": where, "why": why})
    return out


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A reproducible .npz (fixed zip timestamps, unlike ``np.savez``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            zf.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buf.getvalue()
            )


def convert(
    opts: ConvertOptions, progress: bool = True, console: Console | None = None
) -> ConvertResult | None:
    """Quantize, export, check and bundle ``opts.model`` for ``opts.target``.

    Returns None in torchrun ranks other than 0 (they train; rank 0 alone writes the bundle).
    """
    console = console or Console(stderr=True, quiet=not progress)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    target = load_target(opts.target)
    parse_bits(opts.bits)  # cheap checks first: a typo should not wait for a model to load
    for spec in (opts.calib, opts.eval):
        if spec:
            DataSpec.parse(spec)
    rm = resolve_model(opts.model, opts.weights)
    check_output_paths(opts, bundle_dir(opts, rm, target))  # before minutes of work
    if opts.scheme in ("qat", "rex+qat"):
        qat_setup(rm, opts)
    # lowered here too (quantize_graph does it anyway) so float.onnx names every node the
    # device runs and `edgeres check` can compare them one by one; captured before any data
    # loads, so a plan the target refuses (an --ignore typo, bits it lacks) fails in seconds
    example = torch.zeros(1, rm.in_chans, rm.img_size, rm.img_size)
    graph = lower_for_target(capture(rm.module, example), target.ops.lowering)
    wbits, abits = parse_bits(opts.bits)  # REx checks its term bits itself, with its own words
    make_plan(graph, target, 8 if opts.scheme.startswith("rex") else wbits, abits,
              ignore=tuple(opts.ignore))
    torch.manual_seed(0)
    if "qat" in opts.scheme:  # QAT calibrates its start on its training data (run_qat)
        from edgeres.quant.qat_train import CALIBRATION_SAMPLES

        calib = DataSet(torch.zeros(0, rm.in_chans, rm.img_size, rm.img_size), None,
                        f"{CALIBRATION_SAMPLES} images of {qat_setup(rm, opts)[1]}")
    else:
        calib = load_spec(opts.calib or default_calib(rm), rm.preprocess, rm.in_chans,
                          rm.img_size, model=rm.module, progress=progress,
                          num_classes=rm.num_classes)  # a label with no output: a user error
    evalset = load_spec(
        opts.eval or default_eval(rm),
        rm.preprocess,
        rm.in_chans,
        rm.img_size,
        model=rm.module,
        progress=progress,
        num_classes=rm.num_classes,  # a label the model has no output for is a user error
    )
    if opts.max_drop is not None and evalset.y is None:
        raise UserError(f"--max-drop compares top-1 with float's, but the evaluation data "
                        f"'{evalset.name}' has no labels: give labelled --eval data, or gate on "
                        "--min-agreement")
    pixels_note, folded = None, None
    if opts.input == "pixels":
        folded = rm.preprocess
        graph, calib, evalset, rm, pixels_note = _pixels_in(graph, calib, evalset, rm)
        flips = pixels_note["float_flips"]
        console.log(f"pixels in: the model takes pixel - {pixels_note['pixel_offset']}; the "
                    f"folded float model agrees on {pixels_note['float_agreement']:.1f} % of "
                    f"{pixels_note['samples']} inputs at {pixels_note['float_sqnr_db']} dB"
                    + (f" (it flips {len(flips)}, float margins up to "
                       f"{max(f['float_margin'] for f in flips):.3g})" if flips else ""))
    console.log(f"{rm.name}: {len(graph.nodes)} ops captured; calibrating on {calib.name}")
    t1 = time.perf_counter()
    qmodel = _quantize(rm, opts, target, calib, graph, progress, folded)
    timings["quantize_s"] = time.perf_counter() - t1
    if is_worker_rank():
        return None
    out = bundle_dir(opts, rm, target)
    x_eval = evalset.x.numpy().astype(np.float32)
    y_eval = evalset.y.numpy() if evalset.y is not None else None
    with staged_bundle(out, log=console.log) as staging:
        stage = staging.path
        model_file, info = _export(qmodel, graph, target, stage)
        inputs, outputs = _io_entries(
            info, rm, pixels_note["pixel_offset"] if pixels_note else None)
        manifest = {
            "model": rm.name,
            "target": target.name,
            "scheme": opts.scheme,
            "bits": opts.bits,
            "runtime": target.runtime,
            "format": target.format,
            "model_file": model_file,
            "inputs": inputs,
            "outputs": outputs,
            "labels": rm.labels,
            "weights": rm.weights,
            "tensor_order": qmodel.graph.tensors(),
            "size_bytes": info["size_bytes"],
        }
        bundle = Bundle(stage, manifest)
        console.log(
            f"exported {model_file}; checking on {evalset.name} ({HOST_RUNTIME[target.runtime]})"
        )
        t2 = time.perf_counter()
        metrics = evaluate(bundle, x_eval, y_eval, centre=evalset.centre).to_json()
        if model_file.endswith(".onnx"):
            from edgeres.runtime.onnxruntime import saturation_note

            # host-specific: logged, never written into the bundle
            if note := saturation_note(stage / model_file):
                console.log(note)
        timings["check_s"] = time.perf_counter() - t2
        gx = x_eval[:GOLDEN_SAMPLES]
        raw = run_model(bundle, gx)[0]
        save_arrays(
            stage / "golden" / "golden.npz",
            {"x": gx, "x_raw": encode_input(gx, inputs[0]), "y_raw": raw},
        )
        if qmodel.meta.get("smooth_divisors"):  # so `edgeres check` can undo them per layer
            save_arrays(stage / "golden" / CHANNEL_SCALES, {
                t: s.numpy().astype(np.float32) for t, s in qmodel.meta["smooth_divisors"].items()})
        extras: dict = {}
        if target.runtime == "tflm":
            extras = mcu_extras(stage, target, rm, gx, bundle)
        elif target.runtime == "vela":
            extras = vela_extras(stage, target, bundle)
        layers = layer_errors(qmodel, torch.from_numpy(x_eval[:4]))
        from edgeres import __version__

        manifest.update(
            metrics=metrics, ops=_ops(qmodel, target), edgeres_version=__version__, **extras
        )
        failed = floor_failures(metrics, opts.min_agreement, opts.max_drop)
        if opts.min_agreement is not None or opts.max_drop is not None:
            manifest["gates"] = {"min_agreement": opts.min_agreement, "max_drop": opts.max_drop,
                                 "passed": not failed, "failures": failed}
        if failed:
            staging.dest = rejected_dir(out)
        report = {
            "model": rm.name,
            "target": target.name,
            "metrics": metrics,
            "summary": {
                "scheme": opts.scheme,
                "bits": opts.bits,
                "calibration": calib.name,
                "evaluation": evalset.name,
                "model_file": model_file,
                "size_bytes": info["size_bytes"],
                **({"input": f"pixel - {pixels_note['pixel_offset']}, normalization folded "
                    f"(vs the original float: {pixels_note['float_agreement']:.1f} %, "
                    f"{pixels_note['float_sqnr_db']} dB)"} if pixels_note else {}),
                **{k: v for k, v in extras.items() if not isinstance(v, dict)},
            },
            "plan": qmodel.meta.get("plan", {}),
            **{k: qmodel.meta[k]
               for k in ("config", "smooth", "reconstruct", "output_bias_correction")
               if k in qmodel.meta},
            **({"pixels_in": pixels_note} if pixels_note else {}),
            "export": info,
            "ops": manifest["ops"],
            "layer_sqnr": [e.to_json() for e in layers],
            **extras,
        }
        write_report(stage, report)
        manifest = write_manifest(stage, manifest)
    with after_publish(staging.dest):
        timings["total_s"] = time.perf_counter() - t0
        result = ConvertResult(staging.dest, manifest, report, timings=timings, qmodel=qmodel)
        if opts.bench:
            from edgeres.harness.local import bench_local

            result.bench = bench_local(staging.dest / model_file, target,
                                       threads=opts.threads).to_json()
    if failed:
        kept = f"{out} keeps what it held" if out.exists() else f"{out} was not written"
        exc = AccuracyFloorError("; ".join(failed) + f": the bundle went to {staging.dest}, "
                                 f"and {kept}")
        exc.result = result  # type: ignore[attr-defined]  (the CLI still prints the summary)
        raise exc
    return result


def rejected_dir(out: Path) -> Path:
    """Where a bundle that misses its gate goes: beside ``out``, which keeps what it held (a
    build tool that sees ``out`` up to date must not ship the rejected model)."""
    return out.with_name(out.name + ".rejected")


def options_json(opts: ConvertOptions) -> dict:
    d = asdict(opts)
    for key in ("out", "qat_dir", "resume"):
        d[key] = str(d[key]) if d[key] else None
    return d


__all__ = ["ConvertOptions", "ConvertResult", "convert", "load_bundle"]
