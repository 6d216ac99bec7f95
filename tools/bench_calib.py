"""How much of MobileNetV2-1.0's int8 gap is the calibration data? One run, side by side.

    python tools/bench_calib.py                       # every source x the default config
    python tools/bench_calib.py --sources oracle --configs "" "act_observer='mse'" \
        "adaround_iters=200"

Calibration sources (128 inputs each, int8 per-channel on ``arm-cpu-tflite``, simulation):

- ``photos``: the shipped photo set (21 photos, 11 in colour), what ``edgeres convert`` uses.
- ``colour``: the same views drawn from the 11 colour photos only.
- ``twofold``: ImageNet views, honestly held out: the 260 evaluation views are split by source
  image into two folds; each fold is scored by a model calibrated on the other fold.
- ``oracle``: 128 of the evaluation views themselves (an upper bound, not a method).
- ``synthetic``: 32 data-free inputs matched to the BatchNorm statistics (ZeroQ, 200 Adam
  steps, the ``synthetic`` spec's default; about 12 minutes on one core).

Scores: top-1 on the 20 labelled samples, agreement with float and logits SQNR on those plus
the 240 crop/flip views; with ``--protocol ten-crop``, on the standard ten-crop views
(200, what ``evalbundle.py`` scores), top-1 on their 20 centre crops. ``--configs`` are
``PTQConfig`` keyword lists ("" = the defaults).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from benchlib import (  # noqa: E402
    agreement,
    batched_logits,
    imagenet_sets,
    imagenet_ten_crop,
    parse_config,
    print_table,
    sqnr,
    top1,
    write_record,
)

from edgeres.config import PTQConfig  # noqa: E402
from edgeres.data.photos import colour_photo_names, photo_calibration_set  # noqa: E402
from edgeres.data.preprocess import IMAGENET  # noqa: E402
from edgeres.data.synthetic import synthesize_inputs  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.graph.ir import Graph, run_graph  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402

SOURCES = ("photos", "colour", "twofold", "oracle", "synthetic")
N_CALIB = 128


def source_image_ids(n_images: int, n_views: int) -> torch.Tensor:
    """Which source image each evaluation input comes from: the images themselves, then their
    views, consecutive per image (``imagenet_agreement_set``'s order)."""
    own = torch.arange(n_images)
    return torch.cat([own, own.repeat_interleave(n_views // n_images)])


def quantized_logits(graph: Graph, cfg: PTQConfig, calib: torch.Tensor, x: torch.Tensor):  # noqa: ANN201
    qm = quantize_graph(graph, cfg, load_target("arm-cpu-tflite"), calib)
    return batched_logits(lambda b: qm.simulate(b)[graph.outputs[0]], x, batch=20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES[:4]))
    ap.add_argument("--configs", nargs="+", default=[""], help="PTQConfig keyword lists")
    ap.add_argument("--protocol", choices=("260", "ten-crop"), default="260",
                    help="the 20 images + 240 views, or the standard ten-crop views")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_calib.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:  # fail before any work, in one line
        configs = {text: parse_config(text) for text in args.configs}
    except (SyntaxError, ValueError, TypeError, UserError) as exc:
        ap.error(f"--configs: {exc} (want PTQConfig keywords, e.g. \"act_observer='mse'\")")

    s20, crops, photos = imagenet_sets()
    x = torch.cat([s20.x, crops.x])
    image_id = source_image_ids(len(s20.x), len(crops.x))
    labelled, labels = torch.arange(20), s20.y  # where top-1 is scored
    if args.protocol == "ten-crop":
        views, _ = imagenet_ten_crop()
        x, image_id = views.x, torch.arange(len(views.x)) // 10  # ten views per image
        labelled, labels = torch.arange(0, len(x), 10), views.y[::10]  # the centre crops
    net = create_model("mobilenet_v2_100", pretrained=True)
    graph = capture(net, photos[:1])
    ref = batched_logits(lambda b: run_graph(graph, b)[graph.outputs[0]], x, batch=20)
    top2 = ref.topk(2, dim=1).values
    near_ties = int((top2[:, 0] - top2[:, 1] < 0.5).sum())
    print(f"{near_ties} of {len(x)} inputs have a float top-1/top-2 logit margin under 0.5")
    assert len(image_id) == len(x), "agreement set layout changed"
    rows = [{"source": "float", "config": "", "top1": top1(ref[labelled], labels),
             "agreement": 100.0}]
    synthetic: torch.Tensor | None = None
    for source in args.sources:
        for text, cfg in configs.items():
            t0 = time.perf_counter()
            if source == "twofold":
                out = torch.empty_like(ref)
                for fold in (0, 1):
                    held_out = image_id % 2 == fold
                    calib = x[~held_out][:N_CALIB]
                    out[held_out] = quantized_logits(graph, cfg, calib, x[held_out])
            else:
                if source == "photos":
                    calib = photos
                elif source == "synthetic":  # slow: made once, reused by every config
                    if synthetic is None:
                        synthetic = synthesize_inputs(net, (3, 224, 224), preprocess=IMAGENET)
                    calib = synthetic
                elif source == "colour":
                    calib = photo_calibration_set(IMAGENET, n=N_CALIB, only=colour_photo_names())
                else:
                    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
                    calib = x[pick[:N_CALIB]]
                out = quantized_logits(graph, cfg, calib, x)
            rows.append({
                "source": source, "config": text or "defaults",
                "top1": top1(out[labelled], labels), "agreement": agreement(ref, out),
                "sqnr_db": sqnr(ref, out), "seconds": round(time.perf_counter() - t0, 1),
            })
            print(rows[-1], flush=True)
    print_table(f"MobileNetV2-1.0 int8 by calibration source ({len(x)} inputs)", rows,
                ["source", "config", "top1", "agreement", "sqnr_db", "seconds"])
    write_record(args.out, "bench_calib.py", argv, inputs=len(x), protocol=args.protocol,
                 rows=rows, **{"float_margin_under_0.5": near_ties})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
