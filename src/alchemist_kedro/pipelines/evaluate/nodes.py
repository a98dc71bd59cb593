"""Evaluate a trained T2I model on the held-out test captions (issue 6; method.md "Evaluation at our scale").

- `fd_onsfw`: Fréchet distance, Open-NSFW feature space, generated vs real test images. Both sets go through the
  encoder at the model's resolution (real images area-downscaled as for training), so resolution is not scored.
- `test_loss` (by timestep band too), `test_caption_gain`, `fwd`: evaluation/downstream.py (issue 13).
- `alignment`: mean cosine of generated image ↔ its caption in the contrastive projection fitted once on the clean
  val split's cached features; `alignment_ceiling` is the same on the real test pairs, `alignment_shuffled` the
  generated images against a fixed derangement of the captions (the chance floor).
The maths is evaluation/metrics.py's; these nodes only assemble inputs and report.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from alchemist_kedro.encoders import get_image_encoder
from alchemist_kedro.evaluation import alignment_with_ceiling, fd_onsfw_from_features, open_nsfw_features
from alchemist_kedro.evaluation.downstream import downstream_metrics
from alchemist_kedro.evaluation.metrics import alignment as alignment_metric
from alchemist_kedro.models.alignment import (
    AlignmentConfig,
    AlignmentModel,
    alignment_from_artifact,
    alignment_to_artifact,
    fit_alignment,
)
from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import T2IModel, t2i_from_artifact, to_uint8_images
from alchemist_kedro.pipelines.rater.nodes import _concat
from alchemist_kedro.pipelines.train_t2i.nodes import join_split


def fit_alignment_on_val(sample_index: pd.DataFrame | dict, features: dict, params: dict) -> dict:
    """Alignment projection fitted on the val split's cached (image_emb, text_emb) pairs → artifact dict."""
    index = _concat(sample_index, ["uid", "split"]) if isinstance(sample_index, dict) else sample_index
    val_uids = set(index.loc[index["split"] == "val", "uid"])
    feats = _concat(features, ["uid", "image_emb", "text_emb"])
    val = feats[feats["uid"].isin(val_uids)].sort_values("uid", kind="stable")
    if len(val) < 2:
        raise ValueError(f"alignment needs >= 2 val pairs with features, got {len(val)}")
    image = np.stack([np.asarray(v, np.float32) for v in val["image_emb"]])
    text = np.stack([np.asarray(v, np.float32) for v in val["text_emb"]])
    config = AlignmentConfig(**(params.get("alignment") or {}))
    return alignment_to_artifact(fit_alignment(image, text, config, seed=int(params.get("seed", 0))))


def build_test_set(samples: dict, features: dict, t2i_model: dict, params: dict) -> dict:
    """Test-split samples joined with their text features, images at the model's resolution; optionally the first
    `max_test_samples` uids (sorted) for quick runs."""
    test = join_split(samples, features, int(t2i_model["config"]["resolution"]), split="test")
    limit = params.get("max_test_samples")
    if limit:
        test = {k: (v[: int(limit)] if k != "missing_features" else v) for k, v in test.items()}
    return test


def _derangement(n: int, seed: int) -> np.ndarray:
    """A fixed permutation with no fixed point (a rotation of a random order): every image gets another caption."""
    order = np.random.default_rng(seed).permutation(n)
    shifted = np.empty(n, dtype=np.intp)
    shifted[order] = np.roll(order, 1)
    return shifted


def evaluate_generated(model: T2IModel, test: dict, alignment_model: AlignmentModel, encoder, params: dict,
                       real_features: np.ndarray | None = None) -> dict:
    """Generate one image per test caption and score the set. → flat dict of floats (the metric names reported).

    `real_features`: the real test images' encoder features, when the caller already has them (compare reuses them
    across seeds); computed here otherwise.
    """
    began = time.perf_counter()
    generated = model.generate(test["tokens"], test["mask"], generator_for(int(params.get("seed", 0)), "evaluate"),
                               guidance_scale=params.get("guidance_scale"), num_steps=params.get("sample_steps"),
                               batch_size=int(params.get("batch_size", 32)))
    generation_seconds = time.perf_counter() - began
    batch = int(params.get("encoder_batch_size", 32))
    generated_feats = open_nsfw_features(to_uint8_images(generated), encoder, batch)
    real_feats = real_features if real_features is not None else real_test_features(test, encoder, params)
    scores = alignment_with_ceiling(alignment_model, generated_feats, real_feats, test["text_emb"])
    shuffled = test["text_emb"][_derangement(len(test["uids"]), int(params.get("seed", 0)))]
    return {
        "fd_onsfw": fd_onsfw_from_features(real_feats, generated_feats),
        **scores,
        "alignment_shuffled": alignment_metric(alignment_model, generated_feats, shuffled),
        **downstream_metrics(model, test, to_uint8_images(generated), params),  # test_loss, caption gain, fwd
        "num_test": float(len(test["uids"])),
        "generation_seconds": float(generation_seconds),
    }


def real_test_features(test: dict, encoder, params: dict) -> np.ndarray:
    """The real test images through the evaluation encoder, at the resolution they were loaded at."""
    return open_nsfw_features(to_uint8_images(test["images"]), encoder, int(params.get("encoder_batch_size", 32)))


def build_image_encoder(params: dict):
    config = dict(params.get("image_encoder") or {"name": "open_nsfw"})
    if config.get("name") != "open_nsfw":
        raise ValueError("fd_onsfw is defined in the Open-NSFW feature space: image_encoder.name must be open_nsfw")
    return get_image_encoder(config.pop("name"), **config)


def evaluate_t2i(t2i_model: dict, test: dict, alignment_model: dict, params: dict):
    """→ (MLflow metrics {<name>: value}, prefixed "eval." by the catalog, report dict for data/08_reporting)."""
    torch.set_num_threads(int(params.get("threads", 2)))
    metrics = evaluate_generated(t2i_from_artifact(t2i_model), test, alignment_from_artifact(alignment_model),
                                 build_image_encoder(params), params)
    history = {k: [{"step": 0, "value": float(v)}] for k, v in metrics.items()}
    report = {"metrics": metrics, "test_uids": len(test["uids"]), "missing_features": test["missing_features"],
              "model": t2i_model["config"], "note": "fd_onsfw is not comparable to published FID"}
    return history, report
