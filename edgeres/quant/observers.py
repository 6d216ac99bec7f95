"""Activation range observers: min-max, percentile, MSE-optimal and entropy (KL).

One pass over the calibration data records exact min/max and a random sample of values per
tensor; a 2048-bin histogram of the sample over [min, max] feeds percentile / MSE / entropy.
The histogram search is hand-written because no maintained library exposes it as a plain
function over a histogram (ORT's and TensorRT's calibrators are tied to their own graphs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

BINS = 2048


SAMPLES_PER_BATCH = 1 << 16


@dataclass
class TensorStats:
    """Running statistics of one activation tensor over the calibration set.

    One pass: exact min/max, per-channel sums (for bias correction) and a seeded random
    sample of values; the histogram the range searches read is built from the sample at the
    end (a second pass over the data would double the cost of calibration).
    """

    lo: float = float("inf")
    hi: float = float("-inf")
    hist: np.ndarray | None = None
    channel_sum: Tensor | None = None  # per-channel sum over N, H, W (for bias correction)
    count: int = 0
    samples: list[Tensor] = field(default_factory=list)
    # per_channel: also keep each channel's min/max and the channel of every sample, so the
    # statistics of the tensor divided channel-wise by s (activation smoothing) follow
    # without another pass over the data (up to float rounding)
    per_channel: bool = False
    channel_lo: Tensor | None = None
    channel_hi: Tensor | None = None
    sample_channels: list[Tensor] = field(default_factory=list)

    def update_range(self, x: Tensor) -> None:
        if self.per_channel and x.dim() >= 2:
            dims = [d for d in range(x.dim()) if d != 1]
            c_lo = x.detach().amin(dim=dims).to(torch.float64)
            c_hi = x.detach().amax(dim=dims).to(torch.float64)
            self.channel_lo = c_lo if self.channel_lo is None else torch.minimum(
                self.channel_lo, c_lo)
            self.channel_hi = c_hi if self.channel_hi is None else torch.maximum(
                self.channel_hi, c_hi)
            lo, hi = c_lo.min(), c_hi.max()  # exact: no second pass over the tensor
        else:
            lo, hi = torch.aminmax(x.detach())
        lo_f, hi_f = float(lo), float(hi)
        if not (np.isfinite(lo_f) and np.isfinite(hi_f)):
            raise ValueError("non-finite activation")
        self.lo = min(self.lo, lo_f)
        self.hi = max(self.hi, hi_f)

    def update_samples(self, x: Tensor, gen: torch.Generator) -> None:
        flat = x.detach().reshape(-1)
        idx = None
        if flat.numel() > SAMPLES_PER_BATCH:
            idx = torch.randint(flat.numel(), (SAMPLES_PER_BATCH,), generator=gen)
            flat = flat[idx]
        self.samples.append(flat.to(torch.float32).clone())
        if self.per_channel and x.dim() >= 2:
            inner = x[0, 0].numel()  # elements per channel of one sample (row-major order)
            pos = idx if idx is not None else torch.arange(flat.numel())
            self.sample_channels.append((pos // inner % x.shape[1]).to(torch.int32))

    def channel_absmax(self) -> Tensor:
        """Each channel's largest |value| (needs ``per_channel``)."""
        if self.channel_lo is None or self.channel_hi is None:
            raise ValueError("channel ranges were not tracked for this tensor")
        return torch.maximum(self.channel_lo.abs(), self.channel_hi.abs())

    def divided(self, s: Tensor) -> TensorStats:
        """The statistics of this tensor with channel j divided by ``s[j] > 0``: what a pass
        over the smoothed graph would observe (same samples, same order), up to float
        rounding. Call before :meth:`finalize`."""
        if (self.channel_lo is None or self.channel_hi is None
                or len(self.sample_channels) != len(self.samples)):
            raise ValueError("channel ranges were not tracked for this tensor")
        s = s.to(torch.float64)
        lo, hi = self.channel_lo / s, self.channel_hi / s
        samples = [(v.to(torch.float64) / s[c.long()]).to(torch.float32)
                   for v, c in zip(self.samples, self.sample_channels, strict=True)]
        out = TensorStats(lo=float(lo.min()), hi=float(hi.max()), count=self.count,
                          samples=samples, per_channel=True, channel_lo=lo, channel_hi=hi,
                          sample_channels=list(self.sample_channels))
        if self.channel_sum is not None:
            out.channel_sum = self.channel_sum / s
        return out

    def update_channel_mean(self, x: Tensor) -> None:
        if x.dim() < 2:
            return
        dims = [d for d in range(x.dim()) if d != 1]
        s = x.detach().sum(dim=dims).to(torch.float64)
        self.channel_sum = s if self.channel_sum is None else self.channel_sum + s
        self.count += x.numel() // x.shape[1]

    def channel_mean(self) -> Tensor | None:
        if self.channel_sum is None or self.count == 0:
            return None
        return self.channel_sum / self.count

    def finalize(self) -> None:
        """Histogram of the sampled values over the exact [min, max] range."""
        if self.samples:
            self.update_hist(torch.cat(self.samples))
            self.samples, self.sample_channels = [], []

    def update_hist(self, x: Tensor) -> None:
        lo, hi = self.bin_range()
        h = torch.histc(x.to(torch.float32).flatten(), BINS, lo, hi).to(torch.float64).numpy()
        self.hist = h if self.hist is None else self.hist + h

    def bin_range(self) -> tuple[float, float]:
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi - lo < 1e-12:
            hi = lo + 1e-6
        return lo, hi


