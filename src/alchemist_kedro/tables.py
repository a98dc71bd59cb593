"""Table adapters every pipeline uses and none owns: partitions → frames, FEATURE_SCHEMA columns → arrays, PNG →
tensors, split joins, MLflow metric shaping. Pure functions over pandas / numpy / torch (no Kedro)."""
from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image


def load_partition(value: Any) -> pd.DataFrame:
    """A partition as PartitionedDataset hands it (a loader) or as IncrementalDataset does (the frame itself)."""
    return value() if callable(value) else value


def concat_partitions(partitions: Mapping[str, Any] | pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One frame from lazy partitions, in partition-name order (a frame is passed through); optionally `columns`."""
    if isinstance(partitions, pd.DataFrame):
        frame = partitions
    else:
        frames = [load_partition(load) for _, load in sorted(partitions.items())]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame[list(columns)] if columns is not None and len(frame) else frame


def sample_key(uids: pd.Series, seed: int) -> np.ndarray:
    """A uniform, order-free sort key per uid (SipHash keyed by the seed): the same in every process and for any
    shard order, so "the n smallest keys" is one fixed uniform sample of any set of rows."""
    return pd.util.hash_array(uids.astype(str).to_numpy(dtype=object), hash_key=f"{int(seed) % 10**16:016d}")


def _detached(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its array-valued cells copied: pyarrow hands list columns as views into the whole partition's
    buffer, so keeping a few rows would otherwise keep every partition read so far alive."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and len(frame) and isinstance(frame[column].iloc[0], np.ndarray):
            frame[column] = [np.array(value, copy=True) for value in frame[column]]
    return frame


def bounded_rows(partitions: Mapping[str, Any], columns: Sequence[str], keep: Callable[[pd.DataFrame], pd.Series],
                 sample: Callable[[pd.DataFrame], pd.Series] | None = None, limit: int | None = None,
                 seed: int = 0) -> tuple[pd.DataFrame, int]:
    """The rows `keep` accepts, reading one partition at a time; of those that `sample` marks, at most `limit` (the
    ones with the smallest `sample_key`), so memory holds one partition plus the kept rows whatever the corpus size.
    → (rows in partition order, how many sampled-from rows there were in all)."""
    kept: pd.DataFrame | None = None
    seen = 0
    for _, load in sorted(partitions.items()):
        frame = load_partition(load)
        frame = _detached(frame.loc[keep(frame), list(columns)])
        kept = frame if kept is None else pd.concat([kept, frame], ignore_index=True)
        if sample is not None:
            marked = sample(frame)
            seen += int(marked.sum())
            if limit is not None:
                marked = sample(kept).to_numpy()
                if int(marked.sum()) > limit:
                    keys = sample_key(kept["uid"], seed)
                    cut = np.sort(keys[marked])[limit - 1]
                    kept = kept[~marked | (keys <= cut)].reset_index(drop=True)
    if kept is None:
        kept = pd.DataFrame(columns=list(columns))
    return kept, seen


def feature_matrix(frame: pd.DataFrame, patches: bool = False) -> np.ndarray:
    """(N, F) float32 image_emb ⊕ text_emb of a FEATURE_SCHEMA frame: the rater's input (ScoreBatch.features);
    `patches`: ⊕ patch_emb too (a rater with patch_inputs)."""
    if not len(frame):
        return np.zeros((0, 0), dtype=np.float32)
    columns = ["image_emb", "text_emb"] + (["patch_emb"] if patches else [])
    if patches and ("patch_emb" not in frame.columns or not len(frame["patch_emb"].iloc[0])):
        raise ValueError("this rater reads patch descriptors but the features have none: set "
                         "features.image_encoder.patch_grid > 0 and rerun the features pipeline")
    return np.concatenate([np.stack([np.asarray(value, dtype=np.float32) for value in frame[column]])
                           for column in columns], axis=1)


def vector_column(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(N, D) float32 of a list-valued column (image_emb, text_emb)."""
    return np.stack([np.asarray(value, dtype=np.float32) for value in frame[column]])


def token_arrays(frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """FEATURE_SCHEMA's flattened text_tokens / text_mask → (N, L, D) float32 and (N, L) int64."""
    if not len(frame):
        return torch.zeros((0, 1, 1)), torch.zeros((0, 1), dtype=torch.int64)
    mask = np.stack(frame["text_mask"].map(np.asarray).to_list()).astype(np.int64)
    tokens = np.stack([np.asarray(t, np.float32).reshape(mask.shape[1], -1) for t in frame["text_tokens"]])
    return torch.from_numpy(tokens), torch.from_numpy(mask)


def decode_png(png: bytes, resolution: int) -> np.ndarray:
    """Image bytes → float32 (3, R, R) in [-1, 1], the layout the proxy and the downstream model train on."""
    with Image.open(io.BytesIO(png)) as im:
        im = im.convert("RGB")
        if im.size != (resolution, resolution):
            # BOX = area averaging: the right filter for an integer downscale (64 → 32), no aliasing.
            im = im.resize((resolution, resolution), Image.Resampling.BOX)
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0


def decode_pngs(images: Sequence[bytes], resolution: int) -> torch.Tensor:
    return torch.tensor(np.stack([decode_png(b, resolution) for b in images]))


FEATURE_COLUMNS = ["uid", "image_emb", "text_emb", "text_tokens", "text_mask"]


def join_samples_features(samples: Mapping[str, Any], features: Mapping[str, Any], sample_columns: Sequence[str],
                          feature_columns: Sequence[str] = FEATURE_COLUMNS) -> tuple[pd.DataFrame, int]:
    """Sample rows joined one-to-one with their features by uid, sorted by uid; and how many samples had none."""
    table = concat_partitions(samples, sample_columns)
    feats = concat_partitions(features, feature_columns)
    joined = table.merge(feats, on="uid", how="inner", validate="one_to_one").sort_values("uid", kind="stable")
    return joined, int(len(table) - len(joined))


def join_split(samples: Mapping[str, Any], features: Mapping[str, Any], resolution: int, uids=None,
               split: str | None = None) -> dict:
    """Rows of the sample table (by uid list and/or split) joined with their text features, sorted by uid.

    → {uids, captions, images (N,3,R,R) in [-1,1], tokens, mask, text_emb (N, E) float32, missing_features}.
    """
    table = concat_partitions(samples, ["uid", "caption", "image", "split"])
    if split is not None:
        table = table[table["split"] == split]
    if uids is not None:
        table = table[table["uid"].isin(set(uids))]
    joined, missing = join_samples_features(table, features, ["uid", "caption", "image", "split"],
                                            ["uid", "text_tokens", "text_mask", "text_emb"])
    if not len(joined):
        raise ValueError(f"no samples with features for split={split!r} / {0 if uids is None else len(uids)} uids")
    tokens, mask = token_arrays(joined)
    return {
        "uids": joined["uid"].tolist(),
        "captions": joined["caption"].astype(str).tolist(),
        "images": decode_pngs(joined["image"].tolist(), resolution),
        "tokens": tokens,
        "mask": mask,
        "text_emb": vector_column(joined, "text_emb"),
        "missing_features": missing,
    }


def metrics_history(values: Mapping[str, float], step: int = 0) -> dict[str, list[dict]]:
    """{name: value} → kedro-mlflow's MlflowMetricsHistoryDataset layout {name: [{"step": s, "value": v}]}."""
    return {name: [{"step": int(step), "value": float(value)}] for name, value in values.items()}


def history_table(history: Mapping[str, list[dict]]) -> pd.DataFrame:
    """kedro-mlflow's metric history → a long (metric, step, value) table for data/08_reporting."""
    return pd.DataFrame([{"metric": k, "step": p["step"], "value": p["value"]} for k, pts in history.items() for p in pts])


def derangement(n: int, seed: int) -> np.ndarray:
    """A fixed permutation with no fixed point (a rotation of a random order): every row gets another row's item."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 rows, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    shifted = np.empty(n, dtype=np.intp)
    shifted[order] = np.roll(order, 1)
    return shifted


def take_rows(batch: dict, index, keep: Callable[[str], bool] = lambda key: key != "missing_features") -> dict:
    """The rows `index` of every per-row entry of a join_split-style dict (tensors, arrays, lists)."""
    index = np.asarray(index)
    out = {}
    for key, value in batch.items():
        if not keep(key):
            out[key] = value
        elif torch.is_tensor(value):
            out[key] = value[torch.as_tensor(index)]
        elif isinstance(value, np.ndarray):
            out[key] = value[index]
        else:
            out[key] = [value[i] for i in index]
    return out
