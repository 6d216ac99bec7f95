"""Run .tflite models in the TensorFlow Lite Micro interpreter (the microcontroller runtime).

Why run TFLM on the host: it is the exact kernel code a microcontroller executes (minus
CMSIS-NN), so its outputs and its arena size are what a device build will see. The arena
figure comes from TFLM's own RecordingMicroAllocator.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeres.errors import UserError
from edgeres.export.tflite import tflite_io_details

_ARENA_RE = re.compile(r"Arena allocation total (\d+) bytes")
DEFAULT_ARENA = 8 << 20


@dataclass(frozen=True)
class TFLMResult:
    """Outputs of the last inference batch and the tensor arena TFLM actually used."""

    outputs: list[np.ndarray]
    arena_bytes: int


def _runtime():  # noqa: ANN202 - module object
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as exc:
        raise UserError(
            "TFLite Micro is not installed: run `pip install 'edgeres[mcu]'`"
        ) from exc
    return runtime


def _capture_stderr(fn) -> str:  # noqa: ANN001
    """TFLM prints its allocation report on the C stderr: capture file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def run_tflm(
    model: Path | bytes, inputs: list[np.ndarray], arena_size: int = DEFAULT_ARENA
) -> TFLMResult:
    """Run every sample through TFLM (batch-1 models run once per sample).

    ``arena_size`` is the arena the interpreter may use; ``arena_bytes`` in the result is
    what it needed (a device build needs at least that).
    """
    runtime = _runtime()
    data = Path(model).read_bytes() if not isinstance(model, bytes | bytearray) else bytes(model)
    try:
        interp = runtime.Interpreter.from_bytes(data, arena_size=arena_size)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"TFLite Micro cannot load the model: {exc}") from exc
    ins = tflite_io_details(data)[0]
    if len(inputs) != len(ins):
        raise UserError(f"the model has {len(ins)} inputs, got {len(inputs)} arrays")
    shapes = [t.shape for t in ins]
    per_sample = any(x.shape[0] != s[0] for x, s in zip(inputs, shapes, strict=True))
    n = inputs[0].shape[0] if per_sample else 1
    n_out = len(tflite_io_details(data)[1])
    outs: list[list[np.ndarray]] = []
    for i in range(n):
        for j, x in enumerate(inputs):
            dtype = interp.get_input_details(j)["dtype"]
            sample = x[i : i + 1] if per_sample else x
            interp.set_input(np.ascontiguousarray(sample, dtype=dtype), j)
        try:
            interp.invoke()
        except RuntimeError as exc:
            raise UserError(f"TFLite Micro failed to run the model: {exc}") from exc
        outs.append([interp.get_output(k).copy() for k in range(n_out)])
    report = _capture_stderr(interp.print_allocations)
    match = _ARENA_RE.search(report)
    arena = int(match.group(1)) if match else -1
    return TFLMResult([np.concatenate(p) for p in zip(*outs, strict=True)], arena)

