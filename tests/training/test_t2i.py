"""The downstream T2I loop: it learns, resumes bit-identically after a kill, and counts steps by epochs."""
import numpy as np
import pytest
import torch

from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import T2IConfig, t2i_from_artifact, t2i_to_artifact
from alchemist_kedro.training.t2i import T2ITrainingConfig, batch_indices, total_steps, train_t2i
from tests.conf_values import base_params

torch.set_num_threads(1)
RES, TOKENS, TOKEN_DIM = 16, 4, 32
COLOURS = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])


def tiny_config(**overrides) -> T2IConfig:
    values = dict(resolution=RES, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8,
                  cross_attention_dim=TOKEN_DIM, attention_heads=2, sample_steps=4)
    values.update(overrides)
    return T2IConfig(**base_params("train_t2i.model", **values))


def colour_data(n=32):
    """Flat images of one of 4 colours; the caption tokens name the colour (a fixed random code per colour)."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randn(4, TOKENS, TOKEN_DIM, generator=g)
    colour = torch.arange(n) % 4
    images = COLOURS[colour][:, :, None, None].expand(n, 3, RES, RES).clone() * 0.8
    return {"images": images, "tokens": codes[colour], "mask": torch.ones(n, TOKENS, dtype=torch.long),
            "uids": [f"u{i:03d}" for i in range(n)]}


def test_loss_falls_over_training():
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=12, batch_size=8, learning_rate=1e-3, lr_warmup_steps=1, ema_decay=None))
    result = train_t2i(colour_data(), tiny_config(), config)
    losses = np.array([p["value"] for p in result.history["train/loss"]])
    assert result.total_steps == 48 == len(losses)
    assert losses[-12:].mean() < 0.7 * losses[:12].mean()


def test_resume_after_kill_is_identical(tmp_path):
    data, model_config = colour_data(16), tiny_config()
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=2, batch_size=4, checkpoint_every=3, ema_decay=0.9))
    straight = train_t2i(data, model_config, config)

    def kill(step):
        if step == 4:  # after step 4 (checkpoint at 3 steps done): steps 3, 4 must be replayed
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_t2i(data, model_config, config, checkpoint_dir=tmp_path, on_step=kill)
    resumed = train_t2i(data, model_config, config, checkpoint_dir=tmp_path)
    for key, value in straight.model.unet.state_dict().items():
        torch.testing.assert_close(resumed.model.unet.state_dict()[key], value, rtol=0, atol=0)
    assert resumed.history["train/loss"] == straight.history["train/loss"]
    assert resumed.train_seconds > 0


def test_equal_epochs_half_subset_trains_half_the_steps():
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=3, batch_size=8))
    assert total_steps(64, config) == 24 and total_steps(32, config) == 12
    assert total_steps(30, T2ITrainingConfig(**base_params("train_t2i.training", epochs=1.5, batch_size=8))) == 6  # ceil(1.5 · ceil(30 / 8))
    # Each epoch visits every row once.
    epoch = np.concatenate([batch_indices(30, config, s) for s in range(4)])
    assert sorted(epoch) == list(range(30))


def test_generate_and_artifact_round_trip():
    model_config = tiny_config()
    result = train_t2i(colour_data(8), model_config, T2ITrainingConfig(**base_params("train_t2i.training", epochs=1, batch_size=4)))
    model = t2i_from_artifact(t2i_to_artifact(result.model))
    data = colour_data(8)
    a = model.generate(data["tokens"][:3], data["mask"][:3], generator_for(0, "g"), batch_size=2)
    b = result.model.generate(data["tokens"][:3], data["mask"][:3], generator_for(0, "g"), batch_size=3)
    assert a.shape == (3, 3, RES, RES) and torch.isfinite(a).all() and a.abs().max() <= 1
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)  # weights round-trip, and image i does not depend on the batch size
