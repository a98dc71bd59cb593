"""Parquet datasets for resumable stages: writes that are complete or absent, cache views that skip leftovers.

``AtomicParquetDataset`` is ``pandas.ParquetDataset`` whose local saves go through a temporary file and a rename,
so a kill during a write never leaves a half partition (remote filesystems: the stock write). Use it as the
``dataset:`` of every PartitionedDataset a stage writes and for single tables (scores, manifests)::

    features:
      type: partitions.PartitionedDataset
      path: data/04_feature/features
      dataset: {type: alchemist_kedro.datasets.atomic.AtomicParquetDataset, save_args: {index: false}}

``CachePartitionedDataset`` / ``CacheIncrementalDataset`` are the read-back views a stage uses to decide what is
already done. A partition file that is not a complete parquet file (a leftover of an older version killed
mid-write) is logged with its path and left out, so the stage recomputes it and the new atomic write replaces it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pandas as pd

from kedro.io.core import get_filepath_str
from kedro_datasets.pandas import ParquetDataset
from kedro_datasets.partitions import IncrementalDataset, PartitionedDataset

from alchemist_kedro.atomic_io import atomic_write, parquet_problem

logger = logging.getLogger(__name__)


class AtomicParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` with atomic local saves (same options, same loads).

    ``load_args.optional_columns``: columns read when the file has them (a table written before a column was added
    to its schema, or by a tool that never writes it: the evaluation-only side columns); absent ones come back as
    nulls, so a reader never depends on them being there.
    """

    def load(self):
        optional = list(self._load_args.get("optional_columns") or [])
        if not optional:
            return super().load()
        import pyarrow.parquet as pq

        path = get_filepath_str(self._get_load_path(), self._protocol)
        present = set(pq.read_schema(path).names)
        args = {k: v for k, v in self._load_args.items() if k != "optional_columns"}
        columns = list(args.pop("columns", None) or [])
        frame = pd.read_parquet(path, columns=columns + [c for c in optional if c in present], **args)
        for column in optional:
            if column not in frame.columns:
                frame[column] = None
        return frame

    def save(self, data) -> None:
        if self._protocol != "file" or "partition_cols" in self._save_args:
            super().save(data)  # the stock errors and remote writes
            return
        path = get_filepath_str(self._get_save_path(), self._protocol)
        atomic_write(path, lambda handle: data.to_parquet(handle, **self._save_args))
        self._invalidate_cache()


class _CompletePartitions:
    """Mixin: list only partitions that are complete parquet files; warn once per bad file."""

    _reported: set[str]

    def _list_partitions(self) -> list[str]:
        listed = super()._list_partitions()  # type: ignore[misc]
        if not self._filename_suffix.endswith(".parquet"):  # type: ignore[attr-defined]
            return listed
        reported = self.__dict__.setdefault("_reported", set())
        usable = []
        for path in listed:
            problem = parquet_problem(path)
            if problem is None:
                usable.append(path)
            elif path not in reported:
                reported.add(path)
                logger.warning("%s: %s; treated as missing, it will be recomputed", path, problem)
        self._cached_partitions = usable  # type: ignore[attr-defined]
        return usable


class CachePartitionedDataset(_CompletePartitions, PartitionedDataset):
    """Read-only view of a partitioned cache: ``{}`` when the folder holds no (complete) partition yet.

    The stock PartitionedDataset raises "No partitions found", which would make a stage's very first run (empty
    cache) fail. Saving is refused so nothing writes through this view by mistake.
    """

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()  # the listing is cached per instance; the folder may have changed
        if not self._list_partitions():
            return {}
        return super().load()

    def save(self, data: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a read-only view of {self._path}; save to the writer")


class OptionalPartitionedDataset(_CompletePartitions, PartitionedDataset):
    """A PartitionedDataset a stage writes and another may read before it ever ran: ``{}`` when the folder holds no
    (complete) partition. Saving is PartitionedDataset's own."""

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()
        if not self._list_partitions():
            return {}
        return super().load()


class CacheIncrementalDataset(_CompletePartitions, IncrementalDataset):
    """``partitions.IncrementalDataset`` (loads an absent folder as {}) that skips incomplete parquet partitions."""

    def load(self) -> dict[str, Any]:
        self._invalidate_caches()
        return super().load()

