"""rater: the trained Alchemist rater's instance logit (method.md: the batch-independent ranking key).

Reads cached features (image_emb ⊕ text_emb, the rater's training input), not pixels. Higher = the rater would
give the sample more weight in the proxy's training; note that under eq. 9 the head of that ranking is the
plain, easy region that Shift-Gsample drops.
"""
from __future__ import annotations

import numpy as np

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.models.rater import rater_from_artifact, score_with_rater
from alchemist_kedro.scorers.base import ArtifactScorer, ScoreBatch, register_scorer


@register_scorer
class RaterScorer(ArtifactScorer):
    name = "rater"
    higher_is_better = True

    unversioned_params = ArtifactScorer.unversioned_params | {"device"}

    def __init__(self, artifact: dict, batch_size: int = 4096, threads: int = 1, device: str | None = "cpu") -> None:
        """`artifact`: what the `rater_model` dataset loads ({"state_dict", "config"}); `device`: where it runs."""
        super().__init__(artifact=artifact, batch_size=batch_size, threads=threads)
        self.params["device"] = device
        self.device = resolve_device(device, stage="rater scoring")
        self.model = rater_from_artifact(artifact).to(self.device)
        # ScoreBatch.features then carries patch_emb after image_emb ⊕ text_emb (tables.feature_matrix(patches=True)).
        self.reads_patches = self.model.config.patch_dim > 0

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        return score_with_rater(self.model, batch.features, batch_size=self.batch_size)

    def score_with_batch_weights(self, features: np.ndarray, group_batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(instance logits, the Group MLP's W_b of consecutive batches of `group_batch_size` rows, one value per row)
        with the rater's inputs computed once per row: the derived inputs (the prior's passes) are most of a rater's
        cost. W_b is informative only (it depends on which rows share a batch: recorded, never ranked on); the
        logits are `score_batch`'s bit for bit (same chunks, same operations)."""
        import torch

        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        raw = np.zeros(len(x), dtype=np.float64)
        weights = np.ones(len(x), dtype=np.float64)
        if not len(x):
            return raw, weights
        prepared = []
        self.model.eval()
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                part = self.model.inputs(x[start : start + self.batch_size].to(self.device))
                raw[start : start + len(part)] = self.model.instance_logits(part, prepared=True).double().cpu().numpy()
                prepared.append(part)
            prepared = torch.cat(prepared)
            for start in range(0, len(prepared), group_batch_size):
                chunk = prepared[start : start + group_batch_size]
                if len(chunk) > 1:
                    weights[start : start + len(chunk)] = float(self.model(chunk, prepared=True)[2])
        return raw, weights
