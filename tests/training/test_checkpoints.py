"""Checkpoint folders: atomic, newest last, only `keep_last` kept, half-written ones never picked."""
import json

import torch

from alchemist_kedro.training.checkpoints import completed_checkpoints, latest_checkpoint, save_checkpoint


def test_only_the_newest_checkpoints_are_kept_and_loadable(tmp_path):
    layer = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, {"layer": layer}, {"opt": optimizer}, {"step": step}, keep_last=2)
    assert [p.name for p in completed_checkpoints(tmp_path)] == ["step_0000040", "step_0000050"]
    (tmp_path / ".tmp_step_0000060").mkdir()  # a kill mid-write
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_0000050" and json.loads((latest / "state.json").read_text()) == {"step": 50}
    blob = torch.load(latest / "optimizers.pt", weights_only=True)
    assert set(blob) == {"opt", "torch_rng"}


def test_keep_last_zero_keeps_everything(tmp_path):
    layer = torch.nn.Linear(3, 2)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"layer": layer}, {}, {"step": step}, keep_last=0)
    assert len(completed_checkpoints(tmp_path)) == 3
