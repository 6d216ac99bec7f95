"""Build a calibration set (.npz) for a zoo model from any data spec.

    python calibration/build_calib.py mobilenet_v2_100 photos@256 -o out/calib/mnv2-photos.npz
    python calibration/build_calib.py mobilenet_v2_fmnist fmnist:train@512 -o out/calib/fm.npz
    python calibration/build_calib.py mobilenet_v2_100 synthetic@32 -o out/calib/mnv2-df.npz
    python calibration/build_calib.py mobilenet_v2_100 folder:~/my_photos@500 -o my.npz

The file holds ``x`` (float32 NCHW, already preprocessed with the model's recipe), ``y`` when
the data has labels, and ``meta`` (JSON: model, spec, seed, preprocessing, shape). It is written
atomically and is byte-identical for the same inputs. Feed it back with ``npz:PATH``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeres.data.folders import save_npz
from edgeres.data.specs import DataSpec, load_spec
from edgeres.errors import UserError
from edgeres.zoo import create_model, get_entry

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])
console = Console(stderr=True)


def build(
    model_name: str, spec: str, out: Path, n: int | None = None, seed: int = 0,
    weights: str | None = None, progress: bool = True,
) -> Path:
    """Load ``spec`` for ``model_name`` and write it to ``out``; returns the path."""
    entry = get_entry(model_name)
    parsed = DataSpec.parse(spec)
    model = None
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        if parsed.kind == "synthetic":
            task = bar.add_task(f"loading {model_name} weights", total=None)
            pretrained = weights if weights is not None else (entry.default_weights or False)
            if not pretrained:
                raise UserError(f"'synthetic' calibration of {model_name} needs trained weights "
                                "(its BatchNorm statistics); pass --weights PATH")
            model = create_model(model_name, pretrained=pretrained)
            bar.remove_task(task)
        task = bar.add_task(f"loading {parsed}", total=None)
        data = load_spec(parsed, entry.preprocess, entry.in_chans, entry.img_size, n,
                         model=model, seed=seed, progress=progress)
        bar.update(task, description=f"writing {out}")
        meta = {
            "model": model_name, "spec": data.name, "seed": seed,
            "weights": None if model is None else str(weights or entry.default_weights),
            "preprocess": entry.preprocess.to_json(), "shape": list(data.x.shape),
            "labels": entry.labels if data.y is not None else None,
        }
        path = save_npz(out, data.x, data.y, meta)
    _summary(path, data.x, data.y)
    return path


def _summary(path: Path, x: torch.Tensor, y: torch.Tensor | None) -> None:
    table = Table(title=f"{path}  ({path.stat().st_size / 1e6:.1f} MB, sha256 "
                  f"{hashlib.sha256(path.read_bytes()).hexdigest()[:12]})")
    for col in ("channel", "mean", "std", "min", "max"):
        table.add_column(col, justify="right")
    for c in range(x.shape[1]):
        xc = x[:, c]
        table.add_row(str(c), f"{xc.mean():.3f}", f"{xc.std():.3f}", f"{xc.min():.3f}",
                      f"{xc.max():.3f}")
    console.print(table)
    labels = "none" if y is None else f"{len(torch.unique(y))} classes"
    console.print(f"{x.shape[0]} samples of {list(x.shape[1:])}; labels: {labels}")


@app.command()
def main(
    model: Annotated[str, typer.Argument(help="zoo model name (run `edgeres zoo`)")],
    spec: Annotated[str, typer.Argument(help="data spec, e.g. photos@256, fmnist:train@512, "
                                             "folder:PATH, npz:PATH, synthetic@32")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .npz to write")],
    n: Annotated[int | None, typer.Option(help="sample count when the spec has no @N")] = None,
    seed: Annotated[int, typer.Option(help="seed of subsets, crops and synthetic data")] = 0,
    weights: Annotated[str | None, typer.Option(
        help="weights for 'synthetic' (name or path; default: the model's shipped ones)")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
) -> None:
    """Build a calibration .npz for MODEL from SPEC."""
    try:
        build(model, spec, out, n=n, seed=seed, weights=weights, progress=not quiet)
    except UserError as exc:
        print(f"{Path(__file__).name}: error: {exc}", file=sys.stderr)  # one line, unwrapped
        raise typer.Exit(2) from exc


if __name__ == "__main__":
    app()
