"""Readers for the image-text formats users already hold: one module per format, one shared row builder (common).

Adding a format = one module with a ``read_<format>(SourceConfig) -> {partition_id: RawPartition}`` function, one
line in ``READERS`` and its name in ``common.FORMATS``.
"""
from __future__ import annotations

from collections.abc import Callable

from alchemist_kedro.datasets.readers.common import FORMATS, RAW_COLUMNS, RawPartition, SourceConfig
from alchemist_kedro.datasets.readers.datacomp import read_datacomp
from alchemist_kedro.datasets.readers.imagefolder import read_imagefolder
from alchemist_kedro.datasets.readers.laion_parquet import read_laion_parquet
from alchemist_kedro.datasets.readers.webdataset import read_webdataset
from alchemist_kedro.registry import Registry

READERS: Registry[Callable[[SourceConfig], dict[str, RawPartition]]] = Registry.of("format", {
    "webdataset": read_webdataset,
    "laion_parquet": read_laion_parquet,
    "datacomp": read_datacomp,
    "imagefolder": read_imagefolder,
})
assert set(READERS) == set(FORMATS)

__all__ = ["READERS", "RAW_COLUMNS", "RawPartition", "SourceConfig"]
