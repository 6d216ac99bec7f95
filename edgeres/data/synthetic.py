"""Data-free calibration inputs: optimise a small batch of images until every BatchNorm layer
sees the batch statistics it recorded in training (ZeroQ, Cai et al. 2020: "distilled data").

Why: a user with no data on hand can still get activation ranges that resemble real inputs,
far better than Gaussian noise, whose activations collapse or explode in deep layers.
Loss = sum over BatchNorm2d layers of ``mean_c (mu_batch - mu_run)^2 + (sigma_batch -
sigma_run)^2``, measured on each layer's *input* with forward pre-hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from edgeres.data.preprocess import Preprocess
from edgeres.errors import UserError


@contextmanager
def _bn_terms(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect one statistics-mismatch term per BatchNorm2d during forward passes."""
    terms: list[torch.Tensor] = []

    def hook(bn: nn.BatchNorm2d, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        mu = x.mean(dim=(0, 2, 3))
        sigma = (x.var(dim=(0, 2, 3), unbiased=False) + bn.eps).sqrt()
        run_sigma = (bn.running_var + bn.eps).sqrt()
        terms.append(((mu - bn.running_mean) ** 2).mean() + ((sigma - run_sigma) ** 2).mean())

    bns = [m for m in model.modules()
           if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None]
    if not bns:
        raise UserError("data-free ('synthetic') calibration needs a model with BatchNorm2d "
                        "layers (it matches their running statistics); this model has none: "
                        "calibrate on images instead (e.g. the 'photos' spec or a folder)")
    handles = [bn.register_forward_pre_hook(hook) for bn in bns]
    try:
        yield terms
    finally:
        for h in handles:
            h.remove()


def bn_statistics_loss(model: nn.Module, x: torch.Tensor) -> float:
    """The BN-statistics mismatch of inputs ``x`` (lower = closer to the training data)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _bn_terms(model) as terms:
            model(x)
            return float(torch.stack(terms).sum())
    finally:
        model.train(was_training)


def _pixel_bounds(preprocess: Preprocess | None, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel range real pixels in [0, 1] reach after normalisation (None: unbounded)."""
    if preprocess is None or len(preprocess.mean) != c:
        inf = torch.full((1, c, 1, 1), float("inf"))
        return -inf, inf
    mean = torch.tensor(preprocess.mean).view(1, c, 1, 1)
    std = torch.tensor(preprocess.std).view(1, c, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def synthesize_inputs(
    model: nn.Module,
    shape: tuple[int, int, int],
    n: int = 32,
    steps: int = 200,
    lr: float = 0.2,
    seed: int = 0,
    preprocess: Preprocess | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """``n`` inputs of ``shape`` (C, H, W) whose BN statistics match the model's (Adam steps
    from seeded Gaussian noise). With ``preprocess`` the pixels stay inside the range a real
    image can produce, so the input quantizer is not stretched by impossible values.
    """
    if n < 1 or steps < 0:
        raise UserError(f"synthetic data needs n >= 1 and steps >= 0, got n={n}, steps={steps}")
    device = next(model.parameters(), torch.empty(0)).device  # run where the model lives
    gen = torch.Generator().manual_seed(seed)  # CPU noise: the same start on every device
    lo, hi = (b.to(device) for b in _pixel_bounds(preprocess, shape[0]))
    x = torch.randn((n, *shape), generator=gen).to(device).clamp(lo, hi).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    was_training = model.training
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    columns = (TextColumn("data-free inputs"), BarColumn(), MofNCompleteColumn(),
               TextColumn("BN loss {task.fields[loss]:.4g}"), TimeElapsedColumn())
    try:
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task("synthesize", total=steps, loss=float("nan"))
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                with _bn_terms(model) as terms:
                    model(x)
                loss = torch.stack(terms).sum()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(lo, hi)
                bar.update(task, advance=1, loss=loss.item())
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        model.train(was_training)
    return x.detach()
