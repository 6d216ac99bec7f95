"""Pixels in (`edgeres convert --input pixels`): the normalization folded into the first convs,
the input's range fixed at one code per camera byte, and a bundle an app feeds bytes to."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeres.check import encode_input
from edgeres.cli import main
from edgeres.config import PTQConfig
from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.errors import UserError
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
from edgeres.quant.ptq import quantize_graph
from edgeres.targets import load_target
from edgeres.zoo.models import SHIPPED

FMNIST = Preprocess(mean=(0.286,), std=(0.353,))
FAST = ["--calib", "fmnist:train@64", "--eval", "fmnist:test@200", "--no-bench"]


def _stem(groups: int, padding: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=padding, groups=groups), nn.ReLU(),
                         nn.Conv2d(6, 4, 1)).eval()


def _images(n: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("groups", [1, 3])
def test_fold_is_exact_where_no_conv_pads(groups) -> None:
    """Without padding the folded model is the original one, in float64 rounding."""
    pre = Preprocess(IMAGENET.mean, IMAGENET.std)
    x = pre(_images(4))
    graph = capture(_stem(groups, padding=0), x[:1])
    folded = fold_input_normalization(graph, pre)
    ref = run_graph(graph, x)[graph.outputs[0]]
    got = run_graph(folded, to_pixels(x, pre))[folded.outputs[0]]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert graph.nodes[0].params["weight"] is not folded.nodes[0].params["weight"]  # a copy


def test_fold_moves_only_the_border_where_a_conv_pads() -> None:
    """A pad is pixel P in every channel, not each channel's mean: only windows that leave
    the image change, and by the mean's distance from P."""
    pre = Preprocess(IMAGENET.mean, IMAGENET.std)
    x = pre(_images(4))
    graph = capture(_stem(1, padding=1), x[:1])
    folded = fold_input_normalization(graph, pre)
    first = graph.nodes[0].output
    ref = run_graph(graph, x, keep=True)[first]
    got = run_graph(folded, to_pixels(x, pre), keep=True)[first]
    torch.testing.assert_close(got[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], rtol=1e-5, atol=1e-5)
    border = (got - ref).abs().amax()
    assert 0 < border < 0.1 * ref.abs().amax()


def test_pixel_preprocess_gives_pixel_minus_p_and_bytes_as_codes() -> None:
    """What an app does from the manifest alone: the int8 code of a pixel is pixel - 128."""
    pre = pixel_preprocess(FMNIST)
    p = pad_pixel(FMNIST)
    assert p == 73 and pixel_range(FMNIST) == (-73.0, 182.0)
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    x = pre(pixels).numpy()
    np.testing.assert_allclose(x, pixels.transpose(0, 3, 1, 2) - 73.0, atol=1e-3)
    codes = encode_input(x, {"layout": "NCHW", "dtype": "int8", "scale": 1.0,
                             "zero_point": p - 128})
    np.testing.assert_array_equal(codes.ravel(), np.arange(256) - 128)
    np.testing.assert_allclose(to_pixels(FMNIST(pixels), FMNIST).numpy(), x, atol=1e-4)


@pytest.mark.parametrize("target, dtype, zero_point", [
    ("arm-cpu-tflite", "int8", 73 - 128), ("arm-cpu-onnx", "uint8", 73)])
def test_input_range_fixes_one_code_per_pixel(target, dtype, zero_point) -> None:
    x = FMNIST(_images(16, 28)[..., :1])
    graph = fold_input_normalization(capture(_stem_1ch(), x[:1]), FMNIST)
    cfg = PTQConfig(input_range=pixel_range(FMNIST))
    qm = quantize_graph(graph, cfg, load_target(target), to_pixels(x, FMNIST))
    qp = qm.act_qparams[graph.inputs[0].name]
    assert qp.spec.signed == (dtype == "int8") and qp.spec.bits == 8
    assert float(qp.scale) == 1.0 and int(qp.zero_point) == zero_point
    assert "fixed range [-73, 182]" in json.dumps(qm.meta["plan"])


def _stem_1ch() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()


def test_input_range_refuses_a_symmetric_input() -> None:
    x = FMNIST(_images(4, 28)[..., :1])
    graph = capture(_stem_1ch(), x[:1])
    tflite = load_target("arm-cpu-tflite")  # a user's profile for a symmetric-only NPU
    symmetric = replace(tflite, activations=replace(tflite.activations, symmetric=True))
    cfg = PTQConfig(input_range=(-73.0, 182.0))
    with pytest.raises(UserError, match="symmetrically"):
        quantize_graph(graph, cfg, symmetric, x)
    with pytest.raises(UserError, match="low < high"):
        PTQConfig(input_range=(1.0, 1.0))


def test_an_input_read_by_anything_but_a_conv_is_named() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Conv2d(1, 2, 3)).eval()
    x = FMNIST(_images(2, 28)[..., :1])
    with pytest.raises(UserError, match="act '0' reads it; convert with --input normalized"):
        fold_input_normalization(capture(model, x[:1], canonical=False), FMNIST)


@pytest.mark.skipif(not (SHIPPED / "mobilenet_v2_fmnist.pth").is_file(),
                    reason="the shipped FMNIST weights are not in this checkout")
