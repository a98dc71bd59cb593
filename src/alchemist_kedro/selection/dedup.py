"""Duplicate groups over a pool: a dataset property, not a sample score (no kedro imports, no file I/O).

No per-sample score can say which of two identical pairs to drop, so deduplication groups rows and keeps one
member per group:

- exact duplicates: the same sha256 of the image bytes AND the same normalised caption (``exact="image_and_caption"``),
  or the same image bytes whatever the caption (``exact="image"``);
- near duplicates: pairs whose cosine similarity in the cached feature space (L2-normalised image_emb ⊕ text_emb,
  see ``pair_features``) is at least ``near_threshold``, as NeMo Curator's and Data-Juicer's semantic dedup do.
  Uses faiss (``IndexFlatIP.range_search``) when installed, else a blocked numpy matmul over the upper triangle:
  exact and O(N²) -- fine to a few hundred thousand rows; beyond that, partition first (e.g. by k-means cluster).

Groups are the connected components of the union of both edge sets (so a chain a~b~c is one group). The kept member
of a group is the best by the score column (higher = better; NaN = worst), ties by uid.
"""
from __future__ import annotations

import hashlib
import logging
import unicodedata

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

EXACT_MODES = ("image_and_caption", "image")
OUTPUT_COLUMNS = ["uid", "dedup_group", "group_size", "duplicate_kind", "is_kept"]


def normalise_caption(caption: object) -> str:
    """NFKC, case-folded, whitespace collapsed: "A  Cat " and "a cat" are the same caption."""
    if caption is None or (isinstance(caption, float) and np.isnan(caption)):
        return ""
    return " ".join(unicodedata.normalize("NFKC", str(caption)).casefold().split())


def l2_normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def pair_features(image_emb: np.ndarray, text_emb: np.ndarray | None = None) -> np.ndarray:
    """Unit rows of [ê_img ; ê_txt] / √2: their dot product is the mean of the image and the text cosine."""
    parts = [l2_normalise(image_emb)]
    if text_emb is not None:
        parts.append(l2_normalise(text_emb))
    return l2_normalise(np.concatenate(parts, axis=1))


# --------------------------------------------------------------------------------------------------- edges


def exact_duplicate_edges(table: pd.DataFrame, mode: str = "image_and_caption") -> np.ndarray:
    """(E, 2) row-index pairs joining each exact duplicate to the first row of its key (a star per group)."""
    if mode not in EXACT_MODES:
        raise ValueError(f"exact must be one of {EXACT_MODES} or None, got {mode!r}")
    if "sha256" in table.columns:
        image_key = table["sha256"]
    elif "image" in table.columns:
        image_key = table["image"].map(lambda data: None if data is None else hashlib.sha256(bytes(data)).hexdigest())
    else:
        raise ValueError("exact dedup needs a `sha256` column (hex of the image bytes) or an `image` bytes column")
    if image_key.isna().any():
        raise ValueError(f"exact dedup: {int(image_key.isna().sum())} rows have no image hash/bytes")
    key = image_key.astype(str)
    if mode == "image_and_caption":
        if "caption" not in table.columns:
            raise ValueError('exact="image_and_caption" needs a `caption` column (or use exact="image")')
        key = key + "\x00" + table["caption"].map(normalise_caption)
    codes = pd.factorize(key.to_numpy())[0]
    rows = np.arange(codes.size)
    # The first row of each key: every later row with that key joins it.
    first = np.full(int(codes.max()) + 1 if codes.size else 0, codes.size, dtype=np.int64)
    np.minimum.at(first, codes, rows)
    anchor = first[codes]
    duplicate = anchor != rows
    return np.stack([anchor[duplicate], rows[duplicate]], axis=1)


def near_duplicate_edges(features: np.ndarray, threshold: float, block_size: int = 2048) -> np.ndarray:
    """(E, 2) row-index pairs (i < j) with cosine(features_i, features_j) >= threshold (rows L2-normalised here)."""
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"near_threshold must be a cosine in [-1, 1], got {threshold}")
    features = np.ascontiguousarray(l2_normalise(features))
    n = features.shape[0]
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    try:
        import faiss  # optional: much faster range search on big tables
    except ImportError:
        faiss = None
    if faiss is not None:
        index = faiss.IndexFlatIP(features.shape[1])
        index.add(features)
        # range_search keeps similarity > radius; nudge down so >= threshold is kept, then filter exactly.
        limits, similarities, neighbours = index.range_search(features, float(np.nextafter(threshold, -2.0)))
        rows = np.repeat(np.arange(n), np.diff(limits))
        keep = (neighbours > rows) & (similarities >= threshold)
        return np.stack([rows[keep], neighbours[keep].astype(np.int64)], axis=1)
    edges = []
    for start in range(0, n, block_size):
        block = features[start : start + block_size]
        for other_start in range(start, n, block_size):
            similarities = block @ features[other_start : other_start + block_size].T
            i, j = np.nonzero(similarities >= threshold)
            i += start
            j += other_start
            upper = j > i
            if upper.any():
                edges.append(np.stack([i[upper], j[upper]], axis=1))
    return np.concatenate(edges).astype(np.int64) if edges else np.empty((0, 2), dtype=np.int64)


