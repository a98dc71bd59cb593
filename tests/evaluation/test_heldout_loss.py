"""test_loss and test_caption_gain with known answers: deterministic, exactly 0 gain for a model that cannot see its
captions, a clearly positive gain once a model has learned that the caption sets the image colour."""
import copy

import pytest
import torch

from alchemist_kedro.evaluation import derangement, heldout_loss_metrics, per_timestep_loss
from alchemist_kedro.models.proxy import per_sample_loss
from alchemist_kedro.models.t2i import T2IModel
from alchemist_kedro.training.t2i import T2ITrainingConfig, train_t2i
from tests.conf_values import base_params
from tests.training.test_t2i import colour_data, tiny_config

torch.set_num_threads(1)
RES = 8  # 8-px flat colours: the tiny UNet learns colour-from-caption in ~100 steps (gain ≈ 0.05 there)


def _colour_set(n: int, prefix: str) -> dict:
    data = colour_data(n)
    data["images"] = data["images"][:, :, :RES, :RES].contiguous()
    data["uids"] = [f"{prefix}{i:03d}" for i in range(n)]
    return data


@pytest.fixture(scope="module")
def trained():
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=100 / 4, batch_size=8, learning_rate=2e-3,
                                             lr_warmup_steps=1, ema_decay=None))
    return train_t2i(_colour_set(32, "train"), tiny_config(resolution=RES), config).model


def _ignore_captions(model: T2IModel) -> T2IModel:
    """A copy whose cross-attention output projections are zero: encoder_hidden_states cannot reach the output."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in model.unet.named_modules():
            if name.endswith("attn2.to_out.0"):
                module.weight.zero_()
                module.bias.zero_()
    return model


def test_per_timestep_loss_matches_the_raters_crn_loss():
    torch.manual_seed(0)
    model, data = T2IModel(tiny_config(resolution=RES)), _colour_set(6, "t")
    per_step = per_timestep_loss(model, data["images"], data["tokens"], data["mask"], data["uids"], num_timesteps=6,
                                 batch_size=4)
    # Same stratified t and per-(uid, k) ε as per_sample_loss: its mean over k is that loss.
    expected = per_sample_loss(model, data["images"], data["tokens"], data["mask"], data["uids"], num_timesteps=6)
    torch.testing.assert_close(per_step.mean(1), expected.detach().double(), rtol=1e-5, atol=1e-6)


def test_deterministic_and_batch_size_free(trained):
    test = _colour_set(16, "test")
    first = heldout_loss_metrics(trained, test, num_timesteps=6, batch_size=16)
    assert heldout_loss_metrics(trained, test, num_timesteps=6, batch_size=16) == first
    other_batch = heldout_loss_metrics(trained, test, num_timesteps=6, batch_size=5)
    assert other_batch == pytest.approx(first, rel=1e-4)
    assert set(first) == {"test_loss", "test_loss_low_t", "test_loss_mid_t", "test_loss_high_t", "test_loss_shuffled",
                          "test_caption_gain"}
    bands = [first[f"test_loss_{b}"] for b in ("low_t", "mid_t", "high_t")]
    assert first["test_loss"] == pytest.approx(sum(bands) / 3)


def test_caption_gain_known_answers(trained):
    test = _colour_set(16, "test")
    learned = heldout_loss_metrics(trained, test, num_timesteps=6)
    # The model learned colour from caption: another image's caption costs it loss.
    assert learned["test_caption_gain"] > 0.02 and learned["test_loss_shuffled"] > learned["test_loss"]
    torch.manual_seed(0)
    untrained = heldout_loss_metrics(T2IModel(tiny_config(resolution=RES)), test, num_timesteps=6)
    assert abs(untrained["test_caption_gain"]) < learned["test_caption_gain"] / 5
    # Same weights, cross-attention cut: the captions cannot matter, so the gain is 0 (up to float summation).
    blind = heldout_loss_metrics(_ignore_captions(trained), test, num_timesteps=6)
    assert blind["test_caption_gain"] == pytest.approx(0.0, abs=1e-9)
    assert blind["test_loss"] > learned["test_loss"]  # and it lost what the text told it


def test_derangement_and_bad_input():
    for n in (2, 3, 17):
        perm = derangement(n, seed=n)
        assert sorted(perm) == list(range(n)) and all(perm[i] != i for i in range(n))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)
    torch.manual_seed(0)
    model = T2IModel(tiny_config(resolution=RES))
    with pytest.raises(ValueError, match="px"):
        heldout_loss_metrics(model, colour_data(4), num_timesteps=6)  # 16-px images for an 8-px model
    with pytest.raises(ValueError, match="num_timesteps >= 3"):
        data = _colour_set(4, "x")
        heldout_loss_metrics(model, data, num_timesteps=2)
