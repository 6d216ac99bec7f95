"""One parser for the data specs the CLI takes (``--calib``, ``--eval``, calibration scripts).

=======================  ==============================================================
spec                     what
=======================  ==============================================================
``fmnist:train``         Fashion-MNIST training split (60k, labelled; 1x28x28)
``fmnist:test``          Fashion-MNIST test split (10k, labelled)
``imagenet-samples``     the 20 labelled ImageNet val images from foolbox (3x224x224)
``imagenet-agreement``   240 crop/flip views of those 20 images (labels of the source)
``imagenet-10crop``      the standard ten-crop views of those 20 images (200; uint8 PIL
                         resize as an app does it; every 10th is the plain centre crop)
``photos``               natural photos from scikit-image/scikit-learn/matplotlib, random
                         crops and flips (unlabelled; 128 unless a count is given)
``folder:PATH``          an image folder (optional class sub-folders = labels)
``npz:PATH``             arrays: ``x`` float NCHW preprocessed, or ``images`` uint8 NHWC
``synthetic``            data-free: inputs optimised to match the model's BatchNorm
                         statistics (32 unless a count is given; needs the model)
=======================  ==============================================================

A bare path is read as what it names: ``calib.npz`` as ``npz:calib.npz``, an existing
folder as ``folder:PATH``.

``@N`` after any spec takes N samples: a seeded random subset of a fixed set (sorted, so
``fmnist:train@512`` is always the same 512 images), or N generated inputs for ``photos`` and
``synthetic``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeres.data.folders import (
    check_batch,
    check_label_shape,
    expected_shape,
    list_image_folder,
    load_image_folder,
    load_npz,
)
from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError

IMAGENET_KINDS = ("imagenet-samples", "imagenet-agreement", "imagenet-10crop")
KINDS = ("fmnist", *IMAGENET_KINDS, "photos", "folder", "npz", "synthetic")
_NEEDS_ARG = {"fmnist": "fmnist:train or fmnist:test", "folder": "folder:PATH",
              "npz": "npz:PATH"}
DEFAULT_COUNT = {"photos": 128, "synthetic": 32}
UNLABELLED_KINDS = ("photos", "synthetic")  # never carry labels (folders and .npz may)
_COUNT_RE = re.compile(r"^(.*)@([-+]?[\d.]*)$")  # "@5", and "@-3" / "@" to refuse
_PATH_KINDS = ("folder", "npz")  # their argument is a path, which may itself hold an "@"


def _bare_path(text: str) -> tuple[str, str] | None:
    """``calib.npz`` or an existing folder, typed without ``npz:`` / ``folder:`` (what people
    type first); a path-like text that names nothing gets its own error, not "unknown spec"."""
    path = Path(text).expanduser()
    if text.lower().endswith(".npz"):
        return "npz", text
    if path.is_dir():
        return "folder", text
    if path.is_file():
        raise UserError(f"data spec '{text}' is a file that is not an .npz: give the folder "
                        "that holds the images, or an .npz (np.savez(path, images=...))")
    if "/" in text or "\\" in text:
        raise UserError(f"data spec '{text}': no such folder or .npz file")
    return None


def _bad_count(text: str, n: str) -> UserError:
    return UserError(f"data spec '{text}': the count after @ must be a whole number of at "
                     f"least 1 (e.g. fmnist:train@512), got '{n}'")


def _count(text: str, n: str) -> int:
    if not re.fullmatch(r"[0-9]+", n.strip()) or int(n) < 1:
        raise _bad_count(text, n)
    return int(n)


def _split_count(text: str) -> tuple[str, int | None]:
    """``spec@N`` -> (spec, N). A path (``folder:``, ``npz:``, a bare path) may hold an ``@``
    of its own, so there only a number-like tail is a count; elsewhere any ``@`` starts one."""
    head = text.split("@", 1)[0]
    kind = head.partition(":")[0].strip().lower()
    if "@" in text and (kind in _PATH_KINDS or kind not in KINDS):
        path = text.partition(":")[2] if kind in _PATH_KINDS else text
        if Path(path).expanduser().exists():  # a folder really named "a@3": no count
            return text, None
    if "@" in text and kind in KINDS and kind not in _PATH_KINDS:
        base, n = text.split("@", 1)
        return base, _count(text, n)
    match = _COUNT_RE.match(text)
    if match:
        return match.group(1), _count(text, match.group(2))
    base, at, n = text.rpartition("@")
    if at and not Path(text.partition(":")[2] or text).expanduser().exists() and \
            Path(base.partition(":")[2] or base).expanduser().exists():
        raise _bad_count(text, n)  # "folder:imgs@abc" where imgs exists: a count typo
    return text, None


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: ``kind[:arg][@count]``."""

    kind: str
    arg: str | None = None
    count: int | None = None

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        text = text.strip()
        if not text:
            raise UserError("empty data spec; give e.g. fmnist:train@512 or folder:PATH")
        text, count = _split_count(text)
        kind, _, arg = text.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS and (bare := _bare_path(text)):
            kind, arg = bare
        if kind not in KINDS:
            raise UserError(f"unknown data spec '{text}'. Known: fmnist:train, fmnist:test, "
                            "imagenet-samples, imagenet-agreement, imagenet-10crop, photos, "
                            "folder:PATH, npz:PATH, synthetic (each optionally @N)")
        if kind in _NEEDS_ARG and not arg:
            raise UserError(f"data spec '{text}' needs an argument: {_NEEDS_ARG[kind]}")
        if kind not in _NEEDS_ARG and arg:
            raise UserError(f"data spec '{kind}' takes no ':{arg}' argument")
        if kind == "fmnist" and arg not in ("train", "test"):
            raise UserError(f"data spec '{text}': the Fashion-MNIST split is 'train' or 'test'")
        return cls(kind, arg or None, count)

    def __str__(self) -> str:
        base = f"{self.kind}:{self.arg}" if self.arg else self.kind
        return f"{base}@{self.count}" if self.count else base


