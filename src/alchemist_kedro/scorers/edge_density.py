"""edge_density: fraction of pixels Canny marks, thresholds from Otsu (method.md, "Heuristic scores"); higher = busier.

cv2.Canny(gray8, 0.5 T, T) with T = Otsu's threshold of the same 8-bit grayscale image.
"""
from __future__ import annotations

import cv2
import numpy as np

from alchemist_kedro.scorers.base import ScoreBatch, register_scorer
from alchemist_kedro.scorers.clarity import ImageStatisticScorer
from alchemist_kedro.scorers.decode import grayscale8_batch


def edge_fraction(gray8: np.ndarray) -> float:
    otsu_threshold, _ = cv2.threshold(gray8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    edges = cv2.Canny(gray8, 0.5 * otsu_threshold, otsu_threshold)
    return float(np.count_nonzero(edges)) / edges.size


@register_scorer
class EdgeDensityScorer(ImageStatisticScorer):
    name = "edge_density"
    higher_is_better = True

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        grays8 = grayscale8_batch(batch, self.short_side, self.interpolation)
        return np.array([edge_fraction(gray8) for gray8 in grays8], dtype=np.float64)
