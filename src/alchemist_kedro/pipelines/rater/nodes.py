"""Nodes of the rater pipeline. The model and the loop live in models/ and training/; these only adapt tables."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image

from alchemist_kedro.models.proxy import ProxyConfig
from alchemist_kedro.models.rater import RaterConfig, rater_to_artifact
from alchemist_kedro.training.bilevel import BilevelConfig, train_rater_bilevel

TRAINING_SPLITS = ("pool", "val")


def _concat(partitions: dict, columns: list[str] | None = None) -> pd.DataFrame:
    frames = [load() for _, load in sorted(partitions.items())]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame[columns] if columns is not None and len(frame) else frame


def _decode(png: bytes, resolution: int) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        if im.size != (resolution, resolution):
            # BOX = area averaging: the right filter for an integer downscale (64 → 32), no aliasing.
            im = im.resize((resolution, resolution), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def build_rater_inputs(samples: dict, features: dict, params: dict) -> dict:
    """Join pool/val samples with their features by uid; decode PNG → float (3, R, R) in [-1, 1].

    The `defect` column is never read: it is evaluation-only. Samples without features are dropped (counted).
    """
    resolution = int(params["proxy"]["resolution"])
    table = _concat(samples, ["uid", "image", "split"])
    table = table[table["split"].isin(TRAINING_SPLITS)]
    feats = _concat(features, ["uid", "image_emb", "text_emb", "text_tokens", "text_mask"])
    joined = table.merge(feats, on="uid", how="inner", validate="one_to_one").sort_values("uid", kind="stable")
    out = {"missing_features": int(len(table) - len(joined))}
    for split in TRAINING_SPLITS:
        part = joined[joined["split"] == split]
        if split == "pool" and len(part) == 0:
            raise ValueError("no pool samples with features: run the features pipeline first")
        mask = np.stack(part["text_mask"].map(np.asarray).to_list()).astype(np.int64) if len(part) else np.zeros((0, 1))
        n_tokens = mask.shape[1]
        tokens = np.stack([np.asarray(t, np.float32).reshape(n_tokens, -1) for t in part["text_tokens"]])
        out[f"{split}_uids"] = part["uid"].tolist()
        out[f"{split}_images"] = torch.tensor(np.stack([_decode(b, resolution) for b in part["image"]]))
        out[f"{split}_tokens"] = torch.tensor(tokens)
        out[f"{split}_mask"] = torch.tensor(mask)
        out[f"{split}_features"] = torch.tensor(
            np.stack([np.concatenate([np.asarray(i, np.float32), np.asarray(t, np.float32)])
                      for i, t in zip(part["image_emb"], part["text_emb"])])
        )
    if len(out["val_uids"]) == 0:
        raise ValueError("no val samples with features: the meta-gradient needs a clean validation split")
    return out


def train_rater(inputs: dict, params: dict):
    """Bilevel training → (rater_model artifact, MLflow metrics history, history table, per-sample trace).

    Purity is bent on purpose: the loop writes checkpoints to params["checkpoint_dir"] mid-node, because a run of
    hours must survive a kill and a Kedro dataset is only saved when the node returns. Checkpoints are keyed by a
    fingerprint of config + data uids, so a changed config never resumes from a stale run.
    """
    torch.set_num_threads(int(params.get("threads", 2)))
    proxy_config = ProxyConfig(**params["proxy"])
    rater_config = RaterConfig(feature_dim=int(inputs["pool_features"].shape[1]), **params["model"])
    config = BilevelConfig(**params["training"])
    result = train_rater_bilevel(inputs, proxy_config, rater_config, config, checkpoint_dir=params.get("checkpoint_dir"))
    metrics = dict(result.history)  # the catalog prefixes them with "rater."
    table = pd.DataFrame(
        [{"metric": k, "step": p["step"], "value": p["value"]} for k, pts in result.history.items() for p in pts]
    )
    trace = pd.DataFrame(result.trace, columns=["step", "uid", "loss", "grad_norm"])
    return rater_to_artifact(result.rater), metrics, table, trace


def rater_model_for_mlflow(rater_model: dict, features: dict) -> dict:
    """The trained rater plus the widths of its two input columns (image_emb, text_emb), read from one feature
    shard: what the MLflow pyfunc model checks its input against."""
    if not features:
        raise ValueError("no feature shards: cannot tell the rater's image/text input widths")
    shard = features[sorted(features)[0]]()
    if not len(shard):
        raise ValueError("the first feature shard is empty: cannot tell the rater's image/text input widths")
    image_dim, text_dim = len(shard["image_emb"].iloc[0]), len(shard["text_emb"].iloc[0])
    if image_dim + text_dim != int(rater_model["config"]["feature_dim"]):
        raise ValueError(f"features are {image_dim} + {text_dim} wide but the rater takes "
                         f"{rater_model['config']['feature_dim']}: retrain it on the current features")
    return {**rater_model, "image_emb_dim": image_dim, "text_emb_dim": text_dim}
