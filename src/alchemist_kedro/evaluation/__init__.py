"""Evaluation metrics for generated images (fd_onsfw, alignment, fwd), the downstream model's held-out loss
(test_loss, test_caption_gain) and paired-by-seed verdicts for compare. The published Inception FID and CLIP-score
are in evaluation.published, imported only by whoever uses them."""
from alchemist_kedro.evaluation.downstream import downstream_metrics
from alchemist_kedro.evaluation.fwd import frechet_wavelet_distance, wavelet_packets
from alchemist_kedro.evaluation.heldout_loss import heldout_loss_metrics, per_timestep_loss
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
from alchemist_kedro.evaluation.verdicts import METRIC_DIRECTIONS, compare_verdicts, paired_table
from alchemist_kedro.tables import derangement

__all__ = [
    "METRIC_DIRECTIONS",
    "EncoderFeatures",
    "PrecomputedFeatures",
    "alignment",
    "alignment_with_ceiling",
    "compare_verdicts",
    "derangement",
    "downstream_metrics",
    "fd_onsfw",
    "fd_onsfw_from_features",
    "fd_onsfw_metric",
    "frechet_distance",
    "frechet_wavelet_distance",
    "heldout_loss_metrics",
    "mean_ci95",
    "open_nsfw_features",
    "paired_table",
    "per_timestep_loss",
    "summarise_over_seeds",
    "wavelet_packets",
]
