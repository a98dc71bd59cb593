"""training.val_caption_weight: θ's val objective with the diffusion classifier's caption cross-entropy."""
import torch
import torch.nn.functional as F

from alchemist_kedro.models.proxy import build_proxy, draw_training_noise, generator_for, per_sample_loss
from alchemist_kedro.training.bilevel import Split, val_objective
from tests.training.synthetic import tiny_proxy_config

torch.set_num_threads(1)
DIM, TOKEN_DIM = 12, 32


def _pairs(n, seed):
    """Captions that determine their image embedding (a fixed linear map), plus a little image-own noise."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(TOKEN_DIM, DIM, generator=torch.Generator().manual_seed(99))
    captions = torch.randn(n, 1, TOKEN_DIM, generator=g)
    images = captions[:, 0] @ mixing + 0.3 * torch.randn(n, DIM, generator=g)
    return Split(images, captions, torch.ones(n, 1), [f"r{seed}-{i}" for i in range(n)])


def _proxy(pool):
    torch.manual_seed(0)
    return build_proxy(tiny_proxy_config(space="embedding", prior_hidden_dim=32, prior_blocks=2), pool.images,
                       tokens=pool.tokens, mask=pool.mask)


def _draws(proxy, val, step=0):
    x0 = proxy.encode(val.images)
    t, eps, _ = draw_training_noise(proxy, x0, generator_for(0, "val-noise", step))
    return x0, t, eps


def test_the_grid_is_every_image_under_every_caption_and_weight_0_is_the_val_loss():
    val = _pairs(6, seed=1)
    proxy = _proxy(val)
    x0, t, eps = _draws(proxy, val)
    plain, own0, ce0 = val_objective(proxy, x0, t, eps, val, 0.0)
    assert ce0 is None and torch.equal(plain, own0)
    assert torch.allclose(plain, proxy.loss_at(x0, t, eps, val.tokens, val.mask).mean())

    objective, own, ce = val_objective(proxy, x0, t, eps, val, 0.5)
    # By hand: image i's draws under caption j, one caption at a time.
    grid = torch.stack([proxy.loss_at(x0, t, eps, val.tokens[[j] * 6], val.mask[[j] * 6]) for j in range(6)], 1)
    assert torch.allclose(own, grid.diagonal().mean(), atol=1e-6)
    tau = grid.diagonal().mean()
    assert torch.allclose(ce, F.cross_entropy(-grid / tau, torch.arange(6)), atol=1e-5)
    assert torch.allclose(objective, own + 0.5 * tau * ce, atol=1e-6)
    assert ce > 0


def _sensitivity_after_training(weight, steps=150):
    """Caption sensitivity on held-out pairs of a prior trained `steps` steps on the val objective alone."""
    train, heldout = _pairs(64, seed=2), _pairs(64, seed=3)
    proxy = _proxy(train)
    opt = torch.optim.Adam(proxy.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(5)
    for step in range(steps):
        batch = train.rows(torch.randperm(len(train), generator=g)[:8])
        objective, _, _ = val_objective(proxy, *_draws(proxy, batch, step), batch, weight)
        opt.zero_grad()
        objective.backward()
        opt.step()
    with torch.no_grad():
        own = per_sample_loss(proxy, heldout.images, heldout.tokens, heldout.mask, heldout.uids, num_timesteps=4)
        shuffled = torch.roll(torch.arange(len(heldout)), 1)
        other = per_sample_loss(proxy, heldout.images, heldout.tokens[shuffled], heldout.mask, heldout.uids,
                                num_timesteps=4)
    return float((other.mean() - own.mean()) / own.mean())


def test_the_caption_term_makes_the_prior_follow_its_captions_more():
    plain, with_ce = _sensitivity_after_training(0.0), _sensitivity_after_training(1.0)
    assert with_ce > 1.2 * plain, f"caption sensitivity on held-out pairs: β 0 {plain:.3f}, β 1 {with_ce:.3f}"
