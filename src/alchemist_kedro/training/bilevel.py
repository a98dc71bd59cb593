"""Bilevel meta-gradient training of the rater (paper §3.1 eqs. 4–9; method.md "Training loop").

Reads like method.md's pseudo-code. Deviations, each forced by scale or cost:
- The rater's signal s_i uses the low-variance CRN loss (K stratified t, ε seeded by (uid, k)), evaluated without
  grad; the θ/θ̂ gradient steps use one random (t, ε) per sample (an unbiased gradient, "the proxy's own training
  step may keep random timesteps"). Computing the θ step on the K-point loss with grad would cost ~K plain steps.
  Under eq. 6, θ and θ̂ see identical draws in both places.
- 'epoch' for the ul schedule: one pass of meta steps over the pool, ceil(N_pool / batch_size) meta steps, unless
  `ul_epoch_steps` is set. ul starts at 1.0 as in the official code, so the weighted-train term is off at first.
- Caption dropout only in the warm-up (the plain training step); meta-step losses keep captions.
Determinism: every batch index, t, ε and dropout draw is a function of (seed, phase, step), never of process state,
so a run resumed from a checkpoint replays the remaining steps exactly.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from alchemist_kedro.models.proxy import (
    ProxyConfig,
    ProxyT2I,
    draw_training_noise,
    generator_for,
    per_sample_loss,
    training_loss,
)
from alchemist_kedro.models.rater import Rater, RaterConfig, weight_entropy
from alchemist_kedro.training.checkpoints import latest_checkpoint, save_checkpoint


@dataclass
class BilevelConfig:
    mode: str = "eq9"  # eq9 (default, the paper's simplification) | eq6 (reference model θ̂)
    warmup_steps: int = 40
    meta_steps: int = 80
    batch_size: int = 16
    val_batch_size: int = 8
    num_loss_timesteps: int = 4  # K
    crn: bool = True
    ul_start: float = 1.0
    ul_step_per_epoch: float = 0.03
    ul_floor: float = 0.5
    ul_epoch_steps: int | None = None  # None: ceil(N_pool / batch_size)
    proxy_lr: float = 1e-4
    rater_lr: float = 1e-3
    # The Group MLP's gradient Σ W_inst (s − b) is one scalar: any bias in its sign (an EMA baseline lagging the
    # falling loss) becomes full-size Adam steps. The reference baseline removes that bias; rater_group_eps stops
    # Adam from turning the remaining noise into unit-size steps.
    rater_group_lr: float = 1e-3
    # Adam's ε for the Group MLP. Its gradient is a noisy scalar that is near zero-mean once b is unbiased; Adam's
    # per-weight normalisation turns such noise into unit-size random-walk steps. An ε well above the gradient's
    # scale makes the update ≈ (lr / ε) · gradient, so W_b moves in proportion to the batch-level signal.
    rater_group_eps: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float = 2.0
    baseline_momentum: float = 0.8
    # b for the rater step (method.md: keeps W_b from collapsing). "reference": Σ_j W_inst,j s_j on a second random
    # pool batch of the same size at the same θ (one extra no-grad K-timestep pass). It is unbiased at every step;
    # an EMA across steps ("ema") lags the falling proxy loss, every batch then looks better than usual, and Adam
    # turns that consistent sign into full-size steps: on the emoji pool W_b hit 0.999 within 30 meta steps.
    baseline: str = "reference"
    # λ · mean_i a_i² on the instance logits. The softmax gradient is self-centred but not bounded: with a ranking
    # that stays consistent (plain images always have the lowest loss) the logits grow without limit, as logistic
    # regression does on separable data, and the weight entropy collapses to 0 (one sample takes the batch).
    logit_l2: float = 0.001
    checkpoint_every: int = 25
    seed: int = 0
    trace_every: int = 20
    probe_size: int = 32

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.mode not in ("eq9", "eq6"):
            raise ValueError(f"mode must be eq9 or eq6, got {self.mode!r}")
        if self.baseline not in ("reference", "ema"):
            raise ValueError(f"baseline must be reference or ema, got {self.baseline!r}")


@dataclass
class RaterTrainingResult:
    rater: Rater
    history: dict[str, list[dict]]  # metric name → [{"step": s, "value": v}, ...] (kedro-mlflow's layout)
    trace: list[dict]  # per-sample probe rows: step, uid, loss, grad_norm
    theta: ProxyT2I | None = None


def _batch(num: int, size: int, seed: int, phase: str, step: int) -> np.ndarray:
    rng = np.random.default_rng(generator_for(seed, "batch", phase, step).initial_seed())
    return rng.choice(num, size=min(size, num), replace=False)


def _ul(config: BilevelConfig, meta_step: int, epoch_steps: int) -> float:
    epoch = meta_step // epoch_steps
    return max(config.ul_floor, config.ul_start - config.ul_step_per_epoch * epoch)


def _adamw(params, lr, config):
    return torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=config.weight_decay)


def _step(optimizer, params, loss, clip):
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def _fingerprint(data, proxy_config, rater_config, config) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([asdict(proxy_config), asdict(rater_config), asdict(config)], sort_keys=True, default=str).encode())
    h.update("\n".join(data["pool_uids"]).encode() + b"|" + "\n".join(data["val_uids"]).encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- the loop
def train_rater_bilevel(
    data: dict,
    proxy_config: ProxyConfig,
    rater_config: RaterConfig,
    config: BilevelConfig,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[int], None] | None = None,
    vae=None,
) -> RaterTrainingResult:
    """Train the rater. `data`: pool_/val_ {images (N,3,R,R) in [-1,1], tokens (N,L,D), mask (N,L), uids};
    pool_features (N,F). `on_step(global_step)` runs after each step (tests use it to simulate a kill)."""
    torch.manual_seed(config.seed)  # initial weights of θ̂ and μ
    pool_x, pool_tok, pool_mask = data["pool_images"], data["pool_tokens"], data["pool_mask"]
    val_x, val_tok, val_mask = data["val_images"], data["val_tokens"], data["val_mask"]
    pool_uids, val_uids, pool_f = list(data["pool_uids"]), list(data["val_uids"]), data["pool_features"]
    n_pool, n_val = len(pool_uids), len(val_uids)
    epoch_steps = config.ul_epoch_steps or math.ceil(n_pool / config.batch_size)
    eq6 = config.mode == "eq6"
    K = config.num_loss_timesteps

    theta_hat = ProxyT2I(proxy_config, vae=vae)
    rater = Rater(rater_config)
    rater.set_standardisation(pool_f)
    opt_hat = _adamw(theta_hat.parameters(), config.proxy_lr, config)
    opt_rater = torch.optim.AdamW(
        [
            {"params": list(rater.instance_mlp.parameters()), "lr": config.rater_lr},
            {"params": list(rater.group_mlp.parameters()) if rater.group_mlp is not None else [],
             "lr": config.rater_group_lr, "eps": config.rater_group_eps},
        ],
        betas=config.betas,
        weight_decay=config.weight_decay,
    )
    theta, opt_theta = None, None
    baseline = None  # b: running mean of Σ_i W_inst,i s_i across batches
    history: dict[str, list[dict]] = {}
    trace: list[dict] = []
    start = 0
    probe = np.sort(np.random.default_rng(config.seed).permutation(n_pool)[: config.probe_size])

    ckpt_dir = None
    if checkpoint_dir is not None:
        ckpt_dir = Path(checkpoint_dir) / _fingerprint(data, proxy_config, rater_config, config)
        latest = latest_checkpoint(ckpt_dir)
        if latest is not None:
            state = json.loads((latest / "state.json").read_text())
            optim = torch.load(latest / "optimizers.pt", weights_only=True)
            theta_hat.unet.load_state_dict(load_file(str(latest / "theta_hat.safetensors")))
            rater.load_state_dict(load_file(str(latest / "rater.safetensors")))
            opt_hat.load_state_dict(optim["theta_hat"])
            opt_rater.load_state_dict(optim["rater"])
            if (latest / "theta.safetensors").is_file():
                theta = copy.deepcopy(theta_hat)
                theta.unet.load_state_dict(load_file(str(latest / "theta.safetensors")))
                opt_theta = _adamw(theta.parameters(), config.proxy_lr, config)
                opt_theta.load_state_dict(optim["theta"])
            torch.set_rng_state(optim["torch_rng"])
            start, baseline, history, trace = state["step"], state["baseline"], state["history"], state["trace"]

    def log(step, **values):
        for k, v in values.items():
            history.setdefault(k, []).append({"step": step, "value": float(v)})

    def record_trace(step):
        # Per-sample loss and gradient norm on a fixed probe (for a Fig. 3-style plot by score band). The norm is
        # taken at the UNet's output conv: backprop to the last layer only, so 32 per-sample norms stay cheap.
        model = theta if theta is not None else theta_hat
        idx = torch.as_tensor(probe)
        uids = [pool_uids[i] for i in probe]
        loss = per_sample_loss(model, pool_x[idx], pool_tok[idx], pool_mask[idx], uids, num_timesteps=K,
                               noise_seed=config.seed)
        params = list(model.unet.conv_out.parameters())
        for i, uid in enumerate(uids):
            grads = torch.autograd.grad(loss[i], params, retain_graph=i < len(uids) - 1)
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
            trace.append({"step": step, "uid": uid, "loss": float(loss[i].detach()), "grad_norm": float(norm)})

    total = config.warmup_steps + config.meta_steps
    for step in tqdm(range(start, total), desc="rater (warm-up, then meta steps)", initial=start, total=total,
                     unit="step", mininterval=5):
        g = generator_for(config.seed, "noise", step)
        if step < config.warmup_steps:
            # eq. 4: warm up the reference θ̂ on the plain training loss.
            idx = torch.as_tensor(_batch(n_pool, config.batch_size, config.seed, "warmup", step))
            loss = training_loss(theta_hat, pool_x[idx], pool_tok[idx], pool_mask[idx], g).mean()
            _step(opt_hat, list(theta_hat.parameters()), loss, config.grad_clip)
            log(step, **{"warmup/loss": loss.item(), "lr/proxy": opt_hat.param_groups[0]["lr"]})
        else:
            meta_step = step - config.warmup_steps
            if theta is None:
                # θ ← copy(θ̂), optimiser state included so θ and θ̂ start as the same trajectory.
                theta = copy.deepcopy(theta_hat)
                opt_theta = _adamw(theta.parameters(), config.proxy_lr, config)
                opt_theta.load_state_dict(opt_hat.state_dict())
                record_trace(step)
            ul = _ul(config, meta_step, epoch_steps)
            bi = torch.as_tensor(_batch(n_pool, config.batch_size, config.seed, "train", step))
            vi = torch.as_tensor(_batch(n_val, config.val_batch_size, config.seed, "val", step))
            b_uids = [pool_uids[i] for i in bi]
            xb, tb, mb = pool_x[bi], pool_tok[bi], pool_mask[bi]

            # Rater weights: W = softmax_B(a) · W_b (eq. 7 × Group MLP).
            logits, w_inst, w_batch, w = rater(pool_f[bi])

            # Low-variance per-sample losses at θ_k (and θ̂_k), the rater's signal (evaluated before any step).
            def signal(idx, phase):
                uids = [pool_uids[i] for i in idx]
                x, tok, msk = pool_x[idx], pool_tok[idx], pool_mask[idx]
                l_theta = per_sample_loss(theta, x, tok, msk, uids, num_timesteps=K, crn=config.crn,
                                          noise_seed=config.seed, generator=generator_for(config.seed, phase, step))
                if not eq6:
                    return l_theta, l_theta  # eq. 9
                l_hat = per_sample_loss(theta_hat, x, tok, msk, uids, num_timesteps=K, crn=config.crn,
                                        noise_seed=config.seed, generator=generator_for(config.seed, phase, step))
                return l_theta, l_theta - l_hat  # eq. 6

            with torch.no_grad():
                l_theta_crn, s = signal(bi, "crn")
                if config.baseline == "reference":
                    ri = torch.as_tensor(_batch(n_pool, config.batch_size, config.seed, "reference", step))
                    _, s_ref = signal(ri, "crn-reference")
                    reference_signal = float((torch.softmax(rater.instance_logits(pool_f[ri]), 0) * s_ref).sum())

            # θ step (eq. 5 with the code's ul mix): ul · mean L(θ; V) + (1 − ul) · Σ_i W_i.detach() L(θ; x_i).
            w_detached = w.detach()
            x0b = theta.encode(xb)
            t_b, eps_b, _ = draw_training_noise(theta, x0b, g)
            x0v = theta.encode(val_x[vi])
            t_v, eps_v, _ = draw_training_noise(theta, x0v, generator_for(config.seed, "val-noise", step))
            val_loss = theta.loss_at(x0v, t_v, eps_v, val_tok[vi], val_mask[vi]).mean()
            theta_loss = ul * val_loss
            if ul < 1.0:  # at ul = 1 the train term has weight 0: skip its forward/backward
                l_theta = theta.loss_at(x0b, t_b, eps_b, tb, mb)
                theta_loss = theta_loss + (1 - ul) * (w_detached * l_theta).sum()
            _step(opt_theta, list(theta.parameters()), theta_loss, config.grad_clip)

            if eq6:
                # θ̂ goes on with the re-weighted train loss only, on the same (x_t, t, ε) as θ.
                l_hat = theta_hat.loss_at(x0b, t_b, eps_b, tb, mb)
                _step(opt_hat, list(theta_hat.parameters()), (w_detached * l_hat).sum(), config.grad_clip)

            # Rater step: descent on Σ_i W_i (s_i − b). b (not the batch's own mean) keeps the batch-level signal
            # while stopping W_b from collapsing to 0 when all s_i ≥ 0 (method.md).
            # b is updated with the current batch before use: the proxy's loss falls steadily, and a baseline that
            # lags that trend reads every new batch as "better than usual" and drives W_b to 1.
            batch_signal = float((w_inst.detach() * s).sum())
            if config.baseline == "reference":
                baseline = reference_signal
            else:
                baseline = batch_signal if baseline is None else (
                    config.baseline_momentum * baseline + (1 - config.baseline_momentum) * batch_signal
                )
            rater_loss = (w * (s - baseline)).sum() + config.logit_l2 * (logits**2).mean()
            _step(opt_rater, list(rater.parameters()), rater_loss, config.grad_clip)

            metrics = {
                "meta/train_weighted_loss": float((w_inst.detach() * l_theta_crn).sum()),
                "meta/val_loss": val_loss.item(),
                "meta/weight_entropy": weight_entropy(w_inst),
                "meta/batch_weight": float(w_batch.detach()),
                "meta/baseline": baseline,
                "meta/logit_std": float(logits.detach().std()),
                "meta/signal": batch_signal,
                "meta/rater_loss": rater_loss.item(),
                "meta/ul": ul,
                "lr/proxy": opt_theta.param_groups[0]["lr"],
                "lr/rater": opt_rater.param_groups[0]["lr"],
                "lr/rater_group": opt_rater.param_groups[1]["lr"],
            }
            if eq6:
                metrics["meta/theta_gap"] = float(s.mean())  # mean L(θ) − L(θ̂) on the CRN draws
            log(step, **metrics)
            if (meta_step + 1) % config.trace_every == 0 or step == total - 1:
                record_trace(step + 1)

        done = step + 1
        if ckpt_dir is not None and (done % config.checkpoint_every == 0 or done == total):
            save_checkpoint(
                ckpt_dir,
                done,
                {"rater": rater, "theta_hat": theta_hat.unet, "theta": theta.unet if theta is not None else None},
                {"rater": opt_rater, "theta_hat": opt_hat, "theta": opt_theta},
                {
                    "step": done,
                    "baseline": baseline,
                    "ul": _ul(config, max(0, done - config.warmup_steps), epoch_steps),
                    "config": {"bilevel": asdict(config), "proxy": asdict(proxy_config), "rater": asdict(rater_config)},
                    "history": history,
                    "trace": trace,
                    "rng_note": "batches and noise are derived from (seed, phase, step); torch_rng in optimizers.pt",
                },
            )
        if on_step is not None:
            on_step(step + 1)

    if theta is None:  # meta_steps == 0
        theta = theta_hat
    rater.eval()
    return RaterTrainingResult(rater=rater, history=history, trace=trace, theta=theta)
