"""`edgeres convert | check | explain | targets | zoo` end to end, as a user runs them."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.bundle import load_bundle
from edgeres.check import layer_report
from edgeres.cli import main
from edgeres.convert import ConvertOptions, convert
from edgeres.quant.ptq import layer_errors

FAST = dict(calib="fmnist:train@64", eval="fmnist:test@200", bench=False)
QMODELS: dict = {}  # bundle path -> the QModel convert wrote it from


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, weights) -> Path:
    out = tmp_path_factory.mktemp("b") / "mnv2"
    res = convert(
        ConvertOptions("mobilenet_v2_fmnist", "arm-cpu-tflite", weights=weights, out=out, **FAST),
        progress=False,
    )
    QMODELS[out] = res.qmodel
    return out


def test_bundle_layout_and_manifest(bundle: Path) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["schema"] == "edgeres.bundle/1"
    assert {"model.tflite", "float.onnx", "golden/golden.npz", "report.html", "report.json"} <= set(
        m["files"]
    )
    (inp,), (outp,) = m["inputs"], m["outputs"]
    assert inp["shape"] == [1, 28, 28, 1] and inp["layout"] == "NHWC" and inp["dtype"] == "int8"
    assert inp["preprocess"]["mean"] == [0.286] and inp["scale"] > 0
    assert outp["dtype"] == "int8" and outp["shape"] == [1, 10]
    assert m["labels"][0] == "T-shirt/top" and m["metrics"]["samples"] == 200
    assert all(op["where"] == "cpu-int8" for op in m["ops"])


def test_bundle_metadata_matches_the_file(bundle: Path) -> None:
    """The manifest's I/O quantization is what LiteRT reads from the .tflite itself."""
    from edgeres.runtime.litert import io_quantization

    ins, outs = io_quantization(bundle / "model.tflite")
    m = json.loads((bundle / "manifest.json").read_text())
    assert ins[0].scale == pytest.approx(m["inputs"][0]["scale"])
    assert ins[0].zero_point == m["inputs"][0]["zero_point"]
    assert outs[0].scale == pytest.approx(m["outputs"][0]["scale"])


