"""One meta step (eq. 9 and eq. 6) vs one plain proxy training step on the same batch, in one run; and the quality
of the rater's signal at each number K of CRN timesteps (per-sample loss noise vs between-sample spread).

    .venv/bin/python benchmarks/meta_step.py [--threads 2] [--repeats 5] [--ks 1,2,4] [--space pixels|embedding]

Default proxy config (conf/base/parameters_rater.yml), inputs of the real shapes (16×384 tokens, 1408-d features):
images are real-looking smooth blobs, not uniform noise, so the loss spread between samples is meaningful. Timings
on a shared machine are noisy: the best of --repeats interleaved runs is reported, ratios within one run.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import yaml

from alchemist_kedro.models.proxy import ProxyConfig, generator_for, per_sample_loss, training_loss
from alchemist_kedro.models.rater import RaterConfig
from alchemist_kedro.training.bilevel import (
    Batch, BilevelConfig, RaterData, Split, init_state, meta_step, start_meta_phase, warmup_step,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_rater.yml"


def synthetic_split(n: int, resolution: int, seed: int, space: str = "pixels") -> Split:
    g = torch.Generator().manual_seed(seed)
    if space == "embedding":  # 1024-d image embeddings with a shared component, as Open-NSFW's pooled features
        images = torch.rand(1024, generator=torch.Generator().manual_seed(7)) * 3 + torch.rand(n, 1024, generator=g)
    else:
        low = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1  # smooth images: upsampled 4×4 colour fields
        images = torch.nn.functional.interpolate(low, size=resolution, mode="bilinear", align_corners=False)
    return Split(images, torch.randn(n, 16, 384, generator=g), torch.ones(n, 16, dtype=torch.long),
                 [f"s{seed}-{i}" for i in range(n)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ks", default="1,2,4", help="K values (CRN timesteps) to time and to measure the signal at")
    ap.add_argument("--space", default=None, help="proxy space (pixels | embedding); default: the conf's")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = yaml.safe_load(CONF.read_text())["rater"]
    if args.space:
        params["proxy"]["space"] = args.space
    params["model"]["alignment_feature"] = False  # needs a fitted alignment model; it is not part of the step cost
    # The patch anomaly is computed once per row when the meta phase starts (like every frozen input): not a step cost.
    params["model"]["patch_inputs"] = False
    params["proxy"]["patch_cells"] = False  # the synthetic rows carry no patch_emb
    if params["proxy"]["space"] == "pixels":  # the prior's rater inputs need the embedding prior
        params["model"].update(proxy_features=False, embedding_inputs=True)
    proxy_config = ProxyConfig(**params["proxy"])
    rater_config = RaterConfig(feature_dim=1408, text_dim=384, **params["model"],
                               proxy_config=asdict(proxy_config) if params["model"]["proxy_features"] else None)
    base = dict(params["training"])
    b, bv, res = base["batch_size"], base["val_batch_size"], proxy_config.resolution
    space = proxy_config.space
    data = RaterData(synthetic_split(256, res, 0, space), synthetic_split(64, res, 1, space), torch.randn(256, 1408))
    ks = [int(k) for k in args.ks.split(",")]

    def fresh_state(**overrides):
        config = BilevelConfig(**{**base, **overrides, "ul_start": 0.5, "ul_floor": 0.5})  # every term runs
        state = init_state(data, proxy_config, rater_config, config)
        for s in range(3):
            warmup_step(state, data.pool.rows(range(s * b, (s + 1) * b)), config, s)
        start_meta_phase(state, config)
        return state, config

    def batch(start, state=None):
        index = torch.arange(start, start + b)
        if state is not None and state.rater.proxy is not None:  # as training does: the frozen inputs once per row
            with torch.no_grad():
                return Batch(data.pool.rows(index), state.rater.inputs(data.pool_features[index]), prepared=True)
        return Batch(data.pool.rows(index), data.pool_features[index])

    def timed(state, config):
        def run():
            reference = batch(b, state) if config.baseline == "reference" else None
            main = batch(0, state)
            t0 = time.perf_counter()
            meta_step(state, main, data.val.rows(range(bv)), reference, config, 0.5, 10)
            return time.perf_counter() - t0
        return run

    plain_state, plain_config = fresh_state()

    def plain():
        x = batch(0).rows
        t0 = time.perf_counter()
        loss = training_loss(plain_state.theta_hat, x.images, x.tokens, x.mask, generator_for(0, "bench")).mean()
        plain_state.opt_hat.zero_grad()
        loss.backward()
        plain_state.opt_hat.step()
        return time.perf_counter() - t0

    arms = {"plain": plain}
    for k in ks:
        arms[f"eq9 K={k}"] = timed(*fresh_state(mode="eq9", num_loss_timesteps=k))
        arms[f"eq9 K={k} ema b"] = timed(*fresh_state(mode="eq9", baseline="ema", num_loss_timesteps=k))
        arms[f"eq6 K={k}"] = timed(*fresh_state(mode="eq6", num_loss_timesteps=k))
        arms[f"eq6 K={k} ema b"] = timed(*fresh_state(mode="eq6", baseline="ema", num_loss_timesteps=k))
    for fn in arms.values():
        fn()  # warm-up of every arm (allocator, first-call overheads)
    times = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved: each ratio compares neighbours in time
        for name, fn in arms.items():
            times[name].append(fn())
    best = {name: min(v) for name, v in times.items()}
    print(f"space={space} threads={args.threads} batch={b} val_batch={bv} resolution={res} repeats={args.repeats} "
          f"(conf default: K={base['num_loss_timesteps']}, baseline={base['baseline']}, mode={base['mode']})")
    print(f"{'step':<18}{'ms':>9}{'x plain':>9}")
    for name, t in best.items():
        goal = " (goal <= 3x)" if name.startswith("eq9") and "ema" not in name else (
            " (goal <= 4x)" if name.startswith("eq6") else "")
        print(f"{name:<18}{t * 1e3:9.1f}{t / best['plain']:9.2f}{goal}")

    # Signal quality: how well the K-point CRN loss ranks samples, against a K=32 reference of the same model.
    state, config = fresh_state()
    for s in range(3, 30):
        warmup_step(state, data.pool.rows(range((s % 16) * 16, (s % 16) * 16 + 16)), config, s)
    x = data.pool.rows(range(128))
    with torch.no_grad():
        ref = per_sample_loss(state.theta_hat, x.images, x.tokens, x.mask, x.uids, num_timesteps=32).numpy()
        print(f"signal quality over {len(x)} samples after 30 warm-up steps; between-sample std of the K=32 loss "
              f"{ref.std():.5f}")
        print(f"{'K':>3}{'|L_K - L_32| std':>20}{'noise / spread':>16}{'Spearman vs K=32':>18}")
        for k in sorted(set(ks) | {8}):
            est = per_sample_loss(state.theta_hat, x.images, x.tokens, x.mask, x.uids, num_timesteps=k).numpy()
            noise = float(np.std(est - ref))
            rho = float(np.corrcoef(np.argsort(np.argsort(est)), np.argsort(np.argsort(ref)))[0, 1])
            print(f"{k:>3}{noise:>20.5f}{noise / ref.std():>16.3f}{rho:>18.3f}")


if __name__ == "__main__":
    main()
