"""Readers for the image-text formats users already hold.

Each reader turns one configured source into partitions: ``{partition_id: RawPartition}``, where
``RawPartition()`` returns a pandas DataFrame of raw rows (columns ``RAW_COLUMNS``) and
``RawPartition.count_rows()`` counts the rows the same partition yields without decoding any
image, so the ledger can check rows in == rows out independently of the normaliser.

Validation of a whole source (missing path, wrong schema, missing caption column, unreadable tar)
happens in ``validate`` and raises ``DatasetError`` naming the file; row-level problems become
``raw_error`` / ``raw_detail`` on the row (later turned into quarantine rows).

Adding a format = one ``_read_<format>`` function plus one line in ``READERS``.
"""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from glob import glob
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from kedro.io import DatasetError
from webdataset.tariterators import base_plus_ext

RAW_COLUMNS = (
    "uid",
    "caption_bytes",
    "image_bytes",
    "source",
    "split",
    "location",
    "defect",
    "raw_error",
    "raw_detail",
)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SPLITS = ("pool", "val", "test")


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
        if config.format not in READERS:
            raise DatasetError(
                f"source '{config.name}': unknown format '{config.format}'; one of {sorted(READERS)}"
            )
        if config.split not in SPLITS:
            raise DatasetError(f"source '{config.name}': split must be one of {SPLITS}, got '{config.split}'")
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", config.name) or "__" in config.name:
            raise DatasetError(
                f"source '{config.name}': names may use letters, digits, '_', '-', '.' but not '__' "
                "(it separates source and shard in partition ids)"
            )
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


def _row(config: SourceConfig, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(RAW_COLUMNS)
    row.update(source=config.name, split=config.split)
    row.update(values)
    return row


def _as_caption_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # Strings from JSON/arrow are already valid Unicode; lone surrogates (possible from JSON
        # escapes) survive as bytes that strict UTF-8 decoding later rejects, as they should.
        return value.encode("utf-8", errors="surrogatepass")
    return str(value).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# webdataset tars


def _tar_groups(tar_path: Path, names_only: bool = False) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """Samples of a webdataset tar in member order: (key, {extension: bytes}).

    Keys follow webdataset's rule (everything before the first dot of the base name). Members of
    one key need not be adjacent: tars re-packed by hand often are not.
    """
    groups: dict[str, dict[str, bytes | None]] = {}
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                payload = None
                if not names_only or extension.lower() == "json":
                    handle = tar.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                groups.setdefault(key, {})[extension.lower()] = payload
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DatasetError(f"{tar_path}: unreadable tar ({type(error).__name__}: {error})") from error
    yield from groups.items()


def _check_tar(config: SourceConfig, tar_path: Path) -> None:
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {tar_path}: unreadable tar "
            f"({type(error).__name__}: {error})"
        ) from error
    if first is None:
        raise DatasetError(f"source '{config.name}' ({config.format}): {tar_path}: empty tar (no members)")


def _parse_json(payload: bytes | None) -> tuple[dict[str, Any], str | None]:
    if payload is None:
        return {}, None
    try:
        meta = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        return {}, f"json member is not valid JSON ({error})"
    if not isinstance(meta, dict):
        return {}, "json member is not a JSON object"
    return meta, None


def _pick_image(members: dict[str, bytes | None]) -> tuple[str | None, bytes | None]:
    for extension in IMAGE_EXTENSIONS:
        if extension in members:
            return extension, members[extension]
    return None, None


def _webdataset_rows(config: SourceConfig, tar_path: Path) -> list[dict[str, Any]]:
    rows = []
    uid_key = config.uid_column or "key"
    json_caption = config.caption_column or "caption"
    for key, members in _tar_groups(tar_path):
        meta, json_error = _parse_json(members.get("json"))
        extension, image = _pick_image(members)
        caption = members["txt"] if "txt" in members else _as_caption_bytes(meta.get(json_caption))
        raw_error = raw_detail = None
        if json_error:
            raw_error, raw_detail = "decode_error", json_error
        elif image is None:
            raw_error = "missing_image"
            raw_detail = f"no image member ({'/'.join(IMAGE_EXTENSIONS)}) for key '{key}'"
        rows.append(
            _row(
                config,
                uid=str(meta.get(uid_key) or key),
                caption_bytes=caption,
                image_bytes=image,
                location=f"{tar_path}#{key}.{extension or 'json'}",
                defect=meta.get("defect"),
                raw_error=raw_error,
                raw_detail=raw_detail,
            )
        )
    return rows


