"""Unlabelled natural photos that ship inside installed packages: the calibration set for the
ImageNet models, disjoint from the foolbox evaluation images.

Sources (each checked to load with the network off):
- scikit-image's bundled ``skimage/data`` files (read directly with Pillow, so no fetcher can
  ever run): the 18 below. Not used: ``cat`` (the same photo as ``chelsea``), ``eagle``,
  ``kidney``, ``lily``, ``skin`` and the others scikit-image downloads on first use; drawings and
  phantoms (``colorwheel``, ``horse``, ``logo``, ``checkerboard``, ``shepp_logan_phantom``,
  ``binary_blobs``); ``microaneurysms`` (102 px) and ``lfw_subset`` (25 px faces).
- scikit-learn's ``china.jpg`` and ``flower.jpg``; matplotlib's ``sample_data/grace_hopper.jpg``.

Grey photos are repeated to three channels (and colour photos turned to luma for one-channel
models). ``photo_calibration_set`` turns the 21 photos into any number of deterministic views.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError

SKIMAGE_PHOTOS = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png",
    "cell": "cell.png", "chelsea": "chelsea.png", "clock": "clock_motion.png",
    "coffee": "coffee.png", "coins": "coins.png", "grass": "grass.png", "gravel": "gravel.png",
    "hubble_deep_field": "hubble_deep_field.jpg", "immunohistochemistry": "ihc.png",
    "moon": "moon.png", "page": "page.png", "retina": "retina.jpg", "rocket": "rocket.jpg",
    "stereo_motorcycle": "motorcycle_left.png", "text": "text.png",
}
SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)

# Random-resized-crop ranges: fraction of the photo's area and aspect ratio of each view.
AREA_RANGE = (0.2, 1.0)
ASPECT_RANGE = (3 / 4, 4 / 3)


def _package_dir(module: str, install: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the photo calibration set needs {module.split('.')[0]}: `{install}`")
    return Path(next(iter(spec.submodule_search_locations)))


def photo_files() -> dict[str, Path]:
    """Name -> file of every photo in the set (fixed order, so views are reproducible)."""
    ski = _package_dir("skimage", "pip install scikit-image") / "data"
    skl = _package_dir("sklearn", "pip install scikit-learn") / "datasets" / "images"
    mpl = _package_dir("matplotlib", "pip install matplotlib") / "mpl-data" / "sample_data"
    files = {name: ski / fname for name, fname in SKIMAGE_PHOTOS.items()}
    files.update({f"sklearn_{Path(f).stem}": skl / f for f in SKLEARN_PHOTOS})
    files.update({f"matplotlib_{Path(f).stem}": mpl / f for f in MATPLOTLIB_PHOTOS})
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise UserError(f"photo calibration files missing: {', '.join(missing)}; reinstall "
                        "scikit-image, scikit-learn and matplotlib (`pip install scikit-image "
                        "scikit-learn matplotlib`)")
    return files


def load_photos() -> dict[str, np.ndarray]:
    """Name -> uint8 HWC RGB array of every photo (grey ones repeated to three channels)."""
    photos = {}
    for name, path in photo_files().items():
        with Image.open(path) as im:
            photos[name] = np.array(im.convert("RGB"))
    return photos


def colour_photo_names() -> list[str]:
    """Names of the photos that are really in colour (the others are grey repeated to RGB)."""
    def grey(im: np.ndarray) -> bool:
        return np.array_equal(im[..., 0], im[..., 1]) and np.array_equal(im[..., 1], im[..., 2])

    return [name for name, im in load_photos().items() if not grey(im)]


def _random_view(
    x01: torch.Tensor, size: int, rng: np.random.Generator
) -> torch.Tensor:
    """One random-resized crop (area and aspect from the ranges above), maybe flipped."""
    h, w = x01.shape[-2:]
    area = h * w * rng.uniform(*AREA_RANGE)
    aspect = float(np.exp(rng.uniform(*np.log(ASPECT_RANGE))))
    ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    view = x01[..., top : top + ch, left : left + cw]
    # float64, then float32: float32 resampling differs in the last bits between CPUs' SIMD
    # paths, and those bits reach the calibration ranges (see edgeres.graph.ir.STATS_DTYPE)
    view = F.interpolate(view.double(), size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True).float()  # stored as float32
    return view.flip(-1) if rng.random() < 0.5 else view


def photo_calibration_set(
    preprocess: Preprocess, n: int = 128, seed: int = 0, size: int | None = None,
    only: Collection[str] | None = None,
) -> torch.Tensor:
    """``n`` deterministic random views of the photos as the model's NCHW float input.

    Photos are taken round-robin in a seeded order so every photo contributes equally; each
    view is a random crop of 20-100% of the photo's area, resized to ``size`` (default: the
    preprocessing's crop, else 224) and flipped half the time. Same seed, same tensor.
    ``only`` restricts the set to these photo names (see :func:`photo_files`).
    """
    if n < 1:
        raise UserError(f"the photo calibration set needs at least one image, got n={n}")
    size = size or preprocess.crop or 224
    chans = len(preprocess.mean)
    if chans not in (1, 3):
        raise UserError(f"photos are RGB; cannot feed a model with {chans} input channels")
    named = load_photos()
    if only is not None:
        unknown = sorted(set(only) - set(named))
        if unknown or not only:
            raise UserError(f"unknown photo names {unknown or '(none given)'}; "
                            f"choose from {', '.join(named)}")
        named = {k: v for k, v in named.items() if k in set(only)}
    photos = list(named.values())
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(photos))
    tensors = {}
    views = []
    for i in range(n):
        k = int(order[i % len(photos)])
        if k not in tensors:
            # float64 until the resize (see _random_view): the same bits on every CPU
            x01 = torch.from_numpy(photos[k]).permute(2, 0, 1).unsqueeze(0).double() / 255.0
            if chans == 1:  # ITU-R BT.601 luma, as Pillow's "L" conversion
                luma = torch.tensor([0.299, 0.587, 0.114], dtype=x01.dtype).view(1, 3, 1, 1)
                x01 = (x01 * luma).sum(1, True)
            tensors[k] = x01
        views.append(_random_view(tensors[k], size, rng))
    return preprocess.normalize(torch.cat(views).contiguous())
