"""What ``edgeres convert`` and ``edgeres qat`` take, checked before any work starts.

A typo in an option must fail in a second with a line naming the option, not after minutes of
calibration or training; so every check that needs no model or data lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from edgeres.config import ActObserver
from edgeres.errors import UserError

Scheme = Literal["ptq", "rex", "qat", "rex+qat"]
InputMode = Literal["normalized", "pixels"]
REX_DEFAULTS = {"rex_order": 2, "rex_sparsity": 0.5, "rex_budget_macs": None}
REX_FLAGS = {"rex_order": "--rex-order", "rex_sparsity": "--rex-sparsity",
             "rex_budget_macs": "--rex-budget"}
# PTQ options a plain QAT run has no use for: it starts from its own PTQ of --train images
# (default observer, every layer quantized) and learns the ranges from there.
QAT_UNUSED = {"ignore": ((), "--ignore"), "adaround_iters": (0, "--adaround"),
              "act_observer": ("percentile", "--observer"), "percentile": (99.99, "--percentile")}


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``edgeres convert`` takes; defaults are the target's and the model's."""

    model: str = "mobilenet_v2_fmnist"
    target: str = "arm-cpu-tflite"
    scheme: Scheme = "ptq"
    weights: str | None = None
    calib: str | None = None
    eval: str | None = None
    bits: str = "w8a8"
    out: Path | None = None
    ignore: tuple[str, ...] = ()
    adaround_iters: int = 0
    rex_order: int = 2
    rex_sparsity: float = 0.5
    rex_budget_macs: float | None = None
    qat_steps: int | None = 200
    qat_epochs: int = 1
    qat_batch: int | None = None  # QAT batch over all processes (None: QATConfig's, 128)
    train: str | None = None  # QAT training data spec (default: the model's labelled train set)
    qat_dir: Path | None = None  # QAT checkpoints (default: <out>.qat next to the bundle)
    resume: Path | None = None
    min_agreement: float | None = None
    max_drop: float | None = None
    bench: bool = True
    threads: tuple[int, ...] = (1, 2)
    smooth_alpha: float | None = None  # PTQ smoothing (edgeres.graph.smooth); None: by the plan
    reconstruct_iters: int = 0  # PTQ: block reconstruction steps per block (BRECQ + QDrop), 0 = off
    output_bias_correction: bool = False  # PTQ: output bias minus the mean logit error
    act_observer: ActObserver = "percentile"  # activation ranges (PTQConfig.act_observer)
    percentile: float = 99.99  # the percentile observer's coverage
    input: InputMode = "normalized"  # "pixels": the model takes pixel - P (edgeres.graph.pixels)

    def __post_init__(self) -> None:
        if self.scheme not in get_args(Scheme):
            raise UserError(f"--scheme must be one of {' | '.join(get_args(Scheme))}, got "
                            f"'{self.scheme}'")
        for name, flag in (("calib", "--calib"), ("eval", "--eval"), ("train", "--train")):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise UserError(f"{flag} is empty: give a data spec (e.g. fmnist:train@512, "
                                "folder:PATH) or leave the option out for the model's default")
        self._check_ptq_options()
        self._check_rex_options()
        self._check_qat_options()
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 100.0:
            raise UserError(f"--min-agreement is a percentage in [0, 100], got "
                            f"{self.min_agreement}")
        if self.input not in get_args(InputMode):
            raise UserError(f"--input must be one of {' | '.join(get_args(InputMode))}, got "
                            f"'{self.input}'")
        if self.qat_batch is not None and self.qat_batch < 1:
            raise UserError(f"--batch: the QAT batch must be >= 1, got {self.qat_batch}")
        if self.qat_batch is not None and "qat" not in self.scheme:
            raise UserError(f"--batch applies to QAT only, not --scheme '{self.scheme}'")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise UserError(f"--max-drop is the largest top-1 loss in points allowed, >= 0; "
                            f"got {self.max_drop}")

    def _check_ptq_options(self) -> None:
        observers = get_args(ActObserver)
        if self.act_observer not in observers:
            raise UserError(f"--observer must be one of {' | '.join(observers)}, got "
                            f"'{self.act_observer}'")
        if not 50.0 < self.percentile <= 100.0:
            raise UserError(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha < 1.0:
            raise UserError(f"--smooth: smooth_alpha must be in [0, 1), got {self.smooth_alpha}")
        if self.smooth_alpha and self.scheme != "ptq":
            raise UserError(f"--smooth applies to --scheme ptq only, not '{self.scheme}'")
        if self.adaround_iters < 0:
            raise UserError(f"--adaround: steps per layer must be >= 0 (0: off), got "
                            f"{self.adaround_iters}")
        if self.reconstruct_iters < 0:
            raise UserError(f"--reconstruct: steps per block must be >= 0, got "
                            f"{self.reconstruct_iters}")
        if self.reconstruct_iters and self.scheme != "ptq":
            raise UserError(f"--reconstruct applies to --scheme ptq only, not '{self.scheme}'")
        if self.output_bias_correction and self.scheme != "ptq":
            raise UserError(f"--output-bias applies to --scheme ptq only, not '{self.scheme}' "
                            "(REx expands the output layer; QAT learns its bias)")
        if self.reconstruct_iters and self.adaround_iters:
            raise UserError("--reconstruct already learns the weight rounding: drop --adaround")

    def _check_qat_options(self) -> None:
        """Options QAT would silently ignore are refused, as REx's are outside REx."""
        if "qat" not in self.scheme:
            return
        if self.calib is not None:
            raise UserError("--calib does not apply to QAT: its starting point is calibrated "
                            "on 512 images of --train; drop --calib")
        for name, (default, flag) in QAT_UNUSED.items():
            value = getattr(self, name)
            if self.scheme == "qat" and (tuple(value) if name == "ignore" else value) != default:
                raise UserError(f"{flag} applies to --scheme ptq and rex (and rex+qat), not "
                                "plain QAT, which quantizes every layer and learns its ranges")

    def _check_rex_options(self) -> None:
        """REx options are refused outside REx schemes rather than silently ignored."""
        if not self.scheme.startswith("rex"):
            for name, default in REX_DEFAULTS.items():
                if getattr(self, name) != default:
                    raise UserError(f"{REX_FLAGS[name]} applies to --scheme rex (or qat "
                                    f"--rex) only, not '{self.scheme}'")
            return
        if self.rex_order < 1:
            raise UserError(f"--rex-order: the expansion order K must be >= 1, got "
                            f"{self.rex_order}")
        if not 0.0 <= self.rex_sparsity < 1.0:
            raise UserError(f"--rex-sparsity: the group sparsity must be in [0, 1), got "
                            f"{self.rex_sparsity}")
        budget = self.rex_budget_macs
        if budget is not None and not (math.isfinite(budget) and budget >= 0):
            raise UserError(f"--rex-budget: the extra-MAC budget is a fraction >= 0 (0.25 = "
                            f"+25 %), got {budget}")
