"""Downstream T2I training step: the CPU default (16 px) against the 32-px settings it replaced, in one run.

    .venv/bin/python benchmarks/t2i_step.py [--threads 2] [--repeats 3] [--batch 16]

Synthetic inputs of the real shapes (16×384 MiniLM tokens). Every config runs one AdamW step per repeat,
interleaved, and the best time is reported with its ratio to the default: what an epoch of `compare` costs.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from alchemist_kedro.models.proxy import generator_for, training_loss
from alchemist_kedro.models.t2i import T2IConfig, T2IModel

CONF = Path(__file__).resolve().parents[1] / "conf" / "base" / "parameters_train_t2i.yml"
BASE = yaml.safe_load(CONF.read_text())["train_t2i"]["model"]  # the conf default; configs below override it

DEFAULT = dict(resolution=16, block_out_channels=(32, 64, 128), layers_per_block=1,
               down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
               beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
CONFIGS = {
    "default: 16 px, attention at 4x4, v-pred/cosine": DEFAULT,
    "same UNet at 32 px": {**DEFAULT, "resolution": 32},
    "session-1 default: 32 px, 2 layers, attention at 16x16 and 8x8": dict(
        resolution=32, block_out_channels=(32, 64, 128), layers_per_block=2),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {}
    for name, kw in CONFIGS.items():
        torch.manual_seed(0)
        model = T2IModel(T2IConfig(**{**BASE, **kw})).train()
        r = model.config.resolution
        batch = (torch.rand(args.batch, 3, r, r) * 2 - 1, torch.randn(args.batch, 16, 384),
                 torch.ones(args.batch, 16, dtype=torch.long))
        runs[name] = (model, torch.optim.AdamW(model.unet.parameters(), 1e-3), batch)

    def step(model, optimizer, batch, seed):
        loss = training_loss(model, *batch, generator_for(0, seed)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    best = {name: float("inf") for name in runs}
    for name, run in runs.items():  # warm-up
        step(*run, -1)
    for repeat in range(args.repeats):
        for name, run in runs.items():
            began = time.perf_counter()
            for i in range(5):
                step(*run, repeat * 5 + i)
            best[name] = min(best[name], (time.perf_counter() - began) / 5)
    base = best[next(iter(CONFIGS))]
    print(f"threads {args.threads}, batch {args.batch}, best of {args.repeats} × 5 steps")
    for name, seconds in best.items():
        params = sum(p.numel() for p in runs[name][0].unet.parameters()) / 1e6
        print(f"{name:66s} {params:5.2f}M params {seconds * 1000:7.1f} ms/step  {seconds / base:5.2f}×")


if __name__ == "__main__":
    main()
