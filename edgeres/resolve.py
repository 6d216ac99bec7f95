"""Turn what a user names (zoo name, checkpoint, ``module:factory``) into a model + metadata."""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeres.data.fmnist import FMNIST_LABELS
from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.errors import UserError
from edgeres.zoo import create_model, get_entry, list_models
from edgeres.zoo.registry import first_non_finite, load_torch_file

LABEL_SETS = ("imagenet", "fmnist")  # label-set names labels_for knows

__all__ = ["ResolvedModel", "labels_for", "load_torch_file", "parse_bits", "resolve_model"]


@dataclass
class ResolvedModel:
    """A float model in eval mode plus what a bundle needs to describe its input."""

    name: str
    module: nn.Module
    img_size: int
    in_chans: int
    num_classes: int
    preprocess: Preprocess
    labels: list[str] | None
    label_set: str | None  # "fmnist" | "imagenet" | None
    weights: str


def labels_for(label_set: str | None, num_classes: int) -> list[str] | None:
    if label_set == "fmnist" and num_classes == 10:
        return list(FMNIST_LABELS)
    if label_set == "imagenet" and num_classes == 1000:
        from edgeres.data.imagenet import imagenet_labels

        return list(imagenet_labels())
    return None


def _from_zoo(name: str, weights: str | None, load: bool = True) -> ResolvedModel:
    entry = get_entry(name)
    pretrained: bool | str | None = weights or (True if entry.default_weights else None)
    if not load:
        pretrained = None
    module = create_model(name, pretrained=pretrained)
    desc = weights or entry.default_weights or "random init (no shipped weights)"
    return ResolvedModel(
        name,
        module,
        entry.img_size,
        entry.in_chans,
        entry.num_classes,
        entry.preprocess,
        labels_for(entry.labels, entry.num_classes),
        entry.labels,
        desc,
    )


def _state_signature(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _from_checkpoint(path: Path) -> ResolvedModel:
    obj = load_torch_file(path, "checkpoint",
                          "save the weights with torch.save(model.state_dict(), path)")
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint '{path}' holds a {type(obj).__name__}, not a state_dict; "
                        "save it with torch.save(model.state_dict(), path)")
    name = obj.get("model") if isinstance(obj.get("model"), str) else None
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise UserError(f"checkpoint '{path}': 'state_dict' is a {type(state).__name__}, not a "
                        "dict of tensors; save {'model': '<zoo name>', 'state_dict': "
                        "model.state_dict()}")
    if name is None:  # find the zoo model whose parameters have exactly these names and shapes
        sig = _state_signature(state)
        for candidate in list_models():
            entry = get_entry(candidate)
            ref = entry.factory(
                num_classes=entry.num_classes, in_chans=entry.in_chans, img_size=entry.img_size
            )
            if _state_signature(ref.state_dict()) == sig:
                name = candidate
                break
    if name is None:
        raise UserError(
            f"checkpoint '{path}' matches no zoo model; save it as "
            "{'model': '<zoo name>', 'state_dict': ...} or pass a module:factory"
        )
    resolved = _from_zoo(name, str(path))
    return resolved


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _positive_int(value: object, key: str, spec: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"'{spec}': edgeres_meta['{key}'] must be a positive integer, got "
                        f"{value!r}")
    return value


def _meta_img_size(value: object, spec: str) -> int:
    """An int, or an (H, W) pair: inputs are square, so H == W."""
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise UserError(f"'{spec}': edgeres_meta['img_size'] must be a positive integer or "
                            f"an [H, W] pair, got {value!r}")
        h, w = (_positive_int(v, "img_size", spec) for v in value)
        if h != w:
            raise UserError(f"'{spec}': edgeres_meta['img_size'] is {h}x{w}; edgeres takes "
                            "square inputs: give one size")
        return h
    return _positive_int(value, "img_size", spec)


