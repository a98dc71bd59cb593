"""What every source reader shares: the source config, lazy partitions, file discovery and THE row builder.

Each reader turns one configured source into partitions: ``{partition_id: RawPartition}``, where
``RawPartition()`` returns a pandas DataFrame of raw rows (columns ``RAW_COLUMNS``) and
``RawPartition.count_rows()`` counts the rows the same partition yields without decoding any
image, so the ledger can check rows in == rows out independently of the normaliser.

Validation of a whole source (missing path, wrong schema, missing caption column, unreadable tar)
raises ``DatasetError`` naming the file; row-level problems become ``raw_error`` / ``raw_detail``
on the row (later turned into quarantine rows).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from glob import glob
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from kedro.io import DatasetError

RAW_COLUMNS = (
    "uid",
    "caption_bytes",
    "image_bytes",
    "source",
    "split",
    "location",
    "defect",
    "duplicate_group",
    "raw_error",
    "raw_detail",
)
# Evaluation-only columns copied from a row's own metadata (tar json, parquet column, metadata.jsonl key).
SIDE_COLUMNS = ("defect", "duplicate_group")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("pool", "val", "test")
FORMATS = ("webdataset", "laion_parquet", "datacomp", "imagefolder")


@dataclass(frozen=True)
class SourceConfig:
    """One entry of ``ImageTextSources(sources=[...])``."""

    name: str
    format: str
    path: str
    split: str
    image_column: str = "jpg"
    # None = the format's convention: `caption` then `TEXT` (parquet), .txt then json `caption`
    # (webdataset), `text` (datacomp metadata, imagefolder metadata.jsonl).
    caption_column: str | None = None
    uid_column: str | None = None
    # Prepended to every uid of this source. Default none, so DataComp's global uids (and the uids a subset
    # file lists) stay as they are; set one when two sources number their keys the same way (img2dataset
    # starts at 000000000 in every run).
    uid_prefix: str | None = None
    shards: str | None = None  # datacomp: the webdataset shards the metadata joins to
    rows_per_partition: int = 10_000  # parquet / imagefolder chunking (tars are one partition each)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SourceConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        label = raw.get("name", "<unnamed>")
        if unknown:
            raise DatasetError(f"source '{label}': unknown option(s) {unknown}; known: {sorted(known)}")
        missing = [key for key in ("name", "format", "path", "split") if not raw.get(key)]
        if missing:
            raise DatasetError(f"source '{label}': missing required option(s) {missing}")
        config = cls(**{**raw, "path": str(raw["path"])})
        if config.format not in FORMATS:
            raise DatasetError(f"source '{config.name}': unknown format '{config.format}'; one of {sorted(FORMATS)}")
        if config.split not in SPLITS:
            raise DatasetError(f"source '{config.name}': split must be one of {SPLITS}, got '{config.split}'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.name) or "__" in config.name:
            raise DatasetError(
                f"source '{config.name}': names may use letters, digits, '_', '-', '.' but not '__' "
                "(it separates source and shard in partition ids)"
            )
        if config.uid_prefix is not None and not isinstance(config.uid_prefix, str):
            raise DatasetError(f"source '{config.name}': uid_prefix must be a string, got {config.uid_prefix!r}")
        if config.format == "datacomp" and not config.shards:
            raise DatasetError(f"source '{config.name}': format datacomp needs `shards` (the .tar files)")
        if config.rows_per_partition < 1:
            raise DatasetError(f"source '{config.name}': rows_per_partition must be >= 1")
        return config


@dataclass
class RawPartition:
    """A lazy partition: call it for the raw rows, ``count_rows()`` for their number only."""

    read: Callable[[], list[dict[str, Any]]]
    count: Callable[[], int]
    columns: tuple[str, ...] = field(default=RAW_COLUMNS)

    def __call__(self) -> pd.DataFrame:
        # object dtype keeps None as None (pandas 3 would turn it into NaN in inferred str columns).
        return pd.DataFrame(self.read(), columns=list(self.columns), dtype=object)

    def count_rows(self) -> int:
        return self.count()


def build_row(
    config: SourceConfig,
    *,
    uid: Any,
    location: str,
    caption: Any = None,
    image: bytes | None = None,
    meta: dict[str, Any] | None = None,
    raw_error: str | None = None,
    raw_detail: str | None = None,
) -> dict[str, Any]:
    """The one place a raw row is made: uid namespacing, caption bytes and the side columns for every format.

    ``meta``: the row's own metadata (tar json, parquet row, jsonl record); only SIDE_COLUMNS are read from it.
    """
    meta = meta or {}
    side = {name: None if meta.get(name) is None else str(meta[name]) for name in SIDE_COLUMNS}
    return {
        "uid": f"{config.uid_prefix or ''}{uid}",
        "caption_bytes": as_caption_bytes(caption),
        "image_bytes": image,
        "source": config.name,
        "split": config.split,
        "location": location,
        **side,
        "raw_error": raw_error,
        "raw_detail": raw_detail,
    }


def as_caption_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Strings from JSON/arrow are already valid Unicode; lone surrogates (possible from JSON
        # escapes) survive as bytes that strict UTF-8 decoding later rejects, as they should.
        return value.encode("utf-8", errors="surrogatepass")
    return str(value).encode("utf-8")


def partition_id(source: str, stem: str) -> str:
    """``{source}__{stem}`` with characters unsafe in file names replaced (the id becomes a file name)."""
    return f"{source}__{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}"


def resolve_files(config: SourceConfig, pattern: str, suffixes: tuple[str, ...], what: str) -> list[Path]:
    """A directory (searched recursively) or a glob, sorted; raises if nothing matches."""
    root = Path(pattern)
    if root.is_dir():
        files = [p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(suffixes)]
    else:
        files = [Path(p) for p in glob(pattern, recursive=True) if p.lower().endswith(suffixes)]
    if not files:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): no {what} ({'/'.join(suffixes)}) found at "
            f"'{pattern}' (missing path, or wrong directory/glob)"
        )
    return sorted(files)


def open_parquet(config: SourceConfig, path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise DatasetError(f"source '{config.name}' ({config.format}): {path}: unreadable parquet ({error})") from error


def pick_caption_column(config: SourceConfig, path: Path, names: list[str], defaults: tuple[str, ...]) -> str:
    candidates = (config.caption_column,) if config.caption_column else defaults
    for candidate in candidates:
        if candidate in names:
            return candidate
    raise DatasetError(
        f"source '{config.name}' ({config.format}): {path}: missing caption column "
        f"(looked for {list(candidates)}; columns are {names})"
    )
