"""Quantization configs: frozen dataclasses that round-trip through JSON (no option bags).

>>> PTQConfig.from_json(PTQConfig(weight_bits=4).to_json()) == PTQConfig(weight_bits=4)
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

from edgeres.errors import UserError

WeightObserver = Literal["minmax", "mse"]
ActObserver = Literal["minmax", "percentile", "mse", "entropy"]


class _JsonConfig:
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["kind"] = type(self).__name__
        return d

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        d = {k: v for k, v in d.items() if k != "kind"}
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(d) - known
        if unknown:
            raise UserError(
                f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        for k, v in d.items():
            if isinstance(v, list):
                d[k] = tuple(v)
        return cls(**d)


def _check_input_range(bounds: tuple[float, float] | None) -> None:
    if bounds is not None and not (len(bounds) == 2 and bounds[0] < bounds[1]):
        raise UserError(f"input_range must be (low, high) with low < high, got {bounds}")


@dataclass(frozen=True)
class PTQConfig(_JsonConfig):
    """Post-training quantization.

    ``per_channel=None`` takes the target's default; ``ignore`` lists node names (or prefixes
    ending in '*') kept in float; ``bias_correction`` removes the mean output shift that
    weight rounding causes, measured on the calibration data; ``adaround_iters > 0`` learns
    each weight's rounding instead (AdaRound, slower: seconds per layer).

    ``act_observer`` sets every other activation's range: ``percentile`` (of ``percentile``,
    the default), ``mse``, ``minmax`` or ``entropy`` (TensorRT's KL calibration; it clips
    hard on activations with spikes, such as constant image backgrounds, and measured the
    weakest here: BENCHMARKS.md).

    The model's outputs are never clipped: their range is the calibration min-max widened by
    ``output_headroom``. A clipped top logit ties with its neighbours and argmax then picks
    at random; calibration images are rarely as confident as the images a deployed model
    sees (MobileNetV2-1.0: photo crops reach logit 23, ImageNet views 29; BENCHMARKS.md).
    Nor are its inputs: they keep the calibration min-max (a clipped pixel is lost to every
    later layer; only observers that clip, such as entropy, are affected).

    ``smooth_alpha > 0`` first rescales activation channels (and the weights around them) so
    that one per-tensor step suits every channel (:mod:`edgeres.graph.smooth`); the float
    function is unchanged. 0.5 is SmoothQuant's balance between activations and weights.
    ``None`` (the default) is 0.5 where that was measured to help every zoo model (W8A8 with
    per-channel weights throughout, +0.7 to +1.0 dB; BENCHMARKS.md) and 0 elsewhere: it cost
    ``mobilenet_v2_fmnist`` 4 dB per-tensor, REx expands the unsmoothed weights, and other
    bit widths and AdaRound were not measured with it (:func:`edgeres.quant.ptq.smooth_alpha_for`).

    ``reconstruct_iters > 0`` then learns, block by block on the calibration data, each
    weight's rounding, each bias and each activation step against the float model (BRECQ with
    QDrop, :mod:`edgeres.quant.reconstruct`): the PTQ method for when range setting is not
    enough. It subsumes AdaRound, so the two are not combined.

    ``output_bias_correction`` finally subtracts the mean logit error of the whole integer
    network on the calibration data from the output layer's int32 bias
    (:func:`edgeres.quant.ptq.correct_output_bias`): free at run time, -5 to -8 % top-1/top-2
    logit error on MobileNetV2-1.0 (BENCHMARKS.md, session 6). Opt-in: over ten calibration
    draws it raised that model's ten-crop agreement by 0.5 points (96.6 -> 97.1 %, +0.1 dB
    on every draw) but moved one labelled ImageNet image (a 0.5-logit near tie) to the wrong
    class on most draws, and it costs one more pass over the data (BENCHMARKS.md, session 15).

    ``input_range`` fixes the model input's real range instead of calibrating it: a
    pixels-in model (:mod:`edgeres.graph.pixels`) takes ``pixel - P`` in ``[-P, 255 - P]``,
    so that every camera byte is exactly one code.
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool | None = None
    weight_observer: WeightObserver = "mse"
    act_observer: ActObserver = "percentile"
    percentile: float = 99.99
    bias_correction: bool = True
    ignore: tuple[str, ...] = ()
    calib_batch: int = 32
    adaround_iters: int = 0  # > 0: learn weight rounding (AdaRound), this many steps per layer
    output_headroom: float = 1.5  # model outputs: min-max range x this, never clipped
    smooth_alpha: float | None = None  # > 0: activation outliers into weights; None: by the plan
    reconstruct_iters: int = 0  # > 0: block reconstruction (BRECQ + QDrop), steps per block
    output_bias_correction: bool = False  # output layer's bias minus the mean logit error
    input_range: tuple[float, float] | None = None  # the model input's range, not calibrated

    def __post_init__(self) -> None:
        _check_input_range(self.input_range)
        if self.weight_bits not in (2, 3, 4, 5, 6, 7, 8):
            raise UserError(f"weight_bits must be 2..8, got {self.weight_bits}")
        if self.act_bits not in (8, 16):
            raise UserError(f"act_bits must be 8 or 16, got {self.act_bits}")
        if self.weight_observer not in ("minmax", "mse"):
            raise UserError(f"weight_observer must be minmax|mse, got '{self.weight_observer}'")
        if self.act_observer not in get_args(ActObserver):
            raise UserError(f"act_observer must be {'|'.join(get_args(ActObserver))}, got "
                            f"'{self.act_observer}'")
        if self.adaround_iters < 0:
            raise UserError(f"adaround_iters must be >= 0, got {self.adaround_iters}")
        if self.reconstruct_iters < 0:
            raise UserError(f"reconstruct_iters must be >= 0, got {self.reconstruct_iters}")
        if self.reconstruct_iters and self.adaround_iters:
            raise UserError("reconstruct_iters already learns the weight rounding: set "
                            "adaround_iters=0 (or reconstruct_iters=0 for AdaRound alone)")
        if self.smooth_alpha is not None and not 0.0 <= self.smooth_alpha < 1.0:
            raise UserError(f"smooth_alpha must be in [0, 1), got {self.smooth_alpha}")
        if self.output_headroom < 1.0:
            raise UserError(f"output_headroom must be >= 1, got {self.output_headroom}")
        if not 50.0 < self.percentile <= 100.0:
            raise UserError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclass(frozen=True)