def _meta_preprocess(value: object, chans: int, spec: str) -> Preprocess:
    key = f"'{spec}': edgeres_meta['preprocess']"
    if not isinstance(value, Mapping):
        raise UserError(f"{key} must be a dict with 'mean' and 'std' lists, got {value!r}")
    for field in ("mean", "std"):
        v = value.get(field)
        if not isinstance(v, list | tuple) or len(v) != chans or not all(
                isinstance(x, int | float) and not isinstance(x, bool) for x in v):
            raise UserError(f"{key}['{field}'] must be a list of {chans} numbers (one per input "
                            f"channel, in_chans={chans}), got {v!r}")
    if any(x <= 0 for x in value["std"]):
        raise UserError(f"{key}['std'] must be positive, got {list(value['std'])}")
    unknown = sorted(set(value) - {"mean", "std", "resize", "crop"})
    if unknown:
        raise UserError(f"{key} has unknown keys {unknown} (allowed: mean, std, resize, crop)")
    for field in ("resize", "crop"):
        if value.get(field) is not None:
            _positive_int(value[field], f"preprocess']['{field}", spec)
    return Preprocess.from_json(dict(value))


def _meta_labels(value: object, classes: int, spec: str) -> tuple[str | None, list | None]:
    """(label set name, explicit label list); either may be None."""
    if value is None:
        return None, None
    if isinstance(value, str):
        if value not in LABEL_SETS:  # "cifar" would otherwise silently become no labels
            raise UserError(f"'{spec}': edgeres_meta['labels'] is {value!r}, not a known label "
                            f"set ({', '.join(LABEL_SETS)}): use one of those or give a list "
                            "of class names")
        return value, None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        if len(value) != classes:
            raise UserError(f"'{spec}': edgeres_meta['labels'] has {len(value)} names but the "
                            f"model has {classes} classes: give one name per class")
        return None, list(value)
    raise UserError(f"'{spec}': edgeres_meta['labels'] must be 'imagenet', 'fmnist' or a list "
                    f"of class names, got {value!r}")


def _call_factory(spec: str) -> nn.Module:
    """Import ``module`` and call ``factory()``; any failure is a UserError naming the spec."""
    mod_name, _, fn_name = spec.partition(":")
    try:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserError(f"cannot import '{mod_name}' for '{spec}': {exc}") from exc
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code: a syntax error, a raise
        raise UserError(f"cannot import '{mod_name}' for '{spec}' ({_one_line(exc)}): fix the "
                        "module") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise UserError(f"'{fn_name}' is not a callable in module '{mod_name}'")
    try:
        required = [p.name for p in inspect.signature(factory).parameters.values()
                    if p.default is p.empty
                    and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        required = []
    if required:
        raise UserError(f"'{spec}' takes required arguments ({', '.join(required)}); edgeres "
                        "calls the factory with no arguments: give them defaults or wrap it")
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - user code (sys.exit too)
        raise UserError(f"'{spec}' failed ({_one_line(exc)}): fix the factory, or make it "
                        "callable with no arguments") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _dry_run(model: nn.Module, spec: str, chans: int, img: int) -> torch.Tensor | None:
    """One forward pass of zeros, so an input the model cannot take is one line here rather
    than a long torch.fx trace at capture. Returns the output (None if not a tensor)."""
    shape = (1, chans, img, img)
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - user code
        raise UserError(f"'{spec}' failed on an input of shape {shape} ({_one_line(exc)}): set "
                        "edgeres_meta 'img_size' and 'in_chans' to the input the model "
                        "takes") from exc
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple) and out and all(isinstance(t, torch.Tensor) for t in out):
        return out[0]  # capture takes a tuple of tensors too; the first is the logits
    raise UserError(f"'{spec}' returned a {type(out).__name__} from forward; the model must "
                    "return a tensor of logits (or a tuple of tensors, logits first)")


def _read_meta(model: nn.Module, spec: str) -> object:
    """``model.edgeres_meta``: a property that raises is user code, so one line, not a trace."""
    try:
        return getattr(model, "edgeres_meta", None)
    except Exception as exc:  # noqa: BLE001 - user code
        raise UserError(f"'{spec}': reading edgeres_meta failed ({_one_line(exc)}): make it a "
                        "plain dict attribute") from exc


