"""The official EMO (github.com/zhangzjn/EMO, model/emo.py), transcribed for tests only.

Same module tree and state_dict names as the official code, with einops replaced by plain
torch reshapes/permutes: the window partition is the official rank-6 rearrange
``b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1`` and heads are split with a rank-5 one. It is the
oracle that edgeres's rank-4 EMO must match. Two knobs the official constructor lacks:
``stem_stride`` and ``strides`` (the first block's stride per stage), so the Fashion-MNIST
variant can be checked too. ``window_sizes`` follows the official meaning (<= 0: one global
window; otherwise pad to a multiple and attend inside dilated windows).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-6


class RefLayerNorm2d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def ref_norm(kind: str, dim: int) -> nn.Module:
    return {"bn_2d": lambda: nn.BatchNorm2d(dim, eps=EPS), "ln_2d": lambda: RefLayerNorm2d(dim),
            "none": nn.Identity}[kind]()


def ref_act(kind: str) -> nn.Module:
    return {"silu": nn.SiLU, "gelu": nn.GELU, "none": nn.Identity}[kind]()


class RefConvNormAct(nn.Module):
    def __init__(self, dim_in, dim_out, kernel_size, stride=1, groups=1, bias=False,
                 norm_layer="bn_2d", act_layer="relu"):
        super().__init__()
        padding = math.ceil((kernel_size - stride) / 2)
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size, stride, padding, 1, groups, bias)
        self.norm = ref_norm(norm_layer, dim_out)
        self.act = ref_act(act_layer)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class RefSE(nn.Module):
    """timm's SqueezeExcite(in_chs, rd_ratio=1, act_layer)."""

    def __init__(self, dim, act_layer):
        super().__init__()
        self.conv_reduce = nn.Conv2d(dim, dim, 1, bias=True)
        self.act1 = ref_act(act_layer)
        self.conv_expand = nn.Conv2d(dim, dim, 1, bias=True)

    def forward(self, x):
        s = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


