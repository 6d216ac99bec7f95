"""User mistakes found by fuzzing: each is one UserError line naming what is wrong and what to
do (and, through the CLI, exit code 2 with no traceback), never a silent result or a trace."""

import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeres.cli import main
from edgeres.data.folders import save_npz
from edgeres.data.preprocess import Preprocess
from edgeres.data.specs import DataSpec, check_labels, load_spec
from edgeres.errors import UserError
from edgeres.resolve import resolve_model
from edgeres.targets import load_target, targets_dir
from edgeres.zoo import create_model

GREY = Preprocess((0.5,), (0.5,))
FAST = ["--no-bench", "--calib", "fmnist:train@32", "--eval", "fmnist:test@64"]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def cli_fails(argv: list[str], capsys) -> str:
    """Run the CLI, assert exit 2 and a one-line error without a traceback; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# -- 1. labels outside the model's classes ------------------------------------------------


def test_check_labels_names_spec_label_and_class_count() -> None:
    check_labels(torch.tensor([0, 3, 9]), 10, "fmnist:test@64")  # in range: no error
    check_labels(None, 10, "photos@8")  # unlabelled: nothing to check
    with pytest.raises(UserError) as exc:
        check_labels(np.array([0, 1, 50]), 10, "npz:eval.npz")
    msg = one_line(exc)
    assert "'npz:eval.npz'" in msg and "label 50" in msg and "10 classes" in msg
    assert "num_classes=51" in msg
    with pytest.raises(UserError, match=r"label -1 .*never negative"):
        check_labels(torch.tensor([2, -1]), 10, "npz:eval.npz")


def test_load_spec_refuses_npz_labels_beyond_the_model(tmp_path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((4, 1, 28, 28), np.float32), y=np.array([0, 1, 50, 2]))
    assert load_spec(f"npz:{path}", GREY, 1, 28).y.tolist() == [0, 1, 50, 2]  # no model: kept
    with pytest.raises(UserError, match=r"label 50 .* 10 classes"):
        load_spec(f"npz:{path}", GREY, 1, 28, num_classes=10)


def test_folder_with_more_class_folders_than_classes(tmp_path) -> None:
    root = tmp_path / "imgs"
    for k in range(12):
        (root / f"c{k:02d}").mkdir(parents=True)
        Image.fromarray(np.full((28, 28), k * 10, np.uint8)).save(root / f"c{k:02d}" / "a.png")
    ds = load_spec(f"folder:{root}", GREY, 1, 28)
    with pytest.raises(UserError) as exc:
        check_labels(ds.y, 10, ds.name)
    msg = one_line(exc)
    assert f"folder:{root}" in msg and "10 classes" in msg and "sorted name order" in msg
    assert "has 12 of them" in msg and "'c10'" in msg


# -- 2./3. spec strings --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_spec(text: str) -> None:
    with pytest.raises(UserError, match=r"^empty data spec; give e.g. fmnist:train@512 or "
                                        r"folder:PATH$"):
        DataSpec.parse(text)


def test_spec_whitespace_is_stripped() -> None:
    assert DataSpec.parse("  fmnist:train@32 \n") == DataSpec("fmnist", "train", 32)


@pytest.mark.parametrize("text, got", [
    ("fmnist:train@abc", "'abc'"), ("fmnist:train@32@5", "'32@5'"), ("photos@x", "'x'"),
    ("fmnist:test@0", "'0'"), ("synthetic@-2", "'-2'"), ("fmnist:train@1.5", "'1.5'"),
])
def test_bad_count_blames_the_count_not_the_split(text: str, got: str) -> None:
    with pytest.raises(UserError) as exc:
        DataSpec.parse(text)
    msg = one_line(exc)
    assert "count after @ must be a whole number of at least 1" in msg and got in msg
    assert "split" not in msg


def test_bad_count_on_an_existing_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserError, match="count after @ must be a whole number"):
        DataSpec.parse("folder:imgs@abc")
    (tmp_path / "a@b").mkdir()  # an "@" that belongs to the path stays in it
    assert DataSpec.parse("folder:a@b") == DataSpec("folder", "a@b", None)


# -- 4. .npz files ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a@3", "b@x"])
def test_existing_folder_with_at_in_its_name(tmp_path, monkeypatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(
        (tmp_path / name).mkdir() or tmp_path / name / "i.png")
    for text in (f"folder:{name}", name):
        assert DataSpec.parse(text) == DataSpec("folder", name, None)
        assert len(load_spec(text, GREY, 1, 28)) == 1
    assert DataSpec.parse(f"folder:{name}@1") == DataSpec("folder", name, 1)


def _png(path, arr: np.ndarray, mode: str | None = None):
    im = Image.fromarray(arr)
    (im.convert(mode) if mode else im).save(path)
    return path


@pytest.mark.parametrize("chans", [1, 3])
def test_16_bit_png_is_scaled_not_clipped(tmp_path, chans: int) -> None:
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 65536, (28, 28)).astype(np.uint16)
    narrow = np.round(wide / 257).astype(np.uint8)
    (tmp_path / "w").mkdir()
    (tmp_path / "n").mkdir()
    assert Image.open(_png(tmp_path / "w" / "a.png", wide)).mode.startswith("I")
    _png(tmp_path / "n" / "a.png", narrow)
    pre = GREY if chans == 1 else Preprocess((0.5,) * 3, (0.5,) * 3)
    got = load_spec(f"folder:{tmp_path / 'w'}", pre, chans, 28).x
    want = load_spec(f"folder:{tmp_path / 'n'}", pre, chans, 28).x
    assert (got - want).abs().max() <= 1 / 255 / 0.5 + 1e-6  # 1/255 in pixel units
    assert (got == got.max()).float().mean() < 0.05  # not clipped to 255


def test_rgba_png_drops_alpha(tmp_path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (28, 28, 4)).astype(np.uint8)
    _png(tmp_path / "a.png", rgba)
    (tmp_path / "rgb").mkdir()
    _png(tmp_path / "rgb" / "a.png", rgba[..., :3])
    pre = Preprocess((0.5,) * 3, (0.5,) * 3)
    (tmp_path / "rgba").mkdir()
    (tmp_path / "a.png").rename(tmp_path / "rgba" / "a.png")
    assert torch.equal(load_spec(f"folder:{tmp_path / 'rgba'}", pre, 3, 28).x,
                       load_spec(f"folder:{tmp_path / 'rgb'}", pre, 3, 28).x)


def test_float_image_is_refused_naming_the_file(tmp_path, monkeypatch) -> None:
    path = _png(tmp_path / "a.png", np.zeros((28, 28), np.uint8))
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p: real_open(p).convert("F"))  # no F PNGs
    with pytest.raises(UserError) as exc:
        load_spec(f"folder:{tmp_path}", GREY, 1, 28)
    assert str(path) in one_line(exc) and "32-bit float (F) image" in one_line(exc)


def test_npz_without_arrays(tmp_path) -> None:
    path = tmp_path / "empty.npz"
    np.savez(path)
    with pytest.raises(UserError) as exc:
        load_spec(f"npz:{path}", GREY, 1, 28)
    msg = one_line(exc)
    assert str(path) in msg and "holds no arrays" in msg and "'x'" in msg and "'images'" in msg


def test_npz_that_is_a_directory(tmp_path) -> None:
    with pytest.raises(UserError, match=r"is a directory, not an \.npz file"):
        load_spec(f"npz:{tmp_path}", GREY, 1, 28)


def test_save_npz_mode_follows_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        path = save_npz(tmp_path / "c.npz", torch.zeros(1, 1, 2, 2))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027, not mkstemp's 0600


def test_preprocess_channel_mismatch_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"3 channel means .* input has 1 channels"):
        Preprocess((0.5,) * 3, (0.5,) * 3)(np.zeros((1, 8, 8, 1), np.uint8))


# -- 5. model resolution -------------------------------------------------------------------

FACTORIES = '''
import torch
from torch import nn


def raises():
    raise RuntimeError("boom: no weights here")


def needs_arg(width):
    return nn.Linear(width, 2)


def net(meta=None, first=3, linear=4):
    m = nn.Sequential(nn.Conv2d(first, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(linear, 10))
    if meta is not None:
        m.edgeres_meta = meta
    return m


def big():
    return net({"img_size": "big"})


def pair():
    return net({"img_size": [32, 32]})


def oblong():
    return net({"img_size": [32, 48]})


def chans0():
    return net({"in_chans": 0})


def classes_str():
    return net({"num_classes": "10"})


def classes_wrong():
    return net({"num_classes": 7})


def pre_short():
    return net({"preprocess": {"mean": [0.5], "std": [0.5, 0.5, 0.5]}})


def typo():
    return net({"img_szie": 32})


def plain():
    return net()


class _MetaRaises(nn.Sequential):
    @property
    def edgeres_meta(self):
        raise KeyError("no meta today")


def meta_raises():
    return _MetaRaises(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(4, 10))


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return {"logits": self.fc(x.mean((2, 3)))}


def returns_dict():
    return _DictOut()


def labels_cifar():
    return net({"labels": "cifar"})


def nan_weights():
    m = net()
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    return m


def wrong_linear():
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(100, 10))


def grey():
    return net({"img_size": 28, "in_chans": 1}, first=1)
'''


@pytest.fixture
def factories(tmp_path, monkeypatch) -> str:
    """A user module in the working directory (where module:factory is imported from)."""
    name = f"ie_factories_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(FACTORIES)
    (tmp_path / "ie_broken.py").write_text("def f(:\n")
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("ie_broken", None)


@pytest.mark.parametrize("fn, expected", [
    ("raises", ":raises' failed (RuntimeError: boom: no weights here): fix the factory"),
    ("needs_arg", ":needs_arg' takes required arguments (width)"),
    ("big", "edgeres_meta['img_size'] must be a positive integer, got 'big'"),
    ("oblong", "edgeres_meta['img_size'] is 32x48; edgeres takes square inputs"),
    ("chans0", "edgeres_meta['in_chans'] must be a positive integer, got 0"),
    ("classes_str", "edgeres_meta['num_classes'] must be a positive integer, got '10'"),
    ("classes_wrong", "edgeres_meta['num_classes'] is 7 but the model outputs 10 values"),
    ("pre_short", "edgeres_meta['preprocess']['mean'] must be a list of 3 numbers"),
    ("typo", "unknown edgeres_meta keys ['img_szie']"),
    ("wrong_linear", "failed on an input of shape (1, 3, 224, 224) (RuntimeError: mat1 and mat2"),
    ("grey", "the model has 1 input channels, so it needs edgeres_meta['preprocess']"),
    ("meta_raises", "reading edgeres_meta failed (KeyError: 'no meta today')"),
    ("returns_dict", "returned a dict from forward; the model must return a tensor of logits"),
    ("labels_cifar", "edgeres_meta['labels'] is 'cifar', not a known label set (imagenet, "
                     "fmnist)"),
    ("nan_weights", "the model's 0.weight holds NaN or Inf values"),
])
def test_factory_mistakes_are_one_line(factories: str, fn: str, expected: str) -> None:
    with pytest.raises(UserError) as exc:
        resolve_model(f"{factories}:{fn}")
    msg = one_line(exc)
    assert expected in msg
    assert f"'{factories}:{fn}'" in msg


def test_factory_meta_that_is_right(factories: str) -> None:
    rm = resolve_model(f"{factories}:pair")
    assert (rm.img_size, rm.in_chans, rm.num_classes) == (32, 3, 10)
    assert resolve_model(f"{factories}:plain").num_classes == 10  # from the dry run's output


def test_factory_module_with_syntax_error(factories: str) -> None:
    with pytest.raises(UserError) as exc:
        resolve_model("ie_broken:f")
    assert "'ie_broken:f'" in one_line(exc) and "SyntaxError" in str(exc.value)


def test_checkpoint_state_dict_not_a_dict(tmp_path) -> None:
    path = tmp_path / "c.pt"
    torch.save({"model": "mobilenet_v2_fmnist", "state_dict": "notadict"}, path)
    with pytest.raises(UserError, match=r"'state_dict' is a str, not a dict of tensors"):
        resolve_model(str(path))


@pytest.mark.parametrize("content", [
    bytes(range(1, 250)) * 8,  # random-looking bytes
    b"hello world\n",  # text (torch says only "101")
    b"",
    b"\x80\x02garbage",  # looks like a legacy pickle
])
def test_weights_that_are_not_a_checkpoint(tmp_path, content: bytes) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        resolve_model("mobilenet_v2_fmnist", str(path))
    msg = one_line(exc)
    assert f"cannot read weights '{path}': not a torch checkpoint (torch.save file)" in msg
    assert "weights_only" not in msg and "file an issue" not in msg and len(msg) < 250


def test_weights_that_pickle_a_module(tmp_path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), path)
    with pytest.raises(UserError) as exc:
        resolve_model("mobilenet_v2_fmnist", str(path))
    msg = one_line(exc)
    assert "pickles Python objects" in msg and "torch.nn.modules.linear.Linear" in msg


def test_weights_of_another_architecture_are_capped(tmp_path) -> None:
    path = tmp_path / "emo.pt"
    torch.save(create_model("emo_1m_fmnist").state_dict(), path)
    with pytest.raises(UserError) as exc:
        resolve_model("mobilenet_v2_fmnist", str(path))
    msg = one_line(exc)
    assert "do not fit model 'mobilenet_v2_fmnist'" in msg and len(msg) < 500
    assert "missing keys (" in msg and "unexpected keys (" in msg and msg.count(", ...") == 2


def _nan_checkpoint(tmp_path):
    state = create_model("mobilenet_v2_fmnist").state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("inf")
    path = tmp_path / "ck.pth"
    torch.save(state, path)
    return path, key


def test_non_finite_weights_are_named(tmp_path) -> None:
    path, key = _nan_checkpoint(tmp_path)
    for args in ((str(path),), ("mobilenet_v2_fmnist", str(path))):
        with pytest.raises(UserError) as exc:
            resolve_model(*args)
        assert f"weights '{path}': '{key}' holds NaN or Inf values" in one_line(exc)


def test_weights_empty_or_with_a_checkpoint(tmp_path, factories: str) -> None:
    with pytest.raises(UserError, match=r"^--weights is empty"):
        resolve_model("mobilenet_v2_fmnist", "")
    path = tmp_path / "ck.pth"
    torch.save(create_model("mobilenet_v2_fmnist").state_dict(), path)
    for model in (str(path), f"{factories}:plain"):
        with pytest.raises(UserError, match=r"brings its own weights; drop --weights"):
            resolve_model(model, str(path))


def test_directory_where_a_checkpoint_is_expected(tmp_path) -> None:
    with pytest.raises(UserError, match="is a directory; a checkpoint file"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="is a directory; a checkpoint file"):
        resolve_model("mobilenet_v2_fmnist", str(tmp_path))


# -- 6. targets ------------------------------------------------------------------------------


def test_target_that_is_a_directory(tmp_path) -> None:
    for text in (str(tmp_path), f"{tmp_path}/"):
        with pytest.raises(UserError, match=r"is a directory, not a \.toml target profile"):
            load_target(text)


def _profile(tmp_path, bits: str, signed: str = "true", io: str = "int8"):
    text = (targets_dir() / "arm-cpu-tflite.toml").read_text()
    text = text.replace("[activations]\nbits = [8]\nsigned = true",
                        f"[activations]\nbits = {bits}\nsigned = {signed}")
    path = tmp_path / "custom.toml"
    path.write_text(text.replace('io_dtype = "int8"', f'io_dtype = "{io}"'))
    return path


@pytest.mark.parametrize("bits", ["[3]", "[16]"])
def test_io_dtype_without_8_bit_activations(tmp_path, bits: str) -> None:
    path = _profile(tmp_path, bits)
    with pytest.raises(UserError) as exc:
        load_target(path)
    msg = one_line(exc)
    assert str(path) in msg and "key 'io_dtype'" in msg
    assert f"needs 8-bit activations but activations.bits is {bits}" in msg
    assert "allowed values: int8, uint8, float32" in msg and "(use int8)" not in msg


def test_io_dtype_signedness_names_the_right_fix(tmp_path) -> None:
    with pytest.raises(UserError, match=r"'int8' does not match activations.signed = false "
                                        r"\(uint8 activations\): set io_dtype = \"uint8\""):
        load_target(_profile(tmp_path, "[8]", signed="false"))


# -- through the CLI: exit 2, one line, no traceback -------------------------------------


def test_cli_bad_count(capsys) -> None:
    argv = ["convert", "mobilenet_v2_fmnist", *FAST]
    argv[argv.index("fmnist:train@32")] = "fmnist:train@abc"
    assert "count after @ must be a whole number" in cli_fails(argv, capsys)


def test_cli_factory_that_raises(factories: str, capsys) -> None:
    err = cli_fails(["convert", f"{factories}:raises", *FAST], capsys)
    assert "RuntimeError: boom" in err


def test_cli_non_finite_checkpoint(tmp_path, capsys) -> None:
    path, key = _nan_checkpoint(tmp_path)
    err = cli_fails(["convert", str(path), *FAST], capsys)
    assert str(path) in err and key in err


def test_cli_target_directory(tmp_path, capsys) -> None:
    err = cli_fails(["convert", "mobilenet_v2_fmnist", "-t", str(tmp_path), *FAST], capsys)
    assert "is a directory" in err


def test_an_empty_model_is_named_as_such() -> None:
    for spec in ("", "  "):
        with pytest.raises(UserError, match="the model is empty: give a zoo name"):
            resolve_model(spec)
