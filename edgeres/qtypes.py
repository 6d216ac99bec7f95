"""Quantization types: what a tensor's integer format is (QSpec) and its exact numbers (QParams).

Every scale is stored as float32, because that is what ONNX and TFLite files hold; all
arithmetic that turns a scale into integers uses those float32 values, so the torch
simulation, the ONNX file and the TFLite file agree on every integer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class QSpec:
    """The integer format of a tensor: bit width, signedness, symmetry and granularity.

    ``axis`` is None for per-tensor quantization, else the channel axis (weights: 0 for
    OIHW convs and [out, in] linears). ``narrow_range`` drops the most negative code
    (int8 weights in [-127, 127]), as TFLite requires for weights.
    """

    bits: int = 8
    signed: bool = True
    symmetric: bool = False
    axis: int | None = None
    narrow_range: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 32:
            raise ValueError(f"QSpec.bits must be in [2, 32], got {self.bits}")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        low = -(2 ** (self.bits - 1))
        return low + 1 if self.narrow_range else low

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def storage_dtype(self) -> np.dtype:
        """The smallest numpy dtype that holds the codes (int4 codes live in int8 storage)."""
        if self.bits <= 8:
            return np.dtype(np.int8 if self.signed else np.uint8)
        if self.bits <= 16:
            return np.dtype(np.int16 if self.signed else np.uint16)
        return np.dtype(np.int32 if self.signed else np.uint32)

    def describe(self) -> str:
        kind = "int" if self.signed else "uint"
        gran = f"per-channel(axis={self.axis})" if self.per_channel else "per-tensor"
        sym = "symmetric" if self.symmetric else "asymmetric"
        return f"{kind}{self.bits} {sym} {gran}"


@dataclass(frozen=True, eq=False)
class QParams:
    """Exact quantization numbers of one tensor: ``real = scale * (q - zero_point)``.

    ``scale`` is float32 and ``zero_point`` int64, each of shape [] (per-tensor) or [C].
    """

    spec: QSpec
    scale: np.ndarray
    zero_point: np.ndarray

    def __post_init__(self) -> None:
        scale = np.asarray(self.scale, dtype=np.float32)
        zp = np.asarray(self.zero_point, dtype=np.int64)
        if scale.shape != zp.shape:
            raise ValueError(f"scale shape {scale.shape} != zero_point shape {zp.shape}")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("scales must be finite and positive")
        if np.any(zp < self.spec.qmin) or np.any(zp > self.spec.qmax):
            raise ValueError(f"zero point outside [{self.spec.qmin}, {self.spec.qmax}]")
        if self.spec.per_channel != (scale.ndim == 1):
            raise ValueError("per-channel QSpec needs 1-D scales; per-tensor needs scalars")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zp)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QParams)
            and self.spec == other.spec
            and np.array_equal(self.scale, other.scale)
            and np.array_equal(self.zero_point, other.zero_point)
        )

    def __hash__(self) -> int:
        return hash((self.spec, self.scale.tobytes(), self.zero_point.tobytes()))

    def _broadcast(self, arr: np.ndarray, ndim: int) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(arr))
        if self.spec.axis is None:
            return t
        shape = [1] * ndim
        shape[self.spec.axis] = -1
        return t.reshape(shape)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Real values -> integer codes (as int64), round half to even, saturating.

        Division by the float32 scale, as ONNX QuantizeLinear specifies.
        """
        scale = self._broadcast(self.scale, x.dim()).to(
            x.dtype if x.is_floating_point() else torch.float64
        )
        zp = self._broadcast(self.zero_point, x.dim())
        q = torch.round(x / scale) + zp
        return q.clamp(self.spec.qmin, self.spec.qmax).to(torch.int64)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        """Integer codes -> real values in float64 (exact for every code of <= 32 bits)."""
        scale = self._broadcast(self.scale, q.dim()).to(torch.float64)
        zp = self._broadcast(self.zero_point, q.dim())
        return (q.to(torch.int64) - zp).to(torch.float64) * scale

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """quantize then dequantize: the value a runtime sees for this tensor.

        Same numbers as ``dequantize(quantize(x))`` without the int64 / float64 round trip
        (4x faster on activations): codes of <= 16 bits are exact in float32, and in float32
        ``(q - zp) * scale`` is the exact product rounded once, as the float64 product cast
        to float32 is.
        """
        if self.spec.bits > 16 or x.dtype not in (torch.float32, torch.float64):
            return self.dequantize(self.quantize(x.to(torch.float32))).to(x.dtype)
        scale = self._broadcast(self.scale, x.dim())
        zp = self._broadcast(self.zero_point.astype(np.float32), x.dim())
        # x itself is the caller's; a float32 copy of float64 x is ours to overwrite (one
        # allocation instead of three)
        own = x.dtype != torch.float32
        q = x.to(torch.float32).div_(scale) if own else torch.div(x, scale)
        q = q.round_().add_(zp).clamp_(self.spec.qmin, self.spec.qmax).sub_(zp)
        if not own:
            return q.mul_(scale)
        return q.to(torch.float64).mul_(scale.to(torch.float64))

    def to_json(self) -> dict:
        return {
            "bits": self.spec.bits,
            "signed": self.spec.signed,
            "symmetric": self.spec.symmetric,
            "axis": self.spec.axis,
            "narrow_range": self.spec.narrow_range,
            "scale": self.scale.tolist(),
            "zero_point": self.zero_point.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> QParams:
        spec = QSpec(d["bits"], d["signed"], d["symmetric"], d["axis"], d["narrow_range"])
        return cls(spec, np.asarray(d["scale"], np.float32), np.asarray(d["zero_point"], np.int64))


def bias_qparams(input_qp: QParams, weight_qp: QParams) -> QParams:
    """int32 bias whose scale is input scale x weight scale, zero point 0 (TFLite and ONNX rule)."""
    scale = (input_qp.scale.astype(np.float32) * weight_qp.scale.astype(np.float32)).astype(
        np.float32
    )
    axis = 0 if scale.ndim == 1 else None
    return QParams(QSpec(32, True, True, axis), scale, np.zeros(scale.shape, np.int64))
