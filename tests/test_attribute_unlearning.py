"""Attribution by unlearning on a tiny trained model: the per-pair Fisher is exact, a query that is one of the
training pairs ranks that pair first, and the model comes back unchanged."""
import numpy as np
import pytest
import torch

from alchemist_kedro.attribution.unlearning import (
    UnlearningConfig,
    _crn_loss,
    diagonal_fisher,
    kv_modules,
    unlearning_influence,
)
from alchemist_kedro.evaluation.heldout_loss import crn_noise
from alchemist_kedro.models.t2i import T2IConfig
from alchemist_kedro.training.t2i import T2ITrainingConfig, train_t2i
from tests.conf_values import base_params

torch.set_num_threads(1)
RES, TOKENS, TOKEN_DIM, N = 16, 4, 32, 12


def tiny_config() -> T2IConfig:
    return T2IConfig(**base_params(
        "train_t2i.model", resolution=RES, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=TOKEN_DIM, attention_heads=2, sample_steps=4))


def distinct_pairs() -> dict:
    """N pairs, each its own random-coloured square at its own place, captioned by its own random token code."""
    g = torch.Generator().manual_seed(0)
    images = torch.full((N, 3, RES, RES), 0.9)
    for i in range(N):
        r, c = divmod(i, 4)
        images[i, :, 2 + 4 * r: 7 + 4 * r, 1 + 4 * c: 6 + 4 * c] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return {"images": images, "tokens": torch.randn(N, TOKENS, TOKEN_DIM, generator=g),
            "mask": torch.ones(N, TOKENS, dtype=torch.long), "uids": [f"u{i:02d}" for i in range(N)]}


@pytest.fixture(scope="module")
def trained():
    data = distinct_pairs()
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=8, batch_size=6, lr_warmup_steps=1,
                                             ema_decay=None))
    return train_t2i(data, tiny_config(), config).model, data


def test_fisher_is_the_mean_of_per_pair_squared_gradients(trained):
    model, data = trained
    config = UnlearningConfig(fisher_samples=None, fisher_batch_size=5, fisher_timesteps=2)
    fisher = diagonal_fisher(model, data, config)
    modules = kv_modules(model)
    expected = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    for i in range(N):  # one backward per pair: the slow definition the batched hooks must reproduce
        noise = crn_noise([data["uids"][i]], 2, (3, RES, RES), config.noise_seed)
        loss = _crn_loss(model, data["images"][i:i + 1], data["tokens"][i:i + 1], data["mask"][i:i + 1], noise,
                         2).mean()
        for name, grad in zip(modules, torch.autograd.grad(loss, [m.weight for m in modules.values()])):
            expected[name] += grad.pow(2) / N
    for name in modules:
        torch.testing.assert_close(fisher[name], expected[name], rtol=1e-4, atol=1e-12)
    assert all(p.grad is None for p in model.unet.parameters())


def test_a_query_that_is_a_training_pair_ranks_that_pair_first(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    picks = [1, 6, 10]
    queries = {"ids": [f"query{i}" for i in picks], "images": data["images"][picks], "tokens": data["tokens"][picks],
               "mask": data["mask"][picks]}
    config = UnlearningConfig(**{**base_params("attribute.unlearning"), "fisher_samples": None})
    result = unlearning_influence(model, data, queries, config)
    influence = result["influence"]
    assert influence.shape == (len(picks), N)
    assert np.argmax(influence, axis=1).tolist() == picks
    assert (result["query_loss_after"] > result["query_loss_before"]).all()
    for key, value in model.unet.state_dict().items():  # every query's step is undone
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # Only the cross-attention key/value weights move: a model without them has nothing to unlearn.
    assert all(name.endswith(("attn2.to_k", "attn2.to_v")) for name in kv_modules(model))


def test_retraining_without_nothing_is_train_t2i_and_removing_the_query_pair_hurts_it_most():
    from alchemist_kedro.attribution.counterfactual import counterfactual_table, retrain_without

    data = distinct_pairs()
    config = T2ITrainingConfig(**base_params("train_t2i.training", epochs=8, batch_size=6, lr_warmup_steps=1,
                                             ema_decay=0.9))
    reference = train_t2i(data, tiny_config(), config).model
    aligned = retrain_without(data, np.array([], dtype=int), tiny_config(), config)
    for key, value in reference.unet.state_dict().items():
        torch.testing.assert_close(aligned.unet.state_dict()[key], value, rtol=0, atol=0)

    query = 6
    queries = {"ids": ["q"], "images": data["images"][[query]], "tokens": data["tokens"][[query]],
               "mask": data["mask"][[query]]}
    order = np.array([query, *[i for i in range(N) if i != query]])
    table = counterfactual_table(data, queries, {"attributed": {0: order}}, tiny_config(), config, k=1,
                                 query_timesteps=8, noise_seed=0, seed=0)
    assert table["removal"].tolist() == ["none", "attributed", "random"]
    assert table["train_pairs"].tolist() == [N, N - 1, N - 1]
    rise = table.set_index("removal")["loss_rise"]
    assert rise["attributed"] > max(rise["random"], 0)
