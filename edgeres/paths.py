"""Output paths: checked before the work (a bad ``--out`` must fail in a second, not after
minutes of calibration or training), and written with the modes any other tool would give.

Permission bits cannot answer "can I write here?" (root passes ``os.access`` on /proc and on
read-only mounts), so the nearest existing folder is probed by creating a file in it. Nothing
is created along the way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from edgeres.errors import UserError


def current_umask() -> int:
    """The process umask. Linux reports it in /proc; elsewhere ``os.umask`` can only read it
    by setting it for a moment (which files another thread creates then would get)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def ordinary_file_mode() -> int:
    """0o666 less the umask: what a plain ``open`` would make (mkstemp makes 0600, and bundle
    files, calibration sets and checkpoints are read by builds and other users)."""
    return 0o666 & ~current_umask()


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


NAME_MAX = 255  # bytes in one path component on Linux file systems


def enclosing_bundle(path: Path) -> Path | None:
    """The edgeres bundle folder ``path`` would sit inside, if any: writing there breaks it
    (its hashes, or its next convert, which refuses files its manifest does not list)."""
    for parent in Path(path).resolve().parents:
        if (parent / "manifest.json").is_file():
            return parent
    return None


# What edgeres adds to an output's own name for its siblings: '.NAME.XXXXXXXX.tmp' beside a
# file, '.NAME.rejected.old-XXXXXXXX' beside a bundle folder (the longest of its names).
FILE_NAME_RESERVE, FOLDER_NAME_RESERVE = 14, 23


def _check_names(path: Path, option: str, reserve: int) -> None:
    parts = Path(path).parts
    for i, part in enumerate(parts):
        limit = NAME_MAX - (reserve if i == len(parts) - 1 else 0)
        if len(os.fsencode(part)) > limit:
            why = " (edgeres names its temporaries after it)" if limit < NAME_MAX else ""
            raise UserError(f"{option}: the name '{part[:40]}...' is longer than {limit} "
                            f"bytes{why}, which file systems refuse; pick a shorter one")


def check_output_file(path: Path, option: str, example: str = "out.npz") -> None:
    """``path`` can be written as a file (renamed into place from a sibling temporary): not a
    folder, not inside a bundle, and not an existing file of another kind (it would be lost)."""
    path = Path(path)
    _check_names(path, option, FILE_NAME_RESERVE)
    if path.is_dir():
        raise UserError(f"{option} {path} is a folder; name the file to write, "
                        f"e.g. {option} {path / example}")
    if (inside := enclosing_bundle(path)) is not None:
        raise UserError(f"{option} {path} is inside the bundle {inside}; write it elsewhere")
    suffix = Path(example).suffix
    if path.exists() and path.suffix.lower() != suffix:
        raise UserError(f"{option} {path} exists and is not a {suffix} file; refusing to "
                        f"overwrite it (name a {suffix} file)")
    _probe_parent(path, option)


def check_output_folder(path: Path, option: str) -> None:
    """``path`` can be created (or replaced) as a folder: staged beside it, then renamed."""
    path = Path(path)
    _check_names(path, option, FOLDER_NAME_RESERVE)
    if path.is_symlink() and not path.exists():
        raise UserError(f"{option} {path} is a link to nothing; remove it or pick another path")
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is a file, not a folder; pick another path")
    _probe_parent(path, option)


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write; it then replaces ``path`` in
    one rename, with an ordinary file's mode (not mkstemp's 0600). On an error or an
    interrupt it is removed and ``path`` keeps what it held."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, ordinary_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` through :func:`replaced_atomically`: never a half-written file."""
    try:
        with replaced_atomically(path) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise UserError(f"cannot write '{path}': {exc.strerror or exc}") from exc
