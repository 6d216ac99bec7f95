"""The entropy (KL) observer against a plain transcription of NVIDIA's calibrator.

The reference below follows ``_compute_amax_entropy`` of NVIDIA's pytorch-quantization /
ModelOpt line by line (loops, ``np.digitize`` for the levels, scipy-style KL with ``inf``
where Q misses P's mass); :func:`edgeres.quant.observers.kl_threshold_bin` is the vectorized
version that calibration can afford (every threshold of a 2048-bin histogram, ~100 tensors).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from edgeres.quant.observers import TensorStats, choose_range, kl_threshold_bin


def nvidia_kl_threshold_bin(calib_hist: np.ndarray, nbins: int, start_bin: int) -> int:
    """``_compute_amax_entropy`` (stride 1), returning the bin count instead of the edge."""
    bins = calib_hist.astype(np.float64).copy()
    bins[0] = bins[1]
    divergences, arguments = [], []
    for i in range(start_bin, len(bins) + 1):
        new_density_counts = np.zeros(nbins)
        space = np.linspace(0, i, num=nbins + 1)
        digitized_space = np.digitize(range(i), space) - 1
        digitized_space[bins[:i] == 0] = -1
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density_counts[digitized] += bins[idx]
        for key, val in Counter(digitized_space).items():
            if key != -1:
                new_density_counts[key] = new_density_counts[key] / val
        new_density = np.zeros(i)
        for idx, digitized in enumerate(digitized_space):
            if digitized != -1:
                new_density[idx] = new_density_counts[digitized]
        reference_density = bins[:i].copy()
        reference_density[-1] += bins[i:].sum()
        p = reference_density / reference_density.sum()
        q = new_density / new_density.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p / np.where(q > 0, q, 0.0)), 0.0)
        divergences.append(float(terms.sum()))
        arguments.append(i)
    divergences = np.array(divergences)
    last_argmin = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return arguments[last_argmin]


@pytest.mark.parametrize("seed", range(6))
def test_kl_threshold_matches_nvidia_reference(seed: int) -> None:
    """Same threshold bin on histograms with a zero spike, other spikes, empty bins and a
    long tail, for signed (128 levels) and unsigned (256 levels) tensors."""
    rng = np.random.default_rng(seed)
    n = 400
    hist = rng.poisson(2000 * np.exp(-np.arange(n) / rng.uniform(40, 160))).astype(float)
    hist[0] += rng.uniform(0, 5) * hist.sum()  # ReLU's exact zeros
    hist[rng.integers(1, n, 3)] += rng.uniform(0.01, 0.1) * hist.sum()  # constant regions
    hist[rng.integers(1, n, 20)] = 0.0
    for n_q in (128, 256):
        assert kl_threshold_bin(hist, n_q, 128) == nvidia_kl_threshold_bin(hist, n_q, 128)


def _stats(x: torch.Tensor) -> TensorStats:
    s = TensorStats()
    s.update_range(x)
    s.update_hist(x)
    return s


def test_entropy_keeps_what_it_should() -> None:
    """No clipping of a flat distribution; a ReLU6 output (half zeros, saturated mass at 6)
    keeps its saturation level; a far outlier is clipped."""
    g = torch.Generator().manual_seed(0)
    flat = torch.rand(200_000, generator=g) * 6
    assert choose_range(_stats(flat), "entropy", 256, 99.99)[1] > 5.9
    relu6 = (torch.randn(200_000, generator=g) * 3).clamp(0, 6)
    assert choose_range(_stats(relu6), "entropy", 256, 99.99)[1] > 5.9
    outlier = torch.cat([torch.randn(200_000, generator=g), torch.tensor([40.0])])
    lo, hi = choose_range(_stats(outlier), "entropy", 256, 99.99)
    assert -40 < lo < -2 and 2 < hi < 40


@pytest.mark.parametrize("per_channel", [False, True])
def test_range_is_exact_min_max_and_rejects_non_finite(per_channel: bool) -> None:
    """Per-channel stats take the tensor's range from the channel ranges (one reduction
    pass instead of two); both paths must give the exact min/max and refuse NaN/Inf."""
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 8, 5, 5, generator=gen, dtype=torch.float64) * (i + 1)
               for i in range(3)]
    stats = TensorStats(per_channel=per_channel)
    for b in batches:
        stats.update_range(b)
    every = torch.cat(batches)
    assert (stats.lo, stats.hi) == (float(every.min()), float(every.max()))
    if per_channel:
        assert torch.equal(stats.channel_lo, every.amin(dim=(0, 2, 3)))
        assert torch.equal(stats.channel_hi, every.amax(dim=(0, 2, 3)))
    for bad in (float("nan"), float("inf")):
        x = batches[0].clone()
        x[1, 2, 3, 4] = bad
        with pytest.raises(ValueError, match="non-finite"):
            TensorStats(per_channel=per_channel).update_range(x)
