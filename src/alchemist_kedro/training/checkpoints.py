"""Step checkpoints shared by the rater and the downstream T2I loops: safetensors weights, a weights_only-loadable
optimizer blob and a JSON state per `step_NNNNNNN` folder, written atomically; only the newest `keep_last` stay
(a full-corpus run checkpoints hundreds of times, and each T2I checkpoint holds two UNets and AdamW moments)."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alchemist_kedro.atomic_io import fault_point


def save_checkpoint(directory: Path, step: int, models: dict, optimizers: dict, state: dict,
                    keep_last: int = 2) -> Path:
    final = directory / f"step_{step:07d}"
    tmp = directory / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, module in models.items():
        if module is not None:
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    # Optimizer state holds only tensors, numbers and tuples: loadable with torch.load(weights_only=True).
    blob = {k: o.state_dict() for k, o in optimizers.items() if o is not None}
    blob["torch_rng"] = torch.get_rng_state()  # a ByteTensor, also fine under weights_only=True
    torch.save(blob, tmp / "optimizers.pt")
    (tmp / "state.json").write_text(json.dumps(state))
    fault_point(final)  # test-only kill switch (atomic_io): a kill here leaves the .tmp dir and the older checkpoints
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a kill mid-write leaves only a .tmp dir, never a half checkpoint
    if keep_last > 0:  # older ones go only after the new one is complete
        for old in completed_checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def completed_checkpoints(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob("step_*") if (p / "state.json").is_file())


def latest_checkpoint(directory: Path) -> Path | None:
    done = completed_checkpoints(directory)
    return done[-1] if done else None


@dataclass
class Checkpoint:
    """A completed checkpoint folder, read back: its JSON state and the weights/optimizer blobs it holds."""

    path: Path
    state: dict

    def has(self, name: str) -> bool:
        return (self.path / f"{name}.safetensors").is_file()

    def restore(self, models: dict, optimizers: dict) -> None:
        """Load weights into `models` and state into `optimizers` (None entries skipped), then torch's RNG."""
        blob = torch.load(self.path / "optimizers.pt", weights_only=True)
        for name, module in models.items():
            if module is not None:
                module.load_state_dict(load_file(str(self.path / f"{name}.safetensors")))
        for name, optimizer in optimizers.items():
            if optimizer is not None:
                optimizer.load_state_dict(blob[name])
        torch.set_rng_state(blob["torch_rng"])


def load_latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest completed checkpoint under `directory`, or None (a fresh run)."""
    latest = latest_checkpoint(directory)
    if latest is None:
        return None
    return Checkpoint(latest, json.loads((latest / "state.json").read_text()))