def _edges(stats: TensorStats) -> np.ndarray:
    lo, hi = stats.bin_range()
    return np.linspace(lo, hi, BINS + 1)


def percentile_range(stats: TensorStats, pct: float) -> tuple[float, float]:
    """Clip the (100-pct)/2 % tails on each side of the histogram (only sides with mass)."""
    if stats.hist is None:
        return stats.lo, stats.hi
    cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1.0)
    edges = _edges(stats)
    tail = (100.0 - pct) / 100.0
    lo_i = int(np.searchsorted(cdf, tail / 2 if stats.lo < 0 else 0.0))
    hi_i = int(np.searchsorted(cdf, 1.0 - (tail / 2 if stats.lo < 0 else tail)))
    lo = edges[lo_i] if stats.lo < 0 else stats.lo
    hi = edges[min(hi_i + 1, BINS)]
    return min(lo, 0.0), max(hi, 0.0)


def _quant_error(centers: np.ndarray, hist: np.ndarray, lo: float, hi: float, levels: int) -> float:
    scale = max(hi - lo, 1e-12) / (levels - 1)
    q = np.clip(np.round((centers - lo) / scale), 0, levels - 1) * scale + lo
    return float(np.sum(hist * (centers - q) ** 2))


def mse_range(stats: TensorStats, levels: int, steps: int = 100) -> tuple[float, float]:
    """The clip range (shrinking both ends together) with the least expected squared error."""
    if stats.hist is None:
        return stats.lo, stats.hi
    edges = _edges(stats)
    centers = (edges[:-1] + edges[1:]) / 2
    lo0, hi0 = stats.bin_range()
    best, best_err = (lo0, hi0), float("inf")
    for r in np.linspace(0.3, 1.0, steps):
        lo, hi = lo0 * r, hi0 * r
        err = _quant_error(centers, stats.hist, lo, hi, levels)
        if err < best_err:
            best, best_err = (lo, hi), err
    return best


def _folded_abs_hist(stats: TensorStats) -> tuple[np.ndarray, float]:
    """The histogram of |x| at the sample histogram's own bin width, and its top edge.

    Rebinning into fewer bins (or finer ones: empty bins between aliased ones) would change
    which thresholds the KL search can tell apart."""
    edges = _edges(stats)
    width = edges[1] - edges[0]
    amax = max(abs(stats.lo), abs(stats.hi), 1e-12)
    bins = int(min(BINS, max(1, round(amax / width))))
    centers = np.abs((edges[:-1] + edges[1:]) / 2)
    hist, _ = np.histogram(centers, bins=bins, range=(0.0, amax), weights=stats.hist)
    return hist, amax


