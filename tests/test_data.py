"""Data layer: IDX parsing, ImageNet samples, photos, folders, npz and data specs."""

from __future__ import annotations

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edgeres.data.fmnist import FMNIST_DIR, load_fmnist, read_idx
from edgeres.data.folders import load_image_folder, load_npz, read_npz_meta, save_npz
from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.data.specs import DataSpec, load_spec
from edgeres.errors import UserError

GREY = Preprocess(mean=(0.5,), std=(0.25,))
HAS_FMNIST = (FMNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()
needs_fmnist = pytest.mark.skipif(
    not HAS_FMNIST, reason=f"Fashion-MNIST not in {FMNIST_DIR}: apt-get install -y "
    "dataset-fashion-mnist")


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(data)


# --- IDX / Fashion-MNIST -------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-idx3-ubyte", "tiny-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
    write_idx(tmp_path / name, arr)
    np.testing.assert_array_equal(read_idx(tmp_path / name), arr)


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00")
    with pytest.raises(UserError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(UserError, match="header says 8 values"):
        read_idx(tmp_path / "short")


def test_fmnist_missing_names_the_package(tmp_path):
    with pytest.raises(UserError, match="apt-get install -y dataset-fashion-mnist"):
        load_fmnist("test", root=tmp_path)


@needs_fmnist
def test_real_fmnist_test_split():
    images, labels = load_fmnist("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


# --- ImageNet samples ----------------------------------------------------------------------

def test_imagenet_samples_and_labels():
    from edgeres.data.imagenet import imagenet_labels, imagenet_sample_files, load_imagenet_samples

    images, labels = load_imagenet_samples()
    assert len(images) == 20 and labels.dtype == np.int64
    assert all(im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3 for im in images)
    assert ((labels >= 0) & (labels < 1000)).all()
    # labels come from the file names imagenet_<i>_<label>.jpg
    for (path, label), got in zip(imagenet_sample_files(), labels, strict=True):
        assert path.stem.split("_")[2] == str(got) == str(label)
    names = imagenet_labels()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"


def test_imagenet_labels_ship_in_package():
    import importlib.resources

    assert importlib.resources.files("edgeres.data").joinpath("imagenet_labels.txt").is_file()


def test_agreement_set_views_match_the_standard_pipeline():
    from edgeres.data.imagenet import imagenet_agreement_set, load_imagenet_samples

    x, y = imagenet_agreement_set(IMAGENET)
    images, labels = load_imagenet_samples()
    per = len(x) // len(images)
    assert len(x) >= 200 and x.shape[1:] == (3, 224, 224) and len(y) == len(x)
    assert torch.equal(y, torch.from_numpy(labels).repeat_interleave(per))
    # view 2 = resize 256 + centre crop 224 = the ImageNet eval pipeline; view 3 = its mirror
    ref = IMAGENET(images[0])[0]
    torch.testing.assert_close(x[2], ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(x[3], ref.flip(-1), rtol=0, atol=1e-5)
    assert len({tuple(v.flatten()[:64].tolist()) for v in x[:per]}) == per  # views differ


def test_ten_crop_set_is_the_standard_protocol():
    """Against an independent construction: PIL uint8 resize, centre + corners, mirrors."""
    from edgeres.data.imagenet import imagenet_ten_crop_set, load_imagenet_samples

    x, y = imagenet_ten_crop_set(IMAGENET)
    images, labels = load_imagenet_samples()
    assert x.shape == (200, 3, 224, 224)
    assert torch.equal(y, torch.from_numpy(labels).repeat_interleave(10))
    im = Image.fromarray(images[3])
    s = 256 / min(im.size)
    a = np.asarray(im.resize((round(im.width * s), round(im.height * s)), Image.BILINEAR))
    h, w = a.shape[:2]

    def expect(top: int, left: int) -> torch.Tensor:
        c = torch.from_numpy(a[top : top + 224, left : left + 224].copy())
        return IMAGENET.normalize(c.permute(2, 0, 1)[None].float() / 255.0)[0]

    torch.testing.assert_close(x[30], expect((h - 224) // 2, (w - 224) // 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(x[31], x[30].flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(x[38], expect(h - 224, w - 224), rtol=0, atol=1e-6)
    # the uint8 resize is the float pipeline's resize, rounded: same geometry, 8-bit noise
    ref = IMAGENET(images[3])[0]
    assert float((x[30] - ref).abs().mean()) < 0.02


def test_view_sets_mark_their_centre_crops():
    """``DataSet.centre`` finds each image's standard single crop, in full sets and subsets."""
    ten = load_spec("imagenet-10crop", IMAGENET, 3, 224)
    assert ten.centre.tolist() == list(range(0, 200, 10))
    views = load_spec("imagenet-agreement", IMAGENET, 3, 224)
    samples = load_spec("imagenet-samples", IMAGENET, 3, 224)
    assert len(views.centre) == 20 and samples.centre is None
    # the agreement set's centre view is the standard resize-256 / crop-224 pipeline
    torch.testing.assert_close(views.x[views.centre], samples.x, rtol=0, atol=1e-5)
    part = load_spec("imagenet-10crop@50", IMAGENET, 3, 224)
    full_rows = {tuple(r[0, 100, 100:104].tolist()) for r in ten.x[ten.centre]}
    assert all(tuple(r[0, 100, 100:104].tolist()) in full_rows for r in part.x[part.centre])
    assert 0 < len(part.centre) < 20

def test_mobilenet_v2_top1_on_imagenet_samples():
    """Real pretrained weights on real labelled images (measured: 19/20)."""
    from edgeres.data.imagenet import load_imagenet_samples
    from edgeres.zoo import create_model

    images, labels = load_imagenet_samples()
    model = create_model("mobilenet_v2_100", pretrained=True)
    with torch.no_grad():
        pred = model(torch.cat([IMAGENET(im) for im in images])).argmax(1)
    assert (pred == torch.from_numpy(labels)).sum().item() >= 17


# --- photos --------------------------------------------------------------------------------

def test_photos_load_offline(monkeypatch):
    from edgeres.data.photos import load_photos

    def no_network(*args, **kwargs):
        raise AssertionError("photos tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    photos = load_photos()
    assert len(photos) == 21
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos.values())


def test_photo_set_is_deterministic():
    from edgeres.data.photos import photo_calibration_set

    a = photo_calibration_set(IMAGENET, n=24, seed=0)
    b = photo_calibration_set(IMAGENET, n=24, seed=0)
    c = photo_calibration_set(IMAGENET, n=24, seed=1)
    assert a.shape == (24, 3, 224, 224) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    lo = (0 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    hi = (1 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert (a.amin((0, 2, 3)) >= lo - 1e-5).all() and (a.amax((0, 2, 3)) <= hi + 1e-5).all()
    grey = photo_calibration_set(GREY, n=4, seed=0, size=28)
    assert grey.shape == (4, 1, 28, 28)


def test_photo_subset_uses_only_the_named_photos():
    from edgeres.data.photos import colour_photo_names, load_photos, photo_calibration_set

    colour = colour_photo_names()
    photos = load_photos()
    assert "astronaut" in colour and "camera" not in colour  # camera.png is a grey photo
    assert all(not np.array_equal(photos[n][..., 0], photos[n][..., 1]) for n in colour)
    everything = photo_calibration_set(IMAGENET, n=6, seed=0, size=32, only=list(photos))
    assert torch.equal(everything, photo_calibration_set(IMAGENET, n=6, seed=0, size=32))
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET.std, IMAGENET.mean))
    rgb = photo_calibration_set(IMAGENET, n=6, seed=0, size=32, only=["camera"]) * std + mean
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5)
    assert torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-5)
    rgb = photo_calibration_set(IMAGENET, n=6, seed=0, size=32, only=colour) * std + mean
    assert (rgb[:, 0] - rgb[:, 1]).abs().amax(dim=(1, 2)).min() > 0.01  # every view in colour
    with pytest.raises(UserError, match="unknown photo names.*nope"):
        photo_calibration_set(IMAGENET, n=2, only=["nope"])


def test_photos_are_disjoint_from_the_evaluation_images():
    from edgeres.data.imagenet import load_imagenet_samples
    from edgeres.data.photos import load_photos

    def thumb(a: np.ndarray) -> np.ndarray:
        t = np.asarray(Image.fromarray(a).convert("L").resize((32, 32)), np.float64).ravel()
        t -= t.mean()
        return t / (np.linalg.norm(t) + 1e-9)

    evals = np.stack([thumb(im) for im in load_imagenet_samples()[0]])
    photos = np.stack([thumb(p) for p in load_photos().values()])
    assert (photos @ evals.T).max() < 0.9  # no photo resembles any evaluation image


# --- folders and npz -----------------------------------------------------------------------

def make_folder(root: Path, classes: dict[str, int], size=(40, 30), mode="RGB") -> None:
    rng = np.random.default_rng(0)
    for cls, count in classes.items():
        d = root / cls if cls else root
        d.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                d / f"img{i}.png")


def test_image_folder_with_classes(tmp_path):
    make_folder(tmp_path, {"cat": 2, "dog": 3})
    pre = Preprocess(mean=(0.5,) * 3, std=(0.5,) * 3, resize=24, crop=20)
    x, y, classes = load_image_folder(tmp_path, pre, 3, 20)
    assert classes == ["cat", "dog"] and y.tolist() == [0, 0, 1, 1, 1]
    raw = np.array(Image.open(tmp_path / "dog" / "img0.png"))
    torch.testing.assert_close(x[2], pre(raw)[0])


def test_image_folder_errors(tmp_path):
    make_folder(tmp_path / "rgb", {"": 2})
    with pytest.raises(UserError, match=r"img0\.png.*\[N, 1, 40, 40\]"):
        load_image_folder(tmp_path / "rgb", GREY, 1, 40)
    make_folder(tmp_path / "grey", {"": 1}, mode="L")
    with pytest.raises(UserError, match=r"img0\.png.*30x40.*\[N, 1, 28, 28\]"):
        load_image_folder(tmp_path / "grey", GREY, 1, 28)
    x, _, _ = load_image_folder(tmp_path / "grey", Preprocess((0.5,) * 3, (0.5,) * 3), 3, None)
    assert x.shape == (1, 3, 30, 40) and torch.equal(x[0, 0], x[0, 2])  # grey -> 3 channels
    make_folder(tmp_path / "mixed", {"": 1, "a": 1})
    with pytest.raises(UserError, match="both images and class folders"):
        load_image_folder(tmp_path / "mixed", GREY, 1, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty data"):
        load_spec(f"folder:{tmp_path / 'empty'}", GREY, 1, 28)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"cannot read image .*a\.jpg"):
        load_image_folder(tmp_path / "broken", GREY, 1, None)


def test_npz_round_trip_and_determinism(tmp_path):
    x = torch.randn(6, 1, 28, 28)
    y = torch.arange(6)
    p1 = save_npz(tmp_path / "a.npz", x, y, {"spec": "t"})
    p2 = save_npz(tmp_path / "b.npz", x, y, {"spec": "t"})
    assert p1.read_bytes() == p2.read_bytes()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a.npz", "b.npz"]  # no temp files
    got_x, got_y = load_npz(p1, GREY, 1, 28)
    assert torch.equal(got_x, x) and torch.equal(got_y, y)
    assert read_npz_meta(p1) == {"spec": "t"}


def test_npz_raw_images_are_preprocessed(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "raw.npz", images=images)
    x, y = load_npz(tmp_path / "raw.npz", GREY, 1, 28)
    torch.testing.assert_close(x, GREY(images[..., None]))
    assert y is None


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 28, 28, 1), np.float32)}, r"looks like NHWC"),
    ({"x": np.full((2, 1, 28, 28), np.nan, np.float32)}, r"NaN/Inf"),
    ({"x": np.zeros((2, 1, 32, 32), np.float32)}, r"32x32.*\[N, 1, 28, 28\]"),
    ({"x": np.zeros((0, 1, 28, 28), np.float32)}, r"empty data"),
    ({"x": np.zeros((2, 1, 28, 28), np.uint8)}, r"must be float NCHW"),
    ({"images": np.zeros((2, 28, 28, 3), np.uint8)}, r"3 channels"),
    ({"x": np.zeros((2, 1, 28, 28)), "images": np.zeros((2, 28, 28), np.uint8)}, "exactly one"),
    ({"x": np.zeros((2, 1, 28, 28), np.float32), "y": np.zeros(3, np.int64)}, r"expected \[2\]"),
])
def test_npz_errors_name_the_file(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=message) as info:
        load_npz(tmp_path / "bad.npz", GREY, 1, 28)
    assert "bad.npz" in str(info.value)


