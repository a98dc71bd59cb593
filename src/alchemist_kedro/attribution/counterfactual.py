"""The counterfactual check (FastGDA's gold standard at small scale): retrain the downstream model from scratch
without a query's K top-attributed training pairs, and without K random pairs, on the same (short) schedule and
seed; the query's loss should rise more in the first case. Each model is compared with the same schedule trained on
the whole set, at the query's own CRN timesteps (unlearning.py's query draws), so the rises are paired.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from alchemist_kedro.attribution.unlearning import QUERY_NOISE_TAG
from alchemist_kedro.evaluation.heldout_loss import per_timestep_loss
from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import T2IConfig
from alchemist_kedro.tables import take_rows
from alchemist_kedro.training.t2i import T2ITrainingConfig, train_t2i

COUNTERFACTUAL_COLUMNS = ["query_id", "removal", "k", "query_loss", "loss_rise", "relative_rise", "train_pairs",
                          "train_seconds"]


def query_loss(model, queries: dict, index: int, num_timesteps: int, noise_seed: int) -> float:
    """The query's loss at the unlearning step's CRN draws, no gradients."""
    uid = f"{QUERY_NOISE_TAG}:{queries['ids'][index]}"
    rows = slice(index, index + 1)
    return float(per_timestep_loss(model, queries["images"][rows], queries["tokens"][rows], queries["mask"][rows],
                                   [uid], num_timesteps=num_timesteps, noise_seed=noise_seed).mean())


def counterfactual_table(train: dict, queries: dict, top_k: dict[int, np.ndarray], model_config: T2IConfig,
                         training: T2ITrainingConfig, k: int, query_timesteps: int, noise_seed: int,
                         seed: int) -> pd.DataFrame:
    """`top_k`: query index → its attributed ranking (training indices, best first). For each: retrain without the
    first k, and without k random pairs (seeded by (seed, query id)). → COUNTERFACTUAL_COLUMNS rows, one 'none' row
    (the full set) per query too."""
    n = len(train["uids"])
    if not 0 < k < n:
        raise ValueError(f"counterfactual: k must be in [1, {n - 1}] (training pairs), got {k}")

    def fit(keep: np.ndarray):
        began = time.perf_counter()
        result = train_t2i(take_rows(train, keep), model_config, replace(training))
        return result.model, time.perf_counter() - began

    full, full_seconds = fit(np.arange(n))
    rows = []
    for q, order in sorted(top_k.items()):
        qid = str(queries["ids"][q])
        base = query_loss(full, queries, q, query_timesteps, noise_seed)
        rows.append({"query_id": qid, "removal": "none", "k": 0, "query_loss": base, "loss_rise": 0.0,
                     "relative_rise": 0.0, "train_pairs": n, "train_seconds": full_seconds})
        rng = np.random.default_rng(generator_for(seed, "attribute-random-removal", qid).initial_seed())
        removals = {"top_k": np.asarray(order[:k]), "random": rng.choice(n, k, replace=False)}
        for name, removed in removals.items():
            keep = np.setdiff1d(np.arange(n), removed)
            model, seconds = fit(keep)
            loss = query_loss(model, queries, q, query_timesteps, noise_seed)
            rows.append({"query_id": qid, "removal": name, "k": k, "query_loss": loss, "loss_rise": loss - base,
                         "relative_rise": (loss - base) / base, "train_pairs": len(keep), "train_seconds": seconds})
            del model
    return pd.DataFrame(rows, columns=COUNTERFACTUAL_COLUMNS)
