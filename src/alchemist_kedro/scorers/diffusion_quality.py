"""diffusion_quality: Yandex's Alchemist diffusion-based quality estimator (their Algorithm 1) as a scorer.

1. N_{l,m} = ||A_{l,m}||_2 for every cross-attention layer l and quality-prompt token m (models/diffusion_quality.py).
2. fit: for every (l, m), s_{l,m} = #{(x_HQ, x_LQ) pairs : N_{l,m}(x_HQ) > N_{l,m}(x_LQ)}; keep the K largest.
3. score(x) = sum over the K kept pairs of N_{l,m}(x); higher = more like the HQ group.

The fit is a small table (`fit_table`: the K pairs and their separation counts), saved as parquet/CSV and handed
back as the scorer's `fit` setting, so it is part of the scorer's version. Default groups: HQ = the given clean images,
LQ = the same images through generic degradations (scorers/degradations.py) — a stand-in for human-picked groups.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.hashing import file_sha256, json_digest, tensors_digest
from alchemist_kedro.scorers.base import Scorer, ScoreBatch, register_scorer
from alchemist_kedro.scorers.degradations import DEGRADATIONS, degraded_group

DEFAULT_KEYWORDS = ("high quality", "aesthetic", "detailed")
FIT_COLUMNS = ["rank", "layer", "layer_name", "token_index", "token", "separation", "pairs", "separation_rate",
               "groups_digest"]
SOURCES = ("t2i", "sd_folder")


def separation_scores(n_hq: np.ndarray, n_lq: np.ndarray) -> np.ndarray:
    """Algorithm 1 step 2: (H, L, M) and (Q, L, M) norms → (L, M) int64 counts of (HQ, LQ) pairs with HQ > LQ
    (strictly: ties count for neither)."""
    n_hq, n_lq = np.asarray(n_hq, dtype=np.float64), np.asarray(n_lq, dtype=np.float64)
    if n_hq.ndim != 3 or n_lq.ndim != 3 or n_hq.shape[1:] != n_lq.shape[1:]:
        raise ValueError(f"separation_scores: norms must be (N, L, M) alike, got {n_hq.shape} and {n_lq.shape}")
    if not len(n_hq) or not len(n_lq):
        raise ValueError("separation_scores: both groups need at least one image")
    if not (np.isfinite(n_hq).all() and np.isfinite(n_lq).all()):
        raise ValueError("separation_scores: non-finite norms")
    flat_hq = n_hq.reshape(len(n_hq), -1)
    flat_lq = np.sort(n_lq.reshape(len(n_lq), -1), axis=0)
    counts = np.empty(flat_hq.shape[1], dtype=np.int64)
    for column in range(flat_hq.shape[1]):
        # For each HQ value, the number of LQ values strictly below it.
        counts[column] = np.searchsorted(flat_lq[:, column], flat_hq[:, column], side="left").sum()
    return counts.reshape(n_hq.shape[1:])


def select_pairs(n_hq: np.ndarray, n_lq: np.ndarray, k: int, layers: list[str], tokens: list[str],
                 groups_digest: str = "") -> pd.DataFrame:
    """The K (layer, token) pairs with the largest separation counts, as the fit table (ties: layer, then token
    order, so the choice is deterministic)."""
    scores = separation_scores(n_hq, n_lq)
    num_layers, num_tokens = scores.shape
    if (num_layers, num_tokens) != (len(layers), len(tokens)):
        raise ValueError(f"select_pairs: norms are {scores.shape} but {len(layers)} layers x {len(tokens)} tokens")
    if not isinstance(k, int) or not 1 <= k <= scores.size:
        raise ValueError(f"select_pairs: k must be an integer in [1, {scores.size}], got {k!r}")
    order = np.lexsort((np.arange(scores.size), -scores.ravel()))[:k]
    layer_index, token_index = np.unravel_index(order, scores.shape)
    pairs = len(n_hq) * len(n_lq)
    return pd.DataFrame({
        "rank": np.arange(k, dtype=np.int64),
        "layer": layer_index.astype(np.int64),
        "layer_name": pd.Series([layers[i] for i in layer_index], dtype=object),
        "token_index": token_index.astype(np.int64),
        "token": pd.Series([tokens[i] for i in token_index], dtype=object),
        "separation": scores[layer_index, token_index].astype(np.int64),
        "pairs": np.full(k, pairs, dtype=np.int64),
        "separation_rate": scores[layer_index, token_index] / pairs,
        "groups_digest": pd.Series([groups_digest] * k, dtype=object),
    })[FIT_COLUMNS]


def save_fit_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        raise ValueError(f"save_fit_table: {path} must end in .parquet or .csv")
    return path


def load_fit_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    path = Path(path)
    table = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, keep_default_na=False)
    missing = set(FIT_COLUMNS) - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not a diffusion_quality fit table (missing columns {sorted(missing)})")
    return table[FIT_COLUMNS]


def images_digest(*groups: list[np.ndarray]) -> str:
    """Identity of the HQ / LQ groups (their pixels, in order)."""
    import hashlib

    digest = hashlib.sha256()
    for group in groups:
        digest.update(str(len(group)).encode())
        for image in group:
            image = np.ascontiguousarray(image)
            digest.update(str(image.shape).encode())
            digest.update(image.tobytes())
    return digest.hexdigest()[:16]


@register_scorer
class DiffusionQualityScorer(Scorer):
    name = "diffusion_quality"
    higher_is_better = True
    needs = frozenset({"image"})
    # Weights enter the version through weights_digest; the fit (K pairs + separations) through `fit`.
    unversioned_params = frozenset({"threads", "batch_size", "path", "artifact", "text_encoder_params", "device"})

    def __init__(
        self,
        source: str = "t2i",
        path: str | None = None,
        artifact: dict | None = None,
        keywords: list[str] | tuple[str, ...] = DEFAULT_KEYWORDS,
        timestep: int = 200,
        k: int = 8,
        seed: int = 0,
        include_special_tokens: bool = False,
        text_encoder: str = "minilm",
        text_encoder_params: dict | None = None,
        max_tokens: int = 16,
        fit: pd.DataFrame | list[dict] | None = None,
        batch_size: int = 8,
        threads: int = 1,
        device: str | None = "cpu",
    ) -> None:
        """`source`: "sd_folder" (`path`: a local Stable-Diffusion-style folder) or "t2i" (`artifact`: what the
        `t2i_model` dataset loads; its prompt goes through the project text encoder `text_encoder`). `fit`: a fit
        table (DataFrame or its records); without one the scorer can `fit` but not score."""
        import torch

        from alchemist_kedro.models import diffusion_quality as dq

        if source not in SOURCES:
            raise ValueError(f"diffusion_quality: source must be one of {list(SOURCES)}, got {source!r}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"diffusion_quality: k must be a positive integer, got {k!r}")
        torch.set_num_threads(max(1, int(threads)))
        placed = resolve_device(device, stage="diffusion_quality")
        keywords = list(keywords)
        if source == "sd_folder":
            if not path:
                raise ValueError("diffusion_quality: source sd_folder needs `path` (a local folder)")
            self.estimator = dq.estimator_from_sd_folder(path, keywords, timestep, seed, batch_size,
                                                         include_special_tokens, placed)
            self._weights = json_digest([[str(p.relative_to(path)), file_sha256(p)]
                                         for p in dq.sd_folder_files(path)], 32)
        else:
            if artifact is None:
                raise ValueError("diffusion_quality: source t2i needs `artifact` (the t2i_model dataset's value)")
            from alchemist_kedro.encoders.base import TransformerTextEncoder, get_text_encoder

            encoder = get_text_encoder(text_encoder, **(text_encoder_params or {}))
            if not isinstance(encoder, TransformerTextEncoder):
                raise ValueError(f"diffusion_quality: text encoder {text_encoder!r} gives no token ids")
            self.estimator = dq.estimator_from_t2i(artifact, encoder, keywords, timestep, max_tokens, seed,
                                                   batch_size, include_special_tokens, placed)
            self._weights = json_digest([tensors_digest(artifact["config"], artifact["state_dict"]),
                                         encoder.fingerprint], 32)
        self.selection: pd.DataFrame | None = None
        records = None
        if fit is not None:
            self.selection = self._checked_fit(pd.DataFrame(fit) if not isinstance(fit, pd.DataFrame) else fit)
            records = self._fit_records(self.selection)
        super().__init__(source=source, path=path, artifact=artifact, keywords=keywords, timestep=timestep, k=k,
                         seed=seed, include_special_tokens=include_special_tokens, text_encoder=text_encoder,
                         text_encoder_params=text_encoder_params, max_tokens=max_tokens, fit=records,
                         batch_size=batch_size, threads=threads, device=device)

    def weights_digest(self) -> str:
        return self._weights

    @staticmethod
    def _fit_records(table: pd.DataFrame) -> list[dict[str, Any]]:
        # What the scores depend on: the pairs, plus the separations and groups that picked them.
        return [{"layer_name": str(r.layer_name), "token_index": int(r.token_index), "token": str(r.token),
                 "separation": int(r.separation), "pairs": int(r.pairs), "groups_digest": str(r.groups_digest)}
                for r in table.itertuples()]

    def _checked_fit(self, table: pd.DataFrame) -> pd.DataFrame:
        missing = set(FIT_COLUMNS) - set(table.columns)
        if missing:
            raise ValueError(f"diffusion_quality: fit table lacks columns {sorted(missing)}")
        layers, tokens = self.estimator.layers, self.estimator.tokens
        for row in table.itertuples():
            if row.layer_name not in layers:
                raise ValueError(f"diffusion_quality: fit names layer {row.layer_name!r}, not in this UNet")
            if not 0 <= int(row.token_index) < len(tokens) or tokens[int(row.token_index)] != str(row.token):
                raise ValueError(f"diffusion_quality: fit token {row.token!r} at {row.token_index} is not this "
                                 f"prompt's (tokens {tokens}); refit for these keywords")
        return table[FIT_COLUMNS].reset_index(drop=True)

    def fit(self, hq_images: list[np.ndarray], lq_images: list[np.ndarray] | None = None,
            degradations: tuple[str, ...] | list[str] = DEGRADATIONS) -> pd.DataFrame:
        """Algorithm 1 step 2 on the two groups (LQ default: HQ through `degradations`); the scorer then scores
        with the chosen pairs and its version covers them. Returns the fit table."""
        import torch

        torch.set_num_threads(max(1, int(self.params["threads"])))
        if lq_images is None:
            lq_images, _ = degraded_group(list(hq_images), tuple(degradations), seed=int(self.params["seed"]))
        n_hq, n_lq = self.estimator.norms(list(hq_images)), self.estimator.norms(list(lq_images))
        k = min(int(self.params["k"]), n_hq.shape[1] * n_hq.shape[2])
        table = select_pairs(n_hq, n_lq, k, self.estimator.layers, self.estimator.tokens,
                             images_digest(list(hq_images), list(lq_images)))
        self.selection = table
        self.params["fit"] = self._fit_records(table)
        return table

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        import torch

        self.check_batch(batch)
        if self.selection is None:
            raise ValueError("diffusion_quality: no fit (K layer/token pairs); call fit(hq, lq) or pass `fit`")
        torch.set_num_threads(max(1, int(self.params["threads"])))
        out = np.full(len(batch), np.nan, dtype=np.float64)
        usable = [i for i, image in enumerate(batch.images) if image is not None]  # undecodable rows stay NaN
        if usable:
            norms = self.estimator.norms([batch.images[i] for i in usable])
            layer = [self.estimator.layers.index(name) for name in self.selection["layer_name"]]
            token = self.selection["token_index"].to_numpy(dtype=np.int64)
            out[usable] = norms[:, layer, token].sum(1)
        return out