def _read_webdataset(config: SourceConfig) -> dict[str, RawPartition]:
    tars = resolve_files(config, config.path, (".tar", ".tar.gz", ".tgz"), "webdataset shards")
    for tar_path in tars:
        _check_tar(config, tar_path)
    return {
        partition_id(config.name, tar_path.name.split(".")[0]): RawPartition(
            read=lambda p=tar_path: _webdataset_rows(config, p),
            count=lambda p=tar_path: sum(1 for _ in _tar_groups(p, names_only=True)),
        )
        for tar_path in tars
    }


# ---------------------------------------------------------------------------------------------
# LAION / img2dataset parquet


def _open_parquet(config: SourceConfig, path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {path}: unreadable parquet ({error})"
        ) from error


def _pick_caption_column(config: SourceConfig, path: Path, names: list[str], defaults: tuple[str, ...]) -> str:
    candidates = (config.caption_column,) if config.caption_column else defaults
    for candidate in candidates:
        if candidate in names:
            return candidate
    raise DatasetError(
        f"source '{config.name}' ({config.format}): {path}: missing caption column "
        f"(looked for {list(candidates)}; columns are {names})"
    )


def _row_group_chunks(parquet: pq.ParquetFile, rows_per_partition: int) -> list[list[int]]:
    """Consecutive row groups packed into chunks of about ``rows_per_partition`` rows."""
    chunks: list[list[int]] = []
    rows_in_chunk = 0
    for index in range(parquet.metadata.num_row_groups):
        if not chunks or rows_in_chunk >= rows_per_partition:
            chunks.append([])
            rows_in_chunk = 0
        chunks[-1].append(index)
        rows_in_chunk += parquet.metadata.row_group(index).num_rows
    return chunks or [[]]


def _laion_rows(config: SourceConfig, path: Path, row_groups: list[int], columns: dict[str, str | None]) -> list[dict[str, Any]]:
    parquet = pq.ParquetFile(path)
    first_row = sum(parquet.metadata.row_group(i).num_rows for i in range(row_groups[0])) if row_groups else 0
    wanted = [c for c in columns.values() if c]
    rows = []
    row_index = first_row
    # Record batches, never the whole file: LAION parquet files with images run to several GB.
    for batch in parquet.iter_batches(batch_size=1024, row_groups=row_groups, columns=wanted):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            image = data[columns["image"]][i]
            uid = data[columns["uid"]][i] if columns["uid"] else None
            rows.append(
                _row(
                    config,
                    uid=str(uid) if uid not in (None, "") else f"{path.stem}:{row_index}",
                    caption_bytes=_as_caption_bytes(data[columns["caption"]][i]),
                    image_bytes=image,
                    location=f"{path}#row={row_index}",
                    defect=data[columns["defect"]][i] if columns["defect"] else None,
                    raw_error=None if image is not None else "missing_image",
                    raw_detail=None if image is not None else f"column '{columns['image']}' is null",
                )
            )
            row_index += 1
    return rows


def _read_laion_parquet(config: SourceConfig) -> dict[str, RawPartition]:
    partitions: dict[str, RawPartition] = {}
    for path in resolve_files(config, config.path, (".parquet",), "parquet files"):
        parquet = _open_parquet(config, path)
        names = parquet.schema_arrow.names
        if config.image_column not in names:
            raise DatasetError(
                f"source '{config.name}' ({config.format}): {path}: missing image column "
                f"'{config.image_column}' (columns are {names})"
            )
        if config.uid_column and config.uid_column not in names:
            raise DatasetError(
                f"source '{config.name}' ({config.format}): {path}: missing uid column '{config.uid_column}'"
            )
        columns = {
            "image": config.image_column,
            "caption": _pick_caption_column(config, path, names, ("caption", "TEXT")),
            "uid": config.uid_column or next((c for c in ("key", "uid") if c in names), None),
            "defect": "defect" if "defect" in names else None,
        }
        chunks = _row_group_chunks(parquet, config.rows_per_partition)
        for number, row_groups in enumerate(chunks):
            stem = path.stem if len(chunks) == 1 else f"{path.stem}_part{number:05d}"
            partitions[partition_id(config.name, stem)] = RawPartition(
                read=lambda p=path, g=row_groups, c=columns: _laion_rows(config, p, g, c),
                count=lambda p=path, g=row_groups: sum(
                    pq.ParquetFile(p).metadata.row_group(i).num_rows for i in g
                ),
            )
    return partitions


# ---------------------------------------------------------------------------------------------
# DataComp: parquet metadata (uid, text) joined to webdataset shards by uid