class RExConfig(_JsonConfig):
    """REx residual error expansion (Yvinec et al. 2023): K weight terms, group sparsity gamma.

    ``budget_macs`` caps the extra MACs as a fraction of the plain model (0.25 = +25%);
    ``budget_bytes`` caps the extra weight bytes; with a budget, K and gamma are chosen per
    layer. Activations are calibrated as in ``ptq``.
    """

    order: int = 2
    sparsity: float = 0.5
    weight_bits: int = 8
    budget_macs: float | None = None
    budget_bytes: int | None = None
    ptq: PTQConfig = PTQConfig()

    def __post_init__(self) -> None:
        if self.order < 1:
            raise UserError(f"REx order must be >= 1, got {self.order}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UserError(f"REx sparsity gamma must be in [0, 1), got {self.sparsity}")
        if self.weight_bits not in (2, 3, 4, 5, 6, 7, 8):
            raise UserError(f"REx weight_bits must be 2..8, got {self.weight_bits}")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RExConfig:
        d = dict(d)
        if isinstance(d.get("ptq"), dict):
            d["ptq"] = PTQConfig.from_json(d["ptq"])
        return super().from_json(d)  # type: ignore[return-value]


@dataclass(frozen=True)
class QATConfig(_JsonConfig):
    """Quantization-aware training with distillation from the float model.

    BatchNorm is folded into the convolutions before training starts (statistics frozen from
    step 0): QAT fine-tunes a converged float model, so there is no schedule to set.

    ``input_range`` fixes the model input's QParams for the whole run, as
    :class:`PTQConfig`'s does: a pixels-in model keeps one code per camera byte.
    ``input_gain`` is what the fold multiplied each input channel's weights by
    (:func:`edgeres.graph.pixels.input_gain`, ~1/60 for ImageNet): SGD on a folded weight
    moves it 1/gain^2 times faster in the float model's units, so those gradients are
    scaled by gain^2 and the run trains as the unfolded model would.
    """

    weight_bits: int = 8
    act_bits: int = 8
    per_channel: bool | None = None
    epochs: int = 3
    steps: int | None = None
    lr: float = 1e-3
    batch: int = 128
    distill_temperature: float = 4.0
    distill_alpha: float = 0.7
    seed: int = 0
    input_range: tuple[float, float] | None = None  # the model input's range, never learned
    input_gain: tuple[float, ...] | None = None  # per input channel, folded into the weights

    def __post_init__(self) -> None:
        _check_input_range(self.input_range)
        if self.input_gain is not None and not all(g > 0 for g in self.input_gain):
            raise UserError(f"input_gain must be positive per channel, got {self.input_gain}")
        if self.epochs < 1:
            raise UserError(f"QAT epochs must be >= 1, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"QAT steps must be >= 1, got {self.steps}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise UserError(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
