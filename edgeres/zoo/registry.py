"""Model registry: ``create_model(name, ...)`` over entries filled by ``@register_model``."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    """What the zoo knows about a model: how to build it and what it expects."""

    name: str
    factory: Callable[..., nn.Module]
    img_size: int
    in_chans: int
    num_classes: int
    preprocess: Preprocess
    labels: str  # "imagenet" | "fmnist"
    weights: dict[str, Callable[[], Path]] = field(default_factory=dict)
    default_weights: str | None = None
    paper_params: int | None = None
    description: str = ""


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model '{entry.name}' registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UserError(
            f"unknown model '{name}'. Known models: {', '.join(list_models())} "
            "(run `edgeres zoo`), or pass a checkpoint path or module:factory."
        )
    return _REGISTRY[name]


_CHECKPOINT_HINT = "save it with torch.save(model.state_dict(), path)"


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _torch_load_reason(path: Path, exc: Exception) -> str:
    """Why ``torch.load`` refused a file, in a few words (torch's own message runs to a dozen
    lines of pickling advice, or is a bare key such as ``101`` for a text file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if not head:
        return "the file is empty"
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save: a zip, or a legacy pickle
        return "neither a zip archive nor a pickle"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not any(
        noise in ln for noise in ("weights_only", "Weights only", "Check the documentation"))]
    return _short(useful[0] if useful else f"{type(exc).__name__}: {lines[0] if lines else ''}")


def load_torch_file(path: object, what: str, hint: str = _CHECKPOINT_HINT) -> object:
    """``torch.load`` of tensors only, with a one-line UserError naming ``what`` (e.g.
    "weights", "checkpoint") and the file, for a file that is missing, a directory, not a
    torch.save file, or one that pickles Python objects."""
    p = Path(str(path))
    if p.is_dir():
        raise UserError(f"{what} '{path}' is a directory; a checkpoint file (torch.save) is "
                        f"expected: {hint}")
    if not p.is_file():
        raise UserError(f"{what} '{path}' does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        glob = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if glob:
            raise UserError(f"cannot read {what} '{path}': it pickles Python objects, not only "
                            f"tensors (first: {_short(glob.group(1))}); {hint}") from exc
        raise UserError(f"cannot read {what} '{path}': not a torch checkpoint (torch.save "
                        f"file): {_torch_load_reason(p, exc)}; {hint}") from exc


def _first(keys: list[str], n: int = 3) -> str:
    more = ", ..." if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def state_mismatch(model: nn.Module, state: Mapping) -> str | None:
    """Why ``state`` does not fit ``model``, capped to counts and the first few keys (torch's
    own message lists every key: kilobytes on one line); None when it fits."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) if hasattr(v, "shape") else None for k, v in state.items()}
    missing = [k for k in want if k not in have]
    unexpected = [str(k) for k in have if k not in want]
    shapes = [f"{k}: file {list(have[k]) if have[k] is not None else 'no tensor'} vs model "
              f"{list(want[k])}" for k in want if k in have and have[k] != want[k]]
    parts = [f"{len(keys)} {what} ({_first(keys)})" for what, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected),
        ("shape mismatches", shapes)) if keys]
    return "; ".join(parts) or None


def first_non_finite(state: Mapping) -> str | None:
    """The first float tensor key holding NaN/Inf: such weights otherwise pass loading and
    fail much later, deep in calibration, as a traceback about an activation."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            return str(key)
    return None


def _load_state(model: nn.Module, path: Path, name: str) -> None:
    state = load_torch_file(path, "weights")
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise UserError(f"weights '{path}' hold a {type(state).__name__}, not a state_dict "
                        f"(a dict of tensors); {_CHECKPOINT_HINT}")
    why = state_mismatch(model, state)
    if why:
        raise UserError(f"weights '{path}' do not fit model '{name}': {why}; pass weights "
                        "saved from this architecture")
    bad = first_non_finite(state)
    if bad:
        raise UserError(f"weights '{path}': '{bad}' holds NaN or Inf values (the training "
                        "diverged, or the file is damaged); pass finite weights")
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        first = " ".join(str(exc).split())
        raise UserError(f"weights '{path}' do not fit model '{name}': {_short(first, 200)}"
                        ) from exc


def create_model(
    name: str,
    pretrained: bool | str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    img_size: int | None = None,
) -> nn.Module:
    """Build a zoo model in eval mode.

    ``pretrained``: None/False (random init), True (the model's default shipped weights), a
    weights name (e.g. ``"imagenet"``) or a path to a state_dict.

    >>> m = create_model("mobilenet_v2_100")
    >>> sum(p.numel() for p in m.parameters())
    3504872
    """
    entry = get_entry(name)
    model = entry.factory(
        num_classes=num_classes or entry.num_classes,
        in_chans=in_chans or entry.in_chans,
        img_size=img_size or entry.img_size,
    )
    if pretrained is True:
        if entry.default_weights is None:
            raise UserError(f"model '{name}' has no shipped weights; pass a checkpoint path")
        pretrained = entry.default_weights
    if isinstance(pretrained, str) and pretrained in entry.weights:
        _load_state(model, entry.weights[pretrained](), name)
    elif pretrained:
        path = Path(pretrained)
        if path.is_dir():
            raise UserError(f"weights '{pretrained}' is a directory; a checkpoint file is "
                            f"expected ({_CHECKPOINT_HINT}), or a weights name of '{name}' "
                            f"(known: {', '.join(entry.weights) or 'none'})")
        if not path.is_file():
            known = ", ".join(entry.weights) or "none"
            raise UserError(
                f"'{pretrained}' is neither a weights name of '{name}' (known: {known}) "
                "nor an existing file"
            )
        _load_state(model, path, name)
    model.eval()
    return model
