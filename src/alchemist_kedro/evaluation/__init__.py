"""Evaluation metrics for generated images (fd_onsfw, alignment). The published Inception FID and CLIP-score are in
evaluation.published, imported only by whoever uses them."""
from alchemist_kedro.evaluation.metrics import (
    EncoderFeatures,
    PrecomputedFeatures,
    alignment,
    alignment_with_ceiling,
    fd_onsfw,
    fd_onsfw_from_features,
    fd_onsfw_metric,
    frechet_distance,
    mean_ci95,
    open_nsfw_features,
    summarise_over_seeds,
)

__all__ = [
    "EncoderFeatures",
    "PrecomputedFeatures",
    "alignment",
    "alignment_with_ceiling",
    "fd_onsfw",
    "fd_onsfw_from_features",
    "fd_onsfw_metric",
    "frechet_distance",
    "mean_ci95",
    "open_nsfw_features",
    "summarise_over_seeds",
]
