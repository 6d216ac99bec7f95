"""EMO (Zhang et al., ICCV 2023): inverted Residual Mobile Blocks with windowed attention.

Follows the official code (github.com/zhangzjn/EMO, ``model/emo.py``) module for module, with
its state_dict names, so an official checkpoint loads through
:func:`convert_official_state_dict`. Differences, all for deployment:

* attention is lowered to rank-4 tensors with static shapes (:mod:`edgeres.zoo.emo_attention`);
  the window tiling is fixed at construction from ``img_size``;
* the Q/K 1x1 conv C -> 2C is held as two C -> C convs (``q``, ``k``): same numbers;
* a map smaller than the window gets one global window of its own size (the official code
  zero-pads it to 7x7 and lets the pad tokens into the softmax); a larger map the window does
  not divide is rejected instead of padded;
* the stem iRMB's squeeze-excite (official ``se_ratio=1``, 1,200 parameters at stem 24) is
  off unless ``stem_se=True``: it needs a sigmoid gate and a broadcast multiply that not every
  target runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgeres.data.preprocess import IMAGENET
from edgeres.zoo.emo_attention import WindowAttention, WindowGeometry, WindowGeometryError
from edgeres.zoo.models import FMNIST, shipped
from edgeres.zoo.registry import ModelEntry, register_model

__all__ = [
    "EMO", "EMOConfig", "EMO_1M", "EMO_2M", "EMO_5M", "EMO_1M_FMNIST", "DropPath",
    "LayerNorm2d", "WindowGeometryError", "convert_official_state_dict", "iRMB",
]

NORM_EPS = 1e-6  # the official get_norm() uses eps 1e-6 for BatchNorm and LayerNorm alike


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels (dim 1) of an NCHW map; capture keeps it as one op."""

    def __init__(self, channels: int, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        y = F.layer_norm(x.permute(0, 2, 3, 1), (self.channels,), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


_ACTS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU, "none": nn.Identity}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels, eps=NORM_EPS)
    if kind == "ln":
        return LayerNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"EMO norm must be 'bn', 'ln' or 'none', got {kind!r}")


class ConvNormAct(nn.Module):
    """Conv2d -> norm -> activation with the official names (``conv``, ``norm``, ``act``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 bias: bool = False, norm: str = "none", act: str = "none") -> None:
        super().__init__()
        padding = -(-(kernel - stride) // 2)  # the official ceil((k - s) / 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=bias)
        self.norm = _norm(norm, c_out)
        self.act = _ACTS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite (``conv_reduce``/``conv_expand``), used only by the stem iRMB."""

    def __init__(self, channels: int, reduced: int, act: str) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = _ACTS[act]()
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * self.gate(s)


@dataclass(frozen=True)
class BlockSpec:
    """One iRMB, fully resolved (what the official constructor arguments amount to)."""

    c_in: int
    c_out: int
    exp_ratio: float
    stride: int
    res: int  # input resolution (square)
    norm: str  # "bn" | "ln" | "none"
    act: str
    dw_kernel: int
    skip: bool
    v_proj: bool = True
    attention: WindowGeometry | None = None
    dim_head: int = 0
    se: bool = False
    drop_path: float = 0.0


class iRMB(nn.Module):  # noqa: N801 - the paper's and the official code's name
    """Inverted Residual Mobile Block: norm -> [window attention] -> V expansion -> DW conv -> 1x1.

    Skip blocks add the DW conv's output to its input, and the block output to the block input.
    """

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        self.spec = spec
        mid = int(spec.c_in * spec.exp_ratio)
        self.has_skip = spec.skip and spec.c_in == spec.c_out and spec.stride == 1
        self.norm = _norm(spec.norm, spec.c_in)
        self.attn = (WindowAttention(spec.c_in, spec.dim_head, spec.attention)
                     if spec.attention is not None else nn.Identity())
        self.v = (ConvNormAct(spec.c_in, mid, 1, bias=True, act=spec.act) if spec.v_proj
                  else nn.Identity())
        # The official code hard-codes BN + SiLU after the depthwise conv in every stage.
        self.conv_local = ConvNormAct(mid, mid, spec.dw_kernel, spec.stride, groups=mid,
                                      norm="bn", act="silu")
        self.se = SqueezeExcite(mid, mid, spec.act) if spec.se else nn.Identity()
        self.proj_drop = nn.Dropout(0.0)
        self.proj = ConvNormAct(mid, spec.c_out, 1)
        self.drop_path = DropPath(spec.drop_path) if spec.drop_path else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.v(self.attn(self.norm(x)))
        local = self.se(self.conv_local(x))
        x = x + local if self.has_skip else local
        x = self.proj(self.proj_drop(x))
        if self.has_skip:
            return shortcut + self.drop_path(x)
        return x


