"""Writing a bundle folder so that no interruption loses one.

A bundle is staged in a hidden sibling folder (``.OUT.staging-XXXX``) and renamed over
``OUT`` in one step; the bundle it replaces is moved aside (``.OUT.old-XXXX``) first and
deleted after. Three things can interrupt that, and each is handled here:

- Ctrl-C or SIGTERM while staging: the staging folder is removed and ``OUT`` keeps what it
  held (the CLI turns SIGTERM into SystemExit, so ``finally`` runs).
- Ctrl-C or SIGTERM between the two renames, when ``OUT`` would not exist: both signals are
  held back until the new bundle is in place (:func:`edgeres.signals.signals_deferred`).
- SIGKILL, a crash or a power cut, which no code sees: the next convert to the same ``OUT``
  sweeps what was left (``sweep_abandoned``), and puts an old bundle back if the run died
  between the renames. A run holds an ``flock`` on each folder it made for as long as it
  lives, and the kernel drops it when the process dies however it dies, so a folder whose
  lock can be taken belongs to nobody. (Written by hand: no library does this for folders.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeres.bundle import check_replaceable
from edgeres.errors import BundleWrittenInterrupt, UserError
from edgeres.paths import current_umask
from edgeres.signals import interrupt_status, signals_deferred

try:
    import fcntl
except ImportError:  # Windows: no flock; nothing is swept there
    fcntl = None  # type: ignore[assignment]

# A folder younger than this is never swept: its run may not have taken its lock yet.
SWEEP_MIN_AGE_S = 10.0


@dataclass
class Staging:
    """A bundle being written: files go in ``path``; on success it is renamed to ``dest``,
    which the writer may change until then (a bundle that misses its gate goes aside).
    ``published`` turns true once ``dest`` holds the new bundle."""

    path: Path
    dest: Path
    published: bool = False


def _hold_lock(folder: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``folder`` (None without flock)."""
    if fcntl is None:
        return None
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing drops the flock


def _abandoned(folder: Path) -> bool:
    """True when no live process holds ``folder`` and it is old enough to be sure of that."""
    try:
        if time.time() - folder.lstat().st_mtime < SWEEP_MIN_AGE_S or folder.is_symlink():
            return False
    except OSError:
        return False
    fd = _hold_lock(folder)
    _release(fd)
    return fd is not None


def sweep_abandoned(out_dir: Path) -> list[str]:
    """Remove the staging and moved-aside folders that dead runs left beside ``out_dir`` (and
    its ``.rejected`` twin), restoring a moved-aside bundle whose place is empty. Returns one
    line per folder for the log."""
    if fcntl is None:
        return []
    parent, name = out_dir.parent, out_dir.name
    old_prefixes = {f".{name}.old-": out_dir,
                    f".{name}.rejected.old-": out_dir.with_name(name + ".rejected")}
    done = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        dest = next((d for p, d in old_prefixes.items() if entry.name.startswith(p)), None)
        staging = entry.name.startswith(f".{name}.staging-")
        if (dest is None and not staging) or not entry.is_dir() or not _abandoned(entry):
            continue
        kept = entry / "bundle"
        if dest is not None and kept.is_dir() and not os.path.lexists(dest):
            os.replace(kept, dest)
            done.append(f"restored {dest} from {entry.name}, where an interrupted run had "
                        "moved it")
        else:
            done.append(f"removed {entry.name}, left by an interrupted run")
        shutil.rmtree(entry, ignore_errors=True)
    return done


def _publish_modes(stage: Path) -> None:
    """Folders 0o777 and files 0o666, less the umask: what any other tool would make. mkdtemp
    and mkstemp make 0700 / 0600, and a bundle must be readable by builds and other users."""
    umask = current_umask()
    os.chmod(stage, 0o777 & ~umask)
    for dirpath, dirnames, filenames in os.walk(stage):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o777 & ~umask, follow_symlinks=False)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o666 & ~umask)


@contextmanager
def after_publish(dest: Path) -> Iterator[None]:
    """Work done once ``dest`` holds a complete bundle (benchmarks, the summary): an interrupt
    there becomes :class:`BundleWrittenInterrupt`, which says the bundle is complete."""
    try:
        yield
    except BaseException as exc:  # also an interrupt an extension module wrapped
        if (code := interrupt_status(exc)) is None:
            raise
        raise BundleWrittenInterrupt(dest, code) from exc


@contextmanager
def staged_bundle(out_dir: Path,
                  log: Callable[[str], object] | None = None) -> Iterator[Staging]:
    """Yield an empty staging folder; on success it replaces ``staging.dest`` (``out_dir``
    unless changed) in one rename, if :func:`check_replaceable` agrees. ``log`` gets a line
    per folder swept (see :func:`sweep_abandoned`).

    The old bundle is moved aside first and deleted only after the new one is in place.
    """
    out_dir = Path(out_dir)
    staging: Staging | None = None
    stage_lock: int | None = None
    try:
        swept = sweep_abandoned(out_dir)  # an interrupted sweep is finished by the next one
    except OSError:
        swept = []
    for line in swept:
        if log is not None:
            log(line)
    try:
        with signals_deferred():  # a signal now lands inside the try, so finally cleans up
            staging, stage_lock = _make_stage(out_dir)
        yield staging
        _publish_modes(staging.path)
        dest = staging.dest
        if dest.exists():
            check_replaceable(dest)
        try:
            with signals_deferred():
                _swap_in(staging)
        except (KeyboardInterrupt, SystemExit) as exc:  # a signal held back above lands here
            if not staging.published or (code := interrupt_status(exc)) is None:
                raise
            raise BundleWrittenInterrupt(dest, code) from exc
    finally:
        with signals_deferred():  # a second Ctrl-C must not leave half a folder
            _release(stage_lock)
            if staging is not None and not staging.published and staging.path.exists():
                shutil.rmtree(staging.path, ignore_errors=True)


def _make_stage(out_dir: Path) -> tuple[Staging, int | None]:
    """Make and lock this run's staging folder."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(f"cannot write the bundle to '{out_dir}': {exc.strerror or exc}") from exc
    return Staging(stage, out_dir), _hold_lock(stage)


def _swap_in(staging: Staging) -> None:
    """Rename the staged bundle over ``staging.dest``; the bundle there is moved aside first,
    put back if the rename fails, and deleted once the new one is in place."""
    dest, old, old_lock = staging.dest, None, None
    try:
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            old_lock = _hold_lock(old)
            with contextlib.suppress(FileNotFoundError):  # another run moved it meanwhile
                os.replace(dest, old / "bundle")
        try:
            os.replace(staging.path, dest)
        except OSError as exc:
            if os.path.lexists(dest):  # not ours: another run put it there meanwhile
                raise UserError(f"'{dest}' was written by another run while this one was "
                                "finishing; this bundle was not kept (run one convert per "
                                "--out at a time)") from exc
            if old is not None and (old / "bundle").exists():
                os.replace(old / "bundle", dest)
            raise
        staging.published = True
    finally:
        # kept only while it holds the one copy of the bundle (a later run puts it back)
        if old is not None and (os.path.lexists(dest) or not (old / "bundle").exists()):
            with contextlib.suppress(OSError):
                shutil.rmtree(old)
        _release(old_lock)
