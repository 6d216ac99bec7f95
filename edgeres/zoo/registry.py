"""Model registry: ``create_model(name, ...)`` over entries filled by ``@register_model``."""

from __future__ import annotations

from collections.abc import Callable
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


def _load_state(model: nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a user error here
        raise UserError(f"cannot read weights '{path}': {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise UserError(f"weights '{path}' do not fit the model: {' '.join(first)}") from exc


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
        _load_state(model, entry.weights[pretrained]())
    elif pretrained:
        path = Path(pretrained)
        if not path.is_file():
            known = ", ".join(entry.weights) or "none"
            raise UserError(
                f"'{pretrained}' is neither a weights name of '{name}' (known: {known}) "
                "nor an existing file"
            )
        _load_state(model, path)
    model.eval()
    return model
