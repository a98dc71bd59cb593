"""Catalog dataset for reading the feature cache back."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kedro_datasets.partitions import PartitionedDataset


class OptionalPartitionedDataset(PartitionedDataset):
    """A PartitionedDataset that loads as {} when the folder holds no partitions yet.

    The stock one raises "No partitions found", which would make the very first `kedro run --pipeline features`
    (empty cache) fail. Read-only use: saving is refused so nothing writes through this view by mistake.
    """

    def load(self) -> dict[str, Callable[[], Any]]:
        self._invalidate_caches()  # the listing is cached per instance; the folder may have changed
        if not self._list_partitions():
            return {}
        return super().load()

    def save(self, data: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__} is a read-only view of {self._path}; save to `features`")
