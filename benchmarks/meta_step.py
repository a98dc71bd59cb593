"""One meta step (eq. 9 and eq. 6, default K) vs one plain proxy training step on the same batch, in one run;
and the per-sample loss std across repeated evaluations with and without common random numbers.

    .venv/bin/python benchmarks/meta_step.py [--threads 2] [--repeats 3]

Default proxy config (32 px, conf/base/parameters_rater.yml), synthetic inputs of the real shapes (16×384 tokens,
1408-d features). Timings on a shared machine are noisy: the best of --repeats interleaved runs is reported, ratios in one run.
"""
from __future__ import annotations

import argparse
import time

import torch

from alchemist_kedro.models.proxy import ProxyConfig, ProxyT2I, generator_for, per_sample_loss, training_loss
from alchemist_kedro.models.rater import RaterConfig
from alchemist_kedro.training.bilevel import BilevelConfig, train_rater_bilevel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--val-batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n, b = 64, args.batch
    data = {
        "pool_images": torch.rand(n, 3, 32, 32) * 2 - 1, "pool_tokens": torch.randn(n, 16, 384),
        "pool_mask": torch.ones(n, 16, dtype=torch.long), "pool_features": torch.randn(n, 1408),
        "pool_uids": [f"p{i}" for i in range(n)],
        "val_images": torch.rand(n, 3, 32, 32) * 2 - 1, "val_tokens": torch.randn(n, 16, 384),
        "val_mask": torch.ones(n, 16, dtype=torch.long), "val_uids": [f"v{i}" for i in range(n)],
    }
    proxy_config = ProxyConfig()
    defaults = BilevelConfig()
    K = defaults.num_loss_timesteps

    # Plain step: one fwd+bwd+AdamW of the proxy on the train batch.
    proxy = ProxyT2I(proxy_config)
    opt = torch.optim.AdamW(proxy.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x, tok, mask = data["pool_images"][:b], data["pool_tokens"][:b], data["pool_mask"][:b]

    def plain():
        loss = training_loss(proxy, x, tok, mask, generator_for(0, "bench")).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def plain_time():
        t0 = time.perf_counter()
        plain()
        return time.perf_counter() - t0

    def meta_time(mode, baseline):
        # One short run (1 warm-up + 3 meta steps, ul < 1 so every term runs); the time of its last meta step.
        # The first meta step also copies θ̂ → θ and records the probe trace: it is not timed.
        cfg = dict(mode=mode, baseline=baseline, batch_size=b, val_batch_size=args.val_batch, ul_start=0.5,
                   ul_floor=0.5, checkpoint_every=10**9, trace_every=10**9, probe_size=1)
        stamps = []
        train_rater_bilevel(data, proxy_config, RaterConfig(feature_dim=1408),
                            BilevelConfig(warmup_steps=1, meta_steps=3, **cfg),
                            on_step=lambda s: stamps.append(time.perf_counter()))
        return min(b2 - a2 for a2, b2 in zip(stamps[2:], stamps[3:]))

    plain()  # warm-up
    arms = {"plain": plain_time, "eq9": lambda: meta_time("eq9", "reference"),
            "eq9_ema": lambda: meta_time("eq9", "ema"), "eq6": lambda: meta_time("eq6", "reference")}
    # Interleaved, best of --repeats: the machine is shared, so each ratio compares neighbours in time.
    times = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, fn in arms.items():
            times[name].append(fn())
    t_plain, t_eq9, t_eq9_ema, t_eq6 = (min(times[n]) for n in ("plain", "eq9", "eq9_ema", "eq6"))
    print(f"threads={args.threads} batch={b} val_batch={args.val_batch} K={K} resolution=32")
    print(f"plain proxy step        {t_plain * 1e3:8.1f} ms")
    print(f"meta step eq9           {t_eq9 * 1e3:8.1f} ms   ratio {t_eq9 / t_plain:5.2f}x  (goal <= 3x)")
    print(f"meta step eq9, ema b    {t_eq9_ema * 1e3:8.1f} ms   ratio {t_eq9_ema / t_plain:5.2f}x  (no reference pass)")
    print(f"meta step eq6           {t_eq6 * 1e3:8.1f} ms   ratio {t_eq6 / t_plain:5.2f}x  (goal <= 4x)")

    # Per-sample loss std across 8 repeated evaluations of the same samples and model.
    with torch.no_grad():
        crn = torch.stack([per_sample_loss(proxy, x, tok, mask, data["pool_uids"][:b], num_timesteps=K)
                           for _ in range(8)])
        g = torch.Generator().manual_seed(1)
        rnd = torch.stack([per_sample_loss(proxy, x, tok, mask, data["pool_uids"][:b], num_timesteps=K, crn=False,
                                           generator=g) for _ in range(8)])
        rnd1 = torch.stack([per_sample_loss(proxy, x, tok, mask, data["pool_uids"][:b], num_timesteps=1, crn=False,
                                            generator=g) for _ in range(8)])
    s_crn, s_rnd, s_rnd1 = (float(v.std(0).mean()) for v in (crn, rnd, rnd1))
    spread = float(crn[0].std())
    print(f"per-sample loss std over 8 evaluations (mean over {b} samples), between-sample std {spread:.4f}:")
    print(f"  CRN, K={K} stratified      {s_crn:.6f}")
    print(f"  random t/eps, K={K}        {s_rnd:.6f}")
    print(f"  random t/eps, K=1        {s_rnd1:.6f}   (a single-draw diffusion loss)")


if __name__ == "__main__":
    main()
