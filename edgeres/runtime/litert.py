"""Run .tflite models in LiteRT (the TFLite runtime): reference kernels, XNNPACK or builtin.

Why three kernel sets: the reference kernels are the bit-exact oracle the exporter is tested
against, XNNPACK is what phones run, and the builtin optimized kernels without delegates are
what LiteRT falls back to. They round requantization slightly differently, so callers compare
with a tolerance of 1 LSB (reference) or 2 LSB (XNNPACK).

>>> outs = run_tflite(Path("model.tflite"), [x_nhwc_int8], kernels="ref")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from edgeres.errors import UserError
from edgeres.export.tflite import TensorIO, tflite_io_details

Kernels = Literal["ref", "xnnpack", "builtin"]


def _resolver(kernels: Kernels):  # noqa: ANN202 - the enum type lives in ai_edge_litert
    from ai_edge_litert.interpreter import OpResolverType

    table = {
        "ref": OpResolverType.BUILTIN_REF,
        "xnnpack": OpResolverType.AUTO,  # AUTO applies the default XNNPACK delegate
        "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    }
    if kernels not in table:
        raise UserError(f"unknown LiteRT kernels '{kernels}' (use ref, xnnpack or builtin)")
    return table[kernels]


def _model_bytes(model: Path | bytes) -> bytes:
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise UserError(f"TFLite model '{path}' does not exist")
    return path.read_bytes()


def make_interpreter(
    model: Path | bytes, kernels: Kernels = "ref", threads: int = 1, keep_all: bool = False
):  # noqa: ANN201 - ai_edge_litert's Interpreter
    """A LiteRT Interpreter with tensors allocated, on the chosen kernels.

    ``keep_all`` preserves every intermediate tensor (for layer-by-layer comparisons).
    """
    from ai_edge_litert.interpreter import Interpreter

    resolver = _resolver(kernels)
    try:
        it = Interpreter(
            model_content=_model_bytes(model),
            num_threads=threads,
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=keep_all,
        )
        it.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"LiteRT ({kernels} kernels) cannot load the model: {exc}") from exc
    return it


def run_tflite(
    model: Path | bytes,
    inputs: list[np.ndarray],
    kernels: Kernels = "ref",
    threads: int = 1,
) -> list[np.ndarray]:
    """Run one inference per sample; returns the outputs as the file lays them out.

    Inputs must have the model's dtype and layout (NHWC for images). When the model's batch
    is 1 and the inputs hold N samples, the model runs N times and the outputs are stacked.
    """
    it = make_interpreter(model, kernels, threads)
    details = it.get_input_details()
    if len(inputs) != len(details):
        raise UserError(f"the model has {len(details)} inputs, got {len(inputs)} arrays")
    batches = _batches(inputs, [tuple(d["shape"]) for d in details])
    outs: list[list[np.ndarray]] = []
    for batch in batches:
        for d, x in zip(details, batch, strict=True):
            it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
        it.invoke()
        outs.append([it.get_tensor(d["index"]).copy() for d in it.get_output_details()])
    return [np.concatenate(parts) for parts in zip(*outs, strict=True)]


def run_tflite_all_tensors(
    model: Path | bytes, inputs: list[np.ndarray], kernels: Kernels = "ref"
) -> dict[str, np.ndarray]:
    """Every tensor of the model after one inference, by tensor name (constants included).

    Why: a whole-network comparison only says *that* outputs differ; comparing each layer
    on the runtime's own inputs says *where* (the per-layer debugger uses this).
    """
    it = make_interpreter(model, kernels, keep_all=True)
    for d, x in zip(it.get_input_details(), inputs, strict=True):
        it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=d["dtype"]))
    it.invoke()
    out = {}
    for d in it.get_tensor_details():
        try:
            out[d["name"]] = it.get_tensor(d["index"]).copy()
        except ValueError:  # tensors without data (e.g. optional inputs)
            continue
    return out


def _batches(inputs: list[np.ndarray], shapes: list[tuple[int, ...]]) -> list[list[np.ndarray]]:
    """Split inputs into model-sized batches (only batch 1 models are split)."""
    for x, shape in zip(inputs, shapes, strict=True):
        if tuple(x.shape[1:]) != tuple(shape[1:]):
            raise UserError(f"input of shape {tuple(x.shape)} does not fit the model's {shape}")
    if all(x.shape[0] == s[0] for x, s in zip(inputs, shapes, strict=True)):
        return [inputs]
    if any(s[0] != 1 for s in shapes) or len({x.shape[0] for x in inputs}) != 1:
        raise UserError(f"input batch sizes {[x.shape[0] for x in inputs]} do not fit the model")
    return [[x[i : i + 1] for x in inputs] for i in range(inputs[0].shape[0])]


def io_quantization(model: Path | bytes) -> tuple[list[TensorIO], list[TensorIO]]:
    """Inputs and outputs with dtype, shape, scale and zero point (read from the file)."""
    return tflite_io_details(_model_bytes(model))
