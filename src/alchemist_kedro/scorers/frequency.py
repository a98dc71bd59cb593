"""frequency: share of spectral power above a radial cut-off (method.md, "Heuristic scores"); higher = more detail.

P = |FFT2|^2 of the mean-subtracted, Hann-windowed grayscale image; score = sum of P at radial frequency > cutoff
(cycles/pixel) over the sum of P at all non-zero frequencies. The paper cites Castleman without a formula: this is
our definition. A flat image has no power at all and scores 0.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from alchemist_kedro.scorers.base import ScoreBatch, register_scorer
from alchemist_kedro.scorers.clarity import ImageStatisticScorer


@lru_cache(maxsize=32)
def _spectral_masks(height: int, width: int, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hann window (H, W) and the weighted high / non-zero frequency masks, flattened to rfft2's (H * (W//2+1),)."""
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    # rfft2 keeps only fx >= 0: every column except fx = 0 (and fx = 0.5 for even widths) stands for two.
    column_weight = np.full(fx.shape, 2.0)
    column_weight[0, 0] = 1.0
    if width % 2 == 0:
        column_weight[0, -1] = 1.0
    high = (column_weight * (radius > cutoff)).astype(np.float32).ravel()
    nonzero = (column_weight * (radius > 0)).astype(np.float32).ravel()
    return window, high, nonzero


def high_frequency_share(stack: np.ndarray, cutoff: float, workers: int = 1, chunk: int = 64) -> np.ndarray:
    """(B, H, W) float images -> (B,) power share above `cutoff` cycles/pixel; 0 where there is no power.

    float32 FFT (scipy.fft: several times faster than numpy's here; the share's relative error stays ~1e-6), in
    chunks of `chunk` images to bound memory.
    """
    count, height, width = stack.shape
    window, high, nonzero = _spectral_masks(height, width, float(cutoff))
    share = np.zeros(count, dtype=np.float64)
    for start in range(0, count, chunk):
        part = stack[start : start + chunk]
        # Mean in float64: a flat float32 image then centres to exactly 0 (no rounding-noise "detail").
        centred = (part - part.mean(axis=(1, 2), keepdims=True, dtype=np.float64)).astype(np.float32)
        spectrum = scipy.fft.rfft2(centred * window, axes=(1, 2), workers=workers)
        power = (spectrum.real**2 + spectrum.imag**2).reshape(len(part), -1)
        high_power = (power @ high).astype(np.float64)
        total_power = (power @ nonzero).astype(np.float64)
        has_power = total_power > 0.0
        share[start : start + len(part)][has_power] = high_power[has_power] / total_power[has_power]
    return share


@register_scorer
class FrequencyScorer(ImageStatisticScorer):
    name = "frequency"
    higher_is_better = True

    def __init__(
        self, cutoff: float = 0.25, short_side: int | None = 256, interpolation: str = "bilinear", threads: int = 1
    ) -> None:
        if not 0.0 < cutoff < np.sqrt(0.5):
            raise ValueError(f"frequency: cutoff must be in (0, 0.707) cycles/pixel, got {cutoff!r}")
        super().__init__(short_side=short_side, interpolation=interpolation, cutoff=float(cutoff), threads=threads)
        self.cutoff = float(cutoff)
        self.threads = max(1, int(threads or 1))

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        grays = self.grayscale(batch)
        scores = np.zeros(len(grays), dtype=np.float64)
        # One FFT call per group of equal-size images (all of them, for a normalised corpus).
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, gray in enumerate(grays):
            by_shape.setdefault(gray.shape, []).append(index)
        for indices in by_shape.values():
            stack = np.stack([grays[i] for i in indices])
            scores[indices] = high_frequency_share(stack, self.cutoff, workers=self.threads)
        return scores
