"""QAT benchmark (issue 6): QAT against float, PTQ and REx on the Fashion-MNIST test set, and
the exported files in their runtimes against the trained brevitas network.

    python tools/bench_qat.py                                  # both schemes, 1 epoch each
    python tools/bench_qat.py --epochs 3 --threads 8           # a longer run
    python tools/bench_qat.py --steps 20 --train-limit 2048 --test-limit 500   # smoke
    torchrun --nproc_per_node 4 tools/bench_qat.py --epochs 3  # data-parallel (CPU: gloo)

Schemes: W4A8 per-channel on ``arm-cpu-onnx`` (the TFLite CPU target allows only 8-bit weights;
the ONNX targets allow [4, 8]) exported as QDQ ONNX and run in ONNX Runtime; W8A8 per-tensor on
``npu-int8-per-tensor`` exported as TFLite and run in LiteRT (XNNPACK by default: the reference
kernels take minutes for 10k images), with REx (order 2) and REx + QAT rows beside it.
Accuracies of PTQ, REx and QAT come from the brevitas network, which the QModel simulates
within 1 LSB; ``file`` is the exported model in its runtime. The test set doubles as the
per-epoch validation set (no model selection uses it: the last step is kept).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import batched_logits, console, print_table, top1, write_record  # noqa: E402

from edgeres.config import QATConfig, RExConfig  # noqa: E402
from edgeres.data.specs import DataSet, load_spec  # noqa: E402
from edgeres.quant.qat_train import QATResult, run_qat  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model, get_entry  # noqa: E402

# name -> (target, weight bits, per-channel, also REx + QAT)
SCHEMES = {
    "w4a8-per-channel": ("arm-cpu-onnx", 4, True, False),
    "w8a8-per-tensor": ("npu-int8-per-tensor", 8, False, True),
}


def _data(model: str, args: argparse.Namespace) -> tuple[DataSet, DataSet]:
    e = get_entry(model)
    train = load_spec(f"fmnist:train@{args.train_limit}" if args.train_limit else "fmnist:train",
                      e.preprocess, e.in_chans, e.img_size)
    test = load_spec(f"fmnist:test@{args.test_limit}" if args.test_limit else "fmnist:test",
                     e.preprocess, e.in_chans, e.img_size)
    return train, test


def file_accuracy(res: QATResult, target: str, x: torch.Tensor, y: torch.Tensor,
                  kernels: str) -> tuple[float, str]:
    """Top-1 of the exported QAT model in the target's runtime, and which runtime that was."""
    fmt = load_target(target).format
    with tempfile.TemporaryDirectory() as tmp:
        if fmt == "onnx":
            from edgeres.export.onnx import export_onnx
            from edgeres.runtime.onnxruntime import run_onnx

            path = Path(tmp) / "qat.onnx"
            export_onnx(res.qmodel, path)
            logits = batched_logits(lambda b: torch.from_numpy(
                run_onnx(path, [b.numpy().astype(np.float32)])[0]), x)
            return top1(logits, y), "onnxruntime"
        from edgeres.export.tflite import export_tflite
        from edgeres.runtime.litert import run_tflite

        path = Path(tmp) / "qat.tflite"
        export_tflite(res.qmodel, path, "float32")
        logits = batched_logits(lambda b: torch.from_numpy(run_tflite(
            path, [b.permute(0, 2, 3, 1).numpy().astype(np.float32)], kernels=kernels)[0]), x)
        return top1(logits, y), f"litert-{kernels}"