def window_partition(x: Tensor, n1: int, n2: int) -> Tensor:
    """``b c (h1 n1) (w1 n2) -> (b n1 n2) c h1 w1`` via one rank-6 permute."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // n1, n1, w // n2, n2).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(b * n1 * n2, c, h // n1, w // n2)


def window_reverse(x: Tensor, n1: int, n2: int) -> Tensor:
    """``(b n1 n2) c h1 w1 -> b c (h1 n1) (w1 n2)``."""
    bn, c, h1, w1 = x.shape
    x = x.reshape(bn // (n1 * n2), n1, n2, c, h1, w1).permute(0, 3, 4, 1, 5, 2)
    return x.reshape(bn // (n1 * n2), c, h1 * n1, w1 * n2)


def ref_window_attention(x: Tensor, qk_conv: nn.Module, num_head: int, dim_head: int,
                         window_size: int, attn_drop: nn.Module | None = None) -> Tensor:
    """The official attn_pre=True path up to (excluding) the V projection."""
    _, c, h, w = x.shape
    ws_h, ws_w = (h, w) if window_size <= 0 else (window_size, window_size)
    pad_r, pad_b = (ws_w - w % ws_w) % ws_w, (ws_h - h % ws_h) % ws_h
    x = F.pad(x, (0, pad_r, 0, pad_b, 0, 0))
    n1, n2 = (h + pad_b) // ws_h, (w + pad_r) // ws_w
    x = window_partition(x, n1, n2)
    b, c, hh, ww = x.shape
    qk = qk_conv(x).reshape(b, 2, num_head, dim_head, hh * ww).permute(1, 0, 2, 4, 3)
    q, k = qk[0], qk[1]  # b heads (h w) dim_head
    attn = ((q @ k.transpose(-2, -1)) * dim_head ** -0.5).softmax(dim=-1)
    if attn_drop is not None:
        attn = attn_drop(attn)
    xv = x.reshape(b, num_head, dim_head, hh * ww).transpose(-2, -1)
    out = (attn @ xv).transpose(-2, -1).reshape(b, c, hh, ww)
    out = window_reverse(out, n1, n2)
    return out[:, :, :h, :w]


class RefIRMB(nn.Module):
    def __init__(self, dim_in, dim_out, norm_in=True, has_skip=True, exp_ratio=1.0,
                 norm_layer="bn_2d", act_layer="relu", v_proj=True, dw_ks=3, stride=1,
                 se_ratio=0.0, dim_head=64, window_size=7, attn_s=True):
        super().__init__()
        self.norm = ref_norm(norm_layer, dim_in) if norm_in else nn.Identity()
        dim_mid = int(dim_in * exp_ratio)
        self.has_skip = (dim_in == dim_out and stride == 1) and has_skip
        self.attn_s = attn_s
        if attn_s:
            self.dim_head, self.window_size = dim_head, window_size
            self.num_head = dim_in // dim_head
            self.qk = RefConvNormAct(dim_in, dim_in * 2, 1, bias=True, norm_layer="none",
                                     act_layer="none")
            self.v = RefConvNormAct(dim_in, dim_mid, 1, bias=True, norm_layer="none",
                                    act_layer=act_layer)
        else:
            self.v = (RefConvNormAct(dim_in, dim_mid, 1, bias=True, norm_layer="none",
                                     act_layer=act_layer) if v_proj else nn.Identity())
        self.conv_local = RefConvNormAct(dim_mid, dim_mid, dw_ks, stride, groups=dim_mid,
                                         norm_layer="bn_2d", act_layer="silu")
        self.se = RefSE(dim_mid, act_layer) if se_ratio > 0.0 else nn.Identity()
        self.proj = RefConvNormAct(dim_mid, dim_out, 1, norm_layer="none", act_layer="none")

    def forward(self, x):
        shortcut = x
        x = self.norm(x)
        if self.attn_s:
            x = ref_window_attention(x, self.qk, self.num_head, self.dim_head, self.window_size)
        x = self.v(x)
        x = x + self.se(self.conv_local(x)) if self.has_skip else self.se(self.conv_local(x))
        x = self.proj(x)
        return shortcut + x if self.has_skip else x


class RefMSPatchEmb(nn.Module):
    def __init__(self, dim_in, emb_dim, kernel_size, stride, norm_layer):
        super().__init__()
        padding = math.ceil(((kernel_size - 1) + 1 - stride) / 2)
        self.convs = nn.ModuleList([nn.Sequential(
            nn.Conv2d(dim_in, emb_dim, kernel_size, stride, padding, 1, groups=1),
            ref_norm(norm_layer, emb_dim), nn.Identity())])

    def forward(self, x):
        return self.convs[0](x)


class RefEMO(nn.Module):
    def __init__(self, dim_in=3, num_classes=1000, depths=(2, 2, 8, 3), stem_dim=24,
                 embed_dims=(32, 48, 80, 168), exp_ratios=(2.0, 2.5, 3.0, 3.5),
                 norm_layers=("bn_2d", "bn_2d", "ln_2d", "ln_2d"),
                 act_layers=("silu", "silu", "gelu", "gelu"), dw_kss=(3, 3, 5, 5),
                 dim_heads=(16, 16, 20, 21), window_sizes=(7, 7, 7, 7),
                 attn_ss=(False, False, True, True), stem_se=True, stem_stride=2,
                 strides=(2, 2, 2, 2)):
        super().__init__()
        self.stage0 = nn.ModuleList([
            RefMSPatchEmb(dim_in, stem_dim, dw_kss[0], stem_stride, norm_layers[0]),
            RefIRMB(stem_dim, stem_dim, norm_in=False, has_skip=False, exp_ratio=1,
                    norm_layer=norm_layers[0], act_layer=act_layers[0], v_proj=False,
                    dw_ks=dw_kss[0], stride=1, se_ratio=1.0 if stem_se else 0.0, attn_s=False),
        ])
        pre = stem_dim
        for i, depth in enumerate(depths):
            layers = []
            for j in range(depth):
                if j == 0:
                    stride, skip, attn, exp = strides[i], False, False, exp_ratios[i] * 2
                else:
                    stride, skip, attn, exp = 1, True, attn_ss[i], exp_ratios[i]
                layers.append(RefIRMB(
                    pre, embed_dims[i], norm_in=True, has_skip=skip, exp_ratio=exp,
                    norm_layer=norm_layers[i], act_layer=act_layers[i], dw_ks=dw_kss[i],
                    stride=stride, dim_head=dim_heads[i], window_size=window_sizes[i],
                    attn_s=attn))
                pre = embed_dims[i]
            setattr(self, f"stage{i + 1}", nn.ModuleList(layers))
        self.norm = ref_norm(norm_layers[-1], embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes)

    def forward(self, x):
        for stage in (self.stage0, self.stage1, self.stage2, self.stage3, self.stage4):
            for blk in stage:
                x = blk(x)
        return self.head(self.norm(x).mean((2, 3)))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic a non-trivial random value (eval-mode checks)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.dim() <= 1:
                centre = 1.0 if "weight" in name else 0.0
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2 + centre)
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(fan_in))
    return model
