"""LAION-style / img2dataset ``--output_format parquet``: image bytes in a column, caption in ``caption`` or ``TEXT``;
files with more than ``rows_per_partition`` rows are split at row-group boundaries."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from kedro.io import DatasetError

from alchemist_kedro.datasets.readers.common import (
    SIDE_COLUMNS,
    RawPartition,
    SourceConfig,
    build_row,
    open_parquet,
    partition_id,
    pick_caption_column,
    resolve_files,
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


def _rows(config: SourceConfig, path: Path, row_groups: list[int], columns: dict[str, str | None]) -> list[dict[str, Any]]:
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
                build_row(
                    config,
                    uid=str(uid) if uid not in (None, "") else f"{path.stem}:{row_index}",
                    caption=data[columns["caption"]][i],
                    image=image,
                    location=f"{path}#row={row_index}",
                    meta={name: data[columns[name]][i] for name in SIDE_COLUMNS if columns[name]},
                    raw_error=None if image is not None else "missing_image",
                    raw_detail=None if image is not None else f"column '{columns['image']}' is null",
                )
            )
            row_index += 1
    return rows


def read_laion_parquet(config: SourceConfig) -> dict[str, RawPartition]:
    partitions: dict[str, RawPartition] = {}
    for path in resolve_files(config, config.path, (".parquet",), "parquet files"):
        parquet = open_parquet(config, path)
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
            "caption": pick_caption_column(config, path, names, ("caption", "TEXT")),
            "uid": config.uid_column or next((c for c in ("key", "uid") if c in names), None),
            **{name: name if name in names else None for name in SIDE_COLUMNS},
        }
        chunks = _row_group_chunks(parquet, config.rows_per_partition)
        for number, row_groups in enumerate(chunks):
            stem = path.stem if len(chunks) == 1 else f"{path.stem}_part{number:05d}"
            partitions[partition_id(config.name, stem)] = RawPartition(
                read=lambda p=path, g=row_groups, c=columns: _rows(config, p, g, c),
                count=lambda p=path, g=row_groups: sum(pq.ParquetFile(p).metadata.row_group(i).num_rows for i in g),
            )
    return partitions
