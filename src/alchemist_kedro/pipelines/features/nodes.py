"""Encoder features for the rater, cached per sample-table shard.

In: the `samples` partitions (SAMPLE_SCHEMA) and what is already in `features` (read back as `features_cache`,
uid + fingerprint columns only). Out: a lazy save callable for every shard that must be (re)computed, nothing for the
shards whose stored fingerprint and uid set still match: `features` keeps `overwrite: false`, so partitions left out
of the returned dict stay on disk untouched.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from alchemist_kedro.encoders import ImageEncoder, TextEncoder, get_image_encoder, get_text_encoder
from alchemist_kedro.encoders.base import settings_digest
from alchemist_kedro.schemas import FEATURE_SCHEMA
from alchemist_kedro.shard_engine import engine_for, Part, ShardTask, row_keys, source_digests

logger = logging.getLogger(__name__)

# Bump when the layout or meaning of the stored features changes: every cached shard is then recomputed.
FEATURES_FORMAT_VERSION = 2  # 2: patch_emb
_REQUIRED_SAMPLE_COLUMNS = ("uid", "caption", "image")


def build_encoders(params: dict[str, Any]) -> tuple[ImageEncoder, TextEncoder, int]:
    """(image encoder, text encoder, max_tokens) from `params:features`."""
    for key in ("image_encoder", "text_encoder"):
        if not isinstance(params.get(key), dict) or "name" not in params[key]:
            raise ValueError(f"features: parameters need `{key}: {{name: ..., ...}}`, got {params.get(key)!r}")
    image_config = dict(params["image_encoder"])
    text_config = dict(params["text_encoder"])
    max_tokens = int(text_config["max_tokens"])
    image_encoder = get_image_encoder(image_config.pop("name"), **image_config)
    text_encoder = get_text_encoder(text_config.pop("name"), **text_config)
    return image_encoder, text_encoder, max_tokens


def features_fingerprint(image_encoder: ImageEncoder, text_encoder: TextEncoder, max_tokens: int) -> str:
    """`<image encoder>@<weights>|<text encoder>@<weights>|<settings hash>` (FEATURE_SCHEMA's fingerprint)."""
    settings = {"max_tokens": max_tokens, "format": FEATURES_FORMAT_VERSION}
    return f"{image_encoder.fingerprint}|{text_encoder.fingerprint}|{settings_digest(settings)}"


def check_samples(shard: str, samples: pd.DataFrame) -> None:
    """Raise a ValueError naming the shard and the offending uid/column; never drop rows silently."""
    missing = [column for column in _REQUIRED_SAMPLE_COLUMNS if column not in samples.columns]
    if missing:
        raise ValueError(f"samples shard {shard!r}: missing column(s) {missing}; has {list(samples.columns)}")
    if samples["uid"].isna().any():
        raise ValueError(f"samples shard {shard!r}: {int(samples['uid'].isna().sum())} row(s) with a null uid")
    duplicated = samples["uid"][samples["uid"].duplicated()]
    if len(duplicated):
        raise ValueError(f"samples shard {shard!r}: duplicate uid(s) {duplicated.head(5).tolist()}")
    for column in ("caption", "image"):
        bad = samples["uid"][samples[column].isna()]
        if len(bad):
            raise ValueError(f"samples shard {shard!r}: null {column} for uid(s) {bad.head(5).tolist()}")


def decode_image(shard: str, uid: str, data: bytes) -> np.ndarray:
    """PNG (or any Pillow-readable) bytes → uint8 HxWx3 RGB array."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001 - any decode failure is reported with its sample
        raise ValueError(f"samples shard {shard!r}, uid {uid!r}: image bytes do not decode ({error})") from None


def encode_shard(
    shard: str,
    samples: pd.DataFrame,
    image_encoder: ImageEncoder,
    text_encoder: TextEncoder,
    max_tokens: int,
    fingerprint: str,
    chunk_size: int = 64,
) -> pd.DataFrame:
    """One samples shard → its features table (FEATURE_SCHEMA columns, same uids, same order)."""
    check_samples(shard, samples)
    uids = samples["uid"].astype(str).tolist()
    captions = samples["caption"].astype(str).tolist()
    images = samples["image"].tolist()
    count = len(uids)
    image_emb = np.zeros((count, image_encoder.dim), dtype=np.float32)
    text_emb = np.zeros((count, text_encoder.dim), dtype=np.float32)
    tokens = np.zeros((count, max_tokens * text_encoder.token_dim), dtype=np.float32)
    mask = np.zeros((count, max_tokens), dtype=np.int8)
    patches_dim = int(getattr(image_encoder, "patches_dim", 0))
    patches = np.zeros((count, patches_dim), dtype=np.float32)
    with tqdm(total=count, desc=f"features {shard}", unit="sample", leave=False) as progress:
        for start in range(0, count, chunk_size):
            part = slice(start, min(start + chunk_size, count))
            decoded = [decode_image(shard, uid, data) for uid, data in zip(uids[part], images[part])]
            if patches_dim:
                image_emb[part], patches[part] = image_encoder.embed_with_patches(decoded)
            else:
                image_emb[part] = image_encoder.embed_images(decoded)
            embeddings, states, token_mask = text_encoder.encode(captions[part], max_tokens)
            text_emb[part] = embeddings
            tokens[part] = states.reshape(len(states), -1)  # row-major (max_tokens, token_dim), see FEATURE_SCHEMA
            mask[part] = token_mask
            progress.update(part.stop - part.start)
    # object-dtype columns so pyarrow writes exactly FEATURE_SCHEMA (pandas' own str dtype would be large_string)
    table = pd.DataFrame(
        {
            "uid": pd.Series(uids, dtype=object),
            "image_emb": pd.Series(list(image_emb), dtype=object),
            "text_emb": pd.Series(list(text_emb), dtype=object),
            "text_tokens": pd.Series(list(tokens), dtype=object),
            "text_mask": pd.Series(list(mask), dtype=object),
            "patch_emb": pd.Series(list(patches), dtype=object),
            "fingerprint": pd.Series([fingerprint] * count, dtype=object),
            "source_digest": pd.Series(source_digests(samples), dtype=object),
        }
    )
    return table[FEATURE_SCHEMA.names]


def compute_features(
    samples: dict[str, Callable[[], pd.DataFrame]],
    features_cache: dict[str, Callable[[], pd.DataFrame]],
    params: dict[str, Any],
) -> tuple[dict[str, Callable[[], pd.DataFrame]], dict[str, dict[str, float]], dict[str, Any]]:
    """Plan and (lazily) compute the features of every samples shard.

    Returns (features: shard → save callable, for the shards to (re)compute only; metrics for MLflow; a report).
    A cached shard is reused when all its rows carry the current fingerprint and its (uid, content digest) set
    equals the samples shard's. Every samples shard is read once here, cheaply next to encoding, so bad input fails before any
    encoding starts. Feature shards whose samples shard is gone are reported (`stale_shards`), not deleted:
    PartitionedDataset only deletes with `overwrite: true`, which wipes the whole folder before lazy saves run.
    """
    if not samples:
        raise ValueError("features: the samples table has no partitions (run the ingest pipeline first)")
    shard_keys: dict[str, list[str]] = {}
    for shard in sorted(samples):  # validate every shard before any model is loaded
        table = samples[shard]()
        check_samples(shard, table)
        shard_keys[shard] = row_keys(table)  # (uid, digest of sha256 + caption): a changed image or caption recomputes
        del table
    image_encoder, text_encoder, max_tokens = build_encoders(params)
    fingerprint = features_fingerprint(image_encoder, text_encoder, max_tokens)
    chunk_size = int(params["chunk_size"])

    # One part: the whole shard, current when every row carries this fingerprint and the row keys are unchanged.
    engine = engine_for(params, "features")
    plan = engine.plan(shard_keys, features_cache, {"features": Part("fingerprint", fingerprint, ())},
                       shard_keys.get, ordered_uids=False)

    def compute(task: ShardTask) -> pd.DataFrame:
        # Runs when PartitionedDataset saves this partition: one shard's features in memory at a time.
        return encode_shard(task.shard, samples[task.shard](), image_encoder, text_encoder, max_tokens, fingerprint,
                            chunk_size)

    to_compute = engine.run(plan, compute)
    reused = list(plan.reused)
    rows_computed = sum(len(shard_keys[shard]) for shard in plan.shards)
    rows_reused = sum(len(shard_keys[shard]) for shard in reused)
    stale = list(plan.stale)
    if stale:
        logger.warning(
            "features: %d feature shard(s) have no samples shard any more and are left on disk: %s "
            "(join features to samples on uid, or delete them)", len(stale), stale[:10]
        )
    logger.info(
        "features: fingerprint %s; %d shard(s) to compute (%d rows), %d reused (%d rows)",
        fingerprint, len(to_compute), rows_computed, len(reused), rows_reused,
    )
    metrics = {
        "features.shards_total": len(samples),
        "features.shards_computed": len(to_compute),
        "features.shards_reused": len(reused),
        "features.shards_stale": len(stale),
        "features.rows_computed": rows_computed,
        "features.rows_reused": rows_reused,
        "features.image_dim": image_encoder.dim,
        "features.text_dim": text_encoder.dim,
        "features.token_dim": text_encoder.token_dim,
        "features.max_tokens": max_tokens,
        "features.patch_dim": int(getattr(image_encoder, "patches_dim", 0)),
    }
    report = {
        "fingerprint": fingerprint,
        "image_encoder": image_encoder.fingerprint,
        "text_encoder": text_encoder.fingerprint,
        "computed_shards": sorted(to_compute),
        "reused_shards": reused,
        "stale_shards": stale,
        **{key.split(".", 1)[1]: value for key, value in metrics.items()},
    }
    return to_compute, {key: {"value": float(value), "step": 0} for key, value in metrics.items()}, report