def test_convert_is_deterministic(bundle: Path, weights, tmp_path) -> None:
    again = tmp_path / "again"
    convert(
        ConvertOptions("mobilenet_v2_fmnist", "arm-cpu-tflite", weights=weights, out=again, **FAST),
        progress=False,
    )
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for rel in files:
        assert (bundle / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_failed_convert_keeps_previous_bundle(bundle: Path, weights, tmp_path, monkeypatch) -> None:
    target = tmp_path / "keep"
    shutil.copytree(bundle, target)
    before = (target / "manifest.json").read_bytes()

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr("edgeres.convert.write_report", boom)
    with pytest.raises(RuntimeError):
        convert(
            ConvertOptions(
                "mobilenet_v2_fmnist", "arm-cpu-tflite", weights=weights, out=target, **FAST
            ),
            progress=False,
        )
    assert (target / "manifest.json").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keep.")]


def test_check_passes_then_catches_tampering(bundle: Path, tmp_path, capsys) -> None:
    assert main(["check", str(bundle), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["golden_max_code_diff"] <= 1 and report["agreement"]["top1_agreement"] == 100
    assert report["layers"]["layers"], "per-layer SQNR must list layers"
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "model.tflite").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.tflite").write_bytes(bytes(data))
    assert main(["check", str(bad)]) == 2
    assert "model.tflite' was altered" in capsys.readouterr().err
    (bad / "model.tflite").unlink()
    assert main(["check", str(bad)]) == 2
    assert "missing" in capsys.readouterr().err


def test_golden_of_the_wrong_shape(bundle: Path, tmp_path, capsys) -> None:
    from edgeres.bundle import file_hashes
    from edgeres.convert import save_arrays

    bad = tmp_path / "golden"
    shutil.copytree(bundle, bad)
    with np.load(bad / "golden" / "golden.npz") as g:
        arrays = dict(g)
    arrays["y_raw"] = arrays["y_raw"][:, :5]
    save_arrays(bad / "golden" / "golden.npz", arrays)
    m = json.loads((bad / "manifest.json").read_text())
    m["files"] = file_hashes(bad)  # a consistent manifest, but a golden file for another model
    (bad / "manifest.json").write_text(json.dumps(m))
    assert main(["check", str(bad)]) == 2
    assert "golden output has shape" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["convert", "mobilenet_v9"], "unknown model 'mobilenet_v9'"),
        (["convert", "mobilenet_v2_fmnist", "-t", "gpu-9000"], "unknown target 'gpu-9000'"),
        (["convert", "mobilenet_v2_fmnist", "--bits", "8bit"], "--bits must look like"),
        (["convert", "mobilenet_v2_fmnist", "--calib", "fmnist:valid"], "fmnist"),
        (["convert", "/no/such.pth"], "does not exist"),
        (["check", "/no/such/bundle"], "bundle '/no/such/bundle' does not exist"),
        (["check", "/"], "'/' is not a bundle: manifest.json is missing"),
        (["convert", "mobilenet_v2_fmnist", "--calib", "/no/such/calib"],
         "no such folder or .npz file"),
        (["convert", "mobilenet_v2_fmnist", "--smooth", "1.5"], "smooth_alpha must be in"),
        (["convert", "mobilenet_v2_fmnist", "--scheme", "rex", "--smooth", "0.5"],
         "--smooth applies to --scheme ptq only"),
        (["convert", "mobilenet_v2_fmnist", "--reconstruct", "5", "--adaround", "5"],
         "already learns the weight rounding"),
        (["convert", "mobilenet_v2_fmnist", "--scheme", "qat", "--reconstruct", "5"],
         "--reconstruct applies to --scheme ptq only"),
        (["convert", "mobilenet_v2_fmnist", "--scheme", "rex", "--output-bias"],
         "--output-bias applies to --scheme ptq only"),
        (["convert", "mobilenet_v2_fmnist", "--calib", "fmnist:train@-3"],
         "the count after @ must be a whole number"),
        (["convert", "mobilenet_v2_fmnist", "--min-agreement", "150"],
         "--min-agreement is a percentage"),
        (["convert", "mobilenet_v2_fmnist", "--max-drop", "-1"], "--max-drop is the largest"),
        (["convert", "mobilenet_v2_fmnist", "--observer", "kl"],
         "--observer must be one of minmax | percentile | mse | entropy, got 'kl'"),
        (["convert", "mobilenet_v2_fmnist", "--percentile", "101"], "--percentile must be in"),
        (["qat", "mobilenet_v2_fmnist", "--eval", "photos@8"],
         "QAT validation data 'photos@8' has no labels; pass --eval SPEC"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_unreadable_checkpoint_is_one_line(tmp_path, capsys) -> None:
    """torch.load's refusal (a dozen lines of pickling advice) becomes one line naming the file."""
    bad = tmp_path / "not_a_checkpoint.pth"
    bad.write_bytes(b"garbage, not a torch.save archive")
    assert main(["convert", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot read checkpoint" in err and str(bad) in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "flag, value, field, section, says",
    [
        ("--smooth", "0.5", "smooth_alpha", "smooth",
         lambda r: any("add" in "".join(d["domain"]) for d in r["smoothed"])),
        ("--reconstruct", "20", "reconstruct_iters", "reconstruct",
         lambda r: r["blocks"][0].startswith("features.0")),
        ("--output-bias", None, "output_bias_correction", "output_bias_correction",
         lambda r: r["layer"] == "classifier.1" and r["max_abs_shift"] > 0),
    ],
)
def test_ptq_options_give_a_bundle_that_checks_and_says_what_it_did(
    weights, tmp_path, flag, value, field, section, says
) -> None:
    out = tmp_path / section
    argv = ["convert", "mobilenet_v2_fmnist", "--weights", weights, "--out", str(out), "--calib",
            "fmnist:train@64", "--eval", "fmnist:test@200", "--no-bench", flag,
            *([value] if value is not None else []), "--min-agreement", "97", "--json"]
    assert main(argv) == 0
    assert main(["check", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert str(report["config"][field]) == (value if value is not None else "True")
    assert says(report[section])


def test_observer_sets_the_activation_ranges(weights, tmp_path, capsys) -> None:
    """--observer reaches the plan and the report; min-max ranges cover every calibration
    value, so its steps are at least the percentile observer's on every activation."""
    argv = ["convert", "mobilenet_v2_fmnist", "--weights", weights, "--out", str(tmp_path / "cli"),
            "--calib", "fmnist:train@64", "--eval", "fmnist:test@200", "--no-bench",
            "--observer", "minmax", "--json"]
    assert main(argv) == 0
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert report["config"]["act_observer"] == "minmax"
    worst = min((d for d in report["layer_sqnr"] if d["local_sqnr_db"] is not None),
                key=lambda d: d["local_sqnr_db"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["worst_layer"].startswith(
        f"{worst['layer']}: {worst['local_sqnr_db']} dB alone, {worst['sqnr_db']} dB cumulative")
    assert {"subject": "activation ranges", "decision": "calibration min-max"}.items() <= next(
        d for d in report["plan"]["report"] if d["subject"] == "activation ranges").items()
    clipped = [d["clipped_pct"] for d in report["layer_sqnr"] if d["clipped_pct"] is not None]
    assert len(clipped) > 10 and all(0.0 <= c <= 100.0 for c in clipped)
    assert "float values clipped" in (tmp_path / "cli" / "report.html").read_text()
    steps = {}
    for observer in ("minmax", "percentile"):
        opts = ConvertOptions("mobilenet_v2_fmnist", weights=weights, out=tmp_path / observer,
                              act_observer=observer, smooth_alpha=0.0, **FAST)
        qm = convert(opts, progress=False).qmodel
        steps[observer] = {t: float(q.scale) for t, q in qm.act_qparams.items()}
    mm, pct = steps["minmax"], steps["percentile"]
    assert all(mm[t] >= pct[t] * (1 - 1e-6) for t in mm)
    assert any(mm[t] > 1.01 * pct[t] for t in mm)


def test_accuracy_floor_exit_1(weights, bundle, tmp_path, capsys) -> None:
    """A missed floor exits 1 and sets the bundle aside: --out keeps the bundle it held."""
    shutil.copytree(bundle, tmp_path / "f")
    before = (tmp_path / "f" / "manifest.json").read_bytes()
    rc = main(
        [
            "convert",
            "mobilenet_v2_fmnist",
            "--weights",
            weights,
            "--out",
            str(tmp_path / "f"),
            "--calib",
            "fmnist:train@32",
            "--eval",
            "fmnist:test@50",
            "--no-bench",
            "-t",  # 4-bit weights: a floor of 100 % is missed (W8A8 agrees on all 50 here)
            "arm-cpu-onnx",
            "--bits",
            "w4a8",
            "--min-agreement",
            "100",
            "--json",
        ]
    )
    assert rc == 1
    out = capsys.readouterr()
    metrics = json.loads(out.out)
    assert metrics["samples"] == 50 and "--min-agreement" in out.err
    # the gate's message gives the expected agreement, the one in report.json
    assert f"expected at this noise level: {metrics['expected_agreement']:.1f}" in out.err
    assert 0 <= metrics["agreement_sd"] < 5
    assert (tmp_path / "f" / "manifest.json").read_bytes() == before
    rejected = load_bundle(tmp_path / "f.rejected")  # a whole bundle, hashes checked
    assert metrics["bundle"] == str(tmp_path / "f.rejected") and "f.rejected" in out.err
    gates = rejected.manifest["gates"]
    assert gates["passed"] is False and gates["min_agreement"] == 100
    assert gates["failures"][0].startswith("top-1 agreement") and gates["max_drop"] is None


def test_version(capsys) -> None:
    import edgeres

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"edgeres {edgeres.__version__}"


def test_targets_zoo_explain(capsys, monkeypatch) -> None:
    from edgeres import cli

    monkeypatch.setattr(cli.out, "_width", 160)  # a wide terminal: whole reasons on one line
    assert main(["targets", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert "arm-cpu-tflite" in names and "npu-int8-per-tensor" in names
    assert main(["zoo"]) == 0  # every model captured, counted and listed
    listing = capsys.readouterr().out
    assert "3,504,872" in listing and "300.8" in listing  # MobileNetV2-1.0 as in the paper
    assert all(name in listing for name in ("emo_1m_fmnist", "mobilenet_v2_fmnist"))
    assert main(["explain", "mobilenet_v2_fmnist", "-t", "npu-int8-per-tensor"]) == 0
    assert "per-channel not" in capsys.readouterr().out


def test_manifest_follows_the_published_schema(bundle: Path) -> None:
    import jsonschema

    from edgeres.bundle import SCHEMA_FILE

    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(json.loads((bundle / "manifest.json").read_text()), schema)
    broken = json.loads((bundle / "manifest.json").read_text())
    broken["inputs"][0]["dtype"] = "int7"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_evalbundle_reads_the_bundle(bundle: Path) -> None:
    """The evaluator that knows nothing of edgeres can feed the bundle from manifest.json."""
    import subprocess
    import sys

    tool = Path(__file__).resolve().parents[2] / "shared" / "tools" / "evalbundle.py"
    if not tool.is_file():
        pytest.skip(f"{tool} is not present on this machine")
    proc = subprocess.run(
        [sys.executable, str(tool), str(bundle), "fmnist", "--limit", "300"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ours = json.loads((bundle / "manifest.json").read_text())["metrics"]
    assert res["n"] == 300 and res["agreement"] >= min(99.0, ours["top1_agreement"] - 1.0)


USER_MODULE = '''
import torch
from torch import nn
import torch.nn.functional as F


class Gate(nn.Module):  # MobileNetV3's squeeze-excite
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.Hardswish())
        self.block = nn.Sequential(
            nn.Conv2d(16, 48, 1), nn.BatchNorm2d(48), nn.Hardswish(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.Hardswish(),
            Gate(48), nn.Conv2d(48, 16, 1), nn.BatchNorm2d(16))
        self.fc = nn.Linear(16, 10)
        self.edgeres_meta = {"img_size": 28, "in_chans": 1, "num_classes": 10,
                             "preprocess": {"mean": [0.5], "std": [0.5]}}

    def forward(self, x):
        x = self.stem(x)
        x = x + self.block(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def make():
    torch.manual_seed(0)
    return Net().eval()
'''


def test_users_own_module_converts_and_checks(tmp_path, monkeypatch, capsys) -> None:
    """`edgeres convert module:factory` on a MobileNetV3-style net nobody here trained (hardswish,
    a hardsigmoid squeeze-excite gate), with bare .npz paths for the data: the LiteRT file
    must follow the float model (the check is LiteRT against float.onnx)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "usermod.py").write_text(USER_MODULE)
    x = torch.rand(96, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    np.savez(tmp_path / "calib.npz", x=x[:64].numpy())
    np.savez(tmp_path / "eval.npz", x=x[64:].numpy())
    argv = ["convert", "usermod:make", "--calib", "calib.npz", "--eval", "eval.npz",
            "--out", str(tmp_path / "b"), "--no-bench", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == 32 and printed["sqnr_db"] > 25
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    gates = [o["where"] for o in report["ops"] if o["op"] == "act(hardsigmoid)"]
    assert gates == ["cpu-int8"]  # an integer ADD + MUL, not a float island


@pytest.mark.parametrize("target", ["arm-cpu-tflite", "arm-cpu-onnx"])
def test_check_per_layer_debugger_follows_the_simulation(weights, tmp_path, target) -> None:
    """`edgeres check` compares the runtime's intermediate tensors (LiteRT's, or the QDQ
    model's in ORT) with float.onnx's. Smoothing (on by default) divides channels of
    intermediate tensors, so the bundle carries the divisors and the debugger undoes them:
    then every layer's figure follows the simulation's cumulative SQNR (they differ by kernel
    rounding only). Without them it read 7 to 20 dB where the simulation has 35 to 48."""
    res = convert(ConvertOptions("mobilenet_v2_fmnist", target, weights=weights,
                                 out=tmp_path / "b", **FAST), progress=False)
    bundle = load_bundle(tmp_path / "b")
    assert (tmp_path / "b" / "golden" / "channel_scales.npz").is_file()
    x = np.load(tmp_path / "b" / "golden" / "golden.npz")["x"][:1]
    report = layer_report(bundle, x)
    graph = res.qmodel.graph
    tensors = [t.name for t in graph.inputs] + [n.output for n in graph.nodes]
    sim = dict(zip(tensors, layer_errors(res.qmodel, torch.from_numpy(x)), strict=True))
    for field, most in (("sqnr_db", 4.0), ("local_sqnr_db", 6.0)):
        device = {e.tensor: getattr(e, field) for e in report.layers}
        common = [t for t in device if device[t] is not None and np.isfinite(device[t])
                  and np.isfinite(getattr(sim[t], field))]
        assert len(common) > 50, field
        gaps = np.array([device[t] - getattr(sim[t], field) for t in common])
        assert np.median(np.abs(gaps)) < 1.0 and np.abs(gaps).max() < most, (field, gaps)


def test_someone_elses_folder_is_never_replaced(tmp_path, capsys) -> None:
    """--out naming a folder that is not a bundle (or a file) is refused before any work."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("important")
    (tmp_path / "a_file").write_text("x")
    for out, message in ((theirs, "exists and is not an edgeres bundle"),
                         (tmp_path / "a_file", "is a file, not a folder")):
        assert main(["convert", "mobilenet_v2_fmnist", "--out", str(out), "--no-bench"]) == 2
        assert message in capsys.readouterr().err
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "theirs"]  # no staging left


def test_debugger_names_the_layer_the_runtime_computes_wrong(bundle: Path, tmp_path) -> None:
    """A runtime that computes one layer wrong (here: that layer's weight codes off by up to
    3 in the file) is named by the local SQNR: that layer falls by tens of dB, every other
    layer's own figure stays put, though their cumulative SQNR falls behind it."""
    from dataclasses import replace

    from edgeres.bundle import write_manifest
    from edgeres.export.tflite import export_tflite

    x = np.load(bundle / "golden" / "golden.npz")["x"][:1]
    before = layer_report(load_bundle(bundle), x)
    assert before.worst_local is not None and before.sim_local_db is not None
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    qm, layer = QMODELS[bundle], "features.6.conv.0.0"
    qw = qm.weights[layer]
    noise = np.random.default_rng(0).integers(-3, 4, qw.codes.shape)
    codes = np.clip(qw.codes + noise, -127, 127).astype(qw.codes.dtype)
    export_tflite(replace(qm, weights={**qm.weights, layer: replace(qw, codes=codes)}),
                  broken / "model.tflite")
    manifest = json.loads((broken / "manifest.json").read_text())
    write_manifest(broken, {k: v for k, v in manifest.items() if k != "files"})
    after = layer_report(load_bundle(broken), x)
    assert after.worst_local == layer
    own = {e.tensor: e.local_sqnr_db for e in before.layers}
    for e in after.layers:
        if e.local_sqnr_db is None or own[e.tensor] is None:
            continue
        if e.tensor == layer:
            assert e.local_sqnr_db < own[layer] - 10
        else:
            assert abs(e.local_sqnr_db - own[e.tensor]) < 3.0, e.tensor


def test_debugger_skips_smoothed_bundles_without_their_scales(bundle: Path, tmp_path) -> None:
    """A smoothed bundle written before it carried golden/channel_scales.npz would compare
    rescaled channels with float ones (7-20 dB of nonsense): the debugger says so instead."""
    from edgeres.bundle import write_manifest
    from edgeres.check_cli import run_check

    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    (old / "golden" / "channel_scales.npz").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    write_manifest(old, {k: v for k, v in manifest.items() if k != "files"})
    assert "predates golden/channel_scales.npz" in run_check(old, None, None, True)["layers"][
        "skipped"]
    assert "worst_local" in run_check(bundle, None, None, True)["layers"]


def test_x86_bundle_runs_exact_as_written(weights, tmp_path) -> None:
    """An ``x86-cpu-onnx`` bundle is the ``arm-cpu-onnx`` plan with uint8 + 128 weight codes,
    and ORT runs the file as written (what an app or an independent evaluator does) within
    1 output LSB of the integer simulation, on any CPU."""
    import onnx

    from edgeres.export.onnx_uint8 import has_int8_weights
    from edgeres.runtime.onnxruntime import run_onnx

    arm = convert(ConvertOptions("mobilenet_v2_fmnist", "arm-cpu-onnx", weights=weights,
                                 out=tmp_path / "arm", **FAST), progress=False)
    x86 = convert(ConvertOptions("mobilenet_v2_fmnist", "x86-cpu-onnx", weights=weights,
                                 out=tmp_path / "x86", **FAST), progress=False)
    assert json.loads((tmp_path / "x86" / "manifest.json").read_text())["target"] == "x86-cpu-onnx"
    model = onnx.load(str(tmp_path / "x86" / "model.onnx"))
    assert not has_int8_weights(model)
    assert has_int8_weights(onnx.load(str(tmp_path / "arm" / "model.onnx")))
    assert x86.qmodel.act_qparams == arm.qmodel.act_qparams  # one plan, two storages
    x = np.load(tmp_path / "x86" / "golden" / "golden.npz")["x"]
    as_written = run_onnx(tmp_path / "x86" / "model.onnx", [x], exact=False)[0]
    out = x86.qmodel.graph.outputs[0]
    sim = x86.qmodel.simulate(torch.from_numpy(x).double())[out].numpy()
    out_scale = float(np.max(x86.qmodel.act_qparams[out].scale))  # float I/O
    assert np.abs(as_written - sim).max() <= 1.0001 * out_scale
    assert np.abs(sim).max() > 10 * out_scale  # logits, not zeros