def test_pixels_bundle_takes_bytes_and_checks(tmp_path, capsys) -> None:
    """The CLI end to end: the manifest says what an app feeds, the file agrees, LiteRT's
    output follows the float model, and `edgeres check` passes."""
    from edgeres.runtime.litert import io_quantization

    out = tmp_path / "pix"
    assert main(["convert", "mobilenet_v2_fmnist", "--input", "pixels", "--out", str(out),
                 *FAST]) == 0
    m = json.loads((out / "manifest.json").read_text())
    (inp,) = m["inputs"]
    assert inp["pixel_offset"] == 73 and inp["scale"] == 1.0 and inp["zero_point"] == -55
    assert inp["preprocess"]["mean"] == [pytest.approx(73 / 255)]
    ins, _ = io_quantization(out / "model.tflite")
    assert ins[0].scale == 1.0 and ins[0].zero_point == -55
    report = json.loads((out / "report.json").read_text())
    note = report["pixels_in"]
    assert note["float_agreement"] == 100.0 and note["float_sqnr_db"] > 40
    assert "pixel - 73, normalization folded" in report["summary"]["input"]
    assert m["metrics"]["top1_agreement"] >= 97
    _validates(m)
    assert main(["check", str(out)]) == 0
    _camera_bytes_follow_the_original_model(out)
    _evalbundle_reads_it(out, m["metrics"]["top1_agreement"])


def _camera_bytes_follow_the_original_model(bundle: Path) -> None:
    """An app's whole path: test images' bytes XOR 0x80 into LiteRT, against the model the
    user gave (torch, normalized input), not against the folded float.onnx."""
    from edgeres.data.fmnist import load_fmnist
    from edgeres.runtime.litert import run_tflite
    from edgeres.zoo import create_model

    images, _ = load_fmnist("test")
    images = images[:300]
    codes = (images ^ 0x80).view(np.int8)[..., None]  # NHWC, one channel
    logits = run_tflite(bundle / "model.tflite", [codes], kernels="xnnpack")[0]
    model = create_model("mobilenet_v2_fmnist", pretrained=True)
    with torch.no_grad():
        pixels = torch.from_numpy(images.copy()).float()[:, None]
        ref = model(FMNIST.normalize(pixels / 255)).numpy()
    assert (logits.argmax(1) == ref.argmax(1)).mean() >= 0.97


def _evalbundle_reads_it(bundle: Path, ours: float) -> None:
    """The evaluator that knows nothing of edgeres feeds it from manifest.json alone."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[2] / "shared" / "tools" / "evalbundle.py"
    if not tool.is_file():
        return  # not on this machine; the byte path above still ran
    proc = subprocess.run([sys.executable, str(tool), str(bundle), "fmnist", "--limit", "300"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["n"] == 300 and res["agreement"] >= min(99.0, ours - 1.0)


def _validates(manifest: dict) -> None:
    import jsonschema

    from edgeres.bundle import SCHEMA_FILE

    jsonschema.validate(manifest, json.loads(SCHEMA_FILE.read_text()))
    manifest["inputs"][0]["pixel_offset"] = 300
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, json.loads(SCHEMA_FILE.read_text()))


@pytest.mark.parametrize("argv, message", [
    (["--input", "raw"], "--input must be one of normalized | pixels, got 'raw'"),
])
def test_bad_input_mode_is_one_line_and_exit_2(argv, message, capsys) -> None:
    assert main(["convert", "mobilenet_v2_fmnist", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1



def test_folded_conv_trains_as_the_unfolded_one() -> None:
    """QAT on a folded conv: with the gradients scaled by gain^2, each SGD step moves the
    weights what the unfolded model's step would (folded grad = gain x unfolded grad); without
    it the folded stem would move ~3600x too far on ImageNet."""
    from edgeres.quant.qat import QATNet, scale_gradients

    pre = Preprocess(IMAGENET.mean, IMAGENET.std)
    x = pre(_images(16))
    graph = capture(_stem(1, padding=0), x[:1])
    folded = fold_input_normalization(graph, pre)
    target = load_target("arm-cpu-tflite")
    plain = QATNet(quantize_graph(graph, PTQConfig(), target, x))
    gain = input_gain(pre)
    pix = QATNet(quantize_graph(folded, PTQConfig(input_range=pixel_range(pre)), target,
                                to_pixels(x, pre)), [folded.inputs[0].name], gain)
    weights = []
    for net, inputs in ((plain, x), (pix, to_pixels(x, pre))):
        scale_gradients(net)  # LSQ's for both; the folded input's for pix alone
        out = net(inputs)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        weights.append(net.layers[net.node_key[graph.nodes[0].name]].weight.grad)
    ratio = (weights[1].pow(2).sum((0, 2, 3)) / weights[0].pow(2).sum((0, 2, 3))).sqrt()
    torch.testing.assert_close(ratio, torch.tensor(gain, dtype=ratio.dtype), rtol=0.1, atol=0)
    assert all(not p.requires_grad for p in pix.acts[pix.act_key[folded.inputs[0].name]]
               .parameters())


@pytest.mark.skipif(not (SHIPPED / "mobilenet_v2_fmnist.pth").is_file(),
                    reason="the shipped FMNIST weights are not in this checkout")
def test_qat_keeps_the_input_at_one_code_per_byte(tmp_path) -> None:
    out = tmp_path / "qat"
    assert main(["qat", "mobilenet_v2_fmnist", "--input", "pixels", "--steps", "3",
                 "--train", "fmnist:train@256", "--eval", "fmnist:test@200",
                 "--out", str(out), "--no-bench"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    (inp,) = m["inputs"]
    assert inp["pixel_offset"] == 73 and inp["scale"] == 1.0 and inp["zero_point"] == -55
    assert m["scheme"] == "qat" and m["metrics"]["top1_agreement"] >= 97
