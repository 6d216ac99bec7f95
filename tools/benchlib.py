"""Shared pieces of the benchmarks: datasets per model, batched evaluation, table + JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from edgeres.config import PTQConfig
from edgeres.data.fmnist import load_fmnist
from edgeres.zoo import get_entry

console = Console(width=200)


@dataclass
class EvalSet:
    """Inputs (float NCHW), labels, and a name for the table."""

    name: str
    x: torch.Tensor
    y: torch.Tensor | None


def fmnist_test(model: str, limit: int | None = None) -> EvalSet:
    pre = get_entry(model).preprocess
    images, labels = load_fmnist("test")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = pre.normalize(torch.from_numpy(images.copy()).float().unsqueeze(1) / 255.0)
    return EvalSet(f"fmnist test ({len(x)})", x, torch.from_numpy(labels))


def fmnist_calib(model: str, n: int = 512, seed: int = 0) -> torch.Tensor:
    """``fmnist:train@n`` as ``edgeres convert`` loads it (seed 0), or another draw."""
    from edgeres.data.specs import load_spec

    e = get_entry(model)
    return load_spec(f"fmnist:train@{n}", e.preprocess, e.in_chans, e.img_size, seed=seed).x


def imagenet_sets() -> tuple[EvalSet, EvalSet, torch.Tensor]:
    """(20 labelled samples, 240-view agreement set, 128 photo calibration crops)."""
    from edgeres.data.imagenet import imagenet_agreement_set, load_imagenet_samples
    from edgeres.data.photos import photo_calibration_set
    from edgeres.data.preprocess import IMAGENET

    imgs, labels = load_imagenet_samples()
    x20 = torch.cat([IMAGENET(i) for i in imgs])
    xa, ya = imagenet_agreement_set(IMAGENET)
    calib = photo_calibration_set(IMAGENET, n=128, seed=0)
    return (
        EvalSet("imagenet 20", x20, torch.as_tensor(labels)),
        EvalSet(f"imagenet crops ({len(xa)})", xa, torch.as_tensor(ya)),
        calib,
    )


def imagenet_ten_crop() -> tuple[EvalSet, EvalSet]:
    """(the 200 ten-crop views, their 20 plain centre crops): what app-side evaluators feed."""
    from edgeres.data.imagenet import imagenet_ten_crop_set
    from edgeres.data.preprocess import IMAGENET

    x, y = imagenet_ten_crop_set(IMAGENET)
    return (EvalSet(f"imagenet ten-crop ({len(x)})", x, y),
            EvalSet("imagenet ten-crop centres (20)", x[::10], y[::10]))


def batched_logits(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int = 500
) -> torch.Tensor:
    return torch.cat(
        [fn(x[i : i + batch]).detach().to(torch.float64) for i in range(0, len(x), batch)]
    )


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).double().mean() * 100)


def paired_top1_test(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor) -> tuple[int, int, float]:
    """McNemar's exact test of two classifiers' top-1 on the same inputs: how many inputs
    only ``a`` gets right, how many only ``b`` does, and the two-sided p-value of a split at
    least that uneven if both were equally accurate (a sign test on the discordant inputs)."""
    ra, rb = a.argmax(1) == y, b.argmax(1) == y
    only_a, only_b = int((ra & ~rb).sum()), int((~ra & rb).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return only_a, only_b, p


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.argmax(1) == b.argmax(1)).double().mean() * 100)


def sqnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    noise = float(((ref - test) ** 2).mean())
    return float("inf") if noise == 0 else 10 * float(np.log10(float((ref**2).mean()) / noise))


def sqnr_centred(ref: torch.Tensor, test: torch.Tensor) -> float:
    """SQNR against the float logits minus each row's mean (as ``evalbundle.py`` reports it:
    a constant offset of all logits carries no information). ``edgeres check`` and
    :func:`sqnr` use the plain power; for ImageNet MobileNetV2 the two agree to 0.01 dB."""
    ref = ref.to(torch.float64)
    noise = float(((ref - test) ** 2).sum())
    signal = float(((ref - ref.mean(1, keepdim=True)) ** 2).sum())
    return float("inf") if noise == 0 else 10 * float(np.log10(signal / noise))


def parse_config(text: str) -> PTQConfig:
    """'act_observer="mse", adaround_iters=200' -> PTQConfig (literals only)."""
    import ast

    call = ast.parse(f"f({text})", mode="eval").body
    if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
        raise ValueError(f"'{text}' is not a keyword list")
    return PTQConfig(**{kw.arg: ast.literal_eval(kw.value) for kw in call.keywords})


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
    console.print(f"wrote {path}")


def write_record(path: Path, tool: str, argv: list[str] | None, **fields: object) -> None:
    """Write a benchmark's JSON with the command that reproduces it and the machine it ran on.

    `tool` is the script's file name; `argv` its arguments (None: this process's own).
    """
    args = sys.argv[1:] if argv is None else argv
    write_json(path, {"command": " ".join(["python", f"tools/{tool}", *args]),
                      "machine": machine(), **fields})


def save_figure(fig, path: Path) -> None:  # noqa: ANN001
    """Write a matplotlib figure as PNG to a temporary name, then rename it into place."""
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(
            *[f"{r[c]:.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        )
    console.print(t)