@pytest.mark.parametrize("write, message", [
    (lambda p: p.write_bytes(b"not a zip"), "is not an .npz archive"),
    (lambda p: np.savez(p, x=np.array([{"a": 1}], dtype=object)), "not Python objects"),
])
def test_unreadable_npz_is_named_not_unpickled(tmp_path, write, message):
    """np.load would offer to unpickle these; the message says what to write instead."""
    write(tmp_path / "bad.npz")
    with pytest.raises(UserError, match=message) as info:
        load_npz(tmp_path / "bad.npz", GREY, 1, 28)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)


# --- specs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, parsed", [
    ("fmnist:train@512", DataSpec("fmnist", "train", 512)),
    ("photos", DataSpec("photos")),
    ("synthetic@8", DataSpec("synthetic", None, 8)),
    ("folder:/data/a@b/imgs", DataSpec("folder", "/data/a@b/imgs")),
    ("npz:c:/x.npz@10", DataSpec("npz", "c:/x.npz", 10)),
])
def test_spec_parse(text, parsed):
    assert DataSpec.parse(text) == parsed
    assert DataSpec.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text, message", [
    ("mnist", "unknown data spec"), ("fmnist", "needs an argument"),
    ("fmnist:val", "'train' or 'test'"), ("photos:x", "takes no"), ("photos@0", "at least 1"),
    ("photos@-3", "whole number"), ("photos@1.5", "whole number"),
])
def test_spec_parse_errors(text, message):
    with pytest.raises(UserError, match=message):
        DataSpec.parse(text)


