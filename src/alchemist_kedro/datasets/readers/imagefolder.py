"""Image folder with ``metadata.jsonl`` (Hugging Face imagefolder / diffusers convention): lines of
``{"file_name": ..., "text": ...}``, the file relative to the metadata file's folder.

Folders downloaded from the web are untrusted: a ``file_name`` that resolves outside the source folder (``..``, an
absolute path, a symlink pointing out) is quarantined ``outside_source`` and never opened, and a malformed line is
a ``bad_metadata`` row with its line number, like img2dataset records a failed row and goes on. A file where most
lines are malformed is not an imagefolder at all: that is one whole-source error.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kedro.io import DatasetError

from alchemist_kedro.datasets.readers.common import RawPartition, SourceConfig, build_row, partition_id, resolve_files


def _jsonl_records(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("r", encoding="utf-8", errors="strict") as handle:
        for line_number, line in enumerate(handle, start=1):
            if line.strip():
                yield line_number, line


def _parse_record(line: str, caption_column: str, uid_column: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(record, None) or (None, why the line is malformed)."""
    try:
        record = json.loads(line)
    except ValueError as error:
        return None, f"not valid JSON ({error})"
    if not isinstance(record, dict):
        return None, f"not a JSON object (got {type(record).__name__})"
    if "file_name" not in record:
        return None, f"missing 'file_name' (keys are {sorted(record)})"
    if not isinstance(record["file_name"], str) or not record["file_name"].strip():
        return None, f"'file_name' must be a non-empty string, got {record['file_name']!r}"
    if caption_column not in record:
        return None, f"missing caption column '{caption_column}' (keys are {sorted(record)})"
    if record[caption_column] is not None and not isinstance(record[caption_column], str):
        return None, f"caption column '{caption_column}' must be a string, got {type(record[caption_column]).__name__}"
    if uid_column and not isinstance(record.get(uid_column), str | int | type(None)):
        return None, f"uid column '{uid_column}' must be a string or integer, got {type(record[uid_column]).__name__}"
    return record, None


def _rows(config: SourceConfig, path: Path, root: Path, stem: str, first: int, last: int) -> list[dict[str, Any]]:
    caption_column = config.caption_column or "text"
    rows = []
    for index, (line_number, line) in enumerate(_jsonl_records(path)):
        if index < first:
            continue
        if index >= last:
            break
        location = f"{path}:{line_number}"
        record, problem = _parse_record(line, caption_column, config.uid_column)
        if record is None:
            rows.append(build_row(config, uid=f"{stem}/metadata.jsonl:{line_number}", location=location,
                                  raw_error="bad_metadata", raw_detail=f"line {line_number}: {problem}"))
            continue
        file_name = record["file_name"]
        # resolve() follows symlinks, so a link inside the folder that points out counts as outside; the resolved
        # path is the one checked and the one read.
        image_path = (path.parent / file_name).resolve()
        image = raw_error = raw_detail = None
        if not image_path.is_relative_to(root):
            raw_error = "outside_source"
            raw_detail = f"file_name '{file_name}' resolves to {image_path}, outside the source folder {root}"
        else:
            try:
                image = image_path.read_bytes()
            except OSError as error:
                raw_error, raw_detail = "missing_image", f"{image_path}: {error.strerror or error}"
        uid = record.get(config.uid_column) if config.uid_column else None
        rows.append(
            build_row(
                config,
                uid=str(uid) if uid not in (None, "") else Path(file_name).as_posix(),
                caption=record[caption_column],
                image=image,
                location=location,
                meta=record,
                raw_error=raw_error,
                raw_detail=raw_detail,
            )
        )
    return rows


def _check_lines(config: SourceConfig, path: Path, records: list[tuple[int, str]], caption_column: str) -> None:
    bad = [(n, problem) for n, line in records
           if (problem := _parse_record(line, caption_column, config.uid_column)[1]) is not None]
    if bad and 2 * len(bad) > len(records):
        line_number, problem = bad[0]
        raise DatasetError(
            f"source '{config.name}' (imagefolder): {len(bad)} of {len(records)} lines of {path} are malformed, "
            f"so it is not an imagefolder metadata file; first: {path}:{line_number}: {problem}. Each line must be "
            f'a JSON object like {{"file_name": "a.png", "{caption_column}": "a caption"}}'
        )


def read_imagefolder(config: SourceConfig) -> dict[str, RawPartition]:
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
        _check_lines(config, path, records, caption_column)
        # The folder images may come from: the configured one, or (a glob of metadata files) each file's own.
        allowed = (root if root.is_dir() else path.parent).resolve()
        relative = path.parent.relative_to(root).as_posix() if root.is_dir() else path.parent.name
        stem = "root" if relative in ("", ".") else relative
        starts = range(0, max(len(records), 1), config.rows_per_partition)
        for number, first in enumerate(starts):
            last = min(first + config.rows_per_partition, len(records))
            key = stem if len(starts) == 1 else f"{stem}_part{number:05d}"
            partitions[partition_id(config.name, key)] = RawPartition(
                read=lambda p=path, r=allowed, s=stem, a=first, b=last: _rows(config, p, r, s, a, b),
                count=lambda a=first, b=last: b - a,
            )
    return partitions
