"""A state dict + its JSON config in ONE safetensors file (the config rides in the safetensors metadata header).

One file, not a pair, so kedro-mlflow's MlflowArtifactDataset (which logs a single local path) carries both, and a
versioned save can never pair weights with another version's config. No pickle anywhere: safe to load from others.
"""
from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

import fsspec
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version, get_filepath_str, get_protocol_and_path
from safetensors.torch import load, save

from alchemist_kedro.atomic_io import atomic_write_bytes

CONFIG_KEY = "config_json"


class TorchSafetensorsDataset(AbstractVersionedDataset[dict, dict]):
    """Saves/loads {"state_dict": {name: tensor}, "config": {...json...}}.

    Example (conf/base/catalog_rater.yml)::

        rater_model:
          type: alchemist_kedro.datasets.torch_safetensors.TorchSafetensorsDataset
          filepath: data/06_models/rater.safetensors
          versioned: true
    """

    def __init__(self, *, filepath: str, version: Version | None = None, metadata: dict | None = None,
                 fs_args: dict | None = None):
        protocol, path = get_protocol_and_path(filepath, version)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(fs_args or {}))
        self.metadata = metadata
        super().__init__(filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists,
                         glob_function=self._fs.glob)

    def _describe(self) -> dict[str, Any]:
        return {"filepath": self._filepath, "protocol": self._protocol, "version": self._version}

    def load(self) -> dict:
        path = get_filepath_str(self._get_load_path(), self._protocol)
        with self._fs.open(path, "rb") as f:
            raw = f.read()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
        meta = header.get("__metadata__") or {}
        if CONFIG_KEY not in meta:
            raise DatasetError(f"{path} has no '{CONFIG_KEY}' in its safetensors metadata")
        return {"state_dict": load(raw), "config": json.loads(meta[CONFIG_KEY])}

    def save(self, data: dict) -> None:
        if not {"state_dict", "config"} <= set(data):
            raise DatasetError("TorchSafetensorsDataset saves {'state_dict': ..., 'config': ...}")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        state = {k: v.detach().contiguous().cpu() for k, v in data["state_dict"].items()}
        blob = save(state, metadata={CONFIG_KEY: json.dumps(data["config"], sort_keys=True)})
        if self._protocol == "file":
            atomic_write_bytes(path, blob)  # a kill mid-save never leaves half a model for the next load
        else:
            self._fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
            with self._fs.open(path, "wb") as f:
                f.write(blob)
        self._invalidate_cache()

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(path)

    def _invalidate_cache(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))


class OptionalTorchSafetensorsDataset(TorchSafetensorsDataset):
    """The same file read by a pipeline that needs it only for some settings (diffusion_quality's source t2i):
    loads None when the file is absent, so the node, which knows the settings, says what to run. Read-only."""

    def load(self) -> dict | None:
        return super().load() if self._exists() else None

    def save(self, data: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} is read-only; the owning entry writes {self._filepath}")
