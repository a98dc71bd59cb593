"""Nodes of the train_t2i pipeline. The model and the loop live in models/t2i.py and training/t2i.py."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import T2IModel, t2i_config_from_dict, t2i_to_artifact, to_uint8_images
from alchemist_kedro.pipelines.rater.nodes import _concat, _decode
from alchemist_kedro.training.t2i import T2ITrainingConfig, train_t2i

FEATURE_COLUMNS = ["uid", "text_tokens", "text_mask", "text_emb"]


def _token_arrays(part: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """FEATURE_SCHEMA's flattened text_tokens/text_mask → (N, L, D) float32 and (N, L) int64."""
    mask = np.stack(part["text_mask"].map(np.asarray).to_list()).astype(np.int64)
    tokens = np.stack([np.asarray(t, np.float32).reshape(mask.shape[1], -1) for t in part["text_tokens"]])
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def join_split(samples: dict, features: dict, resolution: int, uids=None, split: str | None = None) -> dict:
    """Rows of the sample table (by uid list and/or split) joined with their text features, sorted by uid.

    → {uids, captions, images (N,3,R,R) in [-1,1], tokens, mask, text_emb (N, E) float32, missing_features}. Images are area-downscaled to
    `resolution` exactly as the rater pipeline does (its `_decode`).
    """
    table = _concat(samples, ["uid", "caption", "image", "split"])
    if split is not None:
        table = table[table["split"] == split]
    if uids is not None:
        table = table[table["uid"].isin(set(uids))]
    feats = _concat(features, FEATURE_COLUMNS)
    joined = table.merge(feats, on="uid", how="inner", validate="one_to_one").sort_values("uid", kind="stable")
    if not len(joined):
        raise ValueError(f"no samples with features for split={split!r} / {0 if uids is None else len(uids)} uids")
    tokens, mask = _token_arrays(joined)
    return {
        "uids": joined["uid"].tolist(),
        "captions": joined["caption"].astype(str).tolist(),
        "images": torch.tensor(np.stack([_decode(b, resolution) for b in joined["image"]])),
        "tokens": tokens,
        "mask": mask,
        "text_emb": np.stack([np.asarray(t, np.float32) for t in joined["text_emb"]]),
        "missing_features": int(len(table) - len(joined)),
    }


def build_t2i_inputs(selection_manifest: pd.DataFrame, samples: dict, features: dict, params: dict) -> dict:
    """The manifest's selected uids (its pool) as training tensors, plus the fixed grid captions (test split).

    The `defect` column is never read. Grid captions: `grid.uids` if given, else `grid.count` test uids evenly spaced in uid order.
    """
    resolution = int(params["model"]["resolution"])
    selected = selection_manifest.loc[selection_manifest["selected"].astype(bool), "uid"].astype(str)
    train = join_split(samples, features, resolution, uids=selected.tolist())
    grid_uids = params["grid"].get("uids")
    grid = join_split(samples, features, resolution, uids=grid_uids, split=None if grid_uids else "test")
    count = int(params["grid"]["count"])
    if not grid_uids:  # evenly spaced over the sorted test uids: the first few are all flags on the emoji corpus
        pick = np.unique(np.linspace(0, len(grid["uids"]) - 1, min(count, len(grid["uids"]))).round().astype(int))
        grid = {k: (v if k == "missing_features" else v[torch.as_tensor(pick)] if torch.is_tensor(v)
                    else v[pick] if isinstance(v, np.ndarray) else [v[i] for i in pick]) for k, v in grid.items()}
    return {"train": train, "grid": grid, "selected": int(len(selected))}


def sample_grid_figure(model: T2IModel, grid: dict, seed: int, columns: int = 4, caption_chars: int = 28):
    """A matplotlib figure: generated image per fixed caption (top) over the real one (below), captions as titles."""
    images = to_uint8_images(model.generate(grid["tokens"], grid["mask"], generator_for(seed, "t2i-grid")))
    real = to_uint8_images(grid["images"])
    n = len(images)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(2.0 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        axes[2 * r, c].imshow(images[i], interpolation="nearest")
        axes[2 * r, c].set_title(grid["captions"][i][:caption_chars], fontsize=7)
        axes[2 * r + 1, c].imshow(real[i], interpolation="nearest")
        axes[2 * r + 1, c].set_title("real", fontsize=6, color="grey")
    fig.suptitle(f"generated (CFG {model.config.guidance_scale}, {model.config.sample_steps} DDIM steps) / real")
    fig.tight_layout()
    return fig


def train_t2i_model(inputs: dict, params: dict):
    """Train → (model artifact, MLflow metrics history, training summary, sample-grid figure).

    Purity is bent as in the rater pipeline: checkpoints go to params["checkpoint_dir"] mid-node so a long run
    survives a kill; they are keyed by a fingerprint of config + training uids.
    """
    torch.set_num_threads(int(params.get("threads", 2)))
    model_config = t2i_config_from_dict(dict(params["model"]))
    config = T2ITrainingConfig(**params["training"])
    result = train_t2i(inputs["train"], model_config, config, checkpoint_dir=params.get("checkpoint_dir"))
    metrics = dict(result.history)  # the catalog entry prefixes "t2i."
    metrics["train_seconds"] = [{"step": result.total_steps, "value": float(result.train_seconds)}]
    metrics["steps"] = [{"step": result.total_steps, "value": float(result.total_steps)}]
    summary = {**result.summary, "selected": inputs["selected"],
               "missing_features": inputs["train"]["missing_features"],
               "final_loss_mean_last_10": float(np.mean([p["value"] for p in result.history["train/loss"][-10:]]))}
    figure = sample_grid_figure(result.model, inputs["grid"], config.seed, int(params["grid"].get("columns", 4)))
    return t2i_to_artifact(result.model), metrics, summary, figure
