"""Small Kedro datasets for the select pipeline's inputs and outputs (no pickling anywhere)."""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any, Callable

import fsspec
import numpy as np
import pandas as pd
from kedro.io import AbstractDataset, AbstractVersionedDataset, DatasetError, Version
from kedro.io.core import get_filepath_str, get_protocol_and_path


class ScoreTableDataset(AbstractDataset[None, pd.DataFrame]):
    """Read-only: the SCORE_SCHEMA table of the scorer named in conf.

    ``scorer: ${runtime_params:select.scorer, ${globals:select_scorer}}`` in the catalog makes ``--params select.scorer=clarity`` pick
    ``<scores_dir>/clarity.parquet`` (the heuristics' layout); ``rater`` reads ``rater_filepath``.
    """

    def __init__(self, scorer: str, rater_filepath: str, scores_dir: str, load_args: dict | None = None,
                 metadata: dict | None = None):
        self.metadata = metadata  # kedro-viz reads its layer here
        self._scorer = str(scorer)
        self._filepath = rater_filepath if self._scorer == "rater" else f"{scores_dir}/{self._scorer}.parquet"
        self._load_args = load_args or {}

    def load(self) -> pd.DataFrame:
        """The table, its `scorer` column set to the name it was asked for: the one name the manifest carries."""
        if not Path(self._filepath).exists():
            raise DatasetError(
                f"no score table for scorer {self._scorer!r} at {self._filepath}: run its scoring pipeline first"
            )
        table = pd.read_parquet(self._filepath, **self._load_args)
        table["scorer"] = self._scorer
        return table

    @property
    def scorer(self) -> str:
        """The scorer this table belongs to: the one name a selection carries."""
        return self._scorer

    def save(self, data: None) -> None:
        raise DatasetError("ScoreTableDataset is read-only: scorers write their own tables")

    def _describe(self) -> dict[str, Any]:
        return {"scorer": self._scorer, "filepath": self._filepath}


class NpyDataset(AbstractVersionedDataset[np.ndarray, np.ndarray]):
    """A numpy array saved with ``np.save(allow_pickle=False)``: DataComp's ``--subset_file`` format.

    kedro-datasets has no .npy dataset; object arrays would need pickling, so callers pass fixed-width dtypes.
    """

    def __init__(self, filepath: str, version: Version | None = None, fs_args: dict | None = None,
                 metadata: dict | None = None):
        self.metadata = metadata
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def load(self) -> np.ndarray:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as f:
            return np.load(f, allow_pickle=False)

    def save(self, data: np.ndarray) -> None:
        if data.dtype.hasobject:
            raise DatasetError("NpyDataset refuses object arrays (they need pickling): use a fixed-width dtype")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        self._fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        with self._fs.open(path, "wb") as f:
            np.save(f, data, allow_pickle=False)

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}


class TarShardsDataset(AbstractDataset[dict[str, Any], dict[str, Path]]):
    """A folder of ``<name>.tar`` files; save takes {name: bytes or a callable returning bytes} (lazy: one shard
    in memory at a time). Existing .tar files are removed first so no stale shard of an earlier run survives."""

    def __init__(self, path: str, metadata: dict | None = None):
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> dict[str, Path]:
        return {p.stem: p for p in sorted(self._path.glob("*.tar"))}

    def save(self, data: dict[str, bytes | Callable[[], bytes]]) -> None:
        self._path.mkdir(parents=True, exist_ok=True)
        for old in self._path.glob("*.tar"):
            old.unlink()
        for name, payload in data.items():
            (self._path / f"{name}.tar").write_bytes(payload() if callable(payload) else payload)

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