class MSPatchEmb(nn.Module):
    """The official stem (one dilation): conv with bias -> BN, no activation."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        padding = -(-(kernel - stride) // 2)
        self.convs = nn.ModuleList([nn.Sequential(
            nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.BatchNorm2d(c_out, eps=NORM_EPS),
            nn.Identity(),
        )])

    def forward(self, x: Tensor) -> Tensor:
        return self.convs[0](x)


@dataclass(frozen=True)
class EMOConfig:
    """An EMO network as the paper's per-stage table (4 stages).

    ``strides`` are the first blocks' strides (the paper: all 2); ``stem_stride`` 2 as in the
    paper. Both exist so small inputs (28x28) keep maps large enough for attention.
    """

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    exp_ratios: tuple[float, ...]
    dim_heads: tuple[int, ...]
    dw_kernels: tuple[int, ...] = (3, 3, 5, 5)
    norms: tuple[str, ...] = ("bn", "bn", "ln", "ln")
    acts: tuple[str, ...] = ("silu", "silu", "gelu", "gelu")
    attention: tuple[bool, ...] = (False, False, True, True)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    stem_dim: int = 24
    stem_stride: int = 2
    stem_se: bool = False
    window: int = 7
    drop_path: float = 0.0
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000

    def __post_init__(self) -> None:
        per_stage = ("depths", "dims", "exp_ratios", "dim_heads", "dw_kernels", "norms", "acts",
                     "attention", "strides")
        bad = [f for f in per_stage if len(getattr(self, f)) != 4]
        if bad:
            raise ValueError(f"EMOConfig: {', '.join(bad)} must give one value per stage (4)")

    def blocks(self) -> list[list[BlockSpec]]:
        """Resolve the table into per-stage block specs, with resolutions and window tiling."""
        n_blocks = sum(self.depths)
        rates = [self.drop_path * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        res = -(-self.img_size // self.stem_stride)
        stages: list[list[BlockSpec]] = []
        c_in, idx = self.stem_dim, 0
        for s, depth in enumerate(self.depths):
            blocks: list[BlockSpec] = []
            for j in range(depth):
                first = j == 0
                stride = self.strides[s] if first else 1
                attn = None
                if self.attention[s] and not first:
                    attn = WindowGeometry.plan(res, self.window, self.img_size,
                                               f"stage {s + 1} block {j}")
                blocks.append(BlockSpec(
                    c_in, self.dims[s], self.exp_ratios[s] * (2 if first else 1), stride, res,
                    self.norms[s], self.acts[s], self.dw_kernels[s], skip=not first,
                    attention=attn, dim_head=self.dim_heads[s], drop_path=rates[idx],
                ))
                res, c_in, idx = -(-res // stride), self.dims[s], idx + 1
            stages.append(blocks)
        return stages


class EMO(nn.Module):
    """EMO classifier: stem (MSPatchEmb + iRMB) -> 4 iRMB stages -> LayerNorm -> mean -> Linear."""

    def __init__(self, cfg: EMOConfig) -> None:
        super().__init__()
        self.cfg = cfg
        stem = BlockSpec(cfg.stem_dim, cfg.stem_dim, 1.0, 1, -(-cfg.img_size // cfg.stem_stride),
                         "none", cfg.acts[0], cfg.dw_kernels[0], skip=False, v_proj=False,
                         se=cfg.stem_se)
        self.stage0 = nn.ModuleList([
            MSPatchEmb(cfg.in_chans, cfg.stem_dim, cfg.dw_kernels[0], cfg.stem_stride), iRMB(stem),
        ])
        stages = cfg.blocks()
        self.stage1 = nn.ModuleList(iRMB(b) for b in stages[0])
        self.stage2 = nn.ModuleList(iRMB(b) for b in stages[1])
        self.stage3 = nn.ModuleList(iRMB(b) for b in stages[2])
        self.stage4 = nn.ModuleList(iRMB(b) for b in stages[3])
        self.norm = _norm(cfg.norms[-1], cfg.dims[-1])
        self.head = nn.Linear(cfg.dims[-1], cfg.num_classes)
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        for stage in (self.stage0, self.stage1, self.stage2, self.stage3, self.stage4):
            for blk in stage:
                x = blk(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.norm(self.forward_features(x))
        return self.head(x.mean((2, 3)))


def _init_weights(m: nn.Module) -> None:
    """The official init: truncated normal (std 0.02) for Linear, ones/zeros for norms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.BatchNorm2d, LayerNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def convert_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official EMO checkpoint keys -> this module's: split ``qk`` into ``attn.q``/``attn.k``
    and flatten LayerNorm2d's inner ``norm.norm.*``. Everything else has the same names.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if ".qk.conv." in key:
            prefix, leaf = key.split(".qk.conv.")
            q, k = value.chunk(2, dim=0)
            out[f"{prefix}.attn.q.{leaf}"], out[f"{prefix}.attn.k.{leaf}"] = q, k
        elif key.endswith((".norm.norm.weight", ".norm.norm.bias")) or key.startswith("norm.norm."):
            out[key.replace("norm.norm.", "norm.", 1)] = value
        else:
            out[key] = value
    return out


