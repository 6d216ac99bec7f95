"""Pixels in: fold the input normalization into the first convolutions.

A bundle normally takes ``(pixel / 255 - mean) / std`` per channel, so an app does float
arithmetic on every pixel before it can quantize the result back to int8, and that int8 grid
(ImageNet: a step of 0.0187 in normalized units) is coarser than the camera's own (0.0171 to
0.0175), so the model's first rounding throws pixel detail away. Folding the normalization
into the convolutions that read the input makes the model take ``pixel - P`` instead: with
input scale 1 and zero point ``P - 128`` (int8) or ``P`` (uint8) every camera byte is a code,
exactly, and the app feeds its bytes as they are (int8: ``pixel ^ 0x80``).

It is exact except at the borders. Float zero padding means the per-channel *mean* pixel in
normalized space; here a pad is the integer zero point, pixel ``P``, one value for every
channel. ``P`` is the mean of the channel means (ImageNet: 114 against 124, 116 and 104), so
only the first conv's outputs whose window leaves the image move, and by little: on
MobileNetV2-1.0's 200 ImageNet ten-crop views the folded float model's logits are 49.5 dB
from the original's, and the one view whose top-1 moves is a 0.006-logit tie
(``edgeres convert --input pixels`` measures and reports this for each bundle).
"""

from __future__ import annotations

import torch

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError
from edgeres.graph.ir import Graph

PIXEL_MAX = 255


def pad_pixel(pre: Preprocess) -> int:
    """The one pixel value that stands in for every channel's mean where a conv pads."""
    return round(PIXEL_MAX * sum(pre.mean) / len(pre.mean))


def pixel_preprocess(pre: Preprocess) -> Preprocess:
    """The manifest's preprocessing for a pixels-in model: ``(x - P/255) / (1/255)`` on
    pixels scaled to [0, 1] is ``pixel - P``; resize and crop are unchanged."""
    p, chans = pad_pixel(pre), len(pre.mean)
    return Preprocess((p / PIXEL_MAX,) * chans, (1 / PIXEL_MAX,) * chans, pre.resize, pre.crop)


def pixel_range(pre: Preprocess) -> tuple[float, float]:
    """The model input's real range, ``[-P, 255 - P]``: one code per pixel value."""
    p = pad_pixel(pre)
    return float(-p), float(PIXEL_MAX - p)


def input_gain(pre: Preprocess) -> tuple[float, ...]:
    """d(normalized input) / d(pixel - P) per channel: what the fold multiplies weights by."""
    return tuple(1.0 / (s * PIXEL_MAX) for s in pre.std)


def to_pixels(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """Normalized NCHW inputs (``pre``) as the pixels-in model's inputs, ``pixel - P``."""
    c = x.shape[1]
    mean = torch.tensor(pre.mean, dtype=torch.float64).view(1, c, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float64).view(1, c, 1, 1)
    return (x.double() * std * PIXEL_MAX + mean * PIXEL_MAX - pad_pixel(pre)).to(x.dtype)


def input_channel_of_weight(shape: torch.Size | tuple[int, ...], groups: int) -> torch.Tensor:
    """[out, in/groups]: the input channel each weight of a (grouped) conv reads."""
    out_chans, per_group = shape[0], shape[1]
    group = torch.arange(out_chans) // (out_chans // groups)
    return group.view(-1, 1) * per_group + torch.arange(per_group)


def fold_input_normalization(graph: Graph, pre: Preprocess) -> Graph:
    """A copy of ``graph`` whose input is ``pixel - P`` instead of ``pre``'s normalization.

    Every reader of the input must be a ``conv2d`` (what zoo models and most vision networks
    start with); anything else is reported by name, since a nonlinearity or a pooling layer
    cannot absorb the normalization."""
    if len(graph.inputs) != 1:
        raise UserError(f"--input pixels needs a model with one input, this one has "
                        f"{len(graph.inputs)}")
    name = graph.inputs[0].name
    chans = graph.inputs[0].shape[1]
    if len(pre.mean) != chans or len(pre.std) != chans:
        raise UserError(f"--input pixels: the preprocessing has {len(pre.mean)} channel means "
                        f"for a {chans}-channel input")
    out = graph.copy()
    readers = out.consumers(name)
    bad = [n for n in readers if n.op != "conv2d"]
    if bad or not readers:
        what = ", ".join(n.describe() for n in bad) or "nothing"
        raise UserError(f"--input pixels folds the normalization into the convolutions that "
                        f"read the input, but {what} reads it; convert with --input normalized")
    mean = torch.tensor(pre.mean, dtype=torch.float64)
    std = torch.tensor(pre.std, dtype=torch.float64)
    gain = torch.tensor(input_gain(pre), dtype=torch.float64)
    offset = (pad_pixel(pre) / PIXEL_MAX - mean) / std  # normalized value of pixel P
    for node in readers:
        w, b = node.params["weight"], node.params["bias"]
        chan = input_channel_of_weight(w.shape, node.attrs["groups"])
        g = gain[chan].view(*chan.shape, 1, 1)
        shift = (w.double() * offset[chan].view(*chan.shape, 1, 1)).sum((1, 2, 3))
        node.params = {**node.params, "weight": (w.double() * g).to(w.dtype),
                       "bias": (b.double() + shift).to(b.dtype)}
    return out


__all__ = ["fold_input_normalization", "input_channel_of_weight", "input_gain", "pad_pixel",
           "pixel_preprocess", "pixel_range", "to_pixels"]
