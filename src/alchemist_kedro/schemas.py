"""Column contracts between pipelines.

Every table that crosses a pipeline boundary is described here once, so a reader, a scorer or a
strategy written later knows exactly what it gets and what it must hand on.
"""
from __future__ import annotations

import pyarrow as pa

# Quarantine reasons: machine-readable, stable strings (users filter on them).
QUARANTINE_REASONS = (
    "decode_error",  # the bytes are not an image Pillow can open
    "truncated",  # the image header is fine but its data ends early
    "empty_caption",  # missing or whitespace-only caption
    "non_utf8_caption",  # caption bytes are not valid UTF-8
    "duplicate_uid",  # uid already seen earlier in the ingest order
    "too_large",  # Pillow's decompression-bomb guard fired (or the pixel cap in conf)
    "too_small",  # shorter side under the configured minimum
    "missing_image",  # a caption/metadata row with no image member
    "unsupported_mode",  # an image mode we cannot convert to RGB
    "outside_source",  # imagefolder: file_name resolves outside the source folder (.., absolute, symlink out)
    "bad_metadata",  # imagefolder: a metadata.jsonl line that is not valid JSON or lacks/mistypes a field
)

# The canonical sample table (03_primary/samples, one parquet partition per shard).
SAMPLE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("caption", pa.string()),
        ("image", pa.binary()),  # PNG bytes, RGB, resolution x resolution (short-side resize + centre crop)
        ("width", pa.int32()),  # original size, before normalisation
        ("height", pa.int32()),
        ("sha256", pa.string()),  # of the original image bytes
        ("source", pa.string()),  # the source's name in conf
        ("split", pa.string()),  # pool | val | test: the role the source was given in conf
        ("location", pa.string()),  # file (and member) the row came from
        ("shard", pa.string()),  # partition key
        # Evaluation-only side column (the embedded corpus's injected defect kind, or null). No scorer reads it.
        ("defect", pa.string()),
        # Evaluation-only too: rows sharing a value are copies of one image (the corpus's planted duplicates), or null.
        ("duplicate_group", pa.string()),
    ]
)

# Rows that did not make it into the sample table.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("location", pa.string()),
        ("shard", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# What every scorer writes (rater, heuristics, ...): `select` and `compare` take any of them.
SCORE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("score", pa.float64()),  # oriented so that higher = better (scorers with lower-is-better negate)
        ("raw_score", pa.float64()),  # the statistic as computed, before orientation
        ("rank", pa.int64()),  # 0 = best; ties broken by uid
        ("percentile", pa.float64()),  # (rank + 0.5) / N, 0 = best
        ("scorer", pa.string()),
        ("scorer_version", pa.string()),
    ]
)

# Selection ledger statuses.
LEDGER_STATUSES = ("selected", "not_selected", "quarantined")

# Cached encoder features (04_feature/features, one parquet partition per sample-table shard).
# Vectors are float32 lists; `text_tokens` is the encoder's last hidden states, flattened row-major from
# (max_tokens, token_dim) and zero-padded, with `text_mask` marking real tokens (1) and padding (0).
FEATURE_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("image_emb", pa.list_(pa.float32())),
        ("text_emb", pa.list_(pa.float32())),
        ("text_tokens", pa.list_(pa.float32())),
        ("text_mask", pa.list_(pa.int8())),
        # Local image descriptors (encoders' embed_with_patches: Open-NSFW patch_grid² cells × patch_dim, row-major),
        # empty when the image encoder gives none. Read by the rater's patch_inputs.
        ("patch_emb", pa.list_(pa.float32())),
        # "<image encoder>@<weights sha256[:16]>|<text encoder>@<weights sha256[:16]>|<settings hash>":
        # a shard is recomputed only when this changes.
        ("fingerprint", pa.string()),
        # hashing.row_digests(sha256, caption) of the sample row: caches key on (uid, source_digest), not uid alone.
        ("source_digest", pa.string()),
    ]
)
