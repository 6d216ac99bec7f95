"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (IDX files, gzip)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from edgeres.errors import UserError

FMNIST_DIR = Path(os.environ.get("EDGERES_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FMNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic 0x00 0x00 dtype ndim, big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise UserError(f"{path}: header says {expected} values, file holds {len(data) - offset}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_fmnist(split: str = "test", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [N, 28, 28] uint8 and labels [N] int64 of the ``train`` or ``test`` split."""
    if split not in _FILES:
        raise UserError(f"Fashion-MNIST split must be 'train' or 'test', got '{split}'")
    root = Path(root) if root else FMNIST_DIR
    img_file, lbl_file = (root / f for f in _FILES[split])
    if not img_file.is_file() or not lbl_file.is_file():
        raise UserError(
            f"Fashion-MNIST not found in {root}: install it with "
            "`apt-get update && apt-get install -y dataset-fashion-mnist` (make setup does this), "
            "or set EDGERES_FMNIST_DIR"
        )
    images, labels = read_idx(img_file), read_idx(lbl_file)
    if images.shape[0] != labels.shape[0]:
        raise UserError(f"{img_file} and {lbl_file} hold different numbers of samples")
    return images, labels.astype(np.int64)
