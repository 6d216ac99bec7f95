"""Peer for the export benchmark: litert-torch's PT2E int8 route, run in the peer venv.

Why a separate venv: litert-torch pulls jax, transformers, torchao and its own converter
(about 2 GB); edgeres must not depend on any of it. This script sees only torch, litert-torch
and two plain-torch files of edgeres (the MobileNetV2 definition), loaded without running
``edgeres/__init__.py`` so none of edgeres's own dependencies are needed here.

    .venv-peer/bin/python tools/peers/litert_torch_pt2e.py --weights W.pth --calib calib.npz \\
        --out peer_int8.tflite [--float-out peer_fp32.tflite]

The route is the one litert-torch documents (docs/pytorch_converter/README.md, "Quantization"):
``torch.export`` -> ``prepare_pt2e(PT2EQuantizer().set_global(
get_symmetric_quantization_config(is_per_channel=True)))`` -> calibration -> ``convert_pt2e(
fold_quantize=False)`` -> ``litert_torch.convert(..., quant_config=QuantConfig(pt2e_quantizer))``.
The model is wrapped with ``litert_torch.to_channel_last_io`` so its input is NHWC, like the
edgeres file, and both files take the same tensors. Prints one JSON line with the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_mobilenet_v2(weights: Path) -> torch.nn.Module:
    """edgeres's MobileNetV2-1.0 with the ImageNet weights, without importing edgeres itself."""
    for name, sub in (("edgeres", "edgeres"), ("edgeres.zoo", "edgeres/zoo")):
        if name not in sys.modules:  # namespace stubs: skip the package __init__ files
            mod = types.ModuleType(name)
            mod.__path__ = [str(ROOT / sub)]
            sys.modules[name] = mod
    from edgeres.zoo.mobilenet_v2 import IRNetConfig, MobileNetV2

    model = MobileNetV2(IRNetConfig(width=1.0))
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def peak_rss_mb() -> float | None:
    """Resident high-water mark of this process (VmHWM; ru_maxrss would include the parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def write_atomic(edge_model, path: Path) -> None:  # noqa: ANN001 - litert_torch model
    tmp = path.with_name(f".{path.name}.tmp")
    edge_model.export(str(tmp))
    os.replace(tmp, path)


def quantize_and_convert(model: torch.nn.Module, calib: np.ndarray, out: Path,
                         batch: int) -> dict[str, float]:
    """The PT2E int8 route, timed stage by stage (seconds)."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.from_numpy(calib).permute(0, 2, 3, 1).contiguous()  # NCHW -> NHWC
    sample = (x[:1],)
    cpu0 = time.process_time()
    t = {"start": time.perf_counter()}
    nhwc = litert_torch.to_channel_last_io(model, args=[0]).eval()
    dyn = (({0: torch.export.Dim("batch", min=1, max=1024)},),)  # forward(*args)
    exported = torch.export.export(nhwc, (x[:batch],), dynamic_shapes=dyn).module()
    t["export"] = time.perf_counter()
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(exported, quantizer)
    t["prepare"] = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            prepared(x[i : i + batch])
    t["calibrate"] = time.perf_counter()
    converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))
    t["convert_pt2e"] = time.perf_counter()
    edge = litert_torch.convert(converted, sample,
                                quant_config=QuantConfig(pt2e_quantizer=quantizer))
    t["litert_convert"] = time.perf_counter()
    write_atomic(edge, out)
    t["write"] = time.perf_counter()
    keys = list(t)
    split = {f"{b}_s": t[b] - t[a] for a, b in zip(keys, keys[1:], strict=False)}
    return {"convert_s": t["write"] - t["start"], "cpu_s": time.process_time() - cpu0, **split}


def convert_float(model: torch.nn.Module, out: Path, size: int) -> float:
    """The float model through the same converter (the fp32 TFLite reference), in seconds."""
    import litert_torch

    t0 = time.perf_counter()
    nhwc = litert_torch.to_channel_last_io(model, args=[0]).eval()
    write_atomic(litert_torch.convert(nhwc, (torch.zeros(1, size, size, 3),)), out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, required=True, help="MobileNetV2 ImageNet state_dict")
    ap.add_argument("--calib", type=Path, required=True, help=".npz with x: NCHW float32")
    ap.add_argument("--out", type=Path, required=True, help="int8 .tflite to write")
    ap.add_argument("--float-out", type=Path, default=None, help="also write the fp32 .tflite")
    ap.add_argument("--batch", type=int, default=32, help="calibration batch size")
    args = ap.parse_args()

    t0 = time.perf_counter()
    import litert_torch  # noqa: F401 - timed: the converter's import cost, reported apart

    import_s = time.perf_counter() - t0
    calib = np.load(args.calib)["x"].astype(np.float32)
    model = load_mobilenet_v2(args.weights)
    res: dict[str, object] = {"import_s": import_s, **quantize_and_convert(
        model, calib, args.out, args.batch)}
    res["peak_rss_mb"] = peak_rss_mb()  # the int8 route, before the float conversion
    if args.float_out is not None:
        res["float_convert_s"] = convert_float(model, args.float_out, calib.shape[-1])
    from importlib.metadata import version

    res.update(litert_torch=version("litert-torch"), torch=torch.__version__,
               torchao=version("torchao"), ai_edge_litert=version("ai-edge-litert"),
               calib_images=int(calib.shape[0]), torch_threads=torch.get_num_threads())
    print(json.dumps(res))


if __name__ == "__main__":
    main()
