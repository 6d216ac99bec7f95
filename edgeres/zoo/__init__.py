"""The model zoo: ``create_model(name, pretrained=...)`` over a registry."""

from edgeres.zoo import emo as _emo  # noqa: F401  (registers the EMO family)
from edgeres.zoo import models as _models  # noqa: F401  (registers the MobileNetV2 family)
from edgeres.zoo.registry import ModelEntry, create_model, get_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_entry", "list_models", "register_model"]
