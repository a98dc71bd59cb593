"""nsfw: Open-NSFW P(NSFW) from the same ONNX model the features pipeline uses; lower = better."""
from __future__ import annotations

import numpy as np

from alchemist_kedro.scorers.base import Scorer, ScoreBatch, register_scorer


@register_scorer
class NSFWScorer(Scorer):
    name = "nsfw"
    higher_is_better = False
    needs = frozenset({"image"})
    unversioned_params = frozenset({"threads", "onnx_batch_size", "model_path", "device"})

    def __init__(self, model_path: str | None = None, threads: int | None = 2, onnx_batch_size: int = 32,
                 device: str | None = "cpu") -> None:
        # Imported here: building the ONNX session (and importing onnx) is only paid by runs that ask for nsfw.
        from alchemist_kedro.encoders.open_nsfw import OpenNSFWEncoder

        super().__init__(model_path=model_path, threads=threads, onnx_batch_size=onnx_batch_size, device=device)
        self.encoder = OpenNSFWEncoder(model_path=model_path, batch_size=onnx_batch_size, threads=threads,
                                       device=device)

    def weights_digest(self) -> str:
        # "<encoder>@<weights sha256[:16]>": the model file's content, not its path.
        return self.encoder.fingerprint

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        if not batch.images:
            return np.empty(0, dtype=np.float64)
        return self.encoder.nsfw_probability(batch.images).astype(np.float64)
