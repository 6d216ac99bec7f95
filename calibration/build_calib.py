"""Build a calibration set (.npz) for a model from any data spec.

    python calibration/build_calib.py mobilenet_v2_100 photos@256 -o out/calib/mnv2-photos.npz
    python calibration/build_calib.py mobilenet_v2_fmnist fmnist:train@512 -o out/calib/fm.npz
    python calibration/build_calib.py mobilenet_v2_100 synthetic@32 -o out/calib/mnv2-df.npz
    python calibration/build_calib.py mobilenet_v2_100 folder:~/my_photos@500 -o my.npz

The file holds ``x`` (float32 NCHW, already preprocessed with the model's recipe), ``y`` when
the data has labels, and ``meta`` (JSON: model, spec, seed, preprocessing, shape). It is written
atomically and is byte-identical for the same inputs. Feed it back with ``npz:PATH``.
MODEL is a zoo name, a ``.pth`` checkpoint or ``module:factory``, as for ``edgeres convert``.
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
from edgeres.paths import check_output_file
from edgeres.resolve import resolve_model
from edgeres.signals import one_interrupt_unwinds
from edgeres.zoo import get_entry, list_models

app = typer.Typer(add_completion=False, help=__doc__.splitlines()[0])
console = Console(stderr=True)
MAX_SEED = 2**64 - 1  # the largest seed torch.Generator accepts (synthetic data)


def check_options(out: Path, n: int | None, seed: int) -> None:
    """The cheap checks, run before any model or data is loaded."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed}")
    if n is not None and n < 1:
        raise UserError(f"--n must be at least 1, got {n}")
    check_output_file(out, "-o", "calib.npz")


def build(
    model_name: str, spec: str, out: Path, n: int | None = None, seed: int = 0,
    weights: str | None = None, progress: bool = True,
) -> Path:
    """Load ``spec`` for ``model_name`` (zoo name, checkpoint or ``module:factory``, resolved
    as ``edgeres convert`` does) and write it to ``out``; returns the path."""
    out = Path(out)
    check_options(out, n, seed)
    parsed = DataSpec.parse(spec)
    synthetic = parsed.kind == "synthetic"
    if synthetic and weights is None and model_name in list_models() \
            and not get_entry(model_name).default_weights:
        raise UserError(f"'synthetic' calibration of {model_name} needs trained weights "
                        "(its BatchNorm statistics); pass --weights PATH")
    # rich prints an empty line when a progress display stops on a non-terminal: keep stderr
    # to the one-line error (or the summary) when it is redirected
    progress = progress and console.is_terminal
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"loading {model_name}", total=None)
        # only 'synthetic' runs the model: other specs need just its input recipe
        rm = resolve_model(model_name, weights, load=synthetic)
        bar.update(task, description=f"loading {parsed}")
        data = load_spec(parsed, rm.preprocess, rm.in_chans, rm.img_size, n,
                         model=rm.module if synthetic else None, seed=seed, progress=progress)
        bar.update(task, description=f"writing {out}")
        meta = {
            "model": model_name, "spec": data.name, "seed": seed,
            "weights": rm.weights if synthetic else None,
            "preprocess": rm.preprocess.to_json(), "shape": list(data.x.shape),
            "labels": rm.label_set if data.y is not None else None,
        }
        try:
            path = save_npz(out, data.x, data.y, meta)
        except OSError as exc:
            raise UserError(f"-o {out}: cannot write the file "
                            f"({exc.strerror or type(exc).__name__}); pick another path") from exc
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
    model: Annotated[str, typer.Argument(
        help="zoo name (run `edgeres zoo`), .pth checkpoint or module:factory")],
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
    one_interrupt_unwinds()  # SIGTERM unwinds like Ctrl-C: no temporary is left behind
    app()