def connected_components(n: int, edges: np.ndarray) -> np.ndarray:
    """Component label per row: the smallest row index in its component (min-label propagation, vectorised)."""
    labels = np.arange(n, dtype=np.int64)
    if len(edges) == 0:
        return labels
    a, b = edges[:, 0], edges[:, 1]
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        # Pointer jumping: follow labels to their root so long chains converge in a few rounds.
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if np.array_equal(labels, before):
            return labels


# --------------------------------------------------------------------------------------------------- entry point


def best_of_each_group(labels: np.ndarray, scores: np.ndarray, uids: np.ndarray) -> np.ndarray:
    """(N,) bool: the kept member of each group (integer ``labels``): the best score (higher = better; NaN last),
    ties by uid. The one rule for which duplicate stays, shared by ``dedup`` and the defect report."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.asarray(uids).astype(str), np.where(np.isnan(scores), np.inf, -scores), labels))
    is_first = np.ones(len(labels), dtype=bool)
    is_first[1:] = labels[order][1:] != labels[order][:-1]
    is_kept = np.zeros(len(labels), dtype=bool)
    is_kept[order[is_first]] = True
    return is_kept


def dedup(
    table: pd.DataFrame,
    *,
    score_column: str = "score",
    features: np.ndarray | None = None,
    exact: str | None = "image_and_caption",
    near_threshold: float | None = 0.95,
    block_size: int = 2048,
) -> pd.DataFrame:
    """Duplicate groups and the kept member of each: one row per input row, in input order.

    ``table``: ``uid`` (unique), ``score_column`` (higher = better), and for exact dedup ``sha256`` (or ``image``
    bytes) plus ``caption``. ``features``: (N, d) rows aligned with ``table`` (e.g. ``pair_features(image_emb,
    text_emb)``), needed when ``near_threshold`` is set. Returns ``uid``, ``dedup_group`` (the smallest uid of the
    group as a string; null for a row that duplicates nothing), ``group_size``, ``duplicate_kind`` ("exact", "near",
    "exact+near" or null) and ``is_kept`` (exactly one True per group; singletons are kept).
    """
    if "uid" not in table.columns:
        raise ValueError("dedup needs a `uid` column")
    if table["uid"].duplicated().any():
        raise ValueError("dedup: uids must be unique")
    if score_column not in table.columns:
        raise ValueError(f"dedup needs the score column {score_column!r}")
    n = len(table)
    exact_edges = exact_duplicate_edges(table, exact) if exact is not None else np.empty((0, 2), dtype=np.int64)
    if near_threshold is not None:
        if features is None:
            raise ValueError("near dedup needs `features` aligned with the table (or near_threshold=None)")
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[0] != n:
            raise ValueError(f"features must be (N={n}, d), got {features.shape}")
        near_edges = near_duplicate_edges(features, near_threshold, block_size)
    else:
        near_edges = np.empty((0, 2), dtype=np.int64)
    labels = connected_components(n, np.concatenate([exact_edges, near_edges]))

    component_size = np.bincount(labels, minlength=n)[labels]
    in_exact = np.zeros(n, dtype=bool)
    in_exact[exact_edges.ravel()] = True
    in_near = np.zeros(n, dtype=bool)
    in_near[near_edges.ravel()] = True
    # A group's kind is what joined any of its members.
    group_exact = np.zeros(n, dtype=bool)
    np.logical_or.at(group_exact, labels, in_exact)
    group_near = np.zeros(n, dtype=bool)
    np.logical_or.at(group_near, labels, in_near)
    kind = np.where(group_exact[labels] & group_near[labels], "exact+near",
                    np.where(group_exact[labels], "exact", np.where(group_near[labels], "near", None)))

    scores = pd.to_numeric(table[score_column], errors="coerce").to_numpy(dtype=np.float64)
    if np.isnan(scores).any():
        logger.warning("dedup: %d rows have no score; they rank last within their group", int(np.isnan(scores).sum()))
    uid_text = table["uid"].astype(str).to_numpy()
    is_kept = best_of_each_group(labels, scores, uid_text)

    # Group id: the smallest uid (as text) in the group, independent of the scores.
    group_min_uid = pd.Series(uid_text).groupby(labels).transform("min").to_numpy()
    dedup_group = np.where(component_size > 1, group_min_uid, None)
    result = pd.DataFrame(
        {
            "uid": table["uid"].to_numpy(),
            "dedup_group": pd.array(dedup_group, dtype="string"),
            "group_size": component_size.astype(np.int64),
            "duplicate_kind": pd.array(kind, dtype="string"),
            "is_kept": is_kept,
        }
    )
    groups = len(np.unique(labels[component_size > 1]))
    logger.info(
        "dedup: %d rows, %d groups (%d exact edges, %d near edges), %d rows dropped",
        n, groups, len(exact_edges), len(near_edges), int((~is_kept).sum()),
    )
    return result[OUTPUT_COLUMNS]