def test_bare_paths_read_as_what_they_name(tmp_path, monkeypatch):
    assert DataSpec.parse("calib.npz@8") == DataSpec("npz", "calib.npz", 8)
    assert DataSpec.parse(str(tmp_path)) == DataSpec("folder", str(tmp_path))
    x = torch.randn(6, 1, 8, 8)
    save_npz(tmp_path / "d.npz", x, None)
    path = tmp_path / "d.npz"
    bare, named = (load_spec(s, GREY, 1, 8) for s in (str(path), f"npz:{path}"))
    assert torch.equal(bare.x, named.x) and bare.name == named.name
    home = tmp_path / "home"
    save_npz(home / "h.npz", x, None)
    monkeypatch.setenv("HOME", str(home))
    assert torch.equal(load_spec("npz:~/h.npz", GREY, 1, 8).x, x)  # no shell expands it there
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(UserError, match="is a file that is not an .npz"):
        DataSpec.parse(str(tmp_path / "one.png"))
    with pytest.raises(UserError, match="no such folder or .npz file"):
        DataSpec.parse(str(tmp_path / "missing"))


def test_spec_checks_the_model_shape():
    with pytest.raises(UserError, match=r"3-channel.*\[N, 1, 28, 28\]"):
        load_spec("imagenet-samples", GREY, 1, 28)
    with pytest.raises(UserError, match="needs the model"):
        load_spec("synthetic", GREY, 1, 28)
    with pytest.raises(UserError, match="only 20 exist"):
        load_spec("imagenet-samples@21", IMAGENET, 3, 224)


def test_spec_subset_is_deterministic(tmp_path):
    x = torch.randn(50, 1, 8, 8)
    save_npz(tmp_path / "d.npz", x, torch.arange(50))
    a = load_spec(f"npz:{tmp_path / 'd.npz'}@10", GREY, 1, 8)
    b = load_spec(f"npz:{tmp_path / 'd.npz'}", GREY, 1, 8, n=10)
    assert a.name.endswith("@10") and len(a) == 10
    assert torch.equal(a.x, b.x) and torch.equal(a.x, x[a.y])
    assert a.y.tolist() == sorted(set(a.y.tolist()))


@needs_fmnist
def test_spec_fmnist_subset():
    from edgeres.data.specs import subset_indices
    from edgeres.zoo.models import FMNIST

    a = load_spec("fmnist:train@64", FMNIST, 1, 28)
    b = load_spec("fmnist:train@64", FMNIST, 1, 28)
    images, labels = load_fmnist("train")
    idx = subset_indices(len(images), 64, 0, "fmnist")
    assert len(set(idx.tolist())) == 64 and (np.diff(idx) > 0).all()
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    torch.testing.assert_close(a.x, FMNIST(images[idx, :, :, None].copy()))
    assert a.y.tolist() == labels[idx].tolist()
