"""The app-build bundle: model file(s), float reference, manifest, golden vectors, report.

Layout and the ``edgeres.bundle/1`` manifest are documented in the README and in
``edgeres/bundle.schema.json``. Bundles are written through :mod:`edgeres.staging`, so an
interrupted convert leaves the previous bundle intact; file contents are deterministic, so
the same inputs give byte-identical bundles.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

from edgeres.errors import UserError
from edgeres.gates import check_gates_record

SCHEMA = "edgeres.bundle/1"
MANIFEST = "manifest.json"
# golden/: per-channel divisors of smoothed tensors (see edgeres.check.channel_divisors)
CHANNEL_SCALES = "channel_scales.npz"
SCHEMA_FILE = Path(__file__).with_name("bundle.schema.json")
FLOAT_FILE = "float.onnx"
# The model file each manifest ``format`` names (a "c" bundle's C arrays hold the .tflite).
FORMAT_SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "c": ".tflite"}
REBUILD = "rebuild the bundle with `edgeres convert`"


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


def _folder_entries(root: Path) -> Iterator[str]:
    """POSIX relative paths of everything under ``root`` that is not a folder (links to
    folders included: they are not walked into), in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        links = [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = sorted(d for d in dirnames if d not in links)
        for name in sorted(filenames + links):
            yield (here / name).relative_to(root).as_posix()


def check_replaceable(out_dir: Path) -> None:
    """A UserError unless ``out_dir`` is absent, empty or an edgeres bundle with nothing in it
    that its manifest does not list (a convert must never delete somebody's file: a folder
    that merely holds a manifest.json, or a bundle someone dropped a checkpoint into).
    Called before the work and again before the rename."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"'{out_dir}' is a file, not a bundle folder; pass another --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        manifest = None
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(listed, dict) or manifest.get("schema") != SCHEMA:
        raise UserError(f"'{out_dir}' exists and is not an edgeres bundle; refusing to replace "
                        "it (pass another --out)")
    for rel in _folder_entries(out_dir):
        if rel != MANIFEST and rel not in listed:
            raise UserError(f"'{out_dir}' holds '{rel}', which is not a file of the bundle there; "
                            "refusing to replace it: pass another --out or move that file out")


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
        return self.root / FLOAT_FILE


# -- validating a manifest against bundle.schema.json ---------------------------------------


@cache
def _validator():  # noqa: ANN202 - jsonschema.protocols.Validator
    import jsonschema

    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def schema_error(manifest: object) -> tuple[str, str] | None:
    """The most relevant place ``manifest`` breaks bundle.schema.json: (key path such as
    ``outputs[0].scale``, jsonschema's message), or None."""
    from jsonschema.exceptions import best_match

    err = best_match(_validator().iter_errors(manifest))
    if err is None:
        return None
    path = "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in err.absolute_path)
    message = err.message if len(err.message) <= 120 else err.message[:117] + "..."
    return path.lstrip("."), message


# -- loading -------------------------------------------------------------------------------


def _inside(root: Path, rel: str) -> bool:
    """True for a relative POSIX path that stays inside ``root`` (links resolved too)."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or "\\" in rel or ".." in p.parts:
        return False
    base = root.resolve()
    return (base / p).resolve().is_relative_to(base)


def _check_semantics(root: Path, mpath: Path, m: dict) -> None:
    """What the schema cannot say: the runtime, the format, the model file's name and place,
    the files whose hashes must be checked, image tensors' rank."""
    from edgeres.targets import RUNTIME_FORMATS

    def bad(key: str, problem: str) -> UserError:
        return UserError(f"{mpath}: '{key}' {problem}; {REBUILD}")

    for key in ("runtime", "format"):
        if key not in m:
            raise bad(key, "is missing")
    runtime, fmt, model_file = m["runtime"], m["format"], m["model_file"]
    if runtime not in RUNTIME_FORMATS:
        raise bad("runtime", f"is {_show(runtime)}, not one of {', '.join(RUNTIME_FORMATS)}")
    for rel, key in [(model_file, "model_file")] + [(r, "files") for r in m["files"]]:
        if not _inside(root, rel):
            raise bad(key, f"names '{rel}', which is not a path inside the bundle (relative, "
                      "no '..')")
    if PurePosixPath(model_file).suffix != FORMAT_SUFFIX[fmt]:
        raise bad("model_file", f"is '{model_file}', but 'format' {fmt} needs a "
                  f"{FORMAT_SUFFIX[fmt]} file")
    if fmt not in RUNTIME_FORMATS[runtime]:
        raise bad("format", f"is {fmt}, which runtime {runtime} does not load (it loads "
                  f"{', '.join(RUNTIME_FORMATS[runtime])})")
    for rel in (model_file, FLOAT_FILE):
        if rel not in m["files"]:
            raise bad("files", f"does not list '{rel}', so its sha256 cannot be checked")
    for group in ("inputs", "outputs"):
        for i, e in enumerate(m[group]):
            shape = e["shape"]
            if e.get("layout") in ("NHWC", "NCHW") and (
                len(shape) != 4 or not all(type(d) is int and d > 0 for d in shape[1:])
            ):
                raise bad(f"{group}[{i}].shape", f"is {_show(shape)}, but layout "
                          f"{e['layout']} needs 4 dimensions, the last 3 positive integers")
    _check_labels_and_preprocess(m, bad)
    if m["metrics"].get("centre_samples") and m["metrics"]["centre_samples"] > m["metrics"][
            "samples"]:
        raise bad("metrics.centre_samples", f"is {m['metrics']['centre_samples']}, more than "
                  f"the {m['metrics']['samples']} samples")
    check_gates_record(m, bad)


INT_DTYPES = ("int8", "uint8", "int16", "uint16")


def channels(entry: dict) -> int | None:
    """The channel count of an image tensor (last dim for NHWC, dim 1 for NCHW), else None."""
    layout, shape = entry.get("layout"), entry["shape"]
    dim = shape[3] if layout == "NHWC" else shape[1] if layout == "NCHW" else None
    return dim if type(dim) is int else None


def _check_labels_and_preprocess(m: dict, bad: Callable[[str, str], UserError]) -> None:
    """Labels one per class; integer tensors quantized; one mean and std per input channel.
    Each would otherwise surface later as a wrong answer or a traceback."""
    labels, last = m["labels"], m["outputs"][0]["shape"][-1:] or [None]
    if isinstance(labels, list) and type(last[0]) is int and len(labels) != last[0]:
        raise bad("labels", f"has {len(labels)} names, but 'outputs[0]' has {last[0]} classes "
                  "(its last dimension)")
    for group in ("inputs", "outputs"):
        for i, e in enumerate(m[group]):
            for key in ("scale", "zero_point"):
                if e["dtype"] in INT_DTYPES and e[key] is None:
                    raise bad(f"{group}[{i}].{key}", f"is null, but dtype {e['dtype']} needs "
                              "the quantization an app applies")
    for i, e in enumerate(m["inputs"]):
        for key in ("resize", "crop"):
            size = e["preprocess"][key]
            if size is not None and type(size) is not int:
                raise bad(f"inputs[{i}].preprocess.{key}", f"is {_show(size)}, not a whole "
                          "number of pixels (or null)")
        pre, side = e["preprocess"], _image_side(e)
        if side is not None and pre["crop"] not in (None, side):
            raise bad(f"inputs[{i}].preprocess.crop", f"is {pre['crop']}, but the input is "
                      f"{side} pixels square")
        if side is not None and pre["resize"] is not None and not side <= pre["resize"] <= 8 * side:
            raise bad(f"inputs[{i}].preprocess.resize", f"is {pre['resize']}, but an input of "
                      f"{side} pixels is cropped from {side} to {8 * side}")
        c = channels(e)
        for key in ("mean", "std"):
            values = e["preprocess"][key]
            if c is not None and len(values) != c:
                raise bad(f"inputs[{i}].preprocess.{key}", f"has {len(values)} values, but "
                          f"the {e['layout']} input has {c} channels")
        if not all(1e-6 <= v <= 1e6 for v in pre["std"]) or not all(
                abs(v) <= 1e6 for v in pre["mean"]):
            raise bad(f"inputs[{i}].preprocess", "has a std outside [1e-6, 1e6] or a mean "
                      "beyond +-1e6: pixel/255 normalization never needs that")


def _image_side(entry: dict) -> int | None:
    """An image input's side in pixels (square), from its shape and layout; else None."""
    shape, layout = entry["shape"], entry.get("layout")
    h = shape[1] if layout == "NHWC" else shape[2] if layout == "NCHW" else None
    return h if type(h) is int else None


def nonfinite_key(obj: object, path: str = "") -> str | None:
    """The key path (``outputs[0].scale``) of the first NaN or infinity in ``obj``, else
    None: Python's json reads NaN/Infinity literals, which no app's JSON parser accepts."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "(top level)"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(
        obj, list) else ()
    for k, v in items:
        found = nonfinite_key(v, f"{path}[{k}]" if isinstance(k, int) else f"{path}.{k}")
        if found:
            return found.lstrip(".")
    return None


@dataclass(frozen=True)
class ModelTensor:
    """One input or output as the model file declares it: None for a dimension it leaves
    open, and for a layout or quantization it does not record."""

    shape: list[int | None]
    dtype: str
    layout: str | None = None
    scale: float | None = None
    zero_point: int | None = None


def _tflite_io(path: Path) -> tuple[list[ModelTensor], list[ModelTensor]]:
    from edgeres.export.tflite import tflite_io_details

    try:
        ins, outs = tflite_io_details(path)
    except UserError as exc:
        raise UserError(f"{exc}; {REBUILD}") from exc
    return tuple([ModelTensor([int(d) for d in t.shape], t.dtype, t.layout, t.scale,
                              t.zero_point) for t in ts] for ts in (ins, outs))


def _onnx_quant(g: object, name: str, consumer: bool) -> tuple[float | None, int | None]:
    """Scale and zero point of the DequantizeLinear reading integer input ``name`` (or the
    QuantizeLinear writing output ``name``), when they are scalar initializers."""
    from onnx import numpy_helper

    op, ends = ("DequantizeLinear", "input") if consumer else ("QuantizeLinear", "output")
    node = next((n for n in g.node if n.op_type == op and name in getattr(n, ends)), None)
    inits = {t.name: t for t in g.initializer}
    if node is None or len(node.input) < 3 or not {*node.input[1:3]} <= inits.keys():
        return None, None
    scale, zp = (numpy_helper.to_array(inits[n]) for n in node.input[1:3])
    if scale.size != 1 or zp.size != 1:
        return None, None
    return float(scale.reshape(())), int(zp.reshape(()))


def _model_io(path: Path) -> tuple[list[ModelTensor], list[ModelTensor]]:
    """Each input and output as the model file itself declares it."""
    if path.suffix == ".tflite":
        return _tflite_io(path)
    import onnx

    try:
        g = onnx.load(path, load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - protobuf raises untyped decode errors
        raise UserError(f"'{path}' is not a readable ONNX model ({exc}); {REBUILD}") from exc
    inits = {t.name for t in g.initializer}

    def describe(v: onnx.ValueInfoProto, consumer: bool) -> ModelTensor:
        tt = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        quant = _onnx_quant(g, v.name, consumer) if dtype in INT_DTYPES else (None, None)
        return ModelTensor(dims, dtype, None, *quant)

    return ([describe(v, True) for v in g.input if v.name not in inits],
            [describe(v, False) for v in g.output])


def _check_model_io(bundle: Bundle, mpath: Path) -> None:
    """The manifest's tensors are the model file's: same count, rank, fixed sizes, layout,
    dtype and, for integer tensors, quantization (an app quantizes with the manifest's)."""
    name = bundle.manifest["model_file"]

    def bad(key: str, problem: str) -> UserError:
        return UserError(f"{mpath}: '{key}' {problem}; {REBUILD}")

    for group, actual in zip(("inputs", "outputs"), _model_io(bundle.model_file), strict=True):
        entries = bundle.manifest[group]
        if len(entries) != len(actual):
            raise UserError(f"{mpath}: '{group}' lists {len(entries)} tensors but {name} has "
                            f"{len(actual)}; {REBUILD}")
        for i, (e, t) in enumerate(zip(entries, actual, strict=True)):
            key = f"{group}[{i}]"
            fits = len(e["shape"]) == len(t.shape) and all(
                d is None or d == s for s, d in zip(e["shape"], t.shape, strict=True))
            if not fits:
                shown = [-1 if d is None else d for d in t.shape]
                raise bad(f"{key}.shape", f"is {_show(e['shape'])}, but {name} has {shown}")
            if t.layout is not None and e.get("layout", "ND") != t.layout:
                raise bad(f"{key}.layout", f"is {e.get('layout', 'missing')}, but {name} "
                          f"takes {t.layout}")
            if e["dtype"] != t.dtype:
                raise bad(f"{key}.dtype", f"is {e['dtype']}, but {name} has {t.dtype}")
            if t.dtype not in INT_DTYPES or t.scale is None:
                continue
            if not math.isclose(e["scale"], t.scale, rel_tol=1e-6):
                raise bad(f"{key}.scale", f"is {e['scale']!r}, but {name} quantizes it with "
                          f"{t.scale!r}")
            if e["zero_point"] != t.zero_point:
                raise bad(f"{key}.zero_point", f"is {e['zero_point']}, but {name} has "
                          f"{t.zero_point}")


def load_bundle(root: Path, verify: bool = True) -> Bundle:
    """Read ``root/manifest.json``, validate it (bundle.schema.json and what the code relies
    on), and with ``verify`` check every listed file's sha256 and the model file's tensors."""
    root = Path(root)
    mpath = root / MANIFEST
    if not root.exists():
        raise UserError(f"bundle '{root}' does not exist (write one with `edgeres convert`)")
    if not mpath.is_file():
        raise UserError(f"'{root}' is not a bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{mpath}: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise UserError(f"{mpath}: the manifest must be a JSON object, not {_show(manifest)}; "
                        f"{REBUILD}")
    if manifest.get("schema") != SCHEMA:
        raise UserError(f"{mpath}: schema '{manifest.get('schema')}' is not '{SCHEMA}'")
    if key := nonfinite_key(manifest):
        raise UserError(f"{mpath}: '{key}' is not a finite number (NaN or Infinity); {REBUILD}")
    if err := schema_error(manifest):
        where = f"'{err[0]}': " if err[0] else ""
        raise UserError(f"{mpath}: {where}{err[1]} (bundle.schema.json); {REBUILD}")
    _check_semantics(root, mpath, manifest)
    bundle = Bundle(root, manifest)
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
                    f"manifest's {digest[:12]}...; {REBUILD}"
                )
        _check_model_io(bundle, mpath)
    return bundle
