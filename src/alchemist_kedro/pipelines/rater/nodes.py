"""Nodes of the rater pipeline. The model and the loop live in models/ and training/; these only adapt tables."""
from __future__ import annotations

import logging
from dataclasses import asdict

import pandas as pd
import torch

from alchemist_kedro.models.proxy import ProxyConfig, prior_input
from alchemist_kedro.models.rater import RaterConfig, rater_to_artifact
from alchemist_kedro.devices import resolve_device
from alchemist_kedro.tables import (
    FEATURE_COLUMNS,
    bounded_rows,
    decode_pngs,
    feature_matrix,
    history_table,
    join_samples_features,
    token_arrays,
    vector_column,
)
from alchemist_kedro.training.bilevel import BilevelConfig, RaterData, Split, train_rater_bilevel
from alchemist_kedro.training.diagnostics import caption_sensitivity

logger = logging.getLogger(__name__)

TRAINING_SPLITS = ("pool", "val")


def build_rater_inputs(samples: dict, features: dict, params: dict) -> RaterData:
    """Join pool/val samples with their features by uid. What the proxy trains on: the PNG decoded to float
    (3, R, R) in [-1, 1] (proxy.space = pixels), or the cached image embedding (proxy.space = embedding: no decode).

    `pool_sample` (null = the whole pool) bounds the pool: a fixed uniform sample of that many rows (tables.sample_key
    with the training seed), drawn while the shards stream past, so memory holds one shard plus the sample whatever
    the corpus size. Scoring (select) still covers every row. The `defect` column is never read: it is
    evaluation-only. Samples without features are left out and counted.
    """
    resolution = int(params["proxy"]["resolution"])
    embedding_space = params["proxy"]["space"] == "embedding"
    pool_sample = params.get("pool_sample")
    if pool_sample is not None and int(pool_sample) < 2:
        raise ValueError(f"rater.pool_sample must be null (the whole pool) or >= 2, got {pool_sample!r}")
    sample_columns = ["uid", "split"] if embedding_space else ["uid", "image", "split"]
    table, n_pool = bounded_rows(samples, sample_columns, keep=lambda f: f["split"].isin(TRAINING_SPLITS),
                                 sample=lambda f: f["split"] == "pool",
                                 limit=None if pool_sample is None else int(pool_sample),
                                 seed=int(params["training"]["seed"]))
    if pool_sample is not None and n_pool > int(pool_sample):
        logger.info("rater: training on a uniform sample of %d of the %d pool rows (rater.pool_sample)",
                    int(pool_sample), n_pool)
    uids = set(table["uid"])
    prior_patches = embedding_space and bool(params["proxy"].get("patch_cells", False))
    patches = bool(params["model"].get("patch_inputs", False)) or prior_patches
    feature_columns = ["uid", "image_emb", "text_emb"] if embedding_space else list(FEATURE_COLUMNS)
    if patches:
        feature_columns.append("patch_emb")
    feats, _ = bounded_rows(features, feature_columns, keep=lambda f: f["uid"].isin(uids))
    joined, missing = join_samples_features(table, feats, sample_columns, feature_columns)
    splits = {}
    for split in TRAINING_SPLITS:
        part = joined[joined["split"] == split]
        if len(part) == 0:
            raise ValueError("no pool samples with features: run the features pipeline first" if split == "pool" else
                             "no val samples with features: the meta-gradient needs a clean validation split")
        if embedding_space:
            # The prior reads the caption as its sentence embedding: one "token", text_emb, the vector the rater's
            # proxy inputs (models/rater.py) read too. No (N, L, D) token tensor in memory.
            images = torch.from_numpy(vector_column(part, "image_emb"))
            if prior_patches:
                patch = torch.from_numpy(vector_column(part, "patch_emb"))
                if patch.ndim != 2 or patch.shape[1] == 0:
                    raise ValueError("rater.proxy.patch_cells: the prior models the patch cells, but the features "
                                     "carry no patch_emb (features.image_encoder.patch_grid > 0 with the Open-NSFW "
                                     "encoder); set rater.proxy.patch_cells=false for an encoder without patches")
                images = prior_input(images, patch, int(params["model"]["patch_cell_dim"]))
            tokens = torch.from_numpy(vector_column(part, "text_emb"))[:, None, :]
            mask = torch.ones(len(part), 1, dtype=torch.int64)
        else:
            tokens, mask = token_arrays(part)
            images = decode_pngs(part["image"].tolist(), resolution)
        splits[split] = (Split(images, tokens, mask, part["uid"].tolist()), part)
    pool, pool_frame = splits["pool"]
    return RaterData(pool, splits["val"][0], torch.tensor(feature_matrix(pool_frame, patches)),
                     text_dim=len(pool_frame["text_emb"].iloc[0]), missing_features=missing,
                     val_features=torch.tensor(feature_matrix(splits["val"][1], patches)),
                     patch_dim=len(pool_frame["patch_emb"].iloc[0]) if patches else 0)


