"""Calibration sets: data-free synthetic inputs and the calibration/ scripts."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from edgeres.data.folders import load_npz, read_npz_meta
from edgeres.data.preprocess import Preprocess
from edgeres.data.specs import load_spec
from edgeres.data.synthetic import bn_statistics_loss, synthesize_inputs
from edgeres.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
PRE = Preprocess(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


def script(name: str):
    """Import calibration/<name>.py (a script folder, not a package)."""
    path = ROOT / "calibration" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"calib_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: thread hand-offs cost more than the maths on a busy machine (50x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_bn_net(seed: int = 0) -> nn.Module:
    """Conv-BN-ReLU stack whose BN statistics come from structured 'training' data."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )
    net.train()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for _ in range(30):  # "training data": smooth, biased images, unlike white noise
            base = torch.randn(16, 3, 4, 4, generator=gen) * 1.5
            base += torch.tensor([0.8, -0.5, 0.3]).view(1, 3, 1, 1)
            net(nn.functional.interpolate(base, size=16, mode="bilinear"))
    return net.eval()


def test_synthetic_inputs_match_bn_statistics():
    net = tiny_bn_net()
    before = [p.clone() for p in net.parameters()]
    x = synthesize_inputs(net, (3, 16, 16), n=16, steps=60, lr=0.1, progress=False)
    noise = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    loss_noise, loss_synth = bn_statistics_loss(net, noise), bn_statistics_loss(net, x)
    assert loss_synth < 0.1 * loss_noise, (loss_synth, loss_noise)
    # the model is left as it was: same weights, gradients enabled, eval mode
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    assert all(p.requires_grad for p in net.parameters()) and not net.training
    again = synthesize_inputs(net, (3, 16, 16), n=16, steps=60, lr=0.1, progress=False)
    assert torch.equal(x, again)


def test_synthetic_inputs_stay_in_the_pixel_range():
    net = tiny_bn_net()
    x = synthesize_inputs(net, (3, 16, 16), n=8, steps=20, preprocess=PRE, progress=False)
    lo = (0 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    hi = (1 - torch.tensor(PRE.mean)) / torch.tensor(PRE.std)
    assert (x.amin((0, 2, 3)) >= lo - 1e-6).all() and (x.amax((0, 2, 3)) <= hi + 1e-6).all()


def test_synthetic_spec_and_errors():
    net = tiny_bn_net()
    ds = load_spec("synthetic@4", PRE, 3, 16, model=net)
    assert ds.x.shape == (4, 3, 16, 16) and ds.y is None and ds.name == "synthetic@4"
    with pytest.raises(UserError, match="no BatchNorm2d|has none"):
        synthesize_inputs(nn.Sequential(nn.Conv2d(3, 4, 3)), (3, 8, 8), steps=1, progress=False)


def write_images(folder: Path, n: int, size: int = 28) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L").save(
            folder / f"{i}.png")


