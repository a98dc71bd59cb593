"""alignment_minilm_onsfw: image-text cosine in the frozen alignment model's shared space; higher = better aligned.

No CLIP weights install offline, so this is the honest stand-in for a CLIP score (issue 5): the contrastive
projection of Open-NSFW image features and MiniLM text embeddings that the evaluate pipeline fits on the clean val
pairs (models/alignment.py). Reads cached features (image_emb ⊕ text_emb), not pixels, so it costs one small matmul
per row. The name says which encoders it measures in, so nobody mistakes it for a CLIP score.
"""
from __future__ import annotations

import numpy as np

from alchemist_kedro.models.alignment import alignment_from_artifact, alignment_scores
from alchemist_kedro.scorers.base import ArtifactScorer, ScoreBatch, register_scorer


@register_scorer
class AlignmentScorer(ArtifactScorer):
    name = "alignment_minilm_onsfw"
    higher_is_better = True

    def __init__(self, artifact: dict, batch_size: int = 4096, threads: int = 1) -> None:
        """`artifact`: what the `alignment_model` dataset loads ({"state_dict", "config"})."""
        super().__init__(artifact=artifact, batch_size=batch_size, threads=threads)
        self.model = alignment_from_artifact(artifact)

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        features = np.asarray(batch.features, dtype=np.float32)
        image_dim, text_dim = self.model.config.image_dim, self.model.config.text_dim
        # Row layout is FEATURE_SCHEMA's image_emb ⊕ text_emb; a different width means other encoders, whose
        # columns would be split in the wrong place and scored as nonsense, so refuse rather than guess.
        if features.ndim != 2 or features.shape[1] != image_dim + text_dim:
            raise ValueError(
                f"{self.name}: features of shape {features.shape}, but the alignment model was fitted on "
                f"image_emb ({image_dim}) ⊕ text_emb ({text_dim}) = {image_dim + text_dim} columns"
            )
        out = np.empty(len(features), dtype=np.float64)
        for start in range(0, len(features), self.batch_size):
            chunk = features[start : start + self.batch_size]
            out[start : start + len(chunk)] = alignment_scores(self.model, chunk[:, :image_dim], chunk[:, image_dim:])
        return out