class _DatacompJoin:
    """uid -> caption index over the metadata, built once and shared by the source's partitions.

    The index is a dict (about 150 bytes a row: ~2 GB for DataComp-small's 12.8M rows); shards only
    carry uids, so the join needs it in memory or a per-shard scan of all metadata.
    """

    def __init__(self, config: SourceConfig, metadata_files: list[Path], tars: list[Path], uid_column: str, caption_columns: dict[Path, str]):
        self.config = config
        self.metadata_files = metadata_files
        self.tars = tars
        self.uid_column = uid_column
        self.caption_columns = caption_columns
        self._captions: dict[str, tuple[bytes | None, str]] | None = None
        self._shard_uids: dict[Path, list[str]] = {}

    def captions(self) -> dict[str, tuple[bytes | None, str]]:
        if self._captions is None:
            captions: dict[str, tuple[bytes | None, str]] = {}
            for path in self.metadata_files:
                row_index = 0
                for batch in pq.ParquetFile(path).iter_batches(
                    batch_size=65_536, columns=[self.uid_column, self.caption_columns[path]]
                ):
                    data = batch.to_pydict()
                    for uid, text in zip(data[self.uid_column], data[self.caption_columns[path]], strict=True):
                        # First metadata row wins; repeats surface in the "without image" partition.
                        captions.setdefault(str(uid), (_as_caption_bytes(text), f"{path}#row={row_index}"))
                        row_index += 1
            self._captions = captions
        return self._captions

    def shard_uids(self, tar_path: Path) -> list[str]:
        if tar_path not in self._shard_uids:
            self._shard_uids[tar_path] = [
                str(_parse_json(members.get("json"))[0].get("uid") or key)
                for key, members in _tar_groups(tar_path, names_only=True)
            ]
        return self._shard_uids[tar_path]

    def shard_rows(self, tar_path: Path) -> list[dict[str, Any]]:
        captions = self.captions()
        rows = []
        uids = []
        for key, members in _tar_groups(tar_path):
            meta, json_error = _parse_json(members.get("json"))
            uid = str(meta.get("uid") or key)
            uids.append(uid)
            extension, image = _pick_image(members)
            caption, _ = captions.get(uid, (None, ""))
            raw_error = raw_detail = None
            if json_error:
                raw_error, raw_detail = "decode_error", json_error
            elif image is None:
                raw_error, raw_detail = "missing_image", f"no image member for key '{key}'"
            elif uid not in captions:
                # The schema's empty_caption covers "missing or whitespace-only caption".
                raw_error, raw_detail = "empty_caption", f"no metadata row for uid '{uid}'"
            rows.append(
                _row(
                    self.config,
                    uid=uid,
                    caption_bytes=caption,
                    image_bytes=image,
                    location=f"{tar_path}#{key}.{extension or 'json'}",
                    defect=meta.get("defect"),
                    raw_error=raw_error,
                    raw_detail=raw_detail,
                )
            )
        self._shard_uids[tar_path] = uids
        return rows

    def rows_without_image(self) -> list[dict[str, Any]]:
        """Metadata rows whose uid no shard holds (missing_image), plus repeated metadata uids."""
        in_shards = {uid for tar_path in self.tars for uid in self.shard_uids(tar_path)}
        rows = []
        seen: set[str] = set()
        for path in self.metadata_files:
            row_index = 0
            caption_column = self.caption_columns[path]
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=[self.uid_column, caption_column]):
                data = batch.to_pydict()
                for uid, text in zip(data[self.uid_column], data[caption_column], strict=True):
                    uid = str(uid)
                    location = f"{path}#row={row_index}"
                    row_index += 1
                    if uid not in seen:
                        seen.add(uid)
                        if uid in in_shards:
                            continue
                        rows.append(_row(self.config, uid=uid, caption_bytes=_as_caption_bytes(text), location=location,
                                         raw_error="missing_image", raw_detail=f"no shard holds an image for uid '{uid}'"))
                    else:
                        # A repeated metadata uid: left to the normaliser's duplicate_uid check.
                        rows.append(_row(self.config, uid=uid, caption_bytes=_as_caption_bytes(text), location=location))
        return rows


