"""QAT of ImageNet MobileNetV2-1.0 with no ImageNet data: distillation on unlabelled photos.

    python tools/bench_qat_photos.py --photos 1024 --steps 400 --lr 5e-4 --batch 32

There is no labelled ImageNet training set on these machines, so the only teacher is the float
model: QAT minimises the KL divergence between the int8 network's and the float network's
outputs on random crops of the 21 photos (``distill_alpha=1``, what ``edgeres qat
mobilenet_v2_100 --train photos@N`` does). Scored as the PTQ benchmark: top-1 on the 20
labelled samples, agreement and logits SQNR against float on those plus the 240 crop/flip
views, for the PTQ start point (calibrated on the training photos, as QAT starts), the trained
network's simulation, and the exported int8 .tflite in LiteRT (XNNPACK).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import (  # noqa: E402
    agreement,
    batched_logits,
    imagenet_sets,
    print_table,
    sqnr,
    top1,
    write_record,
)

from edgeres.config import QATConfig  # noqa: E402
from edgeres.data.photos import photo_calibration_set  # noqa: E402
from edgeres.data.preprocess import IMAGENET  # noqa: E402
from edgeres.data.specs import DataSet  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.graph.ir import run_graph  # noqa: E402
from edgeres.quant.qat_train import init_net, run_qat  # noqa: E402
from edgeres.quant.qmodel import QModel  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402

TARGET = "arm-cpu-tflite"


def tflite_logits(qm: QModel, x: torch.Tensor) -> torch.Tensor:
    """The exported int8 file (float32 I/O) run by LiteRT's XNNPACK kernels."""
    from edgeres.export.tflite import export_tflite
    from edgeres.runtime.litert import run_tflite

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "qat.tflite"
        export_tflite(qm, path, "float32")
        return batched_logits(lambda b: torch.from_numpy(run_tflite(
            path, [b.permute(0, 2, 3, 1).numpy().astype(np.float32)], kernels="xnnpack")[0]),
            x, batch=20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=1024, help="training views of the photos")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_qat_photos.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    s20, crops, _ = imagenet_sets()
    x = torch.cat([s20.x, crops.x])
    net = create_model("mobilenet_v2_100", pretrained=True)
    train = DataSet(photo_calibration_set(IMAGENET, n=args.photos, seed=1), None,
                    f"photos@{args.photos}")
    graph = capture(net, train.x[:1])
    ref = batched_logits(lambda b: run_graph(graph, b)[graph.outputs[0]], x, batch=20)
    target = load_target(TARGET)
    epochs = max(1, -(-args.steps * args.batch // args.photos))
    cfg = QATConfig(epochs=epochs, steps=args.steps, lr=args.lr, batch=args.batch,
                    distill_alpha=1.0)

    def row(method: str, logits: torch.Tensor, **extra: object) -> dict:
        r = {"method": method, "top1": top1(logits[:20], s20.y),
             "agreement": agreement(ref, logits), "sqnr_db": sqnr(ref, logits), **extra}
        print(r, flush=True)
        return r

    rows = [{"method": "float", "top1": top1(ref[:20], s20.y), "agreement": 100.0}]
    _, start = init_net(graph, target, cfg, train)  # the very point QAT starts from
    rows.append(row("PTQ start (sim)", batched_logits(
        lambda b: start.simulate(b)[graph.outputs[0]], x, batch=20)))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as ckpt:
        res = run_qat(graph, target, cfg, train, DataSet(s20.x, s20.y, "imagenet-samples"),
                      Path(ckpt), progress=True)
    secs = round(time.perf_counter() - t0, 1)
    rows.append(row(f"QAT {args.steps} steps (sim)", batched_logits(
        lambda b: res.qmodel.simulate(b)[graph.outputs[0]], x, batch=20), train_s=secs))
    rows.append(row("QAT, .tflite in LiteRT", tflite_logits(res.qmodel, x)))
    print_table(f"MobileNetV2-1.0 int8 QAT on {train.name} ({len(x)} ImageNet inputs)", rows,
                ["method", "top1", "agreement", "sqnr_db", "train_s"])
    write_record(args.out, "bench_qat_photos.py", argv, config=cfg.to_json(), inputs=len(x),
                 rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
