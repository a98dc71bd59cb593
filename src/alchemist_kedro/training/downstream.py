"""The downstream T2I model trained on a selection: tables → tensors → training/t2i.py's loop → artifact.

Shared by the train_t2i pipeline (one selection) and compare (every arm × seed), so both train the same way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.models.t2i import t2i_config_from_dict, t2i_to_artifact
from alchemist_kedro.tables import join_split, take_rows
from alchemist_kedro.training.t2i import T2ITrainingConfig, T2ITrainingResult, train_t2i


def build_t2i_inputs(selection_manifest: pd.DataFrame, samples: dict, features: dict, params: dict) -> dict:
    """The manifest's selected uids (its pool) as training tensors, plus the fixed grid captions (test split).

    The `defect` column is never read. Grid captions: `grid.uids` if given, else `grid.count` test uids evenly
    spaced in uid order.
    """
    resolution = int(params["model"]["resolution"])
    selected = selection_manifest.loc[selection_manifest["selected"].astype(bool), "uid"].astype(str)
    train = join_split(samples, features, resolution, uids=selected.tolist())
    grid_uids = params["grid"]["uids"]
    grid = join_split(samples, features, resolution, uids=grid_uids, split=None if grid_uids else "test")
    count = int(params["grid"]["count"])
    if not grid_uids:  # evenly spaced over the sorted test uids: the first few are all flags on the emoji corpus
        pick = np.unique(np.linspace(0, len(grid["uids"]) - 1, min(count, len(grid["uids"]))).round().astype(int))
        grid = take_rows(grid, pick)
    return {"train": train, "grid": grid, "selected": int(len(selected))}


def train_downstream(inputs: dict, params: dict) -> tuple[T2ITrainingResult, dict, dict, dict]:
    """Train → (result, model artifact, MLflow metrics history, training summary).

    Checkpoints go to params["checkpoint_dir"] mid-run so a long run survives a kill; they are keyed by a
    fingerprint of config + training uids.
    """
    torch.set_num_threads(int(params["threads"]))
    model_config = t2i_config_from_dict(dict(params["model"]))
    config = T2ITrainingConfig(**params["training"])
    result = train_t2i(inputs["train"], model_config, config, checkpoint_dir=params["checkpoint_dir"],
                       device=resolve_device(params.get("device"), stage="train_t2i"),
                       precision=params.get("precision") or "fp32")
    metrics = dict(result.history)  # the catalog entry prefixes "t2i."
    metrics["train_seconds"] = [{"step": result.total_steps, "value": float(result.train_seconds)}]
    metrics["steps"] = [{"step": result.total_steps, "value": float(result.total_steps)}]
    summary = {**result.summary, "selected": inputs["selected"],
               "missing_features": inputs["train"]["missing_features"],
               "final_loss_mean_last_10": float(np.mean([p["value"] for p in result.history["train/loss"][-10:]]))}
    return result, t2i_to_artifact(result.model), metrics, summary
