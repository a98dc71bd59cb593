"""clarity: variance of the 3x3 Laplacian of the grayscale image (method.md, "Heuristic scores"); higher = sharper."""
from __future__ import annotations

import cv2
import numpy as np

from alchemist_kedro.scorers.base import Scorer, ScoreBatch, register_scorer
from alchemist_kedro.scorers.decode import INTERPOLATIONS, grayscale_batch


class ImageStatisticScorer(Scorer):
    """Shared settings of the grayscale image statistics: luma in [0, 1], resized so the short side = short_side."""

    needs = frozenset({"image"})

    def __init__(self, short_side: int | None = 256, interpolation: str = "bilinear", **params) -> None:
        if short_side is not None and (not isinstance(short_side, int) or short_side < 8):
            raise ValueError(f"{self.name}: short_side must be an integer >= 8 or None, got {short_side!r}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"{self.name}: unknown interpolation {interpolation!r}; one of {sorted(INTERPOLATIONS)}")
        super().__init__(short_side=short_side, interpolation=interpolation, **params)
        self.short_side = short_side
        self.interpolation = interpolation

    def grayscale(self, batch: ScoreBatch) -> list[np.ndarray]:
        self.check_batch(batch)
        return grayscale_batch(batch, self.short_side, self.interpolation)


@register_scorer
class ClarityScorer(ImageStatisticScorer):
    name = "clarity"
    higher_is_better = True

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        # cv2.Laplacian's default aperture is the 3x3 kernel [[0,1,0],[1,-4,1],[0,1,0]], border reflect-101.
        # OpenCV 5 has no float32 -> CV_64F Laplacian, hence the float64 copy.
        return np.array(
            [cv2.Laplacian(gray.astype(np.float64), cv2.CV_64F).var() for gray in self.grayscale(batch)],
            dtype=np.float64,
        )
