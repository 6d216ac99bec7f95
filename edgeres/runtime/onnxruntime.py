"""ONNX Runtime runner: run an exported model, and show which kernels ORT really uses.

``fused_op_counts`` is the proof that a QDQ file runs on integer kernels: it saves ORT's
optimized graph and counts its ops (QLinearConv, QLinearAdd, QGemm, ...), rather than trusting
the file's layout.

ORT's integer kernels for uint8 activations x int8 weights (U8S8) saturate on x86 CPUs
without VNNI (:mod:`edgeres.export.onnx_uint8`); ARM CPUs (sdot/udot or widening NEON) and
x86 CPUs with VNNI (VPDPBUSD accumulates in int32) are exact. Accuracy checks here must
report what the target device computes, not this host's kernel artifact, so on such a host
:func:`run_onnx` runs the file with its int8 weight codes stored as uint8 with zero point +
128 (:func:`weights_as_uint8`): the same real numbers, on ORT's exact U8U8 kernels. The file
that ships is untouched; :func:`saturation_note` says when a check ran this way. (The
``x86-cpu-onnx`` target ships its files that way.)
"""

from __future__ import annotations

import functools
import platform
import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from edgeres.errors import UserError
from edgeres.export.onnx_uint8 import has_int8_weights, weights_as_uint8
from edgeres.signals import interrupt_status

X86 = ("x86_64", "amd64", "i386", "i686", "x86")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni"})


@functools.lru_cache(maxsize=1)
def u8s8_saturates_here() -> bool:
    """Whether ORT's U8S8 integer kernels can saturate on this CPU: x86 without VNNI.

    Read from /proc/cpuinfo; an x86 host whose flags cannot be read counts as saturating
    (the exact path costs only speed), any other architecture as not.
    """
    if platform.machine().lower() not in X86:
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), None)
    return flags is None or not VNNI_FLAGS & set(flags)


def saturation_note(model: Path | str | None = None) -> str | None:
    """One line for reports when checks here run int8 weights as uint8 (None elsewhere, and
    for a ``model`` whose weights are not int8, e.g. an ``x86-cpu-onnx`` file)."""
    if not u8s8_saturates_here():
        return None
    if model is not None and not has_int8_weights(onnx.load(str(model))):
        return None
    return ("this host is an x86 CPU without VNNI, where ONNX Runtime's uint8 x int8 kernels "
            "saturate (VPMADDUBSW): checks ran the .onnx with its int8 weights stored as "
            "uint8 + 128 (the same values, ORT's U8U8 kernels), so they report what an ARM "
            "CPU or a VNNI x86 computes; to deploy on such an x86 CPU, convert for the "
            "x86-cpu-onnx target, which stores the weights that way")


def _exact_source(src: str | bytes) -> str | bytes:
    """``src``, or its bytes with int8 weights as uint8 where ORT's U8S8 kernels saturate."""
    if not u8s8_saturates_here():
        return src
    model = onnx.load_from_string(src) if isinstance(src, bytes) else onnx.load(src)
    return model.SerializeToString() if weights_as_uint8(model) else src


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        if (status := interrupt_status(exc)) is not None:  # Ctrl-C / SIGTERM in its import
            raise KeyboardInterrupt if status == 130 else SystemExit(status) from None
        raise UserError(
            "onnxruntime is not installed; install it with `pip install onnxruntime` "
            "to run or check ONNX models"
        ) from exc
    return onnxruntime


def _source(model: Path | str | bytes) -> str | bytes:
    if isinstance(model, bytes):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserError(f"ONNX model '{path}' does not exist")
    return str(path)


def session(model: Path | str | bytes, threads: int = 1, optimized_path: Path | None = None,
            exact: bool = True):
    """An ``InferenceSession`` on the CPU provider with all graph optimizations on.

    ``optimized_path`` saves the graph ORT actually runs (after its QDQ fusions). ``exact``
    runs int8 weights as uint8 where this host's U8S8 kernels saturate (module docstring);
    ``exact=False`` runs the file as it is, e.g. to time it.
    """
    ort = _ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    src = _source(model)
    try:
        src = _exact_source(src) if exact else src
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped failures
        where = "the given bytes" if isinstance(src, bytes) else f"'{src}'"
        raise UserError(f"ONNX Runtime cannot load {where}: {exc}") from exc


def run_onnx(model: Path | str | bytes, inputs: list[np.ndarray], threads: int = 1,
             optimized_path: Path | None = None, exact: bool = True) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` (in graph-input order); returns the outputs in order.

    ``exact``: see :func:`session` (int8 weights run as uint8 where U8S8 kernels saturate).
    """
    sess = session(model, threads, optimized_path, exact)
    expected = sess.get_inputs()
    if len(inputs) != len(expected):
        names = ", ".join(i.name for i in expected)
        raise UserError(f"ONNX model takes {len(expected)} inputs ({names}); got {len(inputs)}")
    feed = {info.name: np.asarray(x) for info, x in zip(expected, inputs, strict=True)}
    return [np.asarray(y) for y in sess.run(None, feed)]


def fused_op_counts(model: Path | str | bytes, threads: int = 1) -> dict[str, int]:
    """Op types (and counts) in the graph ORT runs after optimization, e.g. ``QLinearConv``."""
    with tempfile.TemporaryDirectory(prefix="edgeres-ort-") as tmp:
        opt = Path(tmp) / "optimized.onnx"
        session(model, threads, opt, exact=False)  # the file's own kernels
        graph = onnx.load(str(opt), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node)
    return dict(sorted(counts.items()))