def train_rater(inputs: RaterData, alignment_model: dict, params: dict):
    """Bilevel training → (rater_model artifact, MLflow metrics history, history table, per-sample trace).

    Purity is bent on purpose: the loop writes checkpoints to params["checkpoint_dir"] mid-node, because a run of
    hours must survive a kill and a Kedro dataset is only saved when the node returns. Checkpoints are keyed by a
    fingerprint of config + data uids, so a changed config never resumes from a stale run.
    """
    torch.set_num_threads(int(params["threads"]))
    proxy_config = ProxyConfig(**params["proxy"])
    use_alignment = bool(params["model"]["alignment_feature"])
    rater_config = RaterConfig(feature_dim=int(inputs.pool_features.shape[1]), text_dim=inputs.text_dim,
                               patch_dim=inputs.patch_dim,
                               alignment_config=alignment_model["config"] if use_alignment else None,
                               proxy_config=asdict(proxy_config) if params["model"].get("proxy_features") else None,
                               **params["model"])
    config = BilevelConfig(**params["training"])
    result = train_rater_bilevel(inputs, proxy_config, rater_config, config, checkpoint_dir=params["checkpoint_dir"],
                                 alignment_state=alignment_model["state_dict"] if use_alignment else None,
                                 device=resolve_device(params.get("device"), stage="rater"))
    final_step = config.warmup_steps + config.meta_steps
    for name, model in (("theta", result.theta), ("theta_hat", result.theta_hat)):
        val = inputs.val
        diagnostics = caption_sensitivity(model, val.images, val.tokens, val.mask, val.uids,
                                          config.num_loss_timesteps, config.seed)
        logger.info("rater: %s on val: caption sensitivity %.4f%% (loss own %.5f, shuffled %.5f, null %.5f)", name,
                    100 * diagnostics["caption_sensitivity"], diagnostics["loss_own"], diagnostics["loss_shuffled"],
                    diagnostics["loss_null"])
        for key, value in diagnostics.items():
            result.history[f"diagnostics/{name}/{key}"] = [{"step": final_step, "value": float(value)}]
    trace = pd.DataFrame(result.trace, columns=["step", "uid", "loss", "grad_norm"])
    # The catalog prefixes the metric names with "rater.".
    return rater_to_artifact(result.rater), dict(result.history), history_table(result.history), trace


def rater_model_for_mlflow(rater_model: dict, features: dict) -> dict:
    """The trained rater plus the widths of its two input columns (image_emb, text_emb), read from one feature
    shard: what the MLflow pyfunc model checks its input against."""
    if not features:
        raise ValueError("no feature shards: cannot tell the rater's image/text input widths")
    shard = features[sorted(features)[0]]()
    if not len(shard):
        raise ValueError("the first feature shard is empty: cannot tell the rater's image/text input widths")
    image_dim, text_dim = len(shard["image_emb"].iloc[0]), len(shard["text_emb"].iloc[0])
    patch_dim = int(rater_model["config"].get("patch_dim", 0))
    if patch_dim and len(shard["patch_emb"].iloc[0]) != patch_dim:
        raise ValueError(f"features' patch_emb is {len(shard['patch_emb'].iloc[0])} wide but the rater takes "
                         f"{patch_dim}: retrain it on the current features")
    if image_dim + text_dim + patch_dim != int(rater_model["config"]["feature_dim"]):
        raise ValueError(f"features are {image_dim} + {text_dim} wide but the rater takes "
                         f"{rater_model['config']['feature_dim']}: retrain it on the current features")
    return {**rater_model, "image_emb_dim": image_dim, "text_emb_dim": text_dim,
            **({"patch_emb_dim": patch_dim} if patch_dim else {})}
