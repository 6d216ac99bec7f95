"""User data: image folders and ``.npz`` arrays, checked against what the model takes.

Image folder: ``.jpg/.jpeg/.png/.bmp`` files read with Pillow, either all directly in the
folder (unlabelled) or in one sub-folder per class (labels = sorted sub-folder names, like
torchvision's ImageFolder). Files are taken in sorted path order.

``.npz`` keys (exactly one of ``x`` / ``images``):
- ``x``: float NCHW, already preprocessed: fed to the model as is.
- ``images``: uint8 NHWC (or NHW for grey) raw pixels, preprocessed with the model's recipe.
- ``y`` (optional): integer labels, one per sample.
- ``meta`` (optional, written by ``save_npz``): a JSON string saying how the file was built.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError
from edgeres.paths import replaced_atomically

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_CHUNK = 64  # images preprocessed at a time, to bound float memory


def expected_shape(in_chans: int, img_size: int | None) -> str:
    size = f"{img_size}, {img_size}" if img_size else "H, W"
    return f"[N, {in_chans}, {size}]"


def check_batch(x: torch.Tensor, where: str, in_chans: int, img_size: int | None) -> None:
    """Raise a UserError unless ``x`` is a non-empty finite NCHW batch the model can take."""
    want = expected_shape(in_chans, img_size)
    if x.dim() != 4:
        raise UserError(f"{where}: inputs have shape {list(x.shape)}; the model expects {want}")
    if x.shape[0] == 0:
        raise UserError(f"{where}: no samples (empty data); the model expects {want}")
    if x.shape[1] != in_chans:
        hint = ""
        if x.shape[-1] == in_chans:
            hint = " (looks like NHWC: transpose to NCHW)"
        raise UserError(f"{where}: inputs have {x.shape[1]} channels, shape {list(x.shape)}; "
                        f"the model expects {want}{hint}")
    if img_size and tuple(x.shape[-2:]) != (img_size, img_size):
        raise UserError(f"{where}: inputs are {x.shape[-2]}x{x.shape[-1]}, shape "
                        f"{list(x.shape)}; the model expects {want}")
    if not x.is_floating_point():
        raise UserError(f"{where}: inputs are {x.dtype}; the model expects float32 {want}")
    bad = (~torch.isfinite(x)).sum().item()
    if bad:
        raise UserError(f"{where}: {bad} NaN/Inf values in the inputs")


def check_label_shape(y: np.ndarray | torch.Tensor, n: int, where: str) -> torch.Tensor:
    """One integer label per sample, as int64 (the range against the model's classes is
    :func:`edgeres.data.specs.check_labels`, which needs the model)."""
    y = torch.as_tensor(np.asarray(y))
    if y.dim() != 1 or y.shape[0] != n:
        raise UserError(f"{where}: labels 'y' have shape {list(y.shape)}; expected [{n}]")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise UserError(f"{where}: labels 'y' are {y.dtype}; expected integers")
    return y.to(torch.int64)


def _preprocess_chunked(images: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """uint8 NHWC -> preprocessed NCHW float, a chunk at a time."""
    return torch.cat([preprocess(np.ascontiguousarray(images[i : i + _CHUNK]))
                      for i in range(0, len(images), _CHUNK)])


def _match_channels(images: np.ndarray, in_chans: int, where: str, img_size: int | None):
    """Grey -> RGB by repetition; any other channel mismatch is the user's to fix."""
    c = images.shape[-1]
    if c == in_chans:
        return images
    if c == 1 and in_chans == 3:
        return np.repeat(images, 3, axis=-1)
    raise UserError(f"{where}: images have {c} channels (shape {list(images.shape)}, NHWC); "
                    f"the model expects {expected_shape(in_chans, img_size)} after preprocessing")


_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grey as Pillow opens it


