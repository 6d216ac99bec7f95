"""Bundles under user mistakes and tampering: nothing lost, one-line errors, check that fails.

One bundle for the module, converted with a custom target profile (arm-cpu-tflite under
another name) under umask 022, and copied where a test needs to break it.
"""

import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from edgeres.bundle import (
    MANIFEST,
    SCHEMA_FILE,
    check_replaceable,
    load_bundle,
    write_manifest,
)
from edgeres.cli import main
from edgeres.errors import UserError
from edgeres.gates import floor_failures
from edgeres.harness.local import bench_local, max_threads
from edgeres.staging import staged_bundle
from edgeres.targets import load_target, targets_dir

SMALL = ["--calib", "fmnist:train@32", "--eval", "fmnist:test@64", "--no-bench"]
REBUILD = "rebuild the bundle with `edgeres convert`"


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    """arm-cpu-tflite saved as a custom profile named my-custom, outside targets/."""
    text = (targets_dir() / "arm-cpu-tflite.toml").read_text()
    assert 'name = "arm-cpu-tflite"' in text
    path = tmp_path_factory.mktemp("profile") / "my.toml"
    path.write_text(text.replace('name = "arm-cpu-tflite"', 'name = "my-custom"', 1))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, weights, profile) -> Path:
    out = tmp_path_factory.mktemp("b") / "mnv2"
    old = os.umask(0o022)
    try:
        rc = main(["convert", "mobilenet_v2_fmnist", "-t", str(profile), "--weights", weights,
                   "--out", str(out), *SMALL])
    finally:
        os.umask(old)
    assert rc == 0
    return out


