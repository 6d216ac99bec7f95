"""Output paths checked before the work: a bad ``--out`` must fail in a second, not after
minutes of calibration or training.

Permission bits cannot answer "can I write here?" (root passes ``os.access`` on /proc and on
read-only mounts), so the nearest existing folder is probed by creating a file in it. Nothing
is created along the way.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgeres.errors import UserError


def _probe_parent(path: Path, option: str) -> None:
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: {parent} is a file, not a folder; pick another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot create files in {parent} "
                        f"({exc.strerror or type(exc).__name__}); pick a writable folder") from exc
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Path, option: str, example: str = "out.npz") -> None:
    """``path`` can be written as a file (renamed into place from a sibling temporary)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name the file to write, "
                        f"e.g. {option} {path / example}")
    _probe_parent(path, option)


def check_output_folder(path: Path, option: str) -> None:
    """``path`` can be created (or replaced) as a folder: staged beside it, then renamed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pick another path")
    _probe_parent(path, option)