EMO_1M = EMOConfig((2, 2, 8, 3), (32, 48, 80, 168), (2.0, 2.5, 3.0, 3.5), (16, 16, 20, 21),
                   drop_path=0.04036)
EMO_2M = EMOConfig((3, 3, 9, 3), (32, 48, 120, 200), (2.0, 2.5, 3.0, 3.5), (16, 16, 20, 20),
                   drop_path=0.05)
EMO_5M = EMOConfig((3, 3, 9, 3), (48, 72, 160, 288), (2.0, 3.0, 4.0, 4.0), (24, 24, 32, 32),
                   drop_path=0.05)
# Fashion-MNIST: EMO-1M's table (expansions, dim_head, kernels, norms, activations) at half
# width and with stages 3-4 shortened (8, 3 -> 4, 2), on 28x28 grey input. Stages 1 and 3 keep
# their input resolution, so the maps go 28 -> 14 (stem) -> 14 -> 7 -> 7 -> 4: attention sees one
# global 7x7 window in stage 3 (3 blocks) and a 4x4 one in stage 4 (1 block). This keeps training
# near 2.3 ms per sample on one idle CPU core; full width and depth cost ~4x more.
EMO_1M_FMNIST = replace(EMO_1M, depths=(2, 2, 4, 2), dims=(16, 24, 40, 84), stem_dim=16,
                        stem_stride=2, strides=(1, 2, 1, 2), drop_path=0.0, img_size=28,
                        in_chans=1, num_classes=10)


def _factory(cfg: EMOConfig):
    def factory(num_classes: int, in_chans: int, img_size: int) -> EMO:
        return EMO(replace(cfg, num_classes=num_classes, in_chans=in_chans, img_size=img_size))

    return factory


# paper_params: the official models' counts as logged by the authors (fvcore, 1.361M / 2.377M /
# 5.109M; the paper rounds them down to 1.3M / 2.3M / 5.1M). Here they are 1,200 lower unless
# ``stem_se=True`` (see the module docstring).
for _name, _cfg, _params in (("emo_1m", EMO_1M, 1_361_000), ("emo_2m", EMO_2M, 2_377_000),
                             ("emo_5m", EMO_5M, 5_109_000)):
    register_model(ModelEntry(
        _name, _factory(_cfg), 224, 3, 1000, IMAGENET, "imagenet", paper_params=_params,
        description=f"EMO-{_name[4:].upper()} (ICCV 2023), ImageNet-1k layout (random init)",
    ))
register_model(ModelEntry(
    "emo_1m_fmnist", _factory(EMO_1M_FMNIST), 28, 1, 10, FMNIST, "fmnist",
    weights={"fmnist": lambda: shipped("emo_1m_fmnist.pth")}, default_weights="fmnist",
    description="EMO-1M-style (half width, depths 2-2-4-2) for 28x28 grey Fashion-MNIST",
))