@dataclass(frozen=True)
class DataSet:
    """Model inputs (float NCHW, already preprocessed), labels or None, and where they came
    from (the spec text). ``centre``: for sets of views of a few images, the positions of each
    image's standard single centre crop (top-1 on those is the usual single-crop figure)."""

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    centre: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


def subset_indices(total: int, count: int | None, seed: int, where: str) -> np.ndarray:
    """The same ``count`` of ``total`` indices for the same seed, in ascending order."""
    if count is None:
        return np.arange(total)
    if count > total:
        raise UserError(f"{where}: asked for {count} samples, only {total} exist")
    return np.sort(np.random.default_rng(seed).permutation(total)[:count])


def _need_channels(where: str, data_chans: int, data_size: int, in_chans: int,
                   img_size: int | None) -> None:
    if data_chans != in_chans:
        raise UserError(f"{where} are {data_chans}-channel {data_size}x{data_size} images; "
                        f"the model expects {expected_shape(in_chans, img_size)}: pick data "
                        "that fits the model")


def _fmnist(split: str, idx_count: int | None, seed: int, preprocess: Preprocess,
            in_chans: int, img_size: int | None, where: str):
    from edgeres.data.fmnist import load_fmnist

    _need_channels(f"'{where}' (Fashion-MNIST)", 1, 28, in_chans, img_size)
    images, labels = load_fmnist(split)
    idx = subset_indices(len(images), idx_count, seed, where)
    chunks = [preprocess(images[idx[i : i + 4096], :, :, None].copy())
              for i in range(0, len(idx), 4096)]
    return torch.cat(chunks), torch.from_numpy(labels[idx])


def _imagenet(kind: str, count: int | None, seed: int, preprocess: Preprocess,
              in_chans: int, img_size: int | None, where: str):
    from edgeres.data.imagenet import (
        SINGLE_CROP,
        imagenet_agreement_set,
        imagenet_ten_crop_set,
        load_imagenet_samples,
    )

    _need_channels(f"'{where}' (ImageNet samples)", 3, preprocess.crop or 224, in_chans,
                   img_size)
    if kind == "imagenet-agreement":
        x, y = imagenet_agreement_set(preprocess)
    elif kind == "imagenet-10crop":
        x, y = imagenet_ten_crop_set(preprocess)
    else:
        images, labels = load_imagenet_samples()
        x, y = torch.cat([preprocess(im) for im in images]), torch.from_numpy(labels)
    idx = subset_indices(len(x), count, seed, where)
    centre = None
    if kind in SINGLE_CROP:
        per_image, at = SINGLE_CROP[kind]
        centre = np.nonzero(idx % per_image == at)[0]  # positions within the subset
    return x[torch.from_numpy(idx)], y[torch.from_numpy(idx)], centre