def one_line(capsys) -> str:
    """stderr of the last command: exactly one line, no traceback."""
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("INFO: ")]  # LiteRT's own
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def edited(bundle: Path, dest: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of ``bundle`` whose manifest.json ``edit`` changed (a return value replaces it).
    manifest.json is not hashed, so every other file still verifies."""
    shutil.copytree(bundle, dest)
    m = json.loads((dest / MANIFEST).read_text())
    got = edit(m)
    (dest / MANIFEST).write_text(json.dumps(m if got is None else got))
    return dest


# -- 1. --out never replaces a folder that is not wholly an edgeres bundle -------------------


def test_folder_with_a_stray_manifest_survives(weights, tmp_path, capsys) -> None:
    w = tmp_path / "w"
    w.mkdir()
    (w / MANIFEST).write_text('{"name": "x"}')
    (w / "index.html").write_text("hi")
    assert main(["convert", "--weights", weights, "--out", str(w), *SMALL]) == 2
    assert "'" + str(w) + "' exists and is not an edgeres bundle" in one_line(capsys)
    assert (w / "index.html").read_text() == "hi" and (w / MANIFEST).read_text() == '{"name": "x"}'
    assert [p.name for p in tmp_path.iterdir()] == ["w"]  # no staging folder left


def test_bundle_with_an_unlisted_file_survives(bundle, weights, tmp_path, capsys) -> None:
    mine = tmp_path / "mine"
    shutil.copytree(bundle, mine)
    check_replaceable(mine)  # an untouched bundle may be replaced
    (mine / "qat").mkdir()
    (mine / "qat" / "last.pt").write_text("three days of QAT")
    assert main(["convert", "--weights", weights, "--out", str(mine), *SMALL]) == 2
    msg = one_line(capsys)
    assert "holds 'qat/last.pt'" in msg and "pass another --out or move that file" in msg
    assert (mine / "qat" / "last.pt").read_text() == "three days of QAT"
    m = json.loads((mine / MANIFEST).read_text())
    for bad in ([], {**m, "schema": "edgeres.bundle/0"}, {**m, "files": list(m["files"])}):
        (mine / MANIFEST).write_text(json.dumps(bad))
        with pytest.raises(UserError, match="is not an edgeres bundle"):
            check_replaceable(mine)


def test_file_dropped_during_the_convert_survives(bundle, tmp_path) -> None:
    """The check runs again right before the rename."""
    out = tmp_path / "out"
    shutil.copytree(bundle, out)
    with pytest.raises(UserError, match="holds 'notes.txt'"), staged_bundle(out) as staging:
        (staging.path / "model.tflite").write_bytes(b"new")
        write_manifest(staging.path, {})
        (out / "notes.txt").write_text("written meanwhile")
    assert (out / "notes.txt").is_file() and (out / "model.tflite").read_bytes() == (
        bundle / "model.tflite").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- 2. check fails (exit 1) on golden vectors beyond tolerance and on its floors ------------


def test_check_passes_a_good_bundle(bundle, capsys) -> None:
    assert main(["check", str(bundle), "--no-layers", "--json", "--min-agreement", "100",
                 "--data", "fmnist:test@64", "--max-drop", "5"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == [] and report["golden_max_code_diff"] <= report["golden_tolerance"]
    assert report["golden_tolerance"] == 1


def test_check_fails_on_a_tampered_scale(bundle, tmp_path, capsys, monkeypatch) -> None:
    """The runtime gates, on a scale that got past validation (load_bundle now compares it
    with model.tflite's: test_broken_manifest_is_one_line)."""
    def triple_input_scale(m: dict) -> None:
        m["inputs"][0]["scale"] *= 3

    bad = edited(bundle, tmp_path / "bad", triple_input_scale)
    assert main(["check", str(bad), "--no-layers"]) == 2
    assert "'inputs[0].scale' is " in one_line(capsys)
    monkeypatch.setattr("edgeres.bundle._check_model_io", lambda *args: None)
    assert main(["check", str(bad), "--no-layers"]) == 1
    captured = capsys.readouterr()
    assert "golden vectors" in captured.out and "FAIL" in captured.out  # the table first
    err = [ln for ln in captured.err.strip().splitlines() if not ln.startswith("INFO: ")]
    assert len(err) == 1 and err[0].startswith("edgeres: golden vectors differ by up to ")
    assert "(tolerance 1)" in err[0] and REBUILD in err[0]

    # another runtime gets the looser tolerance, and the floors add their own reasons
    assert main(["check", str(bad), "--no-layers", "--json", "--runtime", "litert-ref",
                 "--data", "fmnist:test@64", "--min-agreement", "90", "--max-drop", "5"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["golden_tolerance"] == 4 and report["golden_max_code_diff"] > 4
    failed = report["failed"]
    assert len(failed) == 3 and "golden vectors" in failed[0]
    assert "is below --min-agreement 90.0%" in failed[1] and "exceeds --max-drop 5.0" in failed[2]


def test_check_fails_a_bundle_that_convert_rejected(bundle, tmp_path, capsys) -> None:
    """A bundle that missed its gates went to OUT.rejected; moved back by hand, check still
    says it is not meant to ship (exit 1), whatever floors check itself was given."""
    def rejected(m: dict) -> None:
        m["metrics"]["top1_agreement"] = 98.0
        m["gates"] = {"min_agreement": 100.0, "max_drop": None, "passed": False,
                      "failures": floor_failures(m["metrics"], 100.0, None)}

    moved = edited(bundle, tmp_path / "moved", rejected)
    assert main(["check", str(moved), "--no-layers", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    (reason,) = report["failed"]
    assert reason == report["rejected_by_convert"]
    assert reason.startswith("convert rejected this bundle (top-1 agreement 98.00% is below "
                             "--min-agreement 100.0% (expected at this noise level: ")
    assert reason.endswith("); it is not meant to ship: improve the model or its calibration "
                           "and convert again")


@pytest.mark.parametrize("argv, message", [
    (["--min-agreement", "150"], "--min-agreement is a percentage in [0, 100], got 150.0"),
    (["--max-drop", "-1"], "--max-drop is the largest top-1 loss"),
    (["--max-drop", "1"], "--max-drop needs labelled data: pass --data SPEC"),
    (["--runtime", "tpu"], "--runtime must be one of"),
    (["--max-drop", "nan", "--data", "fmnist:test@64"], "--max-drop must be a finite number"),
    (["--min-agreement", "nan"], "--min-agreement must be a finite number, got nan"),
    (["--min-agreement", "inf"], "--min-agreement must be a finite number, got inf"),
])
def test_check_options_are_checked_first(bundle, argv, message, capsys) -> None:
    assert main(["check", str(bundle), *argv]) == 2
    assert message in one_line(capsys)


# -- 3. malformed manifests: one line naming manifest.json and the key -----------------------


def _set(key: str, value: object) -> Callable[[dict], None]:
    return lambda m: m.__setitem__(key, value)


def _drop(*path: str) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]

    return edit


BROKEN = [  # (edit, the key named, what the message says, found by bundle.schema.json)
    (lambda m: [], None, "the manifest must be a JSON object, not []", True),
    (_set("files", ["model.tflite"]), "files", "is not of type 'object'", True),
    (_drop("runtime"), "runtime", "is missing", False),
    (_set("runtime", "tpu"), "runtime", 'is "tpu", not one of onnxruntime', False),
    (_set("model_file", None), "model_file", "None is not of type 'string'", True),
    (_set("inputs", []), "inputs", "[] should be non-empty", True),
    (lambda m: m["outputs"][0].update(scale="x"), "outputs[0].scale",
     "'x' is not of type 'number', 'null'", True),
    (lambda m: m["outputs"][0].update(scale=0), "outputs[0].scale",
     "less than or equal to the minimum of 0", True),
    (_drop("metrics"), None, "'metrics' is a required property", True),
    (lambda m: m["inputs"][0].update(dtype="int7"), "inputs[0].dtype", "is not one of", True),
    (_set("files", {}), "files", "does not list 'model.tflite'", False),
    (_drop("files", "float.onnx"), "files", "does not list 'float.onnx'", False),
    (_set("model_file", "/etc/passwd"), "model_file", "not a path inside the bundle", False),
    (_set("model_file", "../mnv2/model.tflite"), "model_file", "not a path inside", False),
    (lambda m: m["files"].update({"../x": "0" * 64}), "files", "not a path inside", False),
    (_set("format", "onnx"), "model_file", "'format' onnx needs a .onnx file", False),
    (_set("format", "c"), "format", "which runtime litert-xnnpack does not load", False),
    (lambda m: m["inputs"][0].update(shape=[1, 28, 28]), "inputs[0].shape",
     "layout NHWC needs 4 dimensions", False),
    (lambda m: m["inputs"][0].update(shape=[1, 32, 32, 1]), "inputs[0].shape",
     "but model.tflite has [1, 28, 28, 1]", False),
    (lambda m: m["outputs"][0].update(dtype="uint8"), "outputs[0].dtype",
     "but model.tflite has int8", False),
    # the app quantizes with the manifest's parameters: they must be the model file's
    (lambda m: m["outputs"][0].update(scale=m["outputs"][0]["scale"] * 7), "outputs[0].scale",
     "but model.tflite quantizes it with", False),
    (lambda m: m["inputs"][0].update(zero_point=m["inputs"][0]["zero_point"] + 1),
     "inputs[0].zero_point", "but model.tflite has", False),
    (lambda m: m["outputs"][0].update(scale=None), "outputs[0].scale",
     "is null, but dtype int8 needs", False),
    (lambda m: m["inputs"][0].update(zero_point=None), "inputs[0].zero_point",
     "is null, but dtype int8 needs", False),
    (lambda m: m["metrics"].update(top1_agreement=float("nan")), "metrics.top1_agreement",
     "is not a finite number", False),
    (lambda m: m["outputs"][0].update(scale=float("inf")), "outputs[0].scale",
     "is not a finite number", False),
    (_set("labels", ["a", "b"]), "labels", "has 2 names, but 'outputs[0]' has 10 classes",
     False),
    (_set("gates", {"min_agreement": 150, "max_drop": 1, "passed": True, "failures": []}),
     "gates.min_agreement", "150 is greater than the maximum of 100", True),
    (_set("gates", {"min_agreement": 90, "max_drop": -1, "passed": True, "failures": []}),
     "gates.max_drop", "-1 is less than the minimum of 0", True),
    # the manifest is not hashed: a hand edit of the gate record shows as a contradiction
    (_set("gates", {"min_agreement": 90, "max_drop": None, "passed": True, "failures": ["x"]}),
     "gates.passed", "is true, but 'gates.failures' lists 1", False),
    (lambda m: m.update(gates={"min_agreement": 90, "max_drop": None, "passed": True,
                               "failures": []}, metrics={**m["metrics"], "top1_agreement": 50}),
     "gates.passed", "is true, but top-1 agreement 50.00% is below --min-agreement 90%", False),
    (_set("gates", {"min_agreement": 0, "max_drop": None, "passed": False, "failures": ["x"]}),
     "gates.passed", "is false, but its metrics meet every floor", False),
    (lambda m: m.update(gates={"min_agreement": 100, "max_drop": None, "passed": False,
                               "failures": ["made up"]}, metrics={**m["metrics"],
                                                                  "top1_agreement": 90}),
     "gates.failures", "does not match its floors and metrics, which give: top-1 agreement "
     "90.00% is below --min-agreement 100%", False),
    (lambda m: m["metrics"].update(agreement_sd=10**400), "metrics.agreement_sd",
     "100000000000000000000", True),  # jsonschema's message, cut at 120 characters
    (lambda m: m["metrics"].update(top1_agreement=1e300), "metrics.top1_agreement",
     "is greater than the maximum of 100", True),
    (lambda m: m["metrics"].update(agreement_sd=-1), "metrics.agreement_sd",
     "-1 is less than the minimum of 0", True),
    (lambda m: m["metrics"].update(centre_samples=10**6), "metrics.centre_samples",
     "is 1000000, more than the 64 samples", False),
    (lambda m: m["inputs"][0]["preprocess"].update(resize=0), "inputs[0].preprocess.resize",
     "0 is less than the minimum of 1", True),
    (lambda m: m["inputs"][0]["preprocess"].update(crop=28.0), "inputs[0].preprocess.crop",
     "is 28.0, not a whole number of pixels", False),
    (lambda m: m["inputs"][0]["preprocess"].update(mean=[0.1, 0.2, 0.3]),
     "inputs[0].preprocess.mean", "has 3 values, but the NHWC input has 1 channels", False),
    (lambda m: m["inputs"][0]["preprocess"].update(std=[0.3, 0.3]),
     "inputs[0].preprocess.std", "has 2 values, but the NHWC input has 1 channels", False),
    (lambda m: m["inputs"][0]["preprocess"].update(crop=3), "inputs[0].preprocess.crop",
     "is 3, but the input is 28 pixels square", False),
    (lambda m: m["inputs"][0]["preprocess"].update(resize=10**12),
     "inputs[0].preprocess.resize", "is cropped from 28 to 224", False),
    (lambda m: m["inputs"][0]["preprocess"].update(std=[1e-320]), "inputs[0].preprocess",
     "has a std outside [1e-6, 1e6]", False),
    (lambda m: m["inputs"][0].update(layout="ND"), "inputs[0].layout",
     "is ND, but model.tflite takes NHWC", False),
    (lambda m: m["inputs"][0].update(layout="NCHW", shape=[1, 1, 28, 28]), "inputs[0].shape",
     "but model.tflite has [1, 28, 28, 1]", False),
    (lambda m: m["inputs"][0].update(layout="NCHW"), "inputs[0].preprocess.mean",
     "the NCHW input has 28 channels", False),
]


@pytest.mark.parametrize("edit, key, message, schema", BROKEN,
                         ids=[f"{i}-{b[1]}" for i, b in enumerate(BROKEN)])
def test_broken_manifest_is_one_line(bundle, tmp_path, capsys, edit, key, message,
                                     schema) -> None:
    bad = edited(bundle, tmp_path / "bad", edit)
    assert main(["check", str(bad), "--no-layers"]) == 2
    line = one_line(capsys)
    named = f"'{key}': " if schema else f"'{key}' "  # schema messages are jsonschema's
    where = f"{bad / MANIFEST}: " + ("" if key is None else named)
    assert line.startswith(f"edgeres: error: {where}") and message in line, line
    assert line.endswith(REBUILD), line


def rewritten(bundle: Path, dest: Path, rel: str, write: Callable[[Path], object]) -> Path:
    """A copy of ``bundle`` whose file ``rel`` ``write`` replaced, its new sha256 put in the
    manifest: what a tampering that knows the format does; only the contents are wrong."""
    from edgeres.bundle import sha256_file

    shutil.copytree(bundle, dest)
    write(dest / rel)
    m = json.loads((dest / MANIFEST).read_text())
    m["files"][rel] = sha256_file(dest / rel)
    (dest / MANIFEST).write_text(json.dumps(m))
    return dest


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _npz(**changes: object) -> Callable[[Path], None]:
    """Rewrite an .npz with arrays replaced (a value of None drops the array)."""
    import numpy as np

    def write(path: Path) -> None:
        with np.load(path) as data:
            arrays = {**dict(data), **changes}
        np.savez(path.with_suffix(""), **{k: v for k, v in arrays.items() if v is not None})

    return write


def _first_divisor(make: Callable[[object], object]) -> Callable[[Path], None]:
    """Rewrite channel_scales.npz with its first array replaced by ``make(array)``."""
    import numpy as np

    def write(path: Path) -> None:
        with np.load(path) as data:
            arrays = dict(data)
        first = sorted(arrays)[0]
        arrays[first] = make(arrays[first])
        np.savez(path.with_suffix(""), **arrays)

    return write


def _golden_cases() -> list:
    import numpy as np

    golden, scales = "golden/golden.npz", "golden/channel_scales.npz"
    return [  # (file, how it is rewritten, what the message says)
        (golden, _npz(y_raw=None), "has no array 'y_raw'"),
        (golden, _npz(x=np.zeros((0, 1, 28, 28), np.float32),
                      y_raw=np.zeros((0, 10), np.int8)), "'x' has 0 samples"),
        (golden, _npz(x=np.array([[1], ["a"]], dtype=object)), "Object arrays cannot be loaded"),
        (golden, _npz(x=np.array([["a"]])), "holds <U1 values, not numbers"),
        (golden, _truncate, "not a readable .npz of the bundle"),
        (golden, _npz(x=np.zeros((8, 3, 28, 28), np.float32)),
         "'x' has shape [8, 3, 28, 28], but the manifest's input takes [N, 1, 28, 28]"),
        (golden, _npz(x=np.full((8, 1, 28, 28), np.nan, np.float32)),
         "'x' must hold finite floats"),
        (scales, _truncate, "not a readable .npz of the bundle"),
        (scales, _first_divisor(lambda a: np.ones((3, 3))),
         "must be one positive divisor per channel, not an array of shape [3, 3]"),
        (scales, _first_divisor(lambda a: np.ones(a.size + 1)), "divisors, but the tensor has"),
        ("model.tflite", _truncate, "model.tflite' is not a readable .tflite model"),
        ("model.tflite", lambda p: p.write_bytes(bytes(range(256)) * 40),
         "model.tflite' is not a readable .tflite model"),
    ]


@pytest.mark.parametrize("rel, write, message", _golden_cases(),
                         ids=lambda v: v if isinstance(v, str) and "/" in v else None)
def test_tampered_file_is_one_line(bundle, tmp_path, capsys, rel, write, message) -> None:
    """A file rewritten with its hash updated: one line naming it, not a traceback."""
    bad = rewritten(bundle, tmp_path / "bad", rel, write)
    layers = ["--layers"] if "channel_scales" in rel else ["--no-layers"]
    assert main(["check", str(bad), *layers]) == 2
    line = one_line(capsys)
    assert line.startswith("edgeres: error: ") and str(bad / rel) in line, line
    assert message in line and line.endswith(REBUILD), line


def test_model_file_linked_outside_the_bundle(bundle, tmp_path, capsys) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    shutil.move(bad / "model.tflite", tmp_path / "elsewhere.tflite")
    (bad / "model.tflite").symlink_to(tmp_path / "elsewhere.tflite")  # same bytes, same hash
    assert main(["check", str(bad), "--no-layers"]) == 2
    assert "'model_file' names 'model.tflite', which is not a path inside" in one_line(capsys)


def test_written_bundles_validate(bundle) -> None:
    import jsonschema

    m = load_bundle(bundle).manifest
    jsonschema.validate(m, json.loads(SCHEMA_FILE.read_text()))
    assert m["target"] == "my-custom" and m["runtime"] == "litert-xnnpack"


# -- 4. permissions ------------------------------------------------------------------------


def test_bundle_is_readable_by_others(bundle) -> None:
    """Converted under umask 022: folders 0755, files 0644 (not mkdtemp/mkstemp's 0700/0600)."""
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755
    paths = [bundle, *bundle.rglob("*")]
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_dir()} == {0o755}
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths if p.is_file()} == {0o644}
    assert (bundle / "model.tflite") in paths


def test_tflite_write_follows_the_umask(tmp_path) -> None:
    from edgeres.paths import write_bytes_atomic

    old = os.umask(0o027)
    try:
        write_bytes_atomic(tmp_path / "m.tflite", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.tflite").stat().st_mode) == 0o640


# -- 5. bench --target: a bundle converted with a custom profile -----------------------------


def test_bench_a_custom_target_bundle(bundle, profile, capsys) -> None:
    assert main(["bench", str(bundle), "--threads", "1", "--runs", "3"]) == 2
    msg = one_line(capsys)
    assert "target 'my-custom' is not a built-in profile" in msg and "--target PATH" in msg
    assert main(["bench", str(bundle), "--threads", "1", "--runs", "3", "--json",
                 "--target", str(profile)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["target"] == "my-custom" and [r["threads"] for r in res["latency"]] == [1]
    assert main(["bench", str(bundle), "--threads", "1", "--runs", "3", "--json",
                 "--target", "arm-cpu-tflite"]) == 0
    assert json.loads(capsys.readouterr().out)["target"] == "arm-cpu-tflite"
    assert main(["bench", str(bundle), "--target", "gpu-9000"]) == 2
    assert "unknown target 'gpu-9000'" in one_line(capsys)


# -- 6. thread counts ------------------------------------------------------------------------


@pytest.mark.parametrize("threads, message", [
    ("100000", f"--threads 100000 is out of range: use 1 to {max_threads()}"),
    ("1,0", "--threads 0 is out of range"),
    ("1,two", "--threads must be comma-separated whole numbers, got '1,two'"),
])
def test_bench_threads_are_bounded(bundle, profile, threads, message, capsys) -> None:
    assert main(["bench", str(bundle), "--target", str(profile), "--threads", threads]) == 2
    assert message in one_line(capsys)


def test_bench_local_bounds_threads_before_running(bundle, monkeypatch) -> None:
    def no_runner(*a, **k):
        raise AssertionError("the runner must not start")

    monkeypatch.setattr("edgeres.harness.local.subprocess.run", no_runner)
    with pytest.raises(UserError, match="out of range"):
        bench_local(bundle / "model.tflite", load_target("arm-cpu-tflite"),
                    threads=(max_threads() + 1,))


def test_golden_drift_of_float_outputs_is_counted_in_codes(tmp_path, capsys) -> None:
    """ONNX bundles take and give float: a drift of two output steps is two codes, not the
    whole logits it truncates to (0 here, which passed before)."""
    import numpy as np

    from edgeres.bundle import sha256_file
    from edgeres.check import check_golden, output_code_step

    out = tmp_path / "onnx"
    assert main(["convert", "mobilenet_v2_fmnist", "-t", "arm-cpu-onnx", "--out", str(out),
                 *SMALL]) == 0
    capsys.readouterr()
    step = output_code_step(load_bundle(out))
    assert step is not None and 0 < step < 0.5  # the last DequantizeLinear's scale
    assert check_golden(load_bundle(out)) == 0
    golden = out / "golden" / "golden.npz"
    with np.load(golden) as data:
        arrays = dict(data)
    arrays["y_raw"] = arrays["y_raw"] + np.float32(2 * step)
    np.savez(golden, **arrays)
    m = json.loads((out / MANIFEST).read_text())
    m["files"]["golden/golden.npz"] = sha256_file(golden)
    (out / MANIFEST).write_text(json.dumps(m))
    assert check_golden(load_bundle(out)) == pytest.approx(2.0, abs=0.01)
    assert main(["check", str(out), "--no-layers"]) == 1
    assert "golden vectors differ by up to 2 codes" in capsys.readouterr().err


def test_a_floor_between_the_recorded_and_the_true_agreement_is_missed() -> None:
    """272 of 300 agree: 90.6667 % recorded, 90.666... % true; a floor of 90.66667 is missed
    and the message shows enough digits to see it."""
    metrics = {"top1_agreement": 90.6667, "samples": 300, "float_top1": 92.0, "quant_top1": 88.0}
    assert floor_failures(metrics, 90.66667, None) == [
        "top-1 agreement 90.666667% is below --min-agreement 90.666670%"]
    assert floor_failures(metrics, 90.6666, 4.0) == []
    assert floor_failures(metrics, None, 3.99) == [
        "accuracy drop 4.00 points exceeds --max-drop 3.99"]