def test_build_calib_writes_a_reproducible_npz(tmp_path):
    build = script("build_calib")
    write_images(tmp_path / "imgs", 12)
    runner = CliRunner()
    args = ["mobilenet_v2_fmnist", f"folder:{tmp_path / 'imgs'}@8", "--quiet", "-o"]
    first = runner.invoke(build.app, [*args, str(tmp_path / "a.npz")])
    second = runner.invoke(build.app, [*args, str(tmp_path / "b.npz")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    from edgeres.zoo.models import FMNIST

    x, y = load_npz(tmp_path / "a.npz", FMNIST, 1, 28)
    ref = load_spec(f"folder:{tmp_path / 'imgs'}@8", FMNIST, 1, 28)
    assert torch.equal(x, ref.x) and y is None
    meta = read_npz_meta(tmp_path / "a.npz")
    assert meta["model"] == "mobilenet_v2_fmnist" and meta["shape"] == [8, 1, 28, 28]
    bad = runner.invoke(build.app, ["mobilenet_v2_fmnist", "imagenet-samples", "--quiet",
                                    "-o", str(tmp_path / "c.npz")])
    assert bad.exit_code == 2 and not (tmp_path / "c.npz").exists()
    assert "[N, 1, 28, 28]" in " ".join(bad.output.split())


def test_inspect_calib_ranges_match_the_float_model(tmp_path):
    from edgeres.data.folders import save_npz
    from edgeres.zoo import create_model

    inspect = script("inspect_calib")
    model = create_model("mobilenet_v2_fmnist")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    x = torch.randn(10, 1, 28, 28)
    save_npz(tmp_path / "c.npz", x)
    stats, png = inspect.inspect("mobilenet_v2_fmnist", tmp_path / "c.npz",
                                 weights=str(tmp_path / "w.pth"), batch=4)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with torch.no_grad():
        logits = model(x)
    assert stats["classifier.1"].hi == pytest.approx(logits.max().item(), rel=1e-5)
    assert stats["classifier.1"].lo == pytest.approx(logits.min().item(), rel=1e-5)
    kinds = {type(m).__name__ for name, m in model.named_modules() if name in stats}
    assert "Conv2d" not in kinds and "ReLU6" in kinds  # convs fold into BN/activations
    n_relu6 = sum(isinstance(m, nn.ReLU6) for m in model.modules())
    n_res = sum(getattr(m, "use_res_connect", False) for m in model.modules())
    assert sum(isinstance(model.get_submodule(n), nn.ReLU6) for n in stats) == n_relu6
    assert sum(getattr(model.get_submodule(n), "use_res_connect", False) for n in stats) == n_res


def one_line_error(result, option: str) -> str:
    """A user mistake: exit 2 and one stderr line naming ``option``, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(("build_calib.py: error: ",
                                                    "inspect_calib.py: error: ")), lines
    assert option in lines[0], lines[0]
    return lines[0]


def must_not_run(*_args, **_kwargs):
    raise AssertionError("ran before the options were checked")


PROC = Path("/proc")
BAD_OUTPUTS = [  # (where relative to tmp_path or absolute, what the message must say)
    (".", "is a folder"),
    ("plain.txt/c.npz", "is a file, not a folder"),
    ("plain.txt/a/b/c.npz", "is a file, not a folder"),
    pytest.param("/proc/foo.npz", "cannot create files in /proc",
                 marks=pytest.mark.skipif(not PROC.is_dir(), reason="needs Linux /proc")),
]


@pytest.mark.parametrize(("where", "says"), BAD_OUTPUTS)
def test_build_calib_rejects_an_unwritable_out_before_work(tmp_path, monkeypatch, where, says):
    build = script("build_calib")
    monkeypatch.setattr(build, "resolve_model", must_not_run)
    monkeypatch.setattr(build, "load_spec", must_not_run)
    (tmp_path / "plain.txt").write_text("a file")
    out = tmp_path / where
    result = CliRunner().invoke(build.app, ["mobilenet_v2_fmnist", "fmnist:train@8", "-o",
                                            str(out)])
    line = one_line_error(result, f"-o {out}")
    assert says in line
    assert (tmp_path / "plain.txt").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]  # no probe left behind


@pytest.mark.parametrize(("args", "option"), [
    (["--seed", "-1"], "--seed"), (["--seed", str(2**64)], "--seed"), (["--n", "0"], "--n")])
def test_build_calib_rejects_bad_numbers_before_work(tmp_path, monkeypatch, args, option):
    build = script("build_calib")
    monkeypatch.setattr(build, "resolve_model", must_not_run)
    result = CliRunner().invoke(build.app, ["mobilenet_v2_fmnist", "fmnist:train", *args,
                                            "-o", str(tmp_path / "c.npz")])
    one_line_error(result, option)
    assert not (tmp_path / "c.npz").exists()


def test_build_calib_write_failure_names_out(tmp_path, monkeypatch):
    build = script("build_calib")

    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(build, "save_npz", disk_full)
    out = tmp_path / "c.npz"
    result = CliRunner().invoke(build.app, ["mobilenet_v2_fmnist", "fmnist:train@4", "-o",
                                            str(out)])
    assert "No space left on device" in one_line_error(result, f"-o {out}")


def test_build_calib_error_has_no_blank_line(tmp_path):
    """With the progress display on (no --quiet) and stderr not a terminal."""
    build = script("build_calib")
    result = CliRunner().invoke(build.app, ["mobilenet_v2_fmnist", "imagenet-samples", "-o",
                                            str(tmp_path / "c.npz")])
    assert result.stderr.startswith("build_calib.py: error: "), repr(result.stderr[:80])
    one_line_error(result, "imagenet-samples")


def test_build_calib_takes_a_checkpoint_and_a_factory(tmp_path, monkeypatch):
    import edgeres
    from edgeres.zoo.models import FMNIST

    build = script("build_calib")
    ckpt = tmp_path / "m.pth"
    torch.save(edgeres.create_model("mobilenet_v2_fmnist", pretrained=True).state_dict(), ckpt)
    (tmp_path / "calib_factory_mod.py").write_text(
        "import torch\n"
        "def make():\n"
        "    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),\n"
        "                              torch.nn.Linear(4 * 26 * 26, 10))\n"
        f"    net.edgeres_meta = {{'img_size': 28, 'in_chans': 1, 'num_classes': 10,\n"
        f"                         'preprocess': {FMNIST.to_json()!r}}}\n"
        "    return net\n")
    monkeypatch.chdir(tmp_path)  # module:factory imports from the working folder
    ref = load_spec("fmnist:train@8", FMNIST, 1, 28)
    for model in (str(ckpt), "calib_factory_mod:make"):
        out = tmp_path / "out" / f"{model.replace('/', '_')}.npz"
        result = CliRunner().invoke(build.app, [model, "fmnist:train@8", "--quiet", "-o",
                                                str(out)])
        assert result.exit_code == 0, (result.output, result.exception)
        x, y = load_npz(out, FMNIST, 1, 28)
        assert x.shape == (8, 1, 28, 28) and torch.equal(x, ref.x) and torch.equal(y, ref.y)
        meta = read_npz_meta(out)
        assert meta["model"] == model and meta["shape"] == [8, 1, 28, 28]
    result = CliRunner().invoke(build.app, [str(tmp_path / "none.pth"), "fmnist:train@8",
                                            "-o", str(tmp_path / "c.npz")])
    one_line_error(result, "none.pth")


@pytest.fixture
def calib_npz(tmp_path) -> Path:
    from edgeres.data.folders import save_npz

    return save_npz(tmp_path / "X.npz", torch.randn(16, 1, 28, 28,
                                                    generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("args", "option"), [
    (["--batch", "0"], "--batch"), (["--batch", "-1"], "--batch"),
    (["--top", "-3"], "--top"), (["--top", "0"], "--top"),
    (["--png", "DIR"], "--png"), (["--png", "DIR/plain.txt/l.png"], "--png"),
    pytest.param(["--png", "/proc/foo.png"], "--png /proc/foo.png",
                 marks=pytest.mark.skipif(not PROC.is_dir(), reason="needs Linux /proc")),
])
def test_inspect_calib_rejects_bad_options_before_work(calib_npz, monkeypatch, args, option):
    inspect = script("inspect_calib")
    monkeypatch.setattr(inspect, "resolve_model", must_not_run)
    monkeypatch.setattr(inspect, "collect", must_not_run)
    (calib_npz.parent / "plain.txt").write_text("a file")
    args = [a.replace("DIR", str(calib_npz.parent)) for a in args]
    result = CliRunner().invoke(inspect.app, ["mobilenet_v2_fmnist", str(calib_npz), *args])
    one_line_error(result, option)
    assert sorted(p.name for p in calib_npz.parent.iterdir()) == ["X.npz", "plain.txt"]


def test_inspect_calib_takes_a_checkpoint_and_names_png_on_write_failure(
        calib_npz, monkeypatch):
    import edgeres
    from edgeres.zoo.models import FMNIST

    inspect = script("inspect_calib")
    model = edgeres.create_model("mobilenet_v2_fmnist", pretrained=True)
    ckpt = calib_npz.parent / "m.pth"
    torch.save(model.state_dict(), ckpt)
    stats, png = inspect.inspect(str(ckpt), calib_npz, batch=5, top=3)
    assert png == calib_npz.with_suffix(".layers.png") and png.read_bytes()[:4] == b"\x89PNG"
    x, _ = load_npz(calib_npz, FMNIST, 1, 28)
    with torch.no_grad():
        logits = model(x)
    assert stats["classifier.1"].hi == pytest.approx(logits.max().item(), rel=1e-5)

    def read_only(*_args, **_kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(inspect, "plot", read_only)
    monkeypatch.setattr(inspect, "collect", lambda *_a: stats)  # the ranges are checked above
    out = calib_npz.parent / "l.png"
    result = CliRunner().invoke(inspect.app, [str(ckpt), str(calib_npz), "--png", str(out)])
    assert "Read-only file system" in one_line_error(result, f"--png {out}")


def test_inspect_calib_png_has_an_ordinary_mode(calib_npz, monkeypatch):
    inspect = script("inspect_calib")
    gen = torch.Generator().manual_seed(0)
    stats = {"a": inspect.LayerStats(), "b": inspect.LayerStats()}
    for st in stats.values():
        st.add(torch.randn(4, 300, generator=gen), gen)
    old = os.umask(0o022)
    try:
        png = inspect.plot(stats, "t", calib_npz.parent / "l.png")
    finally:
        os.umask(old)
    assert png.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in png.parent.iterdir() if p.name.startswith(".")] == []


def test_build_calib_refuses_weights_with_a_checkpoint(tmp_path, monkeypatch):
    from edgeres.zoo import create_model

    build = script("build_calib")
    ckpt = tmp_path / "m.pth"
    torch.save(create_model("mobilenet_v2_fmnist").state_dict(), ckpt)
    for weights, says in ((str(ckpt), "brings its own weights"), ("", "--weights is empty")):
        result = CliRunner().invoke(build.app, [str(ckpt), "synthetic@2", "--weights", weights,
                                                "--quiet", "-o", str(tmp_path / "c.npz")])
        assert says in one_line_error(result, "--weights")
        assert not (tmp_path / "c.npz").exists()
