"""Downstream T2I training on a selected subset, at equal epochs (paper §4: arms compare at the same epochs).

One plain loop, diffusers' train_text_to_image.py in miniature: batch → `training_loss` (the proxy's random t, ε,
caption dropout and min-SNR weighting) → AdamW step → EMA update. Step count is epochs × ceil(N / batch_size), so a
50% subset trains half the steps of the full set.

Determinism and resume follow training/bilevel.py: each epoch's batch order and each step's (t, ε, dropout) draws are
functions of (seed, epoch) and (seed, step), and checkpoints (safetensors weights, weights_only optimizer state, JSON
state) are keyed by a fingerprint of config + training uids, so a killed run resumes and replays the same steps.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from alchemist_kedro.devices import autocast
from alchemist_kedro.models.proxy import generator_for, training_loss
from alchemist_kedro.models.t2i import EMA, T2IConfig, T2IModel
from alchemist_kedro.hashing import run_fingerprint
from alchemist_kedro.training.checkpoints import load_latest_checkpoint, save_checkpoint


@dataclass
class T2ITrainingConfig:
    epochs: float  # passes over the selected subset; fractional epochs allowed
    batch_size: int
    learning_rate: float
    lr_warmup_steps: int  # linear warm-up, then constant (diffusers' "constant_with_warmup")
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    ema_decay: float | None  # None: no EMA; the EMA weights are the model that is returned and sampled
    checkpoint_every: int
    seed: int

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.epochs <= 0 or self.batch_size < 1:
            raise ValueError(f"epochs must be > 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")


@dataclass
class T2ITrainingResult:
    model: T2IModel  # the EMA weights when ema_decay is set, else the raw weights
    history: dict[str, list[dict]]  # kedro-mlflow layout: name → [{"step": s, "value": v}, ...]
    total_steps: int
    train_seconds: float  # wall time of the optimisation steps, summed over resumed segments
    summary: dict = field(default_factory=dict)


def steps_per_epoch(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)


def total_steps(num_samples: int, config: T2ITrainingConfig) -> int:
    """Equal epochs: a subset half the size trains half the steps."""
    if num_samples < 1:
        raise ValueError("no training samples")
    return math.ceil(config.epochs * steps_per_epoch(num_samples, config.batch_size))


def batch_indices(num_samples: int, config: T2ITrainingConfig, step: int) -> np.ndarray:
    """Rows of `step`: epoch e walks a permutation seeded by (seed, e); the last batch of an epoch may be short."""
    per_epoch = steps_per_epoch(num_samples, config.batch_size)
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng(generator_for(config.seed, "t2i-epoch", epoch).initial_seed()).permutation(num_samples)
    return order[within * config.batch_size : (within + 1) * config.batch_size]


def train_t2i(
    data: dict,
    model_config: T2IConfig,
    config: T2ITrainingConfig,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[int], None] | None = None,
    vae=None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> T2ITrainingResult:
    """Train on `data` = {images (N,3,R,R) in [-1,1], tokens (N,L,D), mask (N,L), uids}.

    `on_step(step)` runs after each completed step (tests raise from it to simulate a kill). `device`: where the
    model trains (the data stays on the CPU and moves a batch at a time); `precision` bf16/fp16: autocast on CUDA.
    The returned model stays on `device`.
    """
    images, tokens, mask, uids = data["images"], data["tokens"], data["mask"], list(data["uids"])
    n = len(uids)
    steps = total_steps(n, config)
    torch.manual_seed(config.seed)  # initial weights
    model = T2IModel(model_config, vae=vae).to(device)
    if model.vae is not None:
        model.vae.to(device)
    model.train()
    params = list(model.unet.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.lr_warmup_steps))
    )
    ema = EMA(model, config.ema_decay) if config.ema_decay is not None else None
    history: dict[str, list[dict]] = {}
    start, train_seconds = 0, 0.0

    ckpt_dir = None
    if checkpoint_dir is not None:
        ckpt_dir = Path(checkpoint_dir) / run_fingerprint([asdict(model_config), asdict(config)], uids)
        if (checkpoint := load_latest_checkpoint(ckpt_dir)) is not None:
            checkpoint.restore({"unet": model.unet, "ema_unet": ema.unet if ema is not None else None},
                               {"optimizer": optimizer, "lr_scheduler": scheduler})
            start, train_seconds, history = (checkpoint.state[k] for k in ("step", "train_seconds", "history"))

    def checkpoint(step: int) -> None:
        save_checkpoint(
            ckpt_dir, step, {"unet": model.unet, "ema_unet": ema.unet if ema is not None else None},
            {"optimizer": optimizer, "lr_scheduler": scheduler},
            {"step": step, "train_seconds": train_seconds, "history": history},
        )

    for step in range(start, steps):
        began = time.perf_counter()
        idx = torch.as_tensor(batch_indices(n, config, step))
        with autocast(torch.device(device), precision):
            loss = training_loss(model, images[idx].to(device), tokens[idx].to(device), mask[idx].to(device),
                                 generator_for(config.seed, "t2i-noise", step))
        loss = loss.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update(model, step)
        train_seconds += time.perf_counter() - began
        for name, value in (("train/loss", loss.item()), ("train/grad_norm", float(grad_norm)),
                            ("train/lr", optimizer.param_groups[0]["lr"])):
            history.setdefault(name, []).append({"step": step, "value": float(value)})
        done = step + 1
        if ckpt_dir is not None and (done % config.checkpoint_every == 0 or done == steps):
            checkpoint(done)
        if on_step is not None:
            on_step(step)

    final = ema.copy_to(model) if ema is not None else model
    final.eval()
    summary = {
        "num_train_samples": n,
        "epochs": float(config.epochs),
        "steps": steps,
        "steps_per_epoch": steps_per_epoch(n, config.batch_size),
        "train_seconds": round(train_seconds, 3),
        "ema": config.ema_decay is not None,
    }
    return T2ITrainingResult(final, history, steps, train_seconds, summary)
