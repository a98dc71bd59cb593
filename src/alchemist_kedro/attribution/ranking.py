"""Rankings of training pairs per query: mAP@k against the unlearning ground truth, the feature-cosine baselines,
and FastGDA's distilled attributor (its learning-to-rank training and its retrieval by matrix product).

mAP@k (FastGDA's evaluation): the ground truth's k most influential pairs are the positives; a method's ranking of
the whole training set is scored by average precision, AP = (1/|P|) Σ_{j: item at rank j ∈ P} precision@j, and
averaged over queries. A random ranking scores ≈ k/N. k may also be "all": every pair whose loss the unlearning step
raised (influence > 0) is a positive.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alchemist_kedro.models.attributor import AttributorConfig, AttributorMLP, pair_features

BASELINES = ("image_cosine", "text_cosine", "concat_cosine", "random")


def ground_truth_order(influence: np.ndarray) -> np.ndarray:
    """(Q, N) influence → (Q, N) training indices, most influential first (ties broken by index: stable)."""
    return np.argsort(-np.asarray(influence, dtype=np.float64), axis=1, kind="stable")


def positives(influence_row: np.ndarray, k: int | str) -> np.ndarray:
    """Indices of the ground-truth positives of one query at k (an int or "all")."""
    if k == "all":
        return np.flatnonzero(influence_row > 0)
    k = int(k)
    if k < 1:
        raise ValueError(f"mAP@k needs k >= 1 or 'all', got {k}")
    return np.argsort(-influence_row, kind="stable")[:k]


def average_precision(order: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one ranking (training indices, best first) against a set of relevant indices; NaN if it is empty."""
    if len(relevant) == 0:
        return float("nan")
    hits = np.isin(np.asarray(order), relevant)
    ranks = np.flatnonzero(hits) + 1  # 1-based positions of the relevant items
    return float((np.arange(1, len(ranks) + 1) / ranks).sum() / len(relevant))


def mean_average_precision(orders: np.ndarray, influence: np.ndarray, k: int | str) -> float:
    """mAP@k over queries: orders (Q, N) of a method, influence (Q, N) of the ground truth."""
    orders, influence = np.asarray(orders), np.asarray(influence)
    if orders.shape != influence.shape:
        raise ValueError(f"orders {orders.shape} and influence {influence.shape} disagree")
    return float(np.nanmean([average_precision(o, positives(row, k)) for o, row in zip(orders, influence)]))


def cosine_order(query: np.ndarray, train: np.ndarray) -> np.ndarray:
    """(Q, D), (N, D) → (Q, N) training indices by descending cosine: the whole of retrieval, one matrix product."""
    q = F.normalize(torch.as_tensor(query, dtype=torch.float32), dim=1)
    x = F.normalize(torch.as_tensor(train, dtype=torch.float32), dim=1)
    return torch.argsort(q @ x.T, dim=1, descending=True, stable=True).numpy()


def baseline_orders(query_image: np.ndarray, query_text: np.ndarray, train_image: np.ndarray,
                    train_text: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Rankings with no training: cosine of the raw image features, of the raw text features, of their
    concatenation (each side unit-normalised first, as the attributor's input), and a seeded random order."""
    n = len(train_image)
    concat_q = pair_features(torch.as_tensor(query_image), torch.as_tensor(query_text)).numpy()
    concat_x = pair_features(torch.as_tensor(train_image), torch.as_tensor(train_text)).numpy()
    rng = np.random.default_rng(seed)
    return {
        "image_cosine": cosine_order(query_image, train_image),
        "text_cosine": cosine_order(query_text, train_text),
        "concat_cosine": cosine_order(concat_q, concat_x),
        "random": np.stack([rng.permutation(n) for _ in range(len(query_image))]),
    }


@dataclass
class AttributorTraining:
    epochs: int = 200  # full-batch steps: every training query against every training pair
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    temperature: float = 0.05  # τ of the cosine logits
    rank_temperature: float = 10.0  # target weight of the ground-truth rank r ∝ exp(−r / this)
    seed: int = 0


def listwise_loss(scores: torch.Tensor, gt_ranks: torch.Tensor, temperature: float,
                  rank_temperature: float) -> torch.Tensor:
    """ListNet-style softmax cross-entropy: the target puts weight exp(−rank / rank_temperature) on each training
    pair (rank 0 = most influential), the prediction is softmax(cosine / temperature). → mean over queries."""
    target = torch.softmax(-gt_ranks.float() / rank_temperature, dim=1)
    return -(target * torch.log_softmax(scores / temperature, dim=1)).sum(1).mean()


def ranks_of(influence: np.ndarray) -> torch.Tensor:
    """(Q, N) influence → (Q, N) rank of each training pair (0 = most influential)."""
    order = ground_truth_order(influence)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(order.shape[1])[None].repeat(len(order), 0), axis=1)
    return torch.as_tensor(ranks)


def attributor_loss(model: AttributorMLP, query_image, query_text, train_image, train_text, gt_ranks,
                    training: AttributorTraining) -> torch.Tensor:
    scores = model(query_image, query_text) @ model(train_image, train_text).T
    return listwise_loss(scores, gt_ranks, training.temperature, training.rank_temperature)


def train_attributor(query_image: np.ndarray, query_text: np.ndarray, train_image: np.ndarray,
                     train_text: np.ndarray, influence: np.ndarray, hidden_sizes: Sequence[int], out_dim: int,
                     input_norm: bool, dropout: float, training: AttributorTraining, residual: bool = False
                     ) -> tuple[AttributorMLP, list[float]]:
    """Fit the MLP so cosine in its output space orders training pairs like `influence` (Q train queries × N).
    → (model in eval mode, loss per epoch)."""
    if len(query_image) < 1:
        raise ValueError("the attributor needs at least one training query")
    torch.manual_seed(training.seed)
    config = AttributorConfig(image_dim=train_image.shape[1], text_dim=train_text.shape[1],
                              hidden_sizes=tuple(hidden_sizes), out_dim=int(out_dim), input_norm=bool(input_norm),
                              dropout=float(dropout), residual=bool(residual))
    model = AttributorMLP(config)
    tensors = [torch.as_tensor(a, dtype=torch.float32) for a in (query_image, query_text, train_image, train_text)]
    gt_ranks = ranks_of(influence)
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay)
    history = []
    model.train()
    for _ in range(int(training.epochs)):
        loss = attributor_loss(model, *tensors, gt_ranks, training)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return model.eval(), history


@torch.no_grad()
def attributor_orders(model: AttributorMLP, query_image: np.ndarray, query_text: np.ndarray,
                      train_embeddings: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank the training set for each query by cosine against the training pairs' precomputed embeddings.
    → (orders (Q, N), scores (Q, N), seconds per query: embedding the query + the product + the sort)."""
    began = time.perf_counter()
    query = model(torch.as_tensor(query_image, dtype=torch.float32), torch.as_tensor(query_text, dtype=torch.float32))
    scores = query @ train_embeddings.T
    orders = torch.argsort(scores, dim=1, descending=True, stable=True)
    seconds = (time.perf_counter() - began) / max(len(query_image), 1)
    return orders.numpy(), scores.numpy(), seconds


@torch.no_grad()
def embed_training_set(model: AttributorMLP, train_image: np.ndarray, train_text: np.ndarray) -> torch.Tensor:
    """Once per model: the index retrieval searches."""
    return model(torch.as_tensor(train_image, dtype=torch.float32), torch.as_tensor(train_text, dtype=torch.float32))
