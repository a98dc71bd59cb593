"""training.mode: influence: the central-difference signal is the one-step meta-gradient −⟨∇L(θ; x_i), ĝ⟩."""
import numpy as np
import pytest
import torch

from alchemist_kedro.models.proxy import build_proxy, per_sample_loss
from alchemist_kedro.training.bilevel import BilevelConfig, Split, caption_parameter_names, influence_signal
from tests.conf_values import base_params
from tests.training.synthetic import tiny_proxy_config

torch.set_num_threads(1)


def _setup(n=12, dim=10, token_dim=32):
    g = torch.Generator().manual_seed(0)
    rows = Split(torch.randn(n, dim, generator=g), torch.randn(n, 3, token_dim, generator=g),
                 torch.ones(n, 3), [f"u{i}" for i in range(n)])
    val = Split(torch.randn(6, dim, generator=g), torch.randn(6, 3, token_dim, generator=g), torch.ones(6, 3),
                [f"v{i}" for i in range(6)])
    proxy = build_proxy(tiny_proxy_config(space="embedding", prior_hidden_dim=32, prior_blocks=2), rows.images,
                        tokens=rows.tokens, mask=rows.mask)
    return proxy, rows, val


def _config(**overrides):
    return BilevelConfig(**base_params("rater.training", mode="influence", num_loss_timesteps=2, **overrides))


def _val_loss(proxy, val):
    return per_sample_loss(proxy, val.images, val.tokens, val.mask, val.uids, num_timesteps=2, noise_seed=7).mean()


def _analytic(proxy, rows, val, names, config):
    """−⟨∇L(θ; x_i), ĝ⟩ by autograd, per row, with ĝ the unit val gradient over `names`."""
    params = dict(proxy.named_parameters())
    g_val = torch.autograd.grad(_val_loss(proxy, val), [params[n] for n in names], allow_unused=True)
    g_val = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, g_val)]
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in g_val))
    out = []
    for i in range(len(rows)):
        r = rows.rows([i])
        loss = per_sample_loss(proxy, r.images, r.tokens, r.mask, r.uids, num_timesteps=config.num_loss_timesteps,
                               noise_seed=config.seed)[0]
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        out.append(-float(sum((g.double() * v.double()).sum() for g, v in zip(grads, g_val) if g is not None) / norm))
    return np.array(out)


@pytest.mark.parametrize("which", ["all", "text"])
def test_the_central_difference_is_the_analytic_meta_gradient(which):
    proxy, rows, val = _setup()
    config = _config(influence_params=which)
    names = [n for n, _ in proxy.named_parameters()] if which == "all" else caption_parameter_names(proxy)
    expected = _analytic(proxy, rows, val, names, config)
    _, s, direction = influence_signal(proxy, rows, _val_loss(proxy, val), config, step=0)
    assert set(direction[0]) == set(names)
    np.testing.assert_allclose(s.numpy(), expected, rtol=0.05, atol=0.02 * np.abs(expected).max())
    # Not a constant: the rows are ranked by it.
    assert np.corrcoef(s.numpy(), expected)[0, 1] > 0.99


def test_the_direction_s_momentum_averages_the_steps_unit_val_gradients():
    proxy, rows, val = _setup()
    config = _config(influence_params="text", influence_direction_momentum=0.75)
    other = Split(val.images.flip(0), val.tokens, val.mask, val.uids)
    running: list = []
    _, _, first = influence_signal(proxy, rows, _val_loss(proxy, val), config, 0, running=running)
    _, _, second = influence_signal(proxy, rows, _val_loss(proxy, other), config, 1, running=running)
    _, _, alone = influence_signal(proxy, rows, _val_loss(proxy, other), _config(influence_params="text"), 1)
    names = list(first[0])
    mean = torch.cat([(0.75 * first[0][n] + 0.25 * alone[0][n]).ravel() for n in names])
    got = torch.cat([second[0][n].ravel() for n in names])
    torch.testing.assert_close(got, mean / mean.norm(), rtol=1e-4, atol=1e-6)
    assert float(got.norm()) == pytest.approx(1.0, abs=1e-5)
    # The running mean is not this step's direction alone.
    assert float(torch.dot(got, torch.cat([alone[0][n].ravel() for n in names]))) < 0.999
    assert running[0] is second[0]
    with pytest.raises(ValueError, match="influence_direction_momentum"):
        _config(influence_direction_momentum=1.0)
