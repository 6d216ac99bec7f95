"""ONNX Runtime runner: run an exported model, and show which kernels ORT really uses.

``fused_op_counts`` is the proof that a QDQ file runs on integer kernels: it saves ORT's
optimized graph and counts its ops (QLinearConv, QLinearAdd, QGemm, ...), rather than trusting
the file's layout.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx

from edgeres.errors import UserError


def _ort() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
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


def session(model: Path | str | bytes, threads: int = 1, optimized_path: Path | None = None):
    """An ``InferenceSession`` on the CPU provider with all graph optimizations on.

    ``optimized_path`` saves the graph ORT actually runs (after its QDQ fusions).
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
        return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own untyped failures
        where = "the given bytes" if isinstance(src, bytes) else f"'{src}'"
        raise UserError(f"ONNX Runtime cannot load {where}: {exc}") from exc


def run_onnx(model: Path | str | bytes, inputs: list[np.ndarray], threads: int = 1,
             optimized_path: Path | None = None) -> list[np.ndarray]:
    """Run ``model`` on ``inputs`` (in graph-input order); returns the outputs in order."""
    sess = session(model, threads, optimized_path)
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
        session(model, threads, opt)
        graph = onnx.load(str(opt), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node)
    return dict(sorted(counts.items()))
