"""Which per-sample signal of the embedding prior ranks a pool pair by what the clean val pairs say of it: priors
trained on different data (the pool, the val split only, each half of the pool cross-fitted), their losses and
caption gains on the pool, per defect kind. Issue 12: the eq. 6 signal ranks caption defects above clean rows
because θ̂ trains on the very rows it scores (a pair it can memorise looks learnable); a prior that never saw the
row cannot memorise it.

    .venv/bin/python benchmarks/reference_signals.py [--data data] [--threads 1] [--steps 1000] [--val-steps 600]
        [--thumbnail 8] [--patches]

`--patches` trains every prior on [image_emb ; the patch cells] as `rater.proxy.patch_cells` does (models/proxy.py
prior_input; with --thumbnail the thumbnail is appended to that). `--thumbnail R` trains every prior on [image_emb ;
the R×R RGB thumbnail of the image] instead of image_emb alone (each block unit-normalised, then the prior's per-dimension standardisation): does a prior that also models pixel layout
and colour see overlays that the Open-NSFW embedding does not?

Needs a finished `make run` (samples, features). The `defect` side column is read here for evaluation only.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from alchemist_kedro.models.proxy import ProxyConfig, build_proxy, generator_for, per_sample_loss, training_loss
from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs
from alchemist_kedro.tables import concat_partitions, decode_pngs
from alchemist_kedro.training.bilevel import Split
from rater_signals import conf_parameters, partitions, pool_defects, print_report  # benchmarks/

ROOT = Path(__file__).resolve().parents[1]


def fit(model, rows_for_step, steps: int, lr: float, seed: int, tag: str, weight_decay: float = 0.0):
    """`steps` plain training steps (AdamW, clip 2.0), the batch of step k from rows_for_step(k), noise seeded by
    (seed, tag, k); the model in eval mode after."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    for step in range(steps):
        rows = rows_for_step(step)
        loss = training_loss(model, rows.images, rows.tokens, rows.mask, generator_for(seed, tag, step)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
    return model.eval()


def train_prior(config: ProxyConfig, stats: Split, train: Split, steps: int, batch: int, lr: float, seed: int,
                weight_decay: float = 0.0):
    """The prior trained on `train` only, standardised with `stats` (the pool) so every prior reads the same space."""
    torch.manual_seed(seed)
    model = build_proxy(config, stats.images, tokens=stats.tokens, mask=stats.mask)
    rng = np.random.default_rng(seed)
    draw = lambda step: train.rows(torch.as_tensor(rng.choice(len(train), size=min(batch, len(train)), replace=False)))
    return fit(model, draw, steps, lr, seed, "exp", weight_decay)


def losses(model, rows: Split, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(L(x, c), L(x, ∅)) on common random numbers."""
    with torch.no_grad():
        own = per_sample_loss(model, rows.images, rows.tokens, rows.mask, rows.uids, num_timesteps=k).numpy()
        null = per_sample_loss(model, rows.images, torch.zeros_like(rows.tokens), torch.zeros_like(rows.mask),
                               rows.uids, num_timesteps=k).numpy()
    return own, null


def val_alignment(model, rows: Split, val: Split, eps: float = 1e-3, k: int = 8) -> np.ndarray:
    """⟨∇L(θ; x), ĝ_val⟩ per pool row (ĝ: the unit gradient of the mean val loss), by a central difference along ĝ:
    the one-step meta-gradient of the val loss with respect to the row's weight (high = training on the row lowers
    the val loss)."""
    params = [p for p in model.parameters() if p.requires_grad]
    val_loss = per_sample_loss(model, val.images, val.tokens, val.mask, val.uids, num_timesteps=k).mean()
    grads = torch.autograd.grad(val_loss, params)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
    step = eps * float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in params)))
    originals = [p.detach().clone() for p in params]
    out = []
    with torch.no_grad():
        for sign in (-1.0, 1.0):
            for p, o, g in zip(params, originals, grads):
                p.copy_(o + sign * step * g / norm)
            out.append(per_sample_loss(model, rows.images, rows.tokens, rows.mask, rows.uids, num_timesteps=k).numpy())
        for p, o in zip(params, originals):
            p.copy_(o)
    return (out[0] - out[1]) / (2 * step)


def with_thumbnails(rows: Split, samples: dict, side: int) -> Split:
    """rows with [unit image_emb ; unit flattened side×side RGB thumbnail] as the prior's "image"."""
    images = concat_partitions(samples, ["uid", "image"]).set_index("uid").loc[rows.uids, "image"]
    thumbs = decode_pngs(images.tolist(), side).reshape(len(rows), -1).float()
    x = torch.cat([F.normalize(rows.images.float(), dim=1), F.normalize(thumbs, dim=1)], dim=1)
    return Split(x, rows.tokens, rows.mask, rows.uids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1000, help="pool priors' steps (the rater's warm-up)")
    ap.add_argument("--val-steps", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--val-weight-decay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--thumbnail", type=int, default=0, help="R > 0: priors model [image_emb ; R×R thumbnail]")
    ap.add_argument("--patches", action="store_true",
                    help="priors model [image_emb ; the patch cells] as rater.proxy.patch_cells builds it")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rp = conf_parameters(None)["rater"]
    # What the priors model is this script's choice, not conf's: image_emb alone unless --patches (the shipped
    # patch prior's input, models/proxy.py prior_input, built by build_rater_inputs).
    rp["proxy"]["patch_cells"] = args.patches
    data = Path(args.data)
    samples = partitions(data / "03_primary/samples", ["uid", "image", "split", "caption", "sha256"])
    inputs = build_rater_inputs(samples, partitions(data / "04_feature/features"), rp)
    config = ProxyConfig(**rp["proxy"])
    pool, val = inputs.pool, inputs.val
    if args.thumbnail:
        pool, val = with_thumbnails(pool, samples, args.thumbnail), with_thumbnails(val, samples, args.thumbnail)
    lr, batch = rp["training"]["proxy_lr"], rp["training"]["batch_size"]
    start = time.perf_counter()
    signals = {}
    full = train_prior(config, pool, pool, args.steps, batch, lr, args.seed)
    own, null = losses(full, pool)
    signals["-L pool"], signals["gain pool"] = -own, null - own
    signals["infl pool"] = val_alignment(full, pool, val)
    # Cross-fitted: each half of the pool scored by the prior trained on the other half.
    fold = np.random.default_rng(args.seed).permutation(len(pool)) % 2
    cf_own, cf_null, cf_infl = np.zeros(len(pool)), np.zeros(len(pool)), np.zeros(len(pool))
    for f in (0, 1):
        model = train_prior(config, pool, pool.rows(np.flatnonzero(fold != f)), args.steps, batch, lr, args.seed + 1 + f)
        o, n = losses(model, pool.rows(np.flatnonzero(fold == f)))
        cf_own[fold == f], cf_null[fold == f] = o, n
        cf_infl[fold == f] = val_alignment(model, pool.rows(np.flatnonzero(fold == f)), val)
    signals["-L cross"], signals["gain cross"] = -cf_own, cf_null - cf_own
    # Scale-free: the share of the loss the caption explains.
    signals["log gain cross"] = np.log(cf_null) - np.log(cf_own)
    signals["infl cross"] = cf_infl
    for steps in args.val_steps:
        model = train_prior(config, pool, val, steps, batch, lr, args.seed + 10, args.val_weight_decay)
        o, n = losses(model, pool)
        vo, vn = losses(model, val)
        print(f"val prior {steps} steps: val loss own {vo.mean():.4f}, null {vn.mean():.4f}; "
              f"pool own {o.mean():.4f}, null {n.mean():.4f}")
        signals[f"-L val{steps}"], signals[f"gain val{steps}"] = -o, n - o
        signals[f"RHO cross-val{steps}"] = cf_own - o  # reducible holdout loss: learner (held-out) − clean reference
        signals[f"RHO pool-val{steps}"] = own - o
    seconds = time.perf_counter() - start

    pd.set_option("display.width", 250)
    print(f"{seconds:.0f} s on {args.threads} thread(s)")
    print_report(signals, pool_defects(data, pool.uids), digits=2, kind_width=14)

if __name__ == "__main__":
    main()
