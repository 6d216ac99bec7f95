"""The app-build bundle: model file(s), float reference, manifest, golden vectors, report.

Layout and the ``edgeres.bundle/1`` manifest are documented in the README and in
``edgeres/bundle.schema.json``. Bundles are staged in a sibling temporary folder and swapped
into place, so an interrupted convert leaves the previous bundle intact; file contents are
deterministic, so the same inputs give byte-identical bundles.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeres.errors import UserError

SCHEMA = "edgeres.bundle/1"
MANIFEST = "manifest.json"
# golden/: per-channel divisors of smoothed tensors (see edgeres.check.channel_divisors)
CHANNEL_SCALES = "channel_scales.npz"
SCHEMA_FILE = Path(__file__).with_name("bundle.schema.json")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dumps(obj: object) -> str:
    """Canonical JSON for bundle files: sorted keys, fixed indent, trailing newline."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, by POSIX relative path."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            out[rel] = sha256_file(path)
    return out


def check_replaceable(out_dir: Path) -> None:
    """A UserError unless ``out_dir`` is absent, empty or an edgeres bundle (a convert must
    never replace somebody's folder; called before the work and again before the rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file, not a bundle folder; pass another --out")
    if out_dir.is_dir() and not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
        raise UserError(f"'{out_dir}' exists and is not an edgeres bundle; refusing to replace "
                        "it (pass another --out)")


@contextmanager
def staged_bundle(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces ``out_dir`` in one rename.

    The old bundle is moved aside first and deleted only after the new one is in place.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    except OSError as exc:
        raise UserError(f"cannot write the bundle to '{out_dir}': {exc.strerror or exc}") from exc
    try:
        yield stage
        old = None
        if out_dir.exists():
            check_replaceable(out_dir)
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "bundle")
        os.replace(stage, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


def write_manifest(stage: Path, manifest: dict) -> dict:
    """Fill ``files`` with the hashes of everything staged, then write manifest.json."""
    manifest = dict(manifest)
    manifest["schema"] = SCHEMA
    manifest["files"] = file_hashes(stage)
    (stage / MANIFEST).write_text(dumps(manifest))
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk whose files were checked against its manifest."""

    root: Path
    manifest: dict

    @property
    def model_file(self) -> Path:
        return self.root / self.manifest["model_file"]

    @property
    def float_file(self) -> Path:
        return self.root / "float.onnx"


def load_bundle(root: Path, verify: bool = True) -> Bundle:
    """Read ``root/manifest.json`` and check every listed file exists with its sha256."""
    root = Path(root)
    mpath = root / MANIFEST
    if not root.exists():
        raise UserError(f"bundle '{root}' does not exist (write one with `edgeres convert`)")
    if not mpath.is_file():
        raise UserError(f"'{root}' is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{mpath}: unreadable manifest ({exc})") from exc
    if manifest.get("schema") != SCHEMA:
        raise UserError(f"{mpath}: schema '{manifest.get('schema')}' is not '{SCHEMA}'")
    for key in ("files", "inputs", "outputs", "model_file", "target"):
        if key not in manifest:
            raise UserError(f"{mpath}: required field '{key}' is missing")
    if verify:
        for rel, digest in manifest["files"].items():
            path = root / rel
            if not path.is_file():
                raise UserError(
                    f"bundle file '{rel}' listed in the manifest is missing from {root}"
                )
            actual = sha256_file(path)
            if actual != digest:
                raise UserError(
                    f"bundle file '{rel}' was altered: sha256 {actual[:12]}... does not match the "
                    f"manifest's {digest[:12]}...; rebuild the bundle with `edgeres convert`"
                )
    return Bundle(root, manifest)
