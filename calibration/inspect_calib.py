"""Inspect a calibration set: input statistics per channel, and the float model's activation
ranges per layer (a table of the worst outliers and a PNG figure).

    python calibration/inspect_calib.py mobilenet_v2_100 out/calib/mnv2-photos.npz
    python calibration/inspect_calib.py mobilenet_v2_fmnist fm.npz --png fm-layers.png

Why: an activation quantizer spends its 256 levels on the range it observed. A layer whose
max |x| is far beyond its 99.9th percentile ("outlier ratio") wastes most of them on a few
values; a calibration set whose inputs fall outside what real pixels produce stretches the
input scale. Both show up here before any quantization runs.
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402
from torch import nn  # noqa: E402

from edgeres.data.folders import load_npz  # noqa: E402
from edgeres.data.preprocess import Preprocess  # noqa: E402
from edgeres.errors import UserError  # noqa: E402
from edgeres.paths import check_output_file, write_bytes_atomic  # noqa: E402
from edgeres.resolve import resolve_model  # noqa: E402
from edgeres.signals import one_interrupt_unwinds  # noqa: E402
from edgeres.zoo import get_entry, list_models  # noqa: E402

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])
console = Console()
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
               nn.Tanh, nn.LeakyReLU)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
LINEAR = (nn.Conv2d, nn.Linear)
SAMPLES_PER_BATCH = 4096  # values kept per layer and batch for percentiles and histograms


@dataclass
class LayerStats:
    """Running range and a value sample of one activation tensor."""

    lo: float = float("inf")
    hi: float = float("-inf")
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, t: torch.Tensor, gen: torch.Generator) -> None:
        flat = t.detach().float().flatten()
        self.lo, self.hi = min(self.lo, flat.min().item()), max(self.hi, flat.max().item())
        k = min(SAMPLES_PER_BATCH, flat.numel())
        self.samples.append(flat[torch.randperm(flat.numel(), generator=gen)[:k]])

    def values(self) -> torch.Tensor:
        return torch.cat(self.samples)

    def outlier_ratio(self) -> float:
        """max |x| over the 99.9th percentile of |x|: int8 levels wasted on the tail."""
        p = torch.quantile(self.values().abs(), 0.999).item()
        return max(abs(self.lo), abs(self.hi)) / p if p > 0 else float("inf")


def quantized_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules whose output is a tensor an integer model stores: leaves other than a conv/
    linear feeding a norm, or a conv/norm feeding an activation (both fold away), plus
    residual blocks (their output is the Add)."""
    fused: set[int] = set()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq)
            for a, b in zip(kids, kids[1:], strict=False):
                if (isinstance(a, LINEAR) and isinstance(b, NORMS)) or (
                        isinstance(a, LINEAR + NORMS) and isinstance(b, ACTIVATIONS)):
                    fused.add(id(a))
    points = []
    for name, mod in model.named_modules():
        leaf = not list(mod.children())
        if getattr(mod, "use_res_connect", False) or (
                leaf and id(mod) not in fused and not isinstance(mod, nn.Dropout | nn.Identity)):
            points.append((name, mod))
    return points


def collect(model: nn.Module, x: torch.Tensor, batch: int) -> dict[str, LayerStats]:
    stats = {name: LayerStats() for name, _ in quantized_points(model)}
    gen = torch.Generator().manual_seed(0)
    handles = [mod.register_forward_hook(lambda _m, _i, out, s=stats[name]: s.add(out, gen))
               for name, mod in quantized_points(model)]
    try:
        # rich prints an empty line when a progress display stops on a non-terminal
        with torch.no_grad(), Progress(console=console, transient=True,
                                       disable=not console.is_terminal) as bar:
            task = bar.add_task("float model", total=len(x))
            for i in range(0, len(x), batch):
                model(x[i : i + batch])
                bar.advance(task, len(x[i : i + batch]))
    finally:
        for h in handles:
            h.remove()
    return stats


def input_table(x: torch.Tensor, pre: Preprocess) -> Table:
    table = Table(title=f"inputs: {x.shape[0]} x {list(x.shape[1:])}")
    for col in ("channel", "mean", "std", "min", "p0.1", "p99.9", "max", "outside pixels"):
        table.add_column(col, justify="right")
    for c in range(x.shape[1]):
        xc = x[:, c].flatten()
        sample = xc[torch.randperm(xc.numel(), generator=torch.Generator().manual_seed(c))[:10**6]]
        lo_q, hi_q = torch.quantile(sample, torch.tensor([0.001, 0.999])).tolist()
        outside = "-"
        if len(pre.mean) == x.shape[1]:  # share of values no real [0, 1] pixel can produce
            lo, hi = (0 - pre.mean[c]) / pre.std[c], (1 - pre.mean[c]) / pre.std[c]
            eps = 1e-4
            outside = f"{((xc < lo - eps) | (xc > hi + eps)).float().mean().item():.2%}"
        table.add_row(str(c), f"{xc.mean():.3f}", f"{xc.std():.3f}", f"{xc.min():.3f}",
                      f"{lo_q:.3f}", f"{hi_q:.3f}", f"{xc.max():.3f}", outside)
    return table


