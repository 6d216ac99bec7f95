"""Turn what a user names (zoo name, checkpoint, ``module:factory``) into a model + metadata."""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeres.data.fmnist import FMNIST_LABELS
from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.errors import UserError
from edgeres.zoo import create_model, get_entry, list_models


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


def load_torch_file(path: object, what: str, hint: str) -> object:
    """``torch.load`` of tensors only, with a one-line UserError for a file that is not one
    (torch's own message runs to a dozen lines of pickling advice)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise UserError(f"{what} '{path}' does not exist") from exc
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        detail = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = detail[-2] if len(detail) > 1 and "weights_only" in detail[0] else (
            detail[0] if detail else type(exc).__name__)
        raise UserError(f"cannot read {what} '{path}' as tensors saved by torch.save "
                        f"({reason}); {hint}") from exc


def _state_signature(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def _from_checkpoint(path: Path) -> ResolvedModel:
    obj = load_torch_file(path, "checkpoint",
                          "save the weights with torch.save(model.state_dict(), path)")
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint '{path}' holds no state_dict")
    name = obj.get("model") if isinstance(obj.get("model"), str) else None
    state = obj.get("state_dict", obj)
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


def _from_factory(spec: str) -> ResolvedModel:
    mod_name, _, fn_name = spec.partition(":")
    try:
        sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserError(f"cannot import '{mod_name}' for '{spec}': {exc}") from exc
    finally:
        sys.path.pop(0)
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        raise UserError(f"'{fn_name}' is not a callable in module '{mod_name}'")
    model = factory()
    if not isinstance(model, nn.Module):
        raise UserError(f"'{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    meta = getattr(model, "edgeres_meta", {}) or {}
    img = int(meta.get("img_size", 224))
    chans = int(meta.get("in_chans", 3))
    pre = Preprocess.from_json(meta["preprocess"]) if "preprocess" in meta else IMAGENET
    classes = int(meta.get("num_classes", 1000))
    label_set = meta.get("labels") if isinstance(meta.get("labels"), str) else None
    labels = meta.get("labels") if isinstance(meta.get("labels"), list) else None
    return ResolvedModel(
        fn_name,
        model.eval(),
        img,
        chans,
        classes,
        pre,
        labels or labels_for(label_set, classes),
        label_set,
        spec,
    )


def resolve_model(spec: str, weights: str | None = None, load: bool = True) -> ResolvedModel:
    """A zoo name, a checkpoint path (.pth/.pt) or ``package.module:factory``.

    ``load=False`` skips zoo weights (for structure-only work such as ``edgeres explain``).
    """
    path = Path(spec)
    if spec in list_models():
        return _from_zoo(spec, weights, load)
    if path.suffix in (".pth", ".pt") or path.is_file():
        if not path.is_file():
            raise UserError(f"checkpoint '{spec}' does not exist")
        return _from_checkpoint(path)
    if re.fullmatch(r"[\w.]+:\w+", spec):
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