def _wide_grey_to_uint8(im: Image.Image, path: Path) -> np.ndarray:
    """16-bit grey -> uint8 HW scaled by 1/257 (rounded): ``convert("L")`` clips instead, so
    almost every pixel of a 16-bit image becomes 255. "I" (32-bit) is taken as 16-bit data
    (what a 16-bit PNG opens as in some Pillow versions) and refused outside 0..65535."""
    arr = np.asarray(im).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise UserError(f"{path}: a 32-bit integer ({im.mode}) image with values "
                        f"{arr.min()}..{arr.max()} outside 0..65535; save it as an 8-bit or "
                        "16-bit PNG")
    return ((arr * 255 + 32767) // 65535).astype(np.uint8)


def _read_image(path: Path, in_chans: int, img_size: int | None) -> np.ndarray:
    """uint8 HWC pixels of one image file, scaled to 8 bits and matched to ``in_chans``."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "F":
                raise UserError(f"{path}: a 32-bit float (F) image, whose value range is "
                                "unknown; save it as an 8-bit or 16-bit PNG")
            if mode in _WIDE_GREY and in_chans in (1, 3):
                grey = _wide_grey_to_uint8(im, path)[..., None]
                return grey if in_chans == 1 else np.repeat(grey, 3, axis=-1)
            if in_chans == 3:
                return np.array(im.convert("RGB"))  # alpha (RGBA, LA, P) is dropped
            if in_chans == 1 and mode in GREY_MODES:
                return np.array(im.convert("L"))[..., None]
    except (OSError, UnidentifiedImageError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc
    raise UserError(f"{path}: a {mode} image, but the model takes {in_chans}-channel input "
                    f"{expected_shape(in_chans, img_size)}; convert the images "
                    f"({'to greyscale' if in_chans == 1 else 'yourself, or pass an .npz'})")


def list_image_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """Files, their class indices and the class names (None, None when unlabelled)."""
    root = Path(root)
    if root.is_file():
        raise UserError(f"image folder {root} is a file, not a folder: give the folder of "
                        f"images{', or npz:' + str(root) if root.suffix == '.npz' else ''}")
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")

    def images_in(d: Path, recursive: bool) -> list[Path]:
        it = d.rglob("*") if recursive else d.iterdir()
        return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))

    top = images_in(root, recursive=False)
    class_dirs = [d for d in sorted(root.iterdir())
                  if d.is_dir() and not d.name.startswith(".") and images_in(d, True)]
    if top and class_dirs:
        raise UserError(f"{root} holds both images and class folders "
                        f"({', '.join(d.name for d in class_dirs[:3])}): use one layout")
    if top:
        return top, None, None
    files, labels = [], []
    for k, d in enumerate(class_dirs):
        found = images_in(d, recursive=True)
        files += found
        labels += [k] * len(found)
    if not files:
        raise UserError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {root} (empty data)")
    return files, labels, [d.name for d in class_dirs]


def load_image_folder(
    root: Path, preprocess: Preprocess, in_chans: int, img_size: int | None,
    files: list[Path] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[str] | None]:
    """Preprocessed NCHW inputs, labels (or None) and class names (or None) of a folder.

    ``files`` restricts loading to a subset of ``list_image_folder(root)[0]`` (keeps order).
    """
    all_files, labels, classes = list_image_folder(root)
    keep = all_files if files is None else files
    index = {p: i for i, p in enumerate(all_files)}
    xs = []
    for path in keep:
        x = preprocess(_read_image(path, in_chans, img_size))
        if img_size and tuple(x.shape[-2:]) != (img_size, img_size):
            raise UserError(f"{path}: image becomes {x.shape[-2]}x{x.shape[-1]} after "
                            f"preprocessing (resize={preprocess.resize}, crop={preprocess.crop})"
                            f"; the model expects {expected_shape(in_chans, img_size)}: resize "
                            f"the images to {img_size}x{img_size}")
        xs.append(x)
    y = None if labels is None else torch.tensor([labels[index[p]] for p in keep])
    return torch.cat(xs), y, classes


def load_npz(
    path: Path, preprocess: Preprocess, in_chans: int, img_size: int | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model inputs (NCHW float) and labels (or None) from an ``.npz`` (keys in module doc)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"npz file {path} is a directory, not an .npz file: give the .npz "
                        f"path, or folder:{path} for a folder of images")
    if not path.is_file():
        raise UserError(f"npz file {path} does not exist")
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x05\x06":  # a zip with no members: np.savez(path) with no arrays
        raise UserError(f"{path} holds no arrays; it needs key 'x' (float NCHW, preprocessed) "
                        "or 'images' (uint8 NHWC): np.savez(path, x=...) or images=...")
    if magic != b"PK\x03\x04":  # np.load would try the bytes as a pickle
        raise UserError(f"{path} is not an .npz archive; write one with np.savez(path, "
                        "x=float_nchw) or calibration/build_calib.py")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot read {path} as .npz ({reason}); store plain numeric "
                        "arrays, not Python objects") from exc
    if not arrays:
        raise UserError(f"{path} holds no arrays; it needs key 'x' (float NCHW, preprocessed) "
                        "or 'images' (uint8 NHWC): np.savez(path, x=...) or images=...")
    if ("x" in arrays) == ("images" in arrays):
        raise UserError(f"{path}: needs exactly one of the keys 'x' (float NCHW, preprocessed) "
                        f"or 'images' (uint8 NHWC); found keys {sorted(arrays)}")
    where = str(path)
    if "x" in arrays:
        a = arrays["x"]
        if not np.issubdtype(a.dtype, np.floating):
            raise UserError(f"{path}: 'x' is {a.dtype}; it must be float NCHW, preprocessed "
                            "(store raw uint8 pixels under 'images' instead)")
        x = torch.from_numpy(a.astype(np.float32))
    else:
        a = arrays["images"]
        if a.dtype != np.uint8 or a.ndim not in (3, 4):
            raise UserError(f"{path}: 'images' is {a.dtype} with shape {list(a.shape)}; it must "
                            "be uint8 NHWC (or NHW for grey)")
        if a.ndim == 3:
            a = a[..., None]
        if len(a) == 0:
            raise UserError(f"{path}: 'images' holds no samples (empty data)")
        x = _preprocess_chunked(_match_channels(a, in_chans, where, img_size), preprocess)
    check_batch(x, where, in_chans, img_size)
    y = check_label_shape(arrays["y"], x.shape[0], where) if "y" in arrays else None
    return x, y


def save_npz(
    path: Path, x: torch.Tensor, y: torch.Tensor | None = None, meta: dict | None = None
) -> Path:
    """Write ``x`` (float32 NCHW), optional ``y`` and ``meta`` atomically and byte-for-byte
    reproducibly (fixed zip timestamps, unlike ``np.savez``)."""
    path = Path(path)
    arrays = {"x": x.detach().cpu().numpy().astype(np.float32)}
    if y is not None:
        arrays["y"] = y.detach().cpu().numpy().astype(np.int64)
    if meta is not None:
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    with replaced_atomically(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())
    return path


def read_npz_meta(path: Path) -> dict:
    """The ``meta`` JSON of an npz written by ``save_npz`` ({} when absent)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"])) if "meta" in data.files else {}
