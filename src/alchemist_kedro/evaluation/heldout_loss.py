"""`test_loss` and `test_caption_gain`: the downstream model's own objective on the clean test split (issue 13).

No sampling, so cheap and deterministic: the model's training loss (`ProxyT2I.loss_at`: min-SNR weighted, its own
prediction type) at K fixed stratified timesteps with ε seeded by (noise_seed, uid, k) — the common random numbers of
the rater's `per_sample_loss` (models/proxy.py), so two models (two arms, two seeds) are scored on the very same
(t, ε) draws and their difference is theirs, not the draw's. Reported overall and by timestep band (the K timesteps
cut into thirds: low t = nearly clean inputs, high t = nearly pure noise). Lower is better.

`test_caption_gain` = (loss with the test captions deranged − loss with their own captions) / loss with their own:
how much the model uses the text. Same images, same draws, only the captions move, so a model that ignores its
captions scores exactly 0. Higher is better.
"""
from __future__ import annotations

import numpy as np
import torch

from alchemist_kedro.devices import module_device
from alchemist_kedro.models.proxy import ProxyT2I, generator_for, stratified_timesteps
from alchemist_kedro.tables import derangement

BANDS = ("low_t", "mid_t", "high_t")


def crn_noise(uids: list[str], num_timesteps: int, shape: tuple[int, ...], noise_seed: int) -> torch.Tensor:
    """(N, K, *shape) ε, row (i, k) seeded by (noise_seed, uid_i, k) exactly as `per_sample_loss` draws it."""
    return torch.stack([torch.stack([torch.randn(shape, generator=generator_for(noise_seed, uid, k))
                                     for k in range(num_timesteps)]) for uid in uids])


@torch.no_grad()
def per_timestep_loss(model: ProxyT2I, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                      uids: list[str], *, num_timesteps: int = 12, noise_seed: int = 0, batch_size: int = 64,
                      noise: torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) loss of each test sample at each of the K stratified timesteps (ascending t), no gradients.

    `noise`: the (N, K, ...) draws of `crn_noise`, when the caller scores the same images twice.
    """
    n, k = len(uids), int(num_timesteps)
    if not (len(images) == len(tokens) == len(mask) == n):
        raise ValueError(f"images/tokens/mask/uids disagree in length: {len(images)}, {len(tokens)}, {len(mask)}, {n}")
    if k < 1 or batch_size < 1:
        raise ValueError(f"num_timesteps and batch_size must be >= 1, got {k}, {batch_size}")
    was_training = model.training
    model.eval()
    device = module_device(model)
    timesteps = stratified_timesteps(k, model.config.num_train_timesteps).to(device)
    out = torch.empty((n, k), dtype=torch.float64)
    try:
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            x0 = model.encode(images[rows].float().to(device))
            eps = noise[rows] if noise is not None else crn_noise(uids[rows], k, tuple(x0.shape[1:]), noise_seed)
            b = len(x0)
            loss = model.loss_at(x0.repeat_interleave(k, 0), timesteps.repeat(b),
                                 eps.reshape(b * k, *x0.shape[1:]).to(device, x0.dtype),
                                 tokens[rows].float().to(device).repeat_interleave(k, 0),
                                 mask[rows].to(device).repeat_interleave(k, 0))
            out[rows] = loss.view(b, k).double().cpu()
    finally:
        model.train(was_training)
    return out


def band_means(losses: torch.Tensor) -> dict[str, float]:
    """Mean loss of each third of the (ascending) timesteps; needs K >= 3."""
    k = losses.shape[1]
    if k < len(BANDS):
        raise ValueError(f"timestep bands need num_timesteps >= {len(BANDS)}, got {k}")
    edges = np.linspace(0, k, len(BANDS) + 1).round().astype(int)
    return {band: float(losses[:, lo:hi].mean()) for band, lo, hi in zip(BANDS, edges[:-1], edges[1:])}


def heldout_loss_metrics(model: ProxyT2I, test: dict, *, num_timesteps: int = 12, noise_seed: int = 0,
                      batch_size: int = 64, derangement_seed: int = 0) -> dict[str, float]:
    """{test_loss, test_loss_low_t, test_loss_mid_t, test_loss_high_t, test_loss_shuffled, test_caption_gain}.

    `test` holds images (N, 3, R, R) in [-1, 1] at the model's resolution, tokens, mask and uids (join_split's
    layout). The derangement and the draws are fixed, not functions of the training seed: every arm × seed is scored
    on the same (caption pairing, t, ε).
    """
    images, tokens, mask, uids = test["images"], test["tokens"], test["mask"], list(test["uids"])
    if images.shape[-1] != model.config.resolution:
        raise ValueError(f"test images are {images.shape[-1]} px but the model trains at {model.config.resolution} px")
    x_shape = tuple(model.encode(images[:1].float().to(module_device(model))).shape[1:])
    noise = crn_noise(uids, num_timesteps, x_shape, noise_seed)
    own = per_timestep_loss(model, images, tokens, mask, uids, num_timesteps=num_timesteps, batch_size=batch_size,
                            noise=noise)
    swap = torch.as_tensor(derangement(len(uids), derangement_seed))
    shuffled = per_timestep_loss(model, images, tokens[swap], mask[swap], uids, num_timesteps=num_timesteps,
                                 batch_size=batch_size, noise=noise)
    loss, loss_shuffled = float(own.mean()), float(shuffled.mean())
    return {
        "test_loss": loss,
        **{f"test_loss_{band}": value for band, value in band_means(own).items()},
        "test_loss_shuffled": loss_shuffled,
        "test_caption_gain": (loss_shuffled - loss) / loss,
    }
