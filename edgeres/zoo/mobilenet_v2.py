"""MobileNetV2 (Sandler et al. 2018) at any width, plus a generic inverted-residual builder.

The ImageNet configuration is exactly the paper's (t, c, n, s) table; other networks are
described by the same kind of plain table (see :class:`IRNetConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from edgeres.zoo.blocks import ConvBNAct, InvertedResidual, make_divisible

# (expansion t, output channels c, repeats n, first stride s) from the paper, Table 2.
MOBILENET_V2_TABLE: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class IRNetConfig:
    """A network of inverted residual blocks described by a plain table.

    Example: ``IRNetConfig(table=((1, 16, 1, 1), (6, 24, 2, 2)), stem_channels=16)`` builds a
    stem, two stages and a classifier head.
    """

    table: tuple[tuple[float, int, int, int], ...] = MOBILENET_V2_TABLE
    width: float = 1.0
    stem_channels: int = 32
    stem_stride: int = 2
    head_channels: int = 1280
    in_chans: int = 3
    num_classes: int = 1000
    dropout: float = 0.2
    round_nearest: int = 8
    extra: dict = field(default_factory=dict, compare=False)


class MobileNetV2(nn.Module):
    """MobileNetV2 with the torchvision state_dict layout (``features.N.conv.M``)."""

    def __init__(self, cfg: IRNetConfig = IRNetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        rn = cfg.round_nearest
        in_chs = make_divisible(cfg.stem_channels * cfg.width, rn)
        # The head only widens above width 1.0 (paper, Section 5.1).
        self.last_channel = make_divisible(cfg.head_channels * max(1.0, cfg.width), rn)
        features: list[nn.Module] = [ConvBNAct(cfg.in_chans, in_chs, 3, cfg.stem_stride)]
        for t, c, n, s in cfg.table:
            out_chs = make_divisible(c * cfg.width, rn)
            for i in range(n):
                features.append(InvertedResidual(in_chs, out_chs, s if i == 0 else 1, t))
                in_chs = out_chs
        features.append(ConvBNAct(in_chs, self.last_channel, 1))
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Dropout(cfg.dropout), nn.Linear(self.last_channel, cfg.num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.pool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
