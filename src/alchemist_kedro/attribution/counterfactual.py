"""The counterfactual check (FastGDA's gold standard at small scale): retrain the downstream model from scratch
without a query's K top-attributed training pairs, and without K random pairs; the query's loss should rise more in
the first case. Each model is compared with the same schedule trained on the whole set, at the query's own CRN
timesteps (unlearning.py's query draws).

Retraining noise would swamp a K-pair removal if the runs drew different batches, so every run walks the full set's
schedule (training/t2i.py's batch order, (t, ε, caption-dropout) draws and step count, same seed, same initial
weights) and only drops the removed rows from each batch: the runs differ by the removed pairs and nothing else. With
nothing removed this is train_t2i's run exactly.
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

import torch

from alchemist_kedro.attribution.unlearning import QUERY_NOISE_TAG
from alchemist_kedro.evaluation.heldout_loss import per_timestep_loss
from alchemist_kedro.models.proxy import draw_training_noise, generator_for
from alchemist_kedro.models.t2i import EMA, T2IConfig, T2IModel
from alchemist_kedro.training.t2i import T2ITrainingConfig, batch_indices, total_steps

COUNTERFACTUAL_COLUMNS = ["query_id", "removal", "k", "query_loss", "loss_rise", "relative_rise", "train_pairs",
                          "train_seconds"]


def query_loss(model, queries: dict, index: int, num_timesteps: int, noise_seed: int) -> float:
    """The query's loss at the unlearning step's CRN draws, no gradients."""
    uid = f"{QUERY_NOISE_TAG}:{queries['ids'][index]}"
    rows = slice(index, index + 1)
    return float(per_timestep_loss(model, queries["images"][rows], queries["tokens"][rows], queries["mask"][rows],
                                   [uid], num_timesteps=num_timesteps, noise_seed=noise_seed).mean())


def retrain_without(data: dict, removed: np.ndarray, model_config: T2IConfig,
                    config: T2ITrainingConfig) -> T2IModel:
    """training/t2i.py's loop on the full set's schedule with the `removed` rows left out of every batch."""
    images, tokens, mask = data["images"], data["tokens"], data["mask"]
    n = len(data["uids"])
    kept = np.ones(n, dtype=bool)
    kept[np.asarray(removed, dtype=int)] = False
    torch.manual_seed(config.seed)  # the initial weights of every run
    model = T2IModel(model_config)
    model.train()
    params = list(model.unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.lr_warmup_steps)))
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    for step in range(total_steps(n, config)):
        idx = torch.as_tensor(batch_indices(n, config, step))
        x0 = model.encode(images[idx])
        # The whole batch's draws, then the kept rows: each row keeps the (t, ε, dropout) it has in the full run.
        t, noise, keep_caption = draw_training_noise(model, x0, generator_for(config.seed, "t2i-noise", step),
                                                     model_config.caption_dropout)
        rows = torch.as_tensor(kept[idx.numpy()])
        if rows.any():
            caption_tokens = tokens[idx] * keep_caption[:, None, None]
            caption_mask = mask[idx] * keep_caption[:, None].to(mask.dtype)
            loss = model.loss_at(x0[rows], t[rows], noise[rows], caption_tokens[rows], caption_mask[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model, step)
    final = ema.copy_to(model) if ema is not None else model
    return final.eval()


def counterfactual_table(train: dict, queries: dict, rankings: dict[str, dict[int, np.ndarray]],
                         model_config: T2IConfig, training: T2ITrainingConfig, k: int, query_timesteps: int,
                         noise_seed: int, seed: int) -> pd.DataFrame:
    """`rankings`: method → {query index → its ranking (training indices, best first)}. For each query: retrain
    without each method's first k, and without k random pairs (seeded by (seed, query id)).
    → COUNTERFACTUAL_COLUMNS rows, removal = none (the full set) | <method> | random."""
    n = len(train["uids"])
    if not 0 < k < n:
        raise ValueError(f"counterfactual: k must be in [1, {n - 1}] (training pairs), got {k}")

    def fit(removed: np.ndarray):
        began = time.perf_counter()
        model = retrain_without(train, removed, model_config, training)
        return model, time.perf_counter() - began

    full, full_seconds = fit(np.array([], dtype=int))
    rows = []
    for q in sorted({q for by_query in rankings.values() for q in by_query}):
        qid = str(queries["ids"][q])
        base = query_loss(full, queries, q, query_timesteps, noise_seed)
        rows.append({"query_id": qid, "removal": "none", "k": 0, "query_loss": base, "loss_rise": 0.0,
                     "relative_rise": 0.0, "train_pairs": n, "train_seconds": full_seconds})
        rng = np.random.default_rng(generator_for(seed, "attribute-random-removal", qid).initial_seed())
        removals = {method: np.asarray(by_query[q][:k]) for method, by_query in rankings.items() if q in by_query}
        removals["random"] = rng.choice(n, k, replace=False)
        for name, removed in removals.items():
            model, seconds = fit(removed)
            loss = query_loss(model, queries, q, query_timesteps, noise_seed)
            rows.append({"query_id": qid, "removal": name, "k": k, "query_loss": loss, "loss_rise": loss - base,
                         "relative_rise": (loss - base) / base, "train_pairs": n - len(removed),
                         "train_seconds": seconds})
            del model
    return pd.DataFrame(rows, columns=COUNTERFACTUAL_COLUMNS)
