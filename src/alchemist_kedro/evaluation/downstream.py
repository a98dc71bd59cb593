"""Evaluate a trained downstream T2I model on the held-out test captions (method.md "Evaluation at our scale").

- `fd_onsfw`: Fréchet distance, Open-NSFW feature space, generated vs real test images. Both sets go through the
  encoder at the model's resolution (real images area-downscaled as for training), so resolution is not scored.
- `alignment`: mean cosine of generated image ↔ its caption in the contrastive projection fitted once on the clean
  val split's cached features; `alignment_ceiling` is the same on the real test pairs, `alignment_shuffled` the
  generated images against a fixed derangement of the captions (the chance floor).
- `test_loss` (overall and by timestep band), `test_loss_shuffled`, `test_caption_gain`: the model's own objective on
  the clean test split at fixed CRN timesteps (heldout_loss.py); `fwd`: Fréchet Wavelet Distance (fwd.py).
Shared by the evaluate pipeline and compare.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from alchemist_kedro.encoders import get_image_encoder
from alchemist_kedro.evaluation.fwd import frechet_wavelet_distance
from alchemist_kedro.evaluation.heldout_loss import heldout_loss_metrics
from alchemist_kedro.evaluation.metrics import alignment as alignment_metric
from alchemist_kedro.evaluation.metrics import alignment_with_ceiling, fd_onsfw_from_features, open_nsfw_features
from alchemist_kedro.models.alignment import AlignmentConfig, AlignmentModel, alignment_to_artifact, fit_alignment
from alchemist_kedro.models.proxy import ProxyT2I, generator_for
from alchemist_kedro.models.t2i import T2IModel, to_uint8_images
from alchemist_kedro.tables import concat_partitions, derangement, join_split, take_rows, vector_column


def fit_alignment_on_val(sample_index: pd.DataFrame | dict, features: dict, params: dict) -> dict:
    """Alignment projection fitted on the val split's cached (image_emb, text_emb) pairs → artifact dict."""
    index = concat_partitions(sample_index, ["uid", "split"])
    val_uids = set(index.loc[index["split"] == "val", "uid"])
    feats = concat_partitions(features, ["uid", "image_emb", "text_emb"])
    val = feats[feats["uid"].isin(val_uids)].sort_values("uid", kind="stable")
    if len(val) < 2:
        raise ValueError(f"alignment needs >= 2 val pairs with features, got {len(val)}")
    config = AlignmentConfig(**params["alignment"])
    model = fit_alignment(vector_column(val, "image_emb"), vector_column(val, "text_emb"), config,
                          seed=int(params["seed"]))
    return alignment_to_artifact(model)


def load_test_split(samples: dict, features: dict, resolution: int, max_test_samples: int | None) -> dict:
    """Test-split samples joined with their text features at `resolution`; the first `max_test_samples` uids
    (sorted) when set, for quick runs."""
    test = join_split(samples, features, resolution, split="test")
    if max_test_samples:
        test = take_rows(test, np.arange(min(int(max_test_samples), len(test["uids"]))))
    return test


def evaluate_generated(model: T2IModel, test: dict, alignment_model: AlignmentModel, encoder, params: dict,
                       real_features: np.ndarray | None = None) -> dict:
    """Generate one image per test caption and score the set. → flat dict of floats (the metric names reported).

    `real_features`: the real test images' encoder features, when the caller already has them (compare reuses them
    across seeds); computed here otherwise.
    """
    began = time.perf_counter()
    generated = model.generate(test["tokens"], test["mask"], generator_for(int(params["seed"]), "evaluate"),
                               guidance_scale=params["guidance_scale"], num_steps=params["sample_steps"],
                               batch_size=int(params["batch_size"]))
    generation_seconds = time.perf_counter() - began
    generated_images = to_uint8_images(generated)
    generated_feats = open_nsfw_features(generated_images, encoder, int(params["encoder_batch_size"]))
    real_feats = real_features if real_features is not None else real_test_features(test, encoder, params)
    scores = alignment_with_ceiling(alignment_model, generated_feats, real_feats, test["text_emb"])
    shuffled = test["text_emb"][derangement(len(test["uids"]), int(params["seed"]))]
    return {
        "fd_onsfw": fd_onsfw_from_features(real_feats, generated_feats),
        **scores,
        "alignment_shuffled": alignment_metric(alignment_model, generated_feats, shuffled),
        **downstream_metrics(model, test, generated_images, params),
        "num_test": float(len(test["uids"])),
        "generation_seconds": float(generation_seconds),
    }


def real_test_features(test: dict, encoder, params: dict) -> np.ndarray:
    """The real test images through the evaluation encoder, at the resolution they were loaded at."""
    return open_nsfw_features(to_uint8_images(test["images"]), encoder, int(params["encoder_batch_size"]))


def build_image_encoder(params: dict):
    config = dict(params["image_encoder"])
    if config.get("name") != "open_nsfw":
        raise ValueError("fd_onsfw is defined in the Open-NSFW feature space: image_encoder.name must be open_nsfw")
    return get_image_encoder(config.pop("name"), **config)


def downstream_metrics(model: ProxyT2I, test: dict, generated_images: Sequence[np.ndarray], params: dict) -> dict:
    """{test_loss, test_loss_low_t/mid_t/high_t, test_loss_shuffled, test_caption_gain, test_loss_seconds, fwd}.

    `test`: join_split's layout (images (N, 3, R, R) in [-1, 1] at the model's resolution, tokens, mask, uids);
    `generated_images`: uint8 HxWx3, one per test caption, at the same resolution. `params`: the evaluate parameters
    (`test_loss: {timesteps, noise_seed, batch_size, derangement_seed}`, `fwd: {wavelet, level}`).
    """
    loss, wavelet = params["test_loss"], params["fwd"]
    began = time.perf_counter()
    metrics = heldout_loss_metrics(
        model, test, num_timesteps=int(loss["timesteps"]), noise_seed=int(loss["noise_seed"]),
        batch_size=int(loss["batch_size"]), derangement_seed=int(loss["derangement_seed"]))
    metrics["test_loss_seconds"] = time.perf_counter() - began
    metrics["fwd"] = frechet_wavelet_distance(to_uint8_images(test["images"]), list(generated_images),
                                              wavelet=str(wavelet["wavelet"]), level=wavelet["level"])
    return metrics
