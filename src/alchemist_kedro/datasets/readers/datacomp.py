"""DataComp: metadata parquet (``uid``, ``text``) joined by uid to img2dataset shards whose json carries ``uid``.

Metadata rows with no image become ``missing_image``; images with no metadata row ``empty_caption``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from kedro.io import DatasetError

from alchemist_kedro.datasets.readers.common import (
    RawPartition,
    SourceConfig,
    as_caption_bytes,
    build_row,
    open_parquet,
    partition_id,
    pick_caption_column,
    resolve_files,
)
from alchemist_kedro.datasets.readers.webdataset import check_tar, member_row, member_uid, parse_json, tar_groups


class _DatacompJoin:
    """uid -> caption index over the metadata, built once and shared by the source's partitions.

    The index is a dict (about 150 bytes a row: ~2 GB for DataComp-small's 12.8M rows); shards only
    carry uids, so the join needs it in memory or a per-shard scan of all metadata. uids here are the
    files' own (before any ``uid_prefix``).
    """

    def __init__(self, config: SourceConfig, metadata_files: list[Path], tars: list[Path], uid_column: str,
                 caption_columns: dict[Path, str]):
        self.config = config
        self.metadata_files = metadata_files
        self.tars = tars
        self.uid_column = uid_column
        self.caption_columns = caption_columns
        self._captions: dict[str, bytes | None] | None = None
        self._shard_uids: dict[Path, list[str]] = {}

    def _metadata(self):
        """(uid, text, location) of every metadata row, in file order."""
        for path in self.metadata_files:
            row_index = 0
            caption_column = self.caption_columns[path]
            for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=[self.uid_column, caption_column]):
                data = batch.to_pydict()
                for uid, text in zip(data[self.uid_column], data[caption_column], strict=True):
                    yield str(uid), text, f"{path}#row={row_index}"
                    row_index += 1

    def captions(self) -> dict[str, bytes | None]:
        if self._captions is None:
            captions: dict[str, bytes | None] = {}
            for uid, text, _ in self._metadata():
                # First metadata row wins; repeats surface in the "without image" partition.
                captions.setdefault(uid, as_caption_bytes(text))
            self._captions = captions
        return self._captions

    def shard_uids(self, tar_path: Path) -> list[str]:
        if tar_path not in self._shard_uids:
            self._shard_uids[tar_path] = [
                member_uid(parse_json(members.get("json"))[0], key, "uid")
                for key, members in tar_groups(tar_path, names_only=True)
            ]
        return self._shard_uids[tar_path]

    def shard_rows(self, tar_path: Path) -> list[dict[str, Any]]:
        captions = self.captions()
        rows, uids = [], []
        for key, members in tar_groups(tar_path):
            meta, json_error = parse_json(members.get("json"))
            uid = member_uid(meta, key, "uid")
            uids.append(uid)
            row = member_row(self.config, tar_path, key, members, "uid", captions.get(uid), meta, json_error)
            if row["raw_error"] is None and uid not in captions:
                # The schema's empty_caption covers "missing or whitespace-only caption".
                row.update(raw_error="empty_caption", raw_detail=f"no metadata row for uid '{uid}'")
            rows.append(row)
        self._shard_uids[tar_path] = uids
        return rows

    def rows_without_image(self) -> list[dict[str, Any]]:
        """Metadata rows whose uid no shard holds (missing_image), plus repeated metadata uids."""
        in_shards = {uid for tar_path in self.tars for uid in self.shard_uids(tar_path)}
        rows = []
        seen: set[str] = set()
        for uid, text, location in self._metadata():
            if uid not in seen:
                seen.add(uid)
                if uid in in_shards:
                    continue
                rows.append(build_row(self.config, uid=uid, caption=text, location=location, raw_error="missing_image",
                                      raw_detail=f"no shard holds an image for uid '{uid}'"))
            else:
                # A repeated metadata uid: left to the normaliser's duplicate_uid check.
                rows.append(build_row(self.config, uid=uid, caption=text, location=location))
        return rows


def read_datacomp(config: SourceConfig) -> dict[str, RawPartition]:
    metadata_files = resolve_files(config, config.path, (".parquet",), "metadata parquet files")
    uid_column = config.uid_column or "uid"
    caption_columns = {}
    for path in metadata_files:
        names = open_parquet(config, path).schema_arrow.names
        if uid_column not in names:
            raise DatasetError(
                f"source '{config.name}' ({config.format}): {path}: missing uid column '{uid_column}' "
                f"(columns are {names})"
            )
        caption_columns[path] = pick_caption_column(config, path, names, ("text", "caption", "TEXT"))
    tars = resolve_files(config, str(config.shards), (".tar",), "webdataset shards")
    for tar_path in tars:
        check_tar(config, tar_path)
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