def _from_factory(spec: str) -> ResolvedModel:
    model = _call_factory(spec).eval()
    bad = first_non_finite(dict(model.named_parameters()))
    if bad:
        raise UserError(f"'{spec}': the model's {bad} holds NaN or Inf values; fix the "
                        "weights the factory loads")
    meta = _read_meta(model, spec) or {}
    if not isinstance(meta, Mapping):
        raise UserError(f"'{spec}': edgeres_meta must be a dict, got {type(meta).__name__}")
    unknown = sorted(set(meta) - {"img_size", "in_chans", "num_classes", "preprocess", "labels"})
    if unknown:
        raise UserError(f"'{spec}': unknown edgeres_meta keys {unknown} (allowed: img_size, "
                        "in_chans, num_classes, preprocess, labels)")
    img = _meta_img_size(meta.get("img_size", 224), spec)
    chans = _positive_int(meta.get("in_chans", 3), "in_chans", spec)
    if "preprocess" in meta:
        pre = _meta_preprocess(meta["preprocess"], chans, spec)
    elif chans != 3:
        raise UserError(f"'{spec}': the model has {chans} input channels, so it needs "
                        f"edgeres_meta['preprocess'] = {{'mean': [...], 'std': [...]}} with "
                        f"{chans} means and {chans} stds (the default is ImageNet's 3)")
    else:
        pre = IMAGENET
    out = _dry_run(model, spec, chans, img)
    outputs = int(out.shape[-1]) if out.dim() == 2 else None
    if "num_classes" in meta:
        classes = _positive_int(meta["num_classes"], "num_classes", spec)
        if outputs is not None and outputs != classes:
            raise UserError(f"'{spec}': edgeres_meta['num_classes'] is {classes} but the model "
                            f"outputs {outputs} values: make them agree")
    else:
        classes = outputs or 1000
    label_set, labels = _meta_labels(meta.get("labels"), classes, spec)
    return ResolvedModel(
        spec.partition(":")[2],
        model,
        img,
        chans,
        classes,
        pre,
        labels or labels_for(label_set, classes),
        label_set,
        spec,
    )


def _no_weights(spec: str, weights: str | None, what: str) -> None:
    """A checkpoint or factory brings its own weights: --weights would be silently ignored
    (and recorded as if used), so refuse it."""
    if weights is not None:
        raise UserError(f"--weights {weights}: model '{spec}' is a {what}, which brings its own "
                        "weights; drop --weights, or name a zoo model")


def resolve_model(spec: str, weights: str | None = None, load: bool = True) -> ResolvedModel:
    """A zoo name, a checkpoint path (.pth/.pt) or ``package.module:factory``.

    ``load=False`` skips zoo weights (for structure-only work such as ``edgeres explain``).
    """
    if not spec.strip():
        raise UserError("the model is empty: give a zoo name (see `edgeres zoo`), a checkpoint "
                        "(.pt/.pth) or module:factory")
    path = Path(spec)
    if weights is not None and not weights.strip():
        raise UserError("--weights is empty: give a weights name or a checkpoint path, or "
                        "leave the option out")
    if spec in list_models():
        return _from_zoo(spec, weights, load)
    if path.is_dir():
        raise UserError(f"model '{spec}' is a directory; a checkpoint file (.pt/.pth, written "
                        "by torch.save) is expected, or a zoo name or module:factory")
    if path.suffix in (".pth", ".pt") or path.is_file():
        if not path.is_file():
            raise UserError(f"checkpoint '{spec}' does not exist")
        _no_weights(spec, weights, "checkpoint")
        return _from_checkpoint(path)
    if re.fullmatch(r"[\w.]+:\w+", spec):
        _no_weights(spec, weights, "module:factory")
        return _from_factory(spec)
    return _from_zoo(spec, weights)  # raises the "unknown model" error with the list


def parse_bits(text: str) -> tuple[int, int]:
    """``w8a8`` -> (8, 8); ``w4a8`` -> (4, 8)."""
    m = re.fullmatch(r"w(\d+)a(\d+)", text.strip().lower())
    if not m:
        raise UserError(f"--bits must look like w8a8 or w4a8, got '{text}'")
    w, a = int(m.group(1)), int(m.group(2))
    if not 2 <= w <= 8 or a not in (8, 16):
        raise UserError(
            f"--bits '{text}': weights take 2 to 8 bits and activations 8 or 16 (w4a8, w8a16)"
        )
    return w, a
