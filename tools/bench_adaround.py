"""AdaRound vs round-to-nearest PTQ, side by side in one run.

    python tools/bench_adaround.py --model mobilenet_v2_fmnist --bits 4 --iters 0 200 --limit 2000
    python tools/bench_adaround.py --model mobilenet_v2_100 --bits 8 --iters 0 200

Fashion-MNIST models: top-1 on the first ``--limit`` test images, calibrated on 512 training
images. ``mobilenet_v2_100``: top-1 on the 20 labelled samples, agreement and SQNR on those
plus the 240 crop/flip views, calibrated on 128 photo crops. Simulation (``QModel.simulate``)
throughout; ``--iters 0`` is plain PTQ with analytic bias correction. Target: ``arm-cpu-onnx``
(it takes 2..8-bit weights).
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
    fmnist_calib,
    fmnist_test,
    imagenet_sets,
    print_table,
    sqnr,
    top1,
    write_record,
)

from edgeres.config import PTQConfig  # noqa: E402
from edgeres.graph.capture import capture  # noqa: E402
from edgeres.graph.ir import run_graph  # noqa: E402
from edgeres.quant.ptq import quantize_graph  # noqa: E402
from edgeres.targets import load_target  # noqa: E402
from edgeres.zoo import create_model  # noqa: E402


def batched(fn, x: torch.Tensor, batch: int = 500) -> torch.Tensor:  # noqa: ANN001
    return torch.cat([fn(x[i : i + batch]).double() for i in range(0, len(x), batch)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mobilenet_v2_fmnist")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--iters", type=int, nargs="+", default=[0, 200])
    ap.add_argument("--limit", type=int, default=None, help="FMNIST test images (default 10k)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_adaround.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "mobilenet_v2_100":
        s20, crops, calib = imagenet_sets()
        x, y, n_labelled = torch.cat([s20.x, crops.x]), s20.y, len(s20.x)
    else:
        calib = fmnist_calib(args.model, 512)
        test = fmnist_test(args.model, args.limit)
        x, y, n_labelled = test.x, test.y, len(test.x)
    graph = capture(create_model(args.model, pretrained=True), calib[:1])
    ref = batched(lambda b: run_graph(graph, b)[graph.outputs[0]], x)
    rows = [{"method": "float", "top1": top1(ref[:n_labelled], y), "agreement": 100.0}]
    target = load_target("arm-cpu-onnx")
    for iters in args.iters:
        t0 = time.perf_counter()
        cfg = PTQConfig(weight_bits=args.bits, per_channel=True, adaround_iters=iters)
        qm = quantize_graph(graph, cfg, target, calib, progress=True)
        secs = time.perf_counter() - t0
        out = batched(lambda b, qm=qm: qm.simulate(b)[graph.outputs[0]], x)
        rows.append({
            "method": f"W{args.bits}A8 " + (f"AdaRound {iters} steps" if iters else "nearest + BC"),
            "top1": top1(out[:n_labelled], y),
            "agreement": agreement(ref, out),
            "sqnr_db": sqnr(ref, out),
            "quantize_s": round(secs, 1),
        })
        print(rows[-1], flush=True)
    print_table(f"{args.model}: AdaRound vs nearest ({len(x)} inputs)", rows,
                ["method", "top1", "agreement", "sqnr_db", "quantize_s"])
    write_record(args.out, "bench_adaround.py", argv, model=args.model, inputs=len(x), rows=rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
