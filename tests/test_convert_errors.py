"""Bad options of `edgeres convert` / `edgeres qat` fail in seconds, in one line naming the
option, and write nothing: before calibration or training, never after."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.convert import ConvertOptions, convert
from edgeres.errors import UserError
from edgeres.graph.capture import capture
from edgeres.quant.plan import make_plan
from edgeres.quant.qat_train import _mismatches
from edgeres.targets import load_target
from edgeres.zoo import create_model

FAST = dict(calib="fmnist:train@32", eval="fmnist:test@64", bench=False)
QAT_FAST = dict(eval="fmnist:test@64", bench=False)  # QAT calibrates on its --train


@pytest.mark.parametrize(("options", "flag"), [
    (dict(scheme="ptq", rex_order=3), "--rex-order applies to --scheme rex"),
    (dict(scheme="qat", rex_sparsity=0.25), "--rex-sparsity applies to --scheme rex"),
    (dict(scheme="ptq", rex_budget_macs=0.5), "--rex-budget applies to --scheme rex"),
    (dict(scheme="rex", rex_order=0), "--rex-order: the expansion order K must be >= 1"),
    (dict(scheme="rex", rex_sparsity=1.0), "--rex-sparsity"),
    (dict(scheme="rex", rex_budget_macs=float("nan")), "--rex-budget"),
    (dict(scheme="rex", rex_budget_macs=float("inf")), "--rex-budget"),
    (dict(adaround_iters=-5), "--adaround"),
    (dict(calib=""), "--calib is empty"),
    (dict(eval="  "), "--eval is empty"),
    (dict(scheme="qat", train=""), "--train is empty"),
    (dict(scheme="nope"), "--scheme must be one of"),
    (dict(max_drop=float("nan")), "--max-drop"),
    # what plain QAT would silently ignore: it calibrates on --train and quantizes every layer
    (dict(scheme="qat", calib="fmnist:train@32"), "--calib does not apply to QAT"),
    (dict(scheme="rex+qat", calib="fmnist:train@32"), "--calib does not apply to QAT"),
    (dict(scheme="qat", ignore=("features.1.conv.0.0",)), "--ignore applies to --scheme ptq"),
    (dict(scheme="qat", adaround_iters=5), "--adaround applies to --scheme ptq"),
    (dict(scheme="qat", act_observer="minmax"), "--observer applies to --scheme ptq"),
    (dict(scheme="qat", percentile=99.0), "--percentile applies to --scheme ptq"),
    (dict(scheme="ptq", qat_batch=64), "--batch applies to QAT only"),
])
def test_bad_options_name_the_option(options: dict, flag: str) -> None:
    with pytest.raises(UserError, match=flag.replace("+", r"\+")):
        ConvertOptions(**options)


def test_rex_options_are_taken_by_rex_schemes() -> None:
    for scheme in ("rex", "rex+qat"):
        opts = ConvertOptions(scheme=scheme, rex_order=3, rex_sparsity=0.25, rex_budget_macs=0.5)
        assert (opts.rex_order, opts.rex_sparsity, opts.rex_budget_macs) == (3, 0.25, 0.5)


def test_out_below_a_file_fails_before_calibration(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    with pytest.raises(UserError, match=f"--out .*: {blocker} is a file, not a folder"):
        convert(ConvertOptions(out=blocker / "sub" / "bundle", **FAST), progress=False)
    assert blocker.read_text() == "mine"


def test_qat_checkpoints_are_refused_in_a_file_or_a_bundle(tmp_path: Path) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    with pytest.raises(UserError, match="--checkpoints .* is a file, not a folder"):
        convert(ConvertOptions(scheme="qat", qat_dir=a_file, out=tmp_path / "b", **QAT_FAST),
                progress=False)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="--checkpoints .* is a bundle folder"):
        convert(ConvertOptions(scheme="qat", qat_dir=bundle, out=tmp_path / "b", **QAT_FAST),
                progress=False)
    assert not (tmp_path / "b").exists() and sorted(bundle.iterdir()) == [bundle / "manifest.json"]


def test_max_drop_needs_labelled_eval_data(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    opts = ConvertOptions(calib="fmnist:train@32", eval=f"npz:{tmp_path / 'unlabelled.npz'}",
                          max_drop=0.0, bench=False, out=tmp_path / "b")
    with pytest.raises(UserError, match="--max-drop .* has no labels"):
        convert(opts, progress=False)
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def graph():  # noqa: ANN201 - Graph
    return capture(create_model("mobilenet_v2_fmnist"), torch.zeros(1, 1, 28, 28))


@pytest.mark.parametrize(("ignore", "what"), [
    (("features.0.0",), "the model input 'input' is read only by float layers"),
    (("classifier.*",), "the model output 'logits' is written by a float layer"),
])
def test_ignoring_an_io_layer_of_an_int8_io_target_is_refused_at_planning(
        graph, ignore: tuple[str, ...], what: str) -> None:  # noqa: ANN001
    with pytest.raises(UserError, match=f"{what}.*in the ignore list.*arm-cpu-tflite has int8"):
        make_plan(graph, load_target("arm-cpu-tflite"), ignore=ignore)
    plan = make_plan(graph, load_target("arm-cpu-onnx"), ignore=ignore)  # float I/O: fine
    assert set(plan.float_nodes) >= {n.name for n in graph.nodes if n.name.startswith(
        ignore[0].rstrip("*"))}


def test_explain_predicts_the_io_refusal() -> None:
    done = subprocess.run([sys.executable, "-m", "edgeres.cli", "explain", "mobilenet_v2_fmnist",
                           "--ignore", "features.0.0"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "read only by float layers" in done.stderr and not done.stdout.strip()


def test_checkpoint_mismatches_name_each_differing_leaf() -> None:
    meta = {"fingerprint": "a" * 64, "target": "t", "num_classes": 10, "train_samples": 64,
            "rex": {"order": 2, "sparsity": 0.5, "ptq": {"weight_bits": 4}},
            "config": {"lr": 0.01, "epochs": 3}}
    saved = {**meta, "rex": {"order": 3, "sparsity": 0.5, "ptq": {"weight_bits": 4}},
             "config": {"lr": 0.02, "epochs": 3}}
    assert _mismatches(saved, meta) == ["rex order: checkpoint 3, this run 2",
                                        "config lr: checkpoint 0.02, this run 0.01"]
    assert _mismatches({**meta, "fingerprint": "b" * 64}, meta)[0].startswith(
        "model: the checkpoint's layers or float weights are not this model's")


def test_labels_the_model_has_no_output_for_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x, y=np.full(8, 50))
    opts = ConvertOptions(calib="fmnist:train@32", eval=f"npz:{tmp_path / 'eval.npz'}",
                          bench=False, out=tmp_path / "b")
    with pytest.raises(UserError, match="has label 50 .* the model has 10 classes"):
        convert(opts, progress=False)
    assert not (tmp_path / "b").exists()


def test_a_met_gate_is_recorded_in_the_manifest(tmp_path: Path) -> None:
    from edgeres.bundle import load_bundle

    result = convert(ConvertOptions(out=tmp_path / "b", min_agreement=50.0, **FAST),
                     progress=False)
    assert result.bundle == tmp_path / "b" and not (tmp_path / "b.rejected").exists()
    gates = load_bundle(tmp_path / "b").manifest["gates"]
    assert gates == {"min_agreement": 50.0, "max_drop": None, "passed": True, "failures": []}
    assert result.summary()["gates"] == gates  # --json carries it too


def test_out_that_is_or_holds_the_current_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    for out in (".", "..", "", "sub/../.."):
        with pytest.raises(UserError, match="is the current folder or holds it"):
            convert(ConvertOptions(out=Path(out), **FAST), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_out_or_checkpoints_inside_a_bundle_are_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "golden").mkdir(parents=True)
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="is inside the bundle"):
        convert(ConvertOptions(out=bundle / "golden" / "inner", **FAST), progress=False)
    with pytest.raises(UserError, match="--checkpoints .* is inside the bundle"):
        convert(ConvertOptions(scheme="qat", qat_dir=bundle / "golden", out=tmp_path / "b",
                               **QAT_FAST), progress=False)
    with pytest.raises(UserError, match="--checkpoints .* holds or is inside the bundle folder"):
        convert(ConvertOptions(scheme="qat", qat_dir=tmp_path / "b" / "ck", out=tmp_path / "b",
                               **QAT_FAST), progress=False)
    assert not (bundle / "golden" / "inner").exists() and not (tmp_path / "b").exists()


def test_a_gate_whose_rejected_folder_is_taken_fails_before_the_work(tmp_path: Path) -> None:
    (tmp_path / "b.rejected").write_text("mine")
    with pytest.raises(UserError, match="b.rejected"):
        convert(ConvertOptions(out=tmp_path / "b", min_agreement=99.0, **FAST), progress=False)
    assert (tmp_path / "b.rejected").read_text() == "mine"


def test_resume_without_a_checkpoint_fails_before_the_data_loads(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--resume .*: no checkpoint there"):
        convert(ConvertOptions(scheme="qat", resume=tmp_path / "nothing.pt",
                               out=tmp_path / "b", **QAT_FAST), progress=False)


@pytest.mark.skipif(__import__("shutil").which("adb") is not None, reason="adb is installed")
def test_bench_on_an_adb_profile_goes_to_the_phone_not_this_host(tmp_path: Path) -> None:
    from edgeres.targets import targets_dir

    convert(ConvertOptions(out=tmp_path / "b", **FAST), progress=False)
    text = (targets_dir() / "arm-cpu-tflite.toml").read_text()
    text = text.replace('name = "arm-cpu-tflite"', 'name = "my-phone"')
    text = text.replace('transport = "local"', 'transport = "adb"')
    assert 'transport = "adb"' in text
    (tmp_path / "phone.toml").write_text(text)
    done = subprocess.run([sys.executable, "-m", "edgeres.cli", "bench", str(tmp_path / "b"),
                           "--target", str(tmp_path / "phone.toml")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "'adb' was not found on PATH" in done.stderr


def test_an_ignore_typo_fails_before_any_data_loads(tmp_path: Path, monkeypatch) -> None:
    import edgeres.convert as convert_module

    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was loaded before the plan was checked")

    monkeypatch.setattr(convert_module, "load_spec", no_data)
    with pytest.raises(UserError, match=r"ignore list entries match no layer: \['nosuch'\]"):
        convert(ConvertOptions(ignore=("nosuch",), out=tmp_path / "b", **FAST), progress=False)
    with pytest.raises(UserError, match="w4 not supported by npu-int8-per-tensor"):
        convert(ConvertOptions(target="npu-int8-per-tensor", bits="w4a8", out=tmp_path / "b",
                               **FAST), progress=False)


def test_output_files_never_overwrite_another_kind_or_land_in_a_bundle(tmp_path: Path) -> None:
    from edgeres.paths import check_output_file, check_output_folder

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not a .npz file"):
        check_output_file(tmp_path / "notes.txt", "-o", "calib.npz")
    (tmp_path / "old.npz").write_bytes(b"")
    check_output_file(tmp_path / "old.npz", "-o", "calib.npz")  # rebuilding one: fine
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text("{}")
    with pytest.raises(UserError, match="is inside the bundle"):
        check_output_file(bundle / "manifest.npz", "-o", "calib.npz")
    with pytest.raises(UserError, match="longer than 255 bytes, which"):
        check_output_file(tmp_path / ("L" * 300) / "calib.npz", "-o", "calib.npz")
    with pytest.raises(UserError, match="longer than 241 bytes .edgeres names its temporaries"):
        check_output_file(tmp_path / ("L" * 240 + ".npz"), "-o", "calib.npz")
    with pytest.raises(UserError, match="longer than 232 bytes .edgeres names its temporaries"):
        check_output_folder(tmp_path / ("L" * 240), "--out")  # .NAME.rejected.old-XXXXXXXX
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match="is a link to nothing"):
        check_output_folder(tmp_path / "dangling", "--out")
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_factory_that_calls_sys_exit_is_an_error(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "exits.py").write_text("import sys\n\ndef f():\n    sys.exit(0)\n")
    monkeypatch.chdir(tmp_path)
    done = subprocess.run([sys.executable, "-m", "edgeres.cli", "convert", "exits:f",
                           "--no-bench", "--out", str(tmp_path / "b")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "'exits:f' failed (SystemExit: 0)" in done.stderr


def test_resume_from_a_file_whose_meta_is_not_a_dict(tmp_path: Path) -> None:
    from edgeres.quant.qat_train import load_checkpoint

    for meta in (torch.zeros(2), [1, 2]):
        torch.save({"meta": meta}, tmp_path / "ck.pt")
        with pytest.raises(UserError, match="is not an edgeres QAT checkpoint"):
            load_checkpoint(tmp_path / "ck.pt", {})


def test_os_errors_on_user_paths_are_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "edgeres.cli", "check",
                           str(tmp_path / ("L" * 300))], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "File name too long" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["qat", "--batch", "abc"], "Invalid value for '--batch'"),
    (["convert", "--min-agreement", "abc"], "Invalid value for '--min-agreement'"),
    (["convert", "--batch", "64"], "No such option: --batch"),
    (["convert", "a", "b"], "Got unexpected extra argument"),
    (["check"], "Missing argument 'bundle'"),
    (["nope"], "No such command 'nope'"),
])
def test_usage_errors_are_one_line_too(argv: list[str], message: str, capsys) -> None:
    from edgeres.cli import main

    assert main(argv) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith(f"edgeres: error: {message}") and line.endswith(" --help')")
    assert captured.out == ""
