"""Quantization arithmetic: properties over many shapes and values (hypothesis)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeres.qtypes import QParams, QSpec
from edgeres.quant.primitives import qparams_from_range, weight_qparams

specs = st.sampled_from(
    [
        QSpec(8, True),
        QSpec(8, False),
        QSpec(16, True, True),
        QSpec(4, True, True, narrow_range=True),
        QSpec(8, True, True),
    ]
)


@settings(max_examples=60, deadline=None)
@given(spec=specs, lo=st.floats(-50, 0), span=st.floats(1e-3, 100), seed=st.integers(0, 99))
def test_roundtrip_error_within_half_step(spec: QSpec, lo: float, span: float, seed: int) -> None:
    qp = qparams_from_range(spec, lo, lo + span)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(256, generator=g, dtype=torch.float64) * span + lo
    lo_q, hi_q = (qp.dequantize(torch.tensor(v)) for v in (spec.qmin, spec.qmax))
    inside = (x >= lo_q) & (x <= hi_q)
    err = (qp.fake_quantize(x.float()).double() - x).abs()
    # half a step, plus the float32 rounding of x itself (what a runtime sees)
    bound = float(qp.scale) / 2 * (1 + 1e-5) + 2.4e-7 * (x.abs() + 1)
    assert torch.all((err <= bound)[inside])


@settings(max_examples=40, deadline=None)
@given(spec=specs, lo=st.floats(-10, 0), hi=st.floats(0, 10))
def test_fake_quant_is_idempotent_and_zero_is_exact(spec: QSpec, lo: float, hi: float) -> None:
    qp = qparams_from_range(spec, lo, hi)
    x = torch.linspace(lo - 1, hi + 1, 101, dtype=torch.float32)
    once = qp.fake_quantize(x)
    assert torch.equal(qp.fake_quantize(once), once)
    assert float(qp.fake_quantize(torch.zeros(1))[0]) == 0.0


@settings(max_examples=30, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 6, 8]),
    method=st.sampled_from(["minmax", "mse"]),
    seed=st.integers(0, 50),
)
def test_weight_codes_fit_the_spec(bits: int, method: str, seed: int) -> None:
    spec = QSpec(bits, True, True, 0, narrow_range=True)
    w = torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(seed))
    qp = weight_qparams(w, spec, method)
    q = qp.quantize(w)
    assert int(q.min()) >= spec.qmin and int(q.max()) <= spec.qmax
    assert np.all(qp.zero_point == 0) and qp.scale.shape == (6,)


def test_mse_never_worse_than_minmax_at_4_bits() -> None:
    spec = QSpec(4, True, True, 0, narrow_range=True)
    w = torch.randn(32, 64) * torch.linspace(0.1, 3, 64)  # heavy-tailed rows
    err = {
        m: float((weight_qparams(w, spec, m).fake_quantize(w) - w).pow(2).sum())
        for m in ("minmax", "mse")
    }
    assert err["mse"] <= err["minmax"]


def test_qparams_validation() -> None:
    with pytest.raises(ValueError):
        QParams(QSpec(8, True), np.float32(-1.0), np.int64(0))
    with pytest.raises(ValueError):
        QParams(QSpec(8, True), np.float32(1.0), np.int64(200))
    qp = QParams(QSpec(8, True), np.float32(0.5), np.int64(3))
    assert QParams.from_json(qp.to_json()) == qp


def _numpy_fake_quant(x: np.ndarray, qp: QParams, axis: int | None) -> np.ndarray:
    """ONNX QuantizeLinear then DequantizeLinear, written in numpy (float32 division,
    round half to even, saturate; dequantize exactly in float64): the reference."""
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    scale = qp.scale.reshape(shape)
    zp = qp.zero_point.reshape(shape)
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zp, qp.spec.qmin, qp.spec.qmax)
    return (q.astype(np.int64) - zp).astype(np.float64) * scale.astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(spec=specs, per_channel=st.booleans(), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 999))
def test_fake_quantize_matches_quantize_dequantize_reference(
    spec: QSpec, per_channel: bool, dtype: str, seed: int
) -> None:
    """The float32 fast path gives the reference's numbers to the bit, in either dtype."""
    rng = np.random.default_rng(seed)
    axis = 1 if per_channel else None
    qspec = QSpec(spec.bits, spec.signed, spec.symmetric, axis, spec.narrow_range)
    n = 5 if per_channel else ()
    scale = rng.uniform(1e-3, 0.5, n).astype(np.float32)
    # half-steps and their float32 neighbours: where float32 and float64 division round apart
    ties = (rng.integers(-40, 40, (4, 5, 3, 3)) + 0.5) * np.broadcast_to(
        scale.reshape(-1, 1, 1) if per_channel else scale, (5, 3, 3))
    ties = ties.astype(np.float32)
    nudged = np.nextafter(ties, ties + rng.choice([-1.0, 1.0], ties.shape).astype(np.float32))
    noise = rng.standard_normal((4, 5, 3, 3)) * rng.uniform(0.01, 50)
    x = np.concatenate([noise, ties, nudged]).astype(dtype)
    zp = (np.zeros(n, np.int64) if spec.symmetric
          else rng.integers(spec.qmin, spec.qmax + 1, n).astype(np.int64))
    qp = QParams(qspec, scale, zp)
    given = torch.from_numpy(x.copy())
    got = qp.fake_quantize(given)
    want = _numpy_fake_quant(x, qp, axis).astype(dtype)  # float32: the one rounding of a runtime
    assert got.dtype == given.dtype
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(given.numpy(), x)  # works in place only on its own copies
