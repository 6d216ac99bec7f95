"""What every exporter reports: the model's I/O as an app sees it, float islands, file facts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TensorIO:
    """A model input or output as an app sees it: what to feed, how to (de)quantize it.

    ``layout`` is "NHWC" (TFLite images), "NCHW" (ONNX images) or "ND" (the IR's own order);
    ``shape[0]`` is -1 when the batch dimension is dynamic.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class FloatOp:
    """An IR node that computes in float32 inside the integer model, and why."""

    node: str
    op: str
    reason: str


@dataclass(frozen=True)
class ExportInfo:
    """What was written: op counts, size, hash, I/O quantization and the float islands.

    ``opset`` is set by the ONNX exporter, ``tensors`` by the TFLite one.
    """

    path: Path
    io_dtype: str
    ops: dict[str, int]
    size_bytes: int
    sha256: str
    opset: int | None = None
    tensors: int | None = None
    inputs: list[TensorIO] = field(default_factory=list)
    outputs: list[TensorIO] = field(default_factory=list)
    float_ops: list[FloatOp] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d
