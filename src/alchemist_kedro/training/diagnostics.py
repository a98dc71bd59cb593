"""How much the proxy's loss depends on the caption: the text signal the rater's meta-gradient can carry.

A rater trained on a proxy whose loss does not move when the caption changes can only learn image statistics
(issue 12). caption_sensitivity = (L(x, shuffled caption) − L(x, own caption)) / L(x, own caption), means over the
split, on the same CRN draws (K stratified timesteps, ε seeded by the image's uid) so only the caption differs.
"""
from __future__ import annotations

import torch

from alchemist_kedro.models.proxy import DiffusionProxy, per_sample_loss
from alchemist_kedro.tables import derangement


@torch.no_grad()
def caption_sensitivity(model: DiffusionProxy, images: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        uids: list[str], num_timesteps: int, noise_seed: int, batch_size: int = 64) -> dict:
    """{loss_own, loss_shuffled, loss_null, caption_sensitivity, null_caption_sensitivity} over the given rows.

    Shuffled: each image under another row's caption (a fixed derangement). Null: the empty caption (zero tokens,
    zero mask), what classifier-free guidance's unconditional branch sees.
    """
    n = len(uids)
    if n < 2:
        raise ValueError("caption sensitivity needs at least 2 rows (a caption to swap in)")
    perm = torch.as_tensor(derangement(n, noise_seed))
    sums = {"own": 0.0, "shuffled": 0.0, "null": 0.0}
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        x, ids = images[rows], uids[rows]
        variants = {"own": (tokens[rows], mask[rows]), "shuffled": (tokens[perm[rows]], mask[perm[rows]]),
                    "null": (torch.zeros_like(tokens[rows]), torch.zeros_like(mask[rows]))}
        for name, (tok, msk) in variants.items():
            loss = per_sample_loss(model, x, tok, msk, ids, num_timesteps=num_timesteps, noise_seed=noise_seed)
            sums[name] += float(loss.sum())
    own, shuffled, null = (sums[k] / n for k in ("own", "shuffled", "null"))
    return {"loss_own": own, "loss_shuffled": shuffled, "loss_null": null,
            "caption_sensitivity": (shuffled - own) / own, "null_caption_sensitivity": (null - own) / own}