def run_scheme(name: str, model: str, train: DataSet, test: DataSet, args: argparse.Namespace,
               rex: bool) -> dict:
    target, bits, per_channel, _ = SCHEMES[name]
    steps = args.rex_steps if rex and args.rex_steps is not None else args.steps
    cfg = QATConfig(weight_bits=bits, act_bits=8, per_channel=per_channel, epochs=args.epochs,
                    steps=steps, lr=args.lr, batch=args.batch, seed=args.seed)
    torch.manual_seed(args.seed)  # the same random init in every row of a --weights none run
    net = create_model(model, pretrained=args.weights)
    out = args.work / f"{model}-{name}{'-rex' if rex else ''}"
    shutil.rmtree(out, ignore_errors=True)  # scratch: every benchmark row trains afresh
    res = run_qat(net, load_target(target), cfg, train, test, out, progress=not args.quiet,
                  rex=RExConfig(order=2, sparsity=0.5) if rex else None)
    row = {"scheme": name + (" + REx2" if rex else ""), "target": target,
           "float": res.float_acc, "start": res.start_scheme, "start_acc": res.start_acc,
           "qat": res.qat_acc, "qat_drop": res.float_acc - res.qat_acc, "epochs": res.epochs,
           "steps": res.steps, "wall_s": res.wall_s, "history": res.history}
    if not args.no_files and int(os.environ.get("RANK", "0")) == 0:
        t0 = time.perf_counter()
        acc, runtime = file_accuracy(res, target, test.x, test.y, args.kernels)
        row.update(file=acc, runtime=runtime, file_vs_qat=abs(acc - res.qat_acc),
                   file_s=round(time.perf_counter() - t0, 1))
    return row


def rex_only(name: str, model: str, train: DataSet, test: DataSet,
             args: argparse.Namespace) -> dict:
    """REx order 2 without training, on the same calibration samples QAT starts from."""
    from edgeres.graph.capture import capture
    from edgeres.quant.qat_train import init_net

    target, bits, per_channel, _ = SCHEMES[name]
    cfg = QATConfig(weight_bits=bits, per_channel=per_channel, seed=args.seed)
    torch.manual_seed(args.seed)
    net = create_model(model, pretrained=args.weights)
    t0 = time.perf_counter()
    qat_net, _ = init_net(capture(net, train.x[:1]), load_target(target), cfg, train,
                          RExConfig(order=2, sparsity=0.5))
    secs = time.perf_counter() - t0
    qat_net.eval()
    with torch.no_grad():
        acc = top1(batched_logits(qat_net, test.x), test.y)
    return {"scheme": name + " REx2 (no training)", "target": target, "start": "rex",
            "start_acc": acc, "wall_s": round(secs, 2)}


def _weights_record(args: argparse.Namespace) -> dict | None:
    """Which float weights were trained from (the shipped file may be retrained later)."""
    if args.weights is None:
        return None
    e = get_entry(args.model)
    path = e.weights[args.weights]() if args.weights in e.weights else Path(args.weights)
    return {"name": str(args.weights), "path": str(path),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_fmnist")
    ap.add_argument("--weights", default="fmnist",
                    help="zoo weights name or path ('none': random init, for smoke runs)")
    ap.add_argument("--schemes", nargs="*", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="cap optimizer steps per scheme")
    ap.add_argument("--rex-steps", type=int, default=None, help="cap for the REx + QAT row")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=QATConfig().lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None, help="training images (all 60k)")
    ap.add_argument("--test-limit", type=int, default=None, help="test images (all 10k)")
    ap.add_argument("--no-rex", action="store_true", help="skip the REx and REx + QAT rows")
    ap.add_argument("--no-files", action="store_true", help="skip exporting and running files")
    ap.add_argument("--kernels", default="xnnpack", choices=["ref", "xnnpack", "builtin"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeres-bench-qat")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_qat.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.weights = None if args.weights == "none" else args.weights
    train, test = _data(args.model, args)
    rows = []
    for name in args.schemes:
        rows.append(run_scheme(name, args.model, train, test, args, rex=False))
        if SCHEMES[name][3] and not args.no_rex:
            rows.append(rex_only(name, args.model, train, test, args))
            rows.append(run_scheme(name, args.model, train, test, args, rex=True))
    if int(os.environ.get("RANK", "0")) != 0:
        return
    console.width = max(console.width, 160)
    cols = ["scheme", "target", "float", "start", "start_acc", "qat", "qat_drop", "file",
            "runtime", "file_vs_qat", "epochs", "steps", "wall_s"]
    print_table(f"QAT benchmark: {args.model} on {test.name}", rows, cols)
    bad = [r["scheme"] for r in rows if r.get("file_vs_qat", 0.0) > 0.05]
    if bad:
        console.print(f"[red]exported files differ from the brevitas model by > 0.05: {bad}")
    write_record(args.out, "bench_qat.py", None, model=args.model, weights=_weights_record(args),
                 data={"train": train.name, "test": test.name}, rows=rows)


if __name__ == "__main__":
    main()
