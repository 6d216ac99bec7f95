"""`edgeres qat` end to end: trains, checkpoints, writes the same checked bundle as convert;
torchrun worker ranks write nothing; a model without labelled data is refused in one line."""

import json
from pathlib import Path

import pytest

from edgeres.cli import main
from edgeres.convert import ConvertOptions, convert
from edgeres.quant.qat_train import CHECKPOINT_NAME

SMALL = ["--train", "fmnist:train@256", "--eval", "fmnist:test@100"]


def test_qat_command_writes_a_checked_bundle_and_a_checkpoint(tmp_path, capsys) -> None:
    out = tmp_path / "mnv2-qat"
    argv = ["qat", "mobilenet_v2_fmnist", "--bits", "w8a8", "--epochs", "1", "--steps", "2",
            "--batch", "64"]
    rc = main([*argv, *SMALL, "--out", str(out), "--no-bench", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["scheme"] == summary["scheme"] == "qat"
    # The bundle's file, run in LiteRT, against float.onnx on the 100 evaluation images.
    assert summary["samples"] == 100 and summary["top1_agreement"] >= 90.0
    assert (tmp_path / "mnv2-qat.qat" / CHECKPOINT_NAME).is_file()
    assert json.loads((out / "report.json").read_text())["config"]["batch"] == 64


def test_worker_ranks_train_but_write_no_bundle(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it; WORLD_SIZE unset: no process group
    out = tmp_path / "worker"
    opts = ConvertOptions(
        "mobilenet_v2_fmnist", scheme="qat", qat_steps=1, train="fmnist:train@128",
        eval="fmnist:test@50", out=out, qat_dir=tmp_path / "ck",
        bench=False,
    )
    assert convert(opts, progress=False) is None
    assert not out.exists()


def test_unlabelled_training_data_distils_from_the_float_model(tmp_path) -> None:
    """Photos have no labels: QAT trains on the float model's soft targets alone, and the
    bundle is still checked against float on the labelled evaluation images."""
    opts = ConvertOptions(
        "mobilenet_v2_fmnist", scheme="qat", qat_steps=2, train="photos@128",
        eval="fmnist:test@100", out=tmp_path / "q",
        qat_dir=tmp_path / "ck", bench=False,
    )
    result = convert(opts, progress=False)
    assert result is not None and result.qmodel is not None
    assert result.qmodel.meta["config"]["distill_alpha"] == 1.0
    assert result.manifest["metrics"]["top1_agreement"] >= 90.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["qat", "mobilenet_v2_100", "--steps", "1"], "--train SPEC"),
        (["qat", "mobilenet_v2_fmnist", "--epochs", "0"], "epochs must be >= 1"),
        (["qat", "mobilenet_v2_fmnist", "--bits", "w9a8"], "w9a8"),
        (["qat", "mobilenet_v2_fmnist", "--batch", "0"], "--batch: the QAT batch must be >= 1"),
    ],
)
def test_bad_qat_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path: Path) -> None:
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-bench"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_training_data_smaller_than_a_batch_names_the_batch_option(capsys, tmp_path) -> None:
    argv = ["qat", "mobilenet_v2_fmnist", "--train", "fmnist:train@64", "--steps", "1",
            "--out", str(tmp_path / "b"), "--no-bench"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "edgeres: error: training data 'fmnist:train@64' has 64 samples, fewer than one batch "
        "of 128; add data or lower --batch")
    assert main([*argv, "--batch", "32"]) == 0