def _kl_to_quantized(hist: np.ndarray, i: int, n_q: int) -> float:
    """KL(P || Q) of TensorRT's calibration for threshold bin ``i``: P is the histogram up to
    ``i`` with the clipped tail added to its last bin; Q merges those ``i`` bins into
    ``n_q`` levels and spreads each level's mass evenly over its non-empty bins."""
    p = hist[:i].astype(np.float64)
    p[-1] += hist[i:].sum()
    level = (np.arange(i) * n_q) // i  # the quantized level each bin falls into
    filled = hist[:i] > 0
    level_mass = np.bincount(level, weights=hist[:i], minlength=n_q)
    level_bins = np.bincount(level, weights=filled, minlength=n_q)
    q = np.where(filled, level_mass[level] / np.maximum(level_bins[level], 1), 0.0)
    p_n, q_n = p / p.sum(), q / max(q.sum(), 1e-300)
    mask = p_n > 0
    if (q_n[mask] == 0).any():  # the clipped tail landed in an empty bin: P not covered by Q
        return float("inf")
    return float(np.sum(p_n[mask] * np.log(p_n[mask] / q_n[mask])))


def entropy_range(stats: TensorStats, levels: int) -> tuple[float, float]:
    """TensorRT-style KL calibration: the |x| threshold whose quantized histogram diverges least.

    The algorithm of NVIDIA's calibrators (TensorRT, pytorch-quantization / ModelOpt
    ``_compute_amax_entropy``): a histogram of |x| at full resolution, bin 0 flattened to
    bin 1, candidate thresholds from bin ``levels // 2`` up, ties to the widest. The
    threshold clips both sides symmetrically; ranges never extend past the observed ones.
    Histograms with spikes (constant image regions give many identical activations) make
    the KL jump between neighbouring thresholds, and it then clips hard: on this project's
    models it is the weakest observer (BENCHMARKS.md), kept for parity with those tools.
    """
    if stats.hist is None or stats.hist.sum() == 0:
        return stats.lo, stats.hi
    hist, amax = _folded_abs_hist(stats)
    n_q = max((levels // 2) if stats.lo < 0 else levels, 2)
    start = max(levels // 2, 1)
    if len(hist) <= start:  # too few bins to tell thresholds apart
        return stats.lo, stats.hi
    t = amax * kl_threshold_bin(hist, n_q, start) / len(hist)
    return max(stats.lo, -t), min(stats.hi, t)


def kl_threshold_bin(abs_hist: np.ndarray, n_q: int, start: int) -> int:
    """The number of |x| histogram bins to keep (threshold = that many bin widths) whose
    ``n_q``-level quantization diverges least from the histogram, clipped tail included."""
    hist = abs_hist.astype(np.float64)
    # exact zeros (ReLU's clamped half) cost nothing, zero being on the grid; left in, their
    # spike in bin 0 dominates the KL and pulls the threshold down to where bin 0 is a level
    # of its own. NVIDIA's calibrators flatten it the same way.
    if len(hist) > 1:
        hist[0] = hist[1]
    best_i, best_kl = len(hist), float("inf")
    for i in range(start, len(hist) + 1):
        kl = _kl_to_quantized(hist, i, n_q) if hist[:i].sum() > 0 else float("inf")
        if kl <= best_kl:  # ties: the widest threshold
            best_i, best_kl = i, kl
    return best_i


def choose_range(stats: TensorStats, method: str, levels: int, pct: float) -> tuple[float, float]:
    if method == "minmax":
        return stats.lo, stats.hi
    if method == "percentile":
        return percentile_range(stats, pct)
    if method == "mse":
        return mse_range(stats, levels)
    if method == "entropy":
        return entropy_range(stats, levels)
    raise ValueError(f"unknown activation observer '{method}'")
