"""Preprocessing as data, so a bundle can record exactly how to feed its model.

Pipeline (fixed field names, see the bundle manifest): pixels scaled to [0, 1]; for
ImageNet-style models ``resize`` (shorter side, bilinear) then ``crop`` (centre); then
``(x - mean) / std`` per channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edgeres.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """How raw pixels become the model's float input (NCHW, float32)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    crop: int | None = None

    def to_json(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        return cls(tuple(d["mean"]), tuple(d["std"]), d.get("resize"), d.get("crop"))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` on an NCHW batch already scaled to [0, 1]."""
        c = x01.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise UserError(
                f"preprocessing has {len(self.mean)} channel means and {len(self.std)} stds "
                f"(mean={list(self.mean)}) but the input has {c} channels: give one mean and "
                "one std per input channel (a factory model: edgeres_meta['preprocess'])"
            )
        mean = torch.tensor(self.mean, dtype=x01.dtype).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x01.dtype).view(1, c, 1, 1)
        return (x01 - mean) / std

    def resize_crop(self, x01: torch.Tensor) -> torch.Tensor:
        """Shorter side to ``resize`` (bilinear), then a centre ``crop`` square."""
        if self.resize is not None:
            h, w = x01.shape[-2:]
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            x01 = F.interpolate(
                x01, size=size, mode="bilinear", align_corners=False, antialias=True
            )
        if self.crop is not None:
            h, w = x01.shape[-2:]
            if h < self.crop or w < self.crop:
                raise UserError(f"image {h}x{w} is smaller than the {self.crop} px centre "
                                f"crop of the model's preprocessing: use larger images")
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            x01 = x01[..., top : top + self.crop, left : left + self.crop]
        return x01

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 HWC/NHWC or float [0,1] NCHW images -> the model's normalised NCHW float input."""
        x = torch.as_tensor(np.array(images)) if isinstance(images, np.ndarray) else images
        if x.dtype == torch.uint8:
            if x.dim() == 3:
                x = x.unsqueeze(0)
            x = x.permute(0, 3, 1, 2).double() / 255.0
        # resized in float64 for the same bits on every CPU (see edgeres.graph.ir.STATS_DTYPE)
        x = self.resize_crop(x.double()).float()
        return self.normalize(x)


IMAGENET = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=256, crop=224)
