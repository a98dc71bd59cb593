"""``ImageTextSources``: the image-text pairs users already hold, as one lazy partitioned input.

Catalog example (see conf/base/catalog_ingest.yml for every format)::

    raw_pairs:
      type: alchemist_kedro.datasets.image_text_sources.ImageTextSources
      sources:
        - {name: laion_a, format: webdataset, path: /data/laion/shards, split: pool}
        - {name: val_set, format: imagefolder, path: data/01_raw/val_images, split: val}
"""
from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from alchemist_kedro.datasets.readers import READERS, RAW_COLUMNS, RawPartition, SourceConfig

__all__ = ["ImageTextSources", "RAW_COLUMNS", "RawPartition", "SourceConfig"]


class ImageTextSources(AbstractDataset[None, dict[str, RawPartition]]):
    """Read-only dataset over one or more sources (webdataset, laion_parquet, datacomp, imagefolder).

    ``load()`` validates every source first (a malformed source raises ``DatasetError`` naming the
    file and the problem, before any row is read) and returns ``{partition_id: RawPartition}`` with
    ``partition_id = f"{source}__{shard}"``, in conf order. Calling a partition returns a pandas
    DataFrame with ``RAW_COLUMNS``: uid, caption_bytes, image_bytes, source, split, location,
    defect, duplicate_group, raw_error, raw_detail.
    """

    def __init__(self, sources: list[dict[str, Any]], metadata: dict[str, Any] | None = None):
        if not sources:
            raise DatasetError("ImageTextSources: `sources` is empty; configure at least one source")
        self._sources = [SourceConfig.from_dict(dict(source)) for source in sources]
        names = [source.name for source in self._sources]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise DatasetError(f"ImageTextSources: source names must be unique; repeated: {repeated}")
        self.metadata = metadata

    def load(self) -> dict[str, RawPartition]:
        partitions: dict[str, RawPartition] = {}
        for source in self._sources:
            partitions.update(READERS[source.format](source))
        return partitions

    def save(self, data: Any) -> None:
        raise DatasetError("ImageTextSources is read-only: it describes input data, nothing writes to it")

    def _describe(self) -> dict[str, Any]:
        return {"sources": [f"{s.name}:{s.format}:{s.split}:{s.path}" for s in self._sources]}