def load_spec(
    spec: str | DataSpec,
    preprocess: Preprocess,
    in_chans: int,
    img_size: int | None,
    n: int | None = None,
    *,
    model: nn.Module | None = None,
    seed: int = 0,
    progress: bool = False,
    num_classes: int | None = None,
) -> DataSet:
    """Load a data spec as model inputs, checked against ``[N, in_chans, img_size, img_size]``.

    ``n`` is the count used when the spec has no ``@N`` (None: the whole set, or the default
    of a generated one). ``model`` is needed only by ``synthetic``. ``img_size=None`` accepts
    any spatial size. ``num_classes``: when given, labels outside ``[0, num_classes)`` are
    refused (:func:`check_labels`). Every problem is a UserError naming the spec or file.

    >>> from edgeres.data.preprocess import IMAGENET
    >>> ds = load_spec("imagenet-samples@4", IMAGENET, in_chans=3, img_size=224)
    >>> tuple(ds.x.shape), ds.name
    ((4, 3, 224, 224), 'imagenet-samples@4')
    """
    parsed = spec if isinstance(spec, DataSpec) else DataSpec.parse(spec)
    count = parsed.count if parsed.count is not None else n
    if count is not None and count < 1:
        raise UserError(f"data spec '{parsed}': the count must be at least 1, got {count}")
    where = str(parsed)
    y = None
    centre = None
    if parsed.kind == "fmnist":
        x, y = _fmnist(parsed.arg, count, seed, preprocess, in_chans, img_size, where)
    elif parsed.kind in IMAGENET_KINDS:
        x, y, centre = _imagenet(parsed.kind, count, seed, preprocess, in_chans, img_size,
                                 where)
    elif parsed.kind == "photos":
        from edgeres.data.photos import photo_calibration_set

        x = photo_calibration_set(preprocess, count or DEFAULT_COUNT["photos"], seed=seed,
                                  size=img_size)
    elif parsed.kind == "folder":
        root = Path(parsed.arg).expanduser()  # "folder:~/x": no shell expands that tilde
        files = list_image_folder(root)[0]
        pick = [files[i] for i in subset_indices(len(files), count, seed, where)]
        x, y, _ = load_image_folder(root, preprocess, in_chans, img_size, pick)
    elif parsed.kind == "npz":
        x, y = load_npz(Path(parsed.arg).expanduser(), preprocess, in_chans, img_size)
        idx = torch.from_numpy(subset_indices(len(x), count, seed, where))
        x, y = x[idx], (None if y is None else y[idx])
    else:  # synthetic
        if model is None:
            raise UserError("the 'synthetic' data spec needs the model: data-free calibration "
                            "optimises inputs against its BatchNorm statistics")
        if not img_size:
            raise UserError("the 'synthetic' data spec needs the model's input size")
        from edgeres.data.synthetic import synthesize_inputs

        x = synthesize_inputs(model, (in_chans, img_size, img_size),
                              n=count or DEFAULT_COUNT["synthetic"], seed=seed,
                              preprocess=preprocess, progress=progress)
    check_batch(x, f"data spec '{where}'", in_chans, img_size)
    if y is not None:
        y = check_label_shape(y, x.shape[0], f"data spec '{where}'")
        if num_classes is not None:
            check_labels(y, num_classes, parsed)
    return DataSet(x.contiguous(), y, where, centre)


def check_labels(y: torch.Tensor | np.ndarray | None, num_classes: int,
                 spec: str | DataSpec) -> None:
    """Raise a UserError unless every label is a class of the model, in ``[0, num_classes)``.

    A label the model has no output for is otherwise scored as a miss: a wrong set (or a
    folder with more class sub-folders than the model has classes) gives a silently low
    top-1 instead of an error. ``y`` None (unlabelled data) passes. ``spec`` is the data
    spec the labels came from (``DataSet.name`` or the ``--eval`` text); folder specs get a
    hint on how class folders become labels. Call it as
    ``check_labels(ds.y, rm.num_classes, ds.name)``.
    """
    if y is None:
        return
    y = (y if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y))).flatten()
    if y.numel() == 0:
        return
    bad = (y < 0) | (y >= num_classes)
    if not bool(bad.any()):
        return
    value = int(y[bad.nonzero()[0]].item())
    low, high = int(y.min()), int(y.max())
    text = str(spec)
    msg = (f"data spec '{text}' has label {value} (labels span {low}..{high}) but the model "
           f"has {num_classes} classes (labels 0..{num_classes - 1})")
    try:
        parsed = spec if isinstance(spec, DataSpec) else DataSpec.parse(text)
    except UserError:
        parsed = None
    if parsed is not None and parsed.kind == "folder":
        classes = list_image_folder(Path(parsed.arg).expanduser())[2] or []
        which = f", label {value} is '{classes[value]}'" if 0 <= value < len(classes) else ""
        raise UserError(f"{msg}: class sub-folders map to labels 0, 1, ... in sorted name order "
                        f"and {parsed.arg} has {len(classes)} of them{which}; keep only the "
                        f"model's {num_classes} class folders")
    fix = (f", or a model built with num_classes={high + 1}" if low >= 0
           else "; labels are never negative")
    raise UserError(f"{msg}: use data labelled with this model's classes{fix}")
