"""The 20 labelled ImageNet validation images shipped in PyPI ``foolbox==3.3.4``, class names,
and two crop/flip "agreement sets" built from them: edgeres' own 240 views, and the standard
ten-crop protocol (200 views) that app-side evaluators use.

foolbox itself is never imported (it needs eagerpy): the JPEG files are read from its package
folder. Twenty images are +-10 top-1 points of noise, so they serve as a smoke test of the
pretrained models and, through many deterministic views, as an agreement set (float vs int
predictions on the same inputs), not as an accuracy benchmark.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import re
from functools import cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError

FOOLBOX_INSTALL = "pip install --no-deps foolbox==3.3.4"
_SAMPLE_RE = re.compile(r"imagenet_(\d+)_(\d+)\.jpg$")

# The agreement set's views of one image: centre crops after resizing the shorter side to
# these multiples of the crop (1.0 = no margin, 8/7 = the standard 256/224), each unflipped and
# flipped, plus the four corner crops at 8/7. 12 views x 20 images = 240 inputs.
AGREEMENT_SCALES = (1.0, 8 / 7, 9 / 7, 10 / 7)
AGREEMENT_CORNER_SCALE = 8 / 7

# (views per image, index of the standard single centre crop among them) of each view set:
# the agreement set's 8/7 centre view, the ten-crop's first view.
SINGLE_CROP = {"imagenet-agreement": (2 * len(AGREEMENT_SCALES) + 4, 2),
               "imagenet-10crop": (10, 0)}


def foolbox_data_dir() -> Path:
    """The ``foolbox/data`` folder, found without importing foolbox."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the ImageNet sample images need foolbox's data files: `{FOOLBOX_INSTALL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not path.is_dir():
        raise UserError(f"{path} is missing; reinstall with `{FOOLBOX_INSTALL}`")
    return path


def imagenet_sample_files() -> list[tuple[Path, int]]:
    """``(path, label)`` of the ImageNet sample JPEGs, in file index order."""
    found = []
    for path in foolbox_data_dir().iterdir():
        match = _SAMPLE_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path, int(match.group(2))))
    if not found:
        raise UserError(f"no imagenet_<i>_<label>.jpg files in {foolbox_data_dir()}; "
                        f"reinstall with `{FOOLBOX_INSTALL}`")
    return [(path, label) for _, path, label in sorted(found)]


def load_imagenet_samples() -> tuple[list[np.ndarray], np.ndarray]:
    """The 20 sample images as uint8 HWC RGB arrays, and their labels (int64, 0..999)."""
    files = imagenet_sample_files()
    images = []
    for path, _ in files:
        with Image.open(path) as im:
            images.append(np.array(im.convert("RGB")))  # writable copy for torch
    return images, np.array([label for _, label in files], dtype=np.int64)


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (torchvision / pytorch hub order)."""
    text = importlib.resources.files("edgeres.data").joinpath("imagenet_labels.txt").read_text()
    labels = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(labels) != 1000:  # pragma: no cover - guards the shipped file
        raise RuntimeError(f"imagenet_labels.txt holds {len(labels)} names, expected 1000")
    return labels


def _resize_short(x01: torch.Tensor, short: int) -> torch.Tensor:
    h, w = x01.shape[-2:]
    scale = short / min(h, w)
    size = (max(short, round(h * scale)), max(short, round(w * scale)))
    return F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=True)


def _views(x01: torch.Tensor, crop: int) -> list[torch.Tensor]:
    """The deterministic views of one [1, C, H, W] image in [0, 1] (see ``AGREEMENT_SCALES``)."""
    views = []
    for scale in AGREEMENT_SCALES:
        r = _resize_short(x01, round(crop * scale))
        h, w = r.shape[-2:]
        top, left = (h - crop) // 2, (w - crop) // 2
        centre = r[..., top : top + crop, left : left + crop]
        views += [centre, centre.flip(-1)]
    r = _resize_short(x01, round(crop * AGREEMENT_CORNER_SCALE))
    h, w = r.shape[-2:]
    for top, left in ((0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop)):
        views.append(r[..., top : top + crop, left : left + crop])
    return views


def imagenet_agreement_set(preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """240 model inputs (12 views of each sample image) and the label of each view's source.

    The views are what a camera app sees of the same object (scale, framing, mirror), so
    float/int agreement on them says more than top-1 on 20 images. The crop size is the
    preprocessing's ``crop`` (224 for ImageNet models).
    """
    crop = preprocess.crop or 224
    images, labels = load_imagenet_samples()
    xs, ys = [], []
    for image, label in zip(images, labels, strict=True):
        # resized in float64, as Preprocess does: the same bits on every CPU
        x01 = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).double() / 255.0
        views = [v.float() for v in _views(x01, crop)]
        xs += views
        ys += [int(label)] * len(views)
    x = preprocess.normalize(torch.cat(xs).contiguous())
    return x, torch.tensor(ys, dtype=torch.int64)


def _ten_crops(image: np.ndarray, resize: int, crop: int) -> list[np.ndarray]:
    """The ten uint8 HWC crops of one image, after a PIL bilinear resize of the shorter side."""
    im = Image.fromarray(image)
    w, h = im.size
    s = resize / min(w, h)
    a = np.asarray(im.resize((round(w * s), round(h * s)), Image.BILINEAR))
    hh, ww = a.shape[:2]
    if hh < crop or ww < crop:
        raise UserError(f"ten-crop: a {hh}x{ww} resize is smaller than the {crop} px crop; "
                        "the preprocessing's resize must be at least its crop")
    # centre first, then the corners; each unflipped, then mirrored
    offsets = [((hh - crop) // 2, (ww - crop) // 2), (0, 0), (0, ww - crop), (hh - crop, 0),
               (hh - crop, ww - crop)]
    out = []
    for top, left in offsets:
        c = a[top : top + crop, left : left + crop]
        out += [c, c[:, ::-1]]
    return out


def imagenet_ten_crop_set(preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """200 model inputs (the ten-crop protocol on each sample image) and their labels.

    Ten-crop (Krizhevsky et al. 2012; torchvision's ``TenCrop``) as an app computes it: the
    decoded uint8 image resized in uint8 by PIL (shorter side to ``resize``, bilinear), the
    centre and four corner ``crop`` squares, each also mirrored, then scaled to [0, 1] and
    normalised. It differs from :func:`imagenet_agreement_set` (float resizes, more scales) in
    the way a device pipeline differs from a training one, so a bundle's agreement is reported
    on the inputs an app-side evaluator will feed it. Every 10th input (index 0, 10, ...) is
    the plain centre crop.
    """
    crop = preprocess.crop or 224
    resize = preprocess.resize or round(crop * 8 / 7)
    images, labels = load_imagenet_samples()
    crops, ys = [], []
    for image, label in zip(images, labels, strict=True):
        views = _ten_crops(image, resize, crop)
        crops += views
        ys += [int(label)] * len(views)
    x01 = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).double().div(255.0).float()
    return preprocess.normalize(x01.contiguous()), torch.tensor(ys, dtype=torch.int64)