def layer_table(stats: dict[str, LayerStats], top: int) -> Table:
    ranked = sorted(stats.items(), key=lambda kv: -kv[1].outlier_ratio())[:top]
    table = Table(title=f"{len(ranked)} of {len(stats)} activations with the largest "
                  "outlier ratio")
    for col in ("layer", "min", "max", "p99.9 |x|", "max|x| / p99.9"):
        table.add_column(col, justify="right" if col != "layer" else "left")
    for name, s in ranked:
        p = torch.quantile(s.values().abs(), 0.999).item()
        table.add_row(name, f"{s.lo:.3f}", f"{s.hi:.3f}", f"{p:.3f}", f"{s.outlier_ratio():.1f}")
    return table


def plot(stats: dict[str, LayerStats], title: str, png: Path) -> Path:
    """Per-layer ranges, outlier ratios and a few value histograms, written atomically."""
    names = list(stats)
    idx = range(len(names))
    fig, (ax_r, ax_o, ax_h) = plt.subplots(3, 1, figsize=(max(10, len(names) * 0.12), 11))
    lows = [s.lo for s in stats.values()]
    highs = [s.hi for s in stats.values()]
    q = [torch.quantile(s.values(), torch.tensor([0.001, 0.999])).tolist()
         for s in stats.values()]
    ax_r.vlines(idx, lows, highs, color="0.6", lw=1, label="min..max")
    ax_r.vlines(idx, [a for a, _ in q], [b for _, b in q], color="tab:blue", lw=3,
                label="p0.1..p99.9")
    ax_r.set_yscale("symlog", linthresh=1.0)
    ax_r.set_ylabel("activation value")
    ax_r.legend(loc="upper left")
    ax_r.set_title(title)
    ax_o.bar(idx, [s.outlier_ratio() for s in stats.values()], color="tab:orange")
    ax_o.set_ylabel("max|x| / p99.9|x|")
    for ax in (ax_r, ax_o):
        ax.set_xlim(-1, len(names))
        ax.set_xticks(list(idx)[:: max(1, len(names) // 40)])
        ax.set_xticklabels(names[:: max(1, len(names) // 40)], rotation=90, fontsize=6)
    picks = sorted({0, len(names) // 3, 2 * len(names) // 3, len(names) - 1})
    for k in picks:
        ax_h.hist(stats[names[k]].values().numpy(), bins=100, histtype="step", log=True,
                  label=names[k])
    ax_h.set_xlabel("activation value")
    ax_h.set_ylabel("count (sampled)")
    ax_h.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()  # rendered in memory, then written atomically with the usual mode
    try:                # (a mkstemp file keeps its 0600)
        fig.savefig(buf, format="png", dpi=110)
    finally:
        plt.close(fig)
    write_bytes_atomic(png, buf.getvalue())
    return png


def inspect(model_name: str, npz: Path, png: Path | None = None, weights: str | None = None,
            batch: int = 32, top: int = 12) -> tuple[dict[str, LayerStats], Path]:
    """Statistics of ``npz`` as ``model_name`` (zoo name, checkpoint or ``module:factory``,
    resolved as ``edgeres convert`` does) sees it; options are checked before any work."""
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    npz = Path(npz)
    png = Path(png) if png is not None else npz.with_suffix(".layers.png")
    check_output_file(png, "--png", "layers.png")
    random_init = (weights is None and model_name in list_models()
                   and not get_entry(model_name).default_weights)
    rm = resolve_model(model_name, weights)
    x, _ = load_npz(npz, rm.preprocess, rm.in_chans, rm.img_size)
    console.print(input_table(x, rm.preprocess))
    if random_init:
        console.print(f"[yellow]warning:[/yellow] {model_name} has no shipped weights: "
                      "ranges are those of a randomly initialised model (pass --weights)")
    stats = collect(rm.module, x, batch)
    console.print(layer_table(stats, top))
    try:
        plot(stats, f"{rm.name} on {npz.name} ({len(x)} inputs)", png)
    except OSError as exc:
        raise UserError(f"--png {png}: cannot write the figure "
                        f"({exc.strerror or type(exc).__name__}); pick another path") from exc
    console.print(f"figure: {png}")
    return stats, png


@app.command()
def main(
    model: Annotated[str, typer.Argument(
        help="zoo name, .pth checkpoint or module:factory")],
    npz: Annotated[Path, typer.Argument(help="calibration .npz (from build_calib.py)")],
    png: Annotated[Path | None, typer.Option(help="figure path (default: NPZ.layers.png)")] = None,
    weights: Annotated[str | None, typer.Option(help="weights name or path")] = None,
    batch: Annotated[int, typer.Option(help="inputs per forward pass")] = 32,
    top: Annotated[int, typer.Option(help="layers listed in the table")] = 12,
) -> None:
    """Print input statistics of NPZ and plot MODEL's activation ranges on it."""
    try:
        inspect(model, npz, png, weights, batch, top)
    except UserError as exc:
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)  # one line, unwrapped
        raise typer.Exit(2) from exc


if __name__ == "__main__":
    one_interrupt_unwinds()  # SIGTERM unwinds like Ctrl-C: no temporary is left behind
    app()