def _read_datacomp(config: SourceConfig) -> dict[str, RawPartition]:
    metadata_files = resolve_files(config, config.path, (".parquet",), "metadata parquet files")
    uid_column = config.uid_column or "uid"
    caption_columns = {}
    for path in metadata_files:
        names = _open_parquet(config, path).schema_arrow.names
        if uid_column not in names:
            raise DatasetError(
                f"source '{config.name}' ({config.format}): {path}: missing uid column '{uid_column}' "
                f"(columns are {names})"
            )
        caption_columns[path] = _pick_caption_column(config, path, names, ("text", "caption", "TEXT"))
    tars = resolve_files(config, str(config.shards), (".tar",), "webdataset shards")
    for tar_path in tars:
        _check_tar(config, tar_path)
    join = _DatacompJoin(config, metadata_files, tars, uid_column, caption_columns)
    partitions = {
        partition_id(config.name, tar_path.name.split(".")[0]): RawPartition(
            read=lambda p=tar_path: join.shard_rows(p),
            count=lambda p=tar_path: len(join.shard_uids(p)),
        )
        for tar_path in tars
    }
    without_image = join.rows_without_image
    partitions[partition_id(config.name, "metadata_without_image")] = RawPartition(
        read=without_image, count=lambda: len(without_image())
    )
    return partitions


# ---------------------------------------------------------------------------------------------
# Image folder with metadata.jsonl (Hugging Face imagefolder / diffusers convention)


def _jsonl_records(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield line_number, line


def _parse_record(config: SourceConfig, path: Path, line_number: int, line: str, caption_column: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError as error:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {path}:{line_number}: not valid JSON ({error})"
        ) from error
    if not isinstance(record, dict) or "file_name" not in record:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {path}:{line_number}: missing 'file_name'"
        )
    if caption_column not in record:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {path}:{line_number}: missing caption column "
            f"'{caption_column}' (keys are {sorted(record)})"
        )
    return record


def _imagefolder_rows(config: SourceConfig, path: Path, first: int, last: int) -> list[dict[str, Any]]:
    caption_column = config.caption_column or "text"
    rows = []
    for index, (line_number, line) in enumerate(_jsonl_records(path)):
        if index < first:
            continue
        if index >= last:
            break
        record = _parse_record(config, path, line_number, line, caption_column)
        image_path = path.parent / str(record["file_name"])
        try:
            image = image_path.read_bytes()
            raw_error = raw_detail = None
        except OSError as error:
            image, raw_error, raw_detail = None, "missing_image", f"{image_path}: {error.strerror or error}"
        uid = record.get(config.uid_column) if config.uid_column else None
        rows.append(
            _row(
                config,
                uid=str(uid if uid not in (None, "") else Path(record["file_name"]).as_posix()),
                caption_bytes=_as_caption_bytes(record[caption_column]),
                image_bytes=image,
                location=f"{path}:{line_number}",
                defect=record.get("defect"),
                raw_error=raw_error,
                raw_detail=raw_detail,
            )
        )
    return rows


def _read_imagefolder(config: SourceConfig) -> dict[str, RawPartition]:
    root = Path(config.path)
    if root.is_dir():
        metadata_files = sorted(root.rglob("metadata.jsonl"))
        if not metadata_files:
            raise DatasetError(
                f"source '{config.name}' (imagefolder): {root}: no metadata.jsonl (lines of "
                "{\"file_name\": ..., \"text\": ...}) in the folder"
            )
    else:
        metadata_files = resolve_files(config, config.path, ("metadata.jsonl",), "metadata.jsonl files")
    caption_column = config.caption_column or "text"
    partitions: dict[str, RawPartition] = {}
    for path in metadata_files:
        try:
            records = list(_jsonl_records(path))  # line positions only; images are read lazily
        except UnicodeDecodeError as error:
            raise DatasetError(f"source '{config.name}' (imagefolder): {path}: not UTF-8 ({error})") from error
        if records:
            _parse_record(config, path, *records[0], caption_column)
        relative = path.parent.relative_to(root).as_posix() if root.is_dir() else path.parent.name
        stem = "root" if relative in ("", ".") else relative
        starts = range(0, max(len(records), 1), config.rows_per_partition)
        for number, first in enumerate(starts):
            last = min(first + config.rows_per_partition, len(records))
            key = stem if len(starts) == 1 else f"{stem}_part{number:05d}"
            partitions[partition_id(config.name, key)] = RawPartition(
                read=lambda p=path, a=first, b=last: _imagefolder_rows(config, p, a, b),
                count=lambda a=first, b=last: b - a,
            )
    return partitions


READERS: dict[str, Callable[[SourceConfig], dict[str, RawPartition]]] = {
    "webdataset": _read_webdataset,
    "laion_parquet": _read_laion_parquet,
    "datacomp": _read_datacomp,
    "imagefolder": _read_imagefolder,
}
