"""frequency: share of spectral power above a radial cut-off (method.md, "Heuristic scores"); higher = more detail.

P = |FFT2|^2 of the mean-subtracted, Hann-windowed grayscale image; score = sum of P at radial frequency > cutoff
(cycles/pixel) over the sum of P at all non-zero frequencies. The paper cites Castleman without a formula: this is
our definition. A flat image has no power at all and scores 0.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import scipy.fft

from alchemist_kedro.scorers.base import ScoreBatch, register_scorer
from alchemist_kedro.scorers.clarity import ImageStatisticScorer


@lru_cache(maxsize=32)
def _spectral_masks(height: int, width: int, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Hann window (H, W), and the (2 * H * (W//2+1), 2) weights whose columns sum the high / non-zero power.

    The weights act on rfft2's output viewed as interleaved float32 (re, im) pairs and squared in place: each
    frequency's weight appears twice, once for re^2 and once for im^2, so one matmul gives both sums of |F|^2.
    """
    window = np.outer(np.hanning(height), np.hanning(width)).astype(np.float32)
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    # rfft2 keeps only fx >= 0: every column except fx = 0 (and fx = 0.5 for even widths) stands for two.
    column_weight = np.full(fx.shape, 2.0)
    column_weight[0, 0] = 1.0
    if width % 2 == 0:
        column_weight[0, -1] = 1.0
    high = (column_weight * (radius > cutoff)).ravel()
    nonzero = (column_weight * (radius > 0)).ravel()
    weights = np.repeat(np.stack([high, nonzero], axis=1), 2, axis=0).astype(np.float32)
    window.flags.writeable = False  # cached and shared: nobody may edit them in place
    weights.flags.writeable = False
    return window, weights


# Images per FFT call: enough to amortise the call, few enough that the working buffers (~8 MiB: 4 images at
# 512 px, 32 at 256 px) stay in cache. Whole 64-image stacks at 512 px meant ~100 MB temporaries re-faulted from
# the OS on every chunk, which cost more than the FFT itself.
_CHUNK_BYTES = 8 << 20


def high_frequency_share(
    stack: np.ndarray | Sequence[np.ndarray], cutoff: float, workers: int = 1, chunk: int | None = None
) -> np.ndarray:
    """(B, H, W) float images (an array, or a sequence of equal-shape 2-D arrays) -> (B,) power share above
    `cutoff` cycles/pixel; 0 where there is no power.

    float32 FFT (scipy.fft: several times faster than numpy's here; the share's relative error stays ~1e-6), in
    chunks of `chunk` images (default: by size, see _CHUNK_BYTES) through one reused float32 buffer.
    """
    count = len(stack)
    if count == 0:
        return np.zeros(0, dtype=np.float64)
    height, width = np.shape(stack[0])
    window, weights = _spectral_masks(height, width, float(cutoff))
    if chunk is None:
        chunk = max(1, _CHUNK_BYTES // (4 * height * width))
    chunk = max(1, min(int(chunk), count))
    buffer = np.empty((chunk, height, width), dtype=np.float32)
    share = np.zeros(count, dtype=np.float64)
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        part = buffer[:size]
        for offset in range(size):
            image = stack[start + offset]
            if np.shape(image) != (height, width):
                raise ValueError(f"high_frequency_share: image {start + offset} is {np.shape(image)}, not "
                                 f"{(height, width)}: pass equal-size images")
            # Mean in float64: a flat float32 image's mean is then exactly its value, so it centres to exactly 0
            # (no rounding-noise "detail"). The subtraction itself in float32, straight into the buffer: a float64
            # subtraction only moved each value by < 1 float32 ulp, at 4x the cost.
            np.subtract(image, np.float32(np.mean(image, dtype=np.float64)), out=part[offset], casting="same_kind")
        part *= window
        spectrum = scipy.fft.rfft2(part, axes=(1, 2), workers=workers)
        # |F|^2 without .real / .imag temporaries: square the interleaved (re, im) floats in place.
        squares = spectrum.view(np.float32).reshape(size, -1)
        np.square(squares, out=squares)
        sums = (squares @ weights).astype(np.float64)  # (size, 2): high, non-zero
        high_power, total_power = sums[:, 0], sums[:, 1]
        has_power = total_power > 0.0
        share[start : start + size][has_power] = high_power[has_power] / total_power[has_power]
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
            # The list itself, not np.stack of it: a stacked copy of a batch at 512 px is 256 MB written once
            # and read once; high_frequency_share copies each image straight into its small reused buffer.
            scores[indices] = high_frequency_share([grays[i] for i in indices], self.cutoff, workers=self.threads)
        return scores
