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
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from alchemist_kedro.models.proxy import (
    DiffusionProxy,
    ProxyConfig,
    build_proxy,
    draw_training_noise,
    generator_for,
    per_sample_loss,
    training_loss,
)
from alchemist_kedro.models.alignment import AlignmentConfig, fit_alignment
from alchemist_kedro.models.rater import Rater, RaterConfig, fold_of, weight_entropy
from alchemist_kedro.hashing import run_fingerprint
from alchemist_kedro.training.checkpoints import load_latest_checkpoint, save_checkpoint


@dataclass
class BilevelConfig:
    # eq9 (the paper's simplification: s = L(θ)) | eq6 (reference model θ̂: s = L(θ) − L(θ̂)) | influence (s = the
    # one-step meta-gradient −⟨∇L(θ; x_i), ĝ_val⟩ by a central difference on the CRN draws; see influence_signal)
    mode: str
    warmup_steps: int
    meta_steps: int
    batch_size: int
    val_batch_size: int
    num_loss_timesteps: int  # K
    crn: bool
    ul_start: float
    ul_step_per_epoch: float
    ul_floor: float
    ul_epoch_steps: int | None  # None: ceil(N_pool / batch_size)
    proxy_lr: float
    rater_lr: float
    # The Group MLP's gradient Σ W_inst (s − b) is one scalar: any bias in its sign (an EMA baseline lagging the
    # falling loss) becomes full-size Adam steps. The reference baseline removes that bias; rater_group_eps stops
    # Adam from turning the remaining noise into unit-size steps.
    rater_group_lr: float
    # Adam's ε for the Group MLP. Its gradient is a noisy scalar that is near zero-mean once b is unbiased; Adam's
    # per-weight normalisation turns such noise into unit-size random-walk steps. An ε well above the gradient's
    # scale makes the update ≈ (lr / ε) · gradient, so W_b moves in proportion to the batch-level signal.
    rater_group_eps: float
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    baseline_momentum: float
    # b for the rater step (method.md: keeps W_b from collapsing). "reference": Σ_j W_inst,j s_j on a second random
    # pool batch of the same size at the same θ (one extra no-grad K-timestep pass). It is unbiased at every step;
    # an EMA across steps ("ema") lags the falling proxy loss, every batch then looks better than usual, and Adam
    # turns that consistent sign into full-size steps: on the emoji pool W_b hit 0.999 within 30 meta steps.
    baseline: str
    # λ · mean_i a_i² on the instance logits. The softmax gradient is self-centred but not bounded: with a ranking
    # that stays consistent (plain images always have the lowest loss) the logits grow without limit, as logistic
    # regression does on separable data, and the weight entropy collapses to 0 (one sample takes the batch).
    logit_l2: float
    # λ ≥ 0: add λ · (σ_L / σ_G) · (L(θ; x, c) − L(θ; x, ∅)) to s, the caption's gain on the same CRN draws, scaled to
    # the loss's spread within the batch. A caption that explains its image lowers the loss below the null
    # caption's; one that belongs elsewhere does not. 0 = the paper's signal alone (one fewer pass per batch).
    caption_gain_weight: float
    # influence only: which proxy parameters the val direction ĝ spans. "all"; "text": the caption pathway only
    # (cross-attention, and the pooled-caption class embedding), where an image statistic cannot leak in; "both": the
    # sum of the two signals, each scaled to unit spread in the batch.
    influence_params: str
    # influence only: the probe's step ε along the unit direction ĝ, relative to the norm of the parameters it spans.
    influence_eps: float
    checkpoint_every: int
    seed: int
    trace_every: int
    probe_size: int
    # Polyak averaging of the rater's weights over the meta steps (torch.optim.swa_utils, an EMA with this decay; 0 =
    # off: the last iterate is the rater). Each rater step follows one batch's noisy meta-gradient; the average is the
    # usual remedy for the last iterate's step-to-step noise, at no extra forward pass. Optional so older configs load.
    rater_ema_decay: float = 0.0
    # influence only: the val direction ĝ is the running mean of the steps' unit val gradients with this momentum (0 =
    # this step's alone). One step's ∇L_val is one val batch's gradient; the mean over steps is the val set's.
    influence_direction_momentum: float = 0.0
    # β ≥ 0: the val objective θ learns (and influence's ĝ follows) is mean L(θ; v) + β · τ · CE, CE the diffusion
    # classifier's cross-entropy over the val batch's captions (val_objective). 0 = the val loss alone (the paper).
    val_caption_weight: float = 0.0

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.mode not in ("eq9", "eq6", "influence"):
            raise ValueError(f"mode must be eq9, eq6 or influence, got {self.mode!r}")
        if self.influence_params not in ("all", "text", "both"):
            raise ValueError(f"influence_params must be all, text or both, got {self.influence_params!r}")
        if not self.influence_eps > 0:
            raise ValueError(f"influence_eps must be > 0, got {self.influence_eps}")
        if not 0.0 <= self.influence_direction_momentum < 1.0:
            raise ValueError(f"influence_direction_momentum must be in [0, 1), got {self.influence_direction_momentum}")
        if not self.val_caption_weight >= 0.0:
            raise ValueError(f"val_caption_weight must be >= 0, got {self.val_caption_weight}")
        if not 0.0 <= self.rater_ema_decay < 1.0:
            raise ValueError(f"rater_ema_decay must be in [0, 1), got {self.rater_ema_decay}")
        if self.baseline not in ("reference", "ema"):
            raise ValueError(f"baseline must be reference or ema, got {self.baseline!r}")


@dataclass
class Split:
    """One split's tensors, aligned by row: images (N,3,R,R) in [-1,1] (pixel proxy) or image embeddings (N,D)
    (embedding proxy), caption tokens (N,L,D), mask (N,L), uids."""

    images: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    uids: list[str]

    def __len__(self) -> int:
        return len(self.uids)

    def rows(self, index) -> "Split":
        index = torch.as_tensor(index)
        return Split(self.images[index], self.tokens[index], self.mask[index], [self.uids[i] for i in index.tolist()])

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.tokens.to(device), self.mask.to(device), self.uids)


@dataclass
class RaterData:
    """What the rater trains on: the pool (with the rater's input features) and the clean val split."""

    pool: Split
    val: Split
    pool_features: torch.Tensor  # (N_pool, F) image_emb ⊕ text_emb [⊕ patch_emb]
    text_dim: int = 0  # how many of the F features are text_emb (after image_emb)
    missing_features: int = 0  # samples left out for want of features (reported, not an error)
    val_features: torch.Tensor | None = None  # (N_val, F): the rater's reference pairs (reference / patch inputs)
    patch_dim: int = 0  # how many of the F features are patch_emb (the last ones; rater.model.patch_inputs)

    @classmethod
    def from_mapping(cls, data) -> "RaterData":
        """From the `pool_*` / `val_*` keyed dict the rater pipeline's node and the tests build."""
        if isinstance(data, cls):
            return data
        split = lambda p: Split(data[f"{p}_images"], data[f"{p}_tokens"], data[f"{p}_mask"], list(data[f"{p}_uids"]))
        return cls(split("pool"), split("val"), data["pool_features"])

    def to(self, device) -> "RaterData":
        return RaterData(self.pool.to(device), self.val.to(device), self.pool_features.to(device), self.text_dim,
                         self.missing_features,
                         None if self.val_features is None else self.val_features.to(device), self.patch_dim)


@dataclass
class Batch:
    """A pool batch: the rows and the rater's features for them."""

    rows: Split
    features: torch.Tensor
    prepared: bool = False  # features are the rater's inputs already (Rater.inputs), not image_emb ⊕ text_emb
    folds: torch.Tensor | None = None  # (B,) each row's fold (rater.model.proxy_folds > 1)


@dataclass
class BilevelState:
    """Everything that changes during training and goes into a checkpoint."""

    theta_hat: DiffusionProxy  # reference θ̂ (eq. 4 warm-up; eq. 6 keeps training it)
    rater: Rater
    opt_hat: torch.optim.Optimizer
    opt_rater: torch.optim.Optimizer
    theta: DiffusionProxy | None = None  # primary θ, a copy of θ̂ once the meta phase starts
    opt_theta: torch.optim.Optimizer | None = None
    step: int = 0
    baseline: float | None = None  # b of the rater step
    history: dict[str, list[dict]] = field(default_factory=dict)
    trace: list[dict] = field(default_factory=list)
    # rater.model.proxy_folds > 1: one warm-up prior per fold, fold f's trained on the pool rows of the other folds
    # (the rater's cross-fitted inputs), with the pool rows each may train on, and each pool row's fold.
    fold_priors: list[DiffusionProxy] = field(default_factory=list)
    opt_folds: list[torch.optim.Optimizer] = field(default_factory=list)
    fold_rows: list[np.ndarray] = field(default_factory=list)
    pool_folds: torch.Tensor | None = None
    # training.rater_ema_decay > 0: the running average of the rater's weights (swa_utils.AveragedModel)
    rater_average: torch.nn.Module | None = None
    # rater.model.ensemble > 1: θ̂ and its optimiser as the warm-up left them (every member's phase starts there),
    # and the Group MLP's initial weights.
    warm_theta_hat: DiffusionProxy | None = None
    # uid → the row's held-out caption gain from its fold prior (frozen after warm-up, CRN draws: one value a row).
    gain_cache: dict[str, float] = field(default_factory=dict)
    opt_warm: torch.optim.Optimizer | None = None
    group_init: dict | None = None
    # training.influence_direction_momentum > 0: the running mean of the unit val gradients (one dict per group).
    influence_direction: list[dict[str, torch.Tensor]] | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.history.setdefault(name, []).append({"step": step, "value": float(value)})


@dataclass
class RaterTrainingResult:
    rater: Rater
    history: dict[str, list[dict]]  # metric name → [{"step": s, "value": v}, ...] (kedro-mlflow's layout)
    trace: list[dict]  # per-sample probe rows: step, uid, loss, grad_norm
    theta: DiffusionProxy | None = None
    theta_hat: DiffusionProxy | None = None


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


# ------------------------------------------------------------------------------------------- the steps
def _rater_optimizer(rater: Rater, config: BilevelConfig, member: int) -> torch.optim.Optimizer:
    """The rater step's optimiser: the instance MLP of `member` (its meta phase) and the Group MLP."""
    return torch.optim.AdamW(
        [
            {"params": list(rater.member(member).parameters())
                        + (list(rater.interaction.parameters()) if rater.interaction is not None else [])
                        + (list(rater.caption_mlp.parameters()) if rater.caption_mlp is not None else []),
             "lr": config.rater_lr},
            {"params": list(rater.group_mlp.parameters()) if rater.group_mlp is not None else [],
             "lr": config.rater_group_lr, "eps": config.rater_group_eps},
        ],
        betas=config.betas,
        weight_decay=config.weight_decay,
    )


def fit_fold_alignments(rater: Rater, data: RaterData, seed: int) -> None:
    """rater.model.alignment_folds: part f's projection fitted on the val pairs plus the pool rows of the other
    parts (parts by caption: Rater.alignment_parts), with the val projection's AlignmentConfig."""
    if data.val_features is None:
        raise ValueError("rater.model.alignment_folds > 1 fits on the val pairs too: RaterData.val_features is missing")
    split, base = rater.image_dim, rater.base_dim
    pool = data.pool_features[:, :base].float().cpu()
    val = data.val_features[:, :base].float().cpu()
    parts = rater.alignment_parts(pool[:, split:]).numpy()
    config = AlignmentConfig(**rater.config.alignment_config)
    for f, model in enumerate([rater.alignment, *rater.fold_alignments]):
        rows = torch.as_tensor(np.flatnonzero(parts != f))
        image = torch.cat([val[:, :split], pool[rows, :split]]).numpy()
        text = torch.cat([val[:, split:], pool[rows, split:]]).numpy()
        model.load_state_dict(fit_alignment(image, text, config, seed=seed + f).state_dict())


def init_state(data: RaterData, proxy_config: ProxyConfig, rater_config: RaterConfig, config: BilevelConfig,
               vae=None, alignment_state: dict | None = None, device: torch.device | str = "cpu") -> BilevelState:
    torch.manual_seed(config.seed)  # initial weights of θ̂ and μ
    theta_hat = build_proxy(proxy_config, data.pool.images, vae=vae, tokens=data.pool.tokens, mask=data.pool.mask)
    rater = Rater(rater_config)
    if rater.alignment is not None:
        if alignment_state is None:
            raise ValueError("the rater's alignment feature needs the fitted alignment model's weights")
        rater.alignment.load_state_dict(alignment_state)
        if rater_config.alignment_folds > 1:
            fit_fold_alignments(rater, data, config.seed)
    if rater_config.reference_inputs:
        if data.val_features is None:
            raise ValueError("rater.model.reference_inputs needs the val pairs' features (RaterData.val_features)")
        rater.attach_reference(data.val_features, seed=config.seed)
    if rater_config.patch_inputs:
        if data.val_features is None:
            raise ValueError("rater.model.patch_inputs needs the val pairs' features (RaterData.val_features)")
        rater.attach_patch_bank(data.val_features, seed=config.seed)
    rater.set_standardisation(data.pool_features)
    theta_hat.to(device), rater.to(device)  # before the optimisers take their parameters
    if getattr(theta_hat, "vae", None) is not None:  # held outside the module tree (frozen, not trained)
        theta_hat.vae.to(device)
    state = BilevelState(theta_hat, rater, _adamw(theta_hat.parameters(), config.proxy_lr, config),
                         _rater_optimizer(rater, config, 0))
    if rater.group_mlp is not None and rater_config.ensemble > 1:  # each member's phase starts the Group MLP afresh
        state.group_init = copy.deepcopy(rater.group_mlp.state_dict())
    if rater_config.ensemble > 1 and config.rater_ema_decay > 0:
        raise ValueError("rater.model.ensemble > 1 and training.rater_ema_decay > 0 do not combine: pick one")
    if config.rater_ema_decay > 0:
        state.rater_average = AveragedModel(rater, multi_avg_fn=get_ema_multi_avg_fn(config.rater_ema_decay))
    folds = rater_config.proxy_folds if rater.proxy is not None else 1
    if folds > 1:
        state.pool_folds = fold_of(data.pool_features[:, :rater.base_dim], folds).cpu()
        for f in range(folds):
            rows = np.flatnonzero(state.pool_folds.numpy() != f)
            if len(rows) == 0:
                raise ValueError(f"rater.model.proxy_folds={folds}: fold {f}'s prior has no pool rows to train on")
            # The pool's statistics, as θ̂: every prior reads the same standardised space.
            prior = build_proxy(proxy_config, data.pool.images, tokens=data.pool.tokens, mask=data.pool.mask).to(device)
            state.fold_priors.append(prior)
            state.opt_folds.append(_adamw(prior.parameters(), config.proxy_lr, config))
            state.fold_rows.append(rows)
    return state


def warmup_step(state: BilevelState, batch: Split, config: BilevelConfig, step: int) -> dict[str, float]:
    """eq. 4: θ̂ on the plain training loss (random t, ε; caption dropout)."""
    g = generator_for(config.seed, "noise", step)
    loss = training_loss(state.theta_hat, batch.images, batch.tokens, batch.mask, g).mean()
    _step(state.opt_hat, list(state.theta_hat.parameters()), loss, config.grad_clip)
    return {"warmup/loss": loss.item(), "lr/proxy": state.opt_hat.param_groups[0]["lr"]}


def warmup_fold_step(state: BilevelState, pool: Split, config: BilevelConfig, step: int) -> dict[str, float]:
    """eq. 4 for each fold's prior, on a batch of the pool rows outside its fold (the rater's cross-fitted inputs)."""
    metrics = {}
    for f, (prior, opt, rows) in enumerate(zip(state.fold_priors, state.opt_folds, state.fold_rows)):
        batch = pool.rows(rows[_batch(len(rows), config.batch_size, config.seed, f"warmup-fold{f}", step)])
        g = generator_for(config.seed, "noise-fold", f, step)
        loss = training_loss(prior, batch.images, batch.tokens, batch.mask, g).mean()
        _step(opt, list(prior.parameters()), loss, config.grad_clip)
        metrics[f"warmup/fold{f}_loss"] = loss.item()
    return metrics


def start_meta_phase(state: BilevelState, config: BilevelConfig) -> None:
    """θ ← copy(θ̂), optimiser state included, so θ and θ̂ start as the same trajectory."""
    state.theta = copy.deepcopy(state.theta_hat)
    state.opt_theta = _adamw(state.theta.parameters(), config.proxy_lr, config)
    state.opt_theta.load_state_dict(state.opt_hat.state_dict())


def snapshot_warm_up(state: BilevelState, config: BilevelConfig) -> None:
    """Keep θ̂ and its optimiser as the warm-up left them (rater.model.ensemble > 1)."""
    state.warm_theta_hat = copy.deepcopy(state.theta_hat)
    state.opt_warm = _adamw(state.warm_theta_hat.parameters(), config.proxy_lr, config)
    state.opt_warm.load_state_dict(state.opt_hat.state_dict())


def start_member(state: BilevelState, config: BilevelConfig, member: int) -> None:
    """Member `member`'s meta phase starts where the warm-up ended: θ̂ and its optimiser from the snapshot, θ from
    θ̂ (start_meta_phase), the Group MLP at its initial weights, a fresh rater optimiser over this member."""
    state.theta_hat.network.load_state_dict(state.warm_theta_hat.network.state_dict())
    state.opt_hat.load_state_dict(state.opt_warm.state_dict())
    start_meta_phase(state, config)
    if state.group_init is not None:
        state.rater.group_mlp.load_state_dict(state.group_init)
    state.rater.active_member = member
    state.opt_rater = _rater_optimizer(state.rater, config, member)
    state.baseline = None
    state.influence_direction = None  # the val direction's running mean is this member's θ's


@torch.no_grad()
def finish_member(state: BilevelState, features: torch.Tensor, prepared: bool, member: int) -> None:
    """Member `member`'s logit mean and spread on the pool: the ensemble averages standardised logits."""
    rater = state.rater
    logits = rater.member(member)(rater.standardise(features, prepared=prepared)).squeeze(-1)
    rater.member_mean[member] = logits.mean()
    rater.member_std[member] = logits.std().clamp_min(1e-8)


def rater_signal(state: BilevelState, rows: Split, config: BilevelConfig, phase: str, step: int,
                 folds: torch.Tensor | None = None):
    """(L(θ; x), s): the low-variance per-sample loss at θ and the rater's signal s = L(θ) (eq. 9) or
    L(θ) − L(θ̂) on the same CRN draws (eq. 6), plus the scaled caption gain when caption_gain_weight > 0. With
    cross-fitted fold priors (`folds` given), the gain is the held-out one: each row's fold prior, which never
    trained on it, reads it. No grad: s is data for the rater, not a path to θ."""
    def loss(model, sub: Split = rows, null: bool = False):
        tokens, mask = (torch.zeros_like(sub.tokens), torch.zeros_like(sub.mask)) if null else (sub.tokens, sub.mask)
        return per_sample_loss(model, sub.images, tokens, mask, sub.uids,
                               num_timesteps=config.num_loss_timesteps, crn=config.crn, noise_seed=config.seed,
                               generator=generator_for(config.seed, phase, step))

    with torch.no_grad():
        l_theta = loss(state.theta)
        signal = l_theta if config.mode == "eq9" else l_theta - loss(state.theta_hat)
        if config.caption_gain_weight > 0:
            if folds is not None and state.fold_priors:
                # The fold priors are frozen after warm-up and, with CRN, a row's draws are its own: its held-out
                # gain is one number for the whole meta phase. Computed once per row (half the signal's passes).
                cache = state.gain_cache if config.crn else {}
                todo = torch.as_tensor([i for i, uid in enumerate(rows.uids) if uid not in cache], dtype=torch.long)
                for f, prior in enumerate(state.fold_priors):
                    where = todo[(folds.cpu()[todo] == f)] if len(todo) else todo
                    if len(where):
                        sub = rows.rows(where)
                        values = (loss(prior, sub) - loss(prior, sub, null=True)).cpu().tolist()
                        cache.update(zip(sub.uids, values))
                gain = torch.tensor([cache[uid] for uid in rows.uids], dtype=l_theta.dtype, device=l_theta.device)
            else:
                gain = l_theta - loss(state.theta, null=True)
            scale = signal.std() / gain.std().clamp_min(1e-12) if len(gain) > 1 else 1.0
            signal = signal + config.caption_gain_weight * scale * gain
        return l_theta, signal


def caption_parameter_names(proxy: DiffusionProxy) -> list[str]:
    """The proxy's caption pathway: every cross-attention block (diffusers names them attn2) and the pooled-caption
    class embedding. With the caption zeroed these parameters see nothing, so a change along them moves only how the
    caption is read, never how an image is denoised without it."""
    names = [name for name, _ in proxy.named_parameters() if ".attn2." in name or ".class_embedding." in name]
    if not names:
        raise ValueError("the proxy has no cross-attention parameters: influence_params=text needs CrossAttn blocks")
    return names


def _influence_groups(theta: DiffusionProxy, which: str) -> list[list[str]]:
    everything = [name for name, _ in theta.named_parameters()]
    if which == "all":
        return [everything]
    if which == "text":
        return [caption_parameter_names(theta)]
    return [everything, caption_parameter_names(theta)]


def _unit(direction: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in direction.values())).clamp_min(1e-20)
    return {n: (g / norm).to(g.dtype) for n, g in direction.items()}


def influence_signal(theta: DiffusionProxy, rows: Split, val_loss: torch.Tensor, config: BilevelConfig, step: int,
                     direction: list[dict[str, torch.Tensor]] | None = None,
                     running: list[dict[str, torch.Tensor]] | None = None):
    """s_i = −⟨∇L(θ; x_i), ĝ⟩: the one-step meta-gradient of the val loss with respect to x_i's weight (up to the
    step size), with ĝ = ∇L_val / ‖∇L_val‖ over the chosen parameters. A sample whose gradient points where the clean
    val set wants θ to go gets s < 0 and is up-weighted; one the val set disagrees with (its caption belongs to another
    image, its pixels are noise) gets s ≥ 0. Estimated by a central difference on the K-point CRN loss,
    [L(θ − εĝ) − L(θ + εĝ)] / 2ε: two no-grad passes on a copy of θ, no per-sample gradients. Returns (L(θ) estimate,
    s, direction) so a reference batch can reuse the direction."""
    groups = _influence_groups(theta, config.influence_params)
    params = dict(theta.named_parameters())
    if direction is None:
        direction = []
        for names in groups:
            grads = torch.autograd.grad(val_loss, [params[n] for n in names], retain_graph=True, allow_unused=True)
            grads = [torch.zeros_like(params[n]) if g is None else g.detach() for n, g in zip(names, grads)]
            direction.append(_unit(dict(zip(names, grads))))
        if running is not None:  # ĝ ← unit(m·ĝ_prev + (1 − m)·ĝ_step); the first step starts the mean
            m = config.influence_direction_momentum
            if running:
                direction = [_unit({n: m * prev[n] + (1 - m) * g for n, g in d.items()})
                             for prev, d in zip(running, direction)]
            running[:] = direction

    signals, mids = [], []
    with torch.no_grad():
        probe = copy.deepcopy(theta)  # θ itself stays untouched: its val-loss graph is still to be back-propagated
        probe_params = dict(probe.named_parameters())

        def loss():
            return per_sample_loss(probe, rows.images, rows.tokens, rows.mask, rows.uids,
                                   num_timesteps=config.num_loss_timesteps, crn=config.crn, noise_seed=config.seed,
                                   generator=generator_for(config.seed, "influence", step))

        for d in direction:
            eps = config.influence_eps * float(torch.sqrt(sum((params[n].detach().double() ** 2).sum() for n in d)))
            for n, g in d.items():
                probe_params[n].copy_(params[n]).add_(g, alpha=-eps)
            minus = loss()
            for n, g in d.items():
                probe_params[n].copy_(params[n]).add_(g, alpha=eps)
            plus = loss()
            for n in d:
                probe_params[n].copy_(params[n])
            signals.append((minus - plus) / (2 * eps))
            mids.append((minus + plus) / 2)
        if len(signals) == 1:
            signal = signals[0]
        else:  # "both": each part at unit spread, so neither drowns the other
            signal = sum(part / part.std().clamp_min(1e-20) for part in signals)
    return mids[0], signal, direction


def val_objective(theta: DiffusionProxy, x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, val: Split,
                  weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(objective, mean own-caption val loss, caption cross-entropy or None) on one val batch at the given draws.

    The paper's meta-objective is the val loss. Under a prior trained with caption dropout that loss does not
    penalise a pool caption that says nothing (boilerplate, a file name): such a row is one more unconditional
    example, and the val loss after training on it is the clean control's (README "What the val objective itself
    says per kind"). What it costs is caption following. With weight β > 0 the objective also asks each val image to be
    explained by its own caption rather than by the batch's other captions: the diffusion classifier (Li et al. 2023,
    "Your diffusion model is secretly a zero-shot classifier") with logits −L(θ; x_i, c_j) / τ on image i's draws,
    CE its cross-entropy, τ the batch's mean own loss (detached), and the objective L̄ + β · τ · CE, whose gradient
    with respect to each L(x_i, c_j) is (δ_ij / B) + β (p_ij − δ_ij) / B: the two terms in the same units."""
    if weight == 0:
        own = theta.loss_at(x0, timesteps, noise, val.tokens, val.mask).mean()
        return own, own, None
    b = len(val)
    grid = theta.loss_at(x0.repeat_interleave(b, 0), timesteps.repeat_interleave(b), noise.repeat_interleave(b, 0),
                         val.tokens.repeat(b, *([1] * (val.tokens.ndim - 1))),
                         val.mask.repeat(b, *([1] * (val.mask.ndim - 1)))).view(b, b)  # [i, j]: image i, caption j
    own = grid.diagonal().mean()
    tau = own.detach().clamp_min(1e-12)
    ce = F.cross_entropy(-grid / tau, torch.arange(b, device=grid.device))
    return own + weight * tau * ce, own, ce


def meta_step(state: BilevelState, batch: Batch, val_batch: Split, reference: Batch | None, config: BilevelConfig,
              ul: float, step: int) -> dict[str, float]:
    """One meta step (method.md "Training loop"): rater weights, θ step (eq. 5), θ̂ step (eq. 6), rater step."""
    theta, rater, eq6 = state.theta, state.rater, config.mode == "eq6"
    # W = softmax_B(a) · W_b (eq. 7 × Group MLP).
    logits, w_inst, w_batch, w = rater(batch.features, prepared=batch.prepared)
    x0v = theta.encode(val_batch.images)
    t_v, eps_v, _ = draw_training_noise(theta, x0v, generator_for(config.seed, "val-noise", step))
    val_loss, val_own, val_ce = val_objective(theta, x0v, t_v, eps_v, val_batch, config.val_caption_weight)
    # s at θ_k (and θ̂_k), evaluated before either proxy steps.
    if config.mode == "influence":
        running = None
        if config.influence_direction_momentum > 0:
            if state.influence_direction is None:
                state.influence_direction = []
            running = state.influence_direction
        l_theta_crn, s, direction = influence_signal(theta, batch.rows, val_loss, config, step, running=running)
        scale = s.std().clamp_min(1e-20) if len(s) > 1 else s.abs().clamp_min(1e-20)
        s = s / scale  # unit spread: the rater's step and logit_l2 see the same scale at every step
    else:
        l_theta_crn, s = rater_signal(state, batch.rows, config, "crn", step, batch.folds)
    if reference is not None:
        # b = Σ W_inst s on a second random pool batch at the same θ: unbiased at every step.
        if config.mode == "influence":
            _, s_ref, _ = influence_signal(theta, reference.rows, val_loss, config, step, direction)
            s_ref = s_ref / scale
        else:
            _, s_ref = rater_signal(state, reference.rows, config, "crn-reference", step, reference.folds)
        with torch.no_grad():
            baseline = float((torch.softmax(rater.instance_logits(reference.features, reference.prepared), 0)
                              * s_ref).sum())

    # θ step, eq. 5 with the code's ul mix: ul · mean L(θ; V) + (1 − ul) · Σ_i W_i.detach() L(θ; x_i).
    w_detached = w.detach()
    x0b = theta.encode(batch.rows.images)
    t_b, eps_b, _ = draw_training_noise(theta, x0b, generator_for(config.seed, "noise", step))
    theta_loss = ul * val_loss
    if ul < 1.0:  # at ul = 1 the train term has weight 0: skip its forward/backward
        l_theta = theta.loss_at(x0b, t_b, eps_b, batch.rows.tokens, batch.rows.mask)
        theta_loss = theta_loss + (1 - ul) * (w_detached * l_theta).sum()
    _step(state.opt_theta, list(theta.parameters()), theta_loss, config.grad_clip)

    if eq6:  # θ̂ goes on with the re-weighted train loss only, on the same (x_t, t, ε) as θ.
        l_hat = state.theta_hat.loss_at(x0b, t_b, eps_b, batch.rows.tokens, batch.rows.mask)
        _step(state.opt_hat, list(state.theta_hat.parameters()), (w_detached * l_hat).sum(), config.grad_clip)

    # Rater step: descent on Σ_i W_i (s_i − b) + λ mean a². b, not the batch's own mean, keeps the batch-level
    # signal while stopping W_b from collapsing to 0 when all s_i ≥ 0 (method.md). The EMA b takes the current
    # batch first: a baseline that lags the falling proxy loss reads every batch as "better than usual".
    batch_signal = float((w_inst.detach() * s).sum())
    if reference is None:
        m = config.baseline_momentum
        baseline = batch_signal if state.baseline is None else m * state.baseline + (1 - m) * batch_signal
    state.baseline = baseline
    rater_loss = (w * (s - baseline)).sum() + config.logit_l2 * (logits**2).mean()
    _step(state.opt_rater, list(rater.parameters()), rater_loss, config.grad_clip)
    if state.rater_average is not None:
        state.rater_average.update_parameters(rater)

    metrics = {
        "meta/train_weighted_loss": float((w_inst.detach() * l_theta_crn).sum()),
        "meta/val_loss": val_own.item(),
        "meta/weight_entropy": weight_entropy(w_inst),
        "meta/batch_weight": float(w_batch.detach()),
        "meta/baseline": baseline,
        "meta/logit_std": float(logits.detach().std()),
        "meta/signal": batch_signal,
        "meta/rater_loss": rater_loss.item(),
        "meta/ul": ul,
        "lr/proxy": state.opt_theta.param_groups[0]["lr"],
        "lr/rater": state.opt_rater.param_groups[0]["lr"],
        "lr/rater_group": state.opt_rater.param_groups[1]["lr"],
    }
    if val_ce is not None:
        metrics["meta/val_caption_ce"] = val_ce.item()
        metrics["meta/val_objective"] = val_loss.item()
    if eq6:
        metrics["meta/theta_gap"] = float(s.mean())  # mean L(θ) − L(θ̂) on the CRN draws
    return metrics


def record_probe(state: BilevelState, probe: Split, config: BilevelConfig, step: int) -> None:
    """Per-sample loss and gradient norm on a fixed probe (a Fig. 3-style plot by score band). The norm is taken at
    the proxy's output layer: backprop to the last layer only keeps the per-sample norms cheap."""
    model = state.theta if state.theta is not None else state.theta_hat
    loss = per_sample_loss(model, probe.images, probe.tokens, probe.mask, probe.uids,
                           num_timesteps=config.num_loss_timesteps, noise_seed=config.seed)
    params = list(model.output_layer.parameters())
    for i, uid in enumerate(probe.uids):
        grads = torch.autograd.grad(loss[i], params, retain_graph=i < len(probe) - 1)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        state.trace.append({"step": step, "uid": uid, "loss": float(loss[i].detach()), "grad_norm": float(norm)})


# ------------------------------------------------------------------------------------------- checkpoints
class _Directions:
    """state.influence_direction as a checkpoint entry: one safetensors file, keys "<group>/<parameter name>"."""

    def __init__(self, state: BilevelState):
        self.state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{g}/{n}": t for g, d in enumerate(self.state.influence_direction) for n, t in d.items()}

    def load_state_dict(self, flat: dict[str, torch.Tensor]) -> None:
        groups: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in flat.items():
            g, name = key.split("/", 1)
            groups.setdefault(int(g), {})[name] = tensor
        self.state.influence_direction = [groups[g] for g in sorted(groups)]


def _modules(state: BilevelState) -> dict:
    return {"rater": state.rater, "theta_hat": state.theta_hat.network,
            "theta": state.theta.network if state.theta is not None else None,
            **{f"fold_prior_{f}": prior.network for f, prior in enumerate(state.fold_priors)},
            "rater_average": state.rater_average,
            "warm_theta_hat": state.warm_theta_hat.network if state.warm_theta_hat is not None else None,
            "influence_direction": _Directions(state) if state.influence_direction else None}


def _optimizers(state: BilevelState) -> dict:
    return {"rater": state.opt_rater, "theta_hat": state.opt_hat, "theta": state.opt_theta,
            **{f"fold_prior_{f}": opt for f, opt in enumerate(state.opt_folds)},
            "warm_theta_hat": state.opt_warm}


def resume(state: BilevelState, directory: Path, config: BilevelConfig) -> None:
    checkpoint = load_latest_checkpoint(directory)
    if checkpoint is None:
        return
    if checkpoint.has("theta"):
        start_meta_phase(state, config)
    if checkpoint.has("warm_theta_hat"):  # an ensemble's meta phases: the snapshot, and which member is training
        snapshot_warm_up(state, config)
        member = (checkpoint.state["step"] - config.warmup_steps) // config.meta_steps
        member = min(member, state.rater.config.ensemble - 1)
        state.rater.active_member = member
        state.opt_rater = _rater_optimizer(state.rater, config, member)
    if checkpoint.has("influence_direction"):
        state.influence_direction = [{}]  # a placeholder that _modules lists; restore fills it
    checkpoint.restore(_modules(state), _optimizers(state))
    json_state = checkpoint.state
    state.step, state.baseline = json_state["step"], json_state["baseline"]
    state.history, state.trace = json_state["history"], json_state["trace"]
    state.gain_cache = json_state.get("gain_cache", {})


def save(state: BilevelState, directory: Path, extra: dict) -> None:
    save_checkpoint(directory, state.step, _modules(state), _optimizers(state),
                    {"step": state.step, "baseline": state.baseline, "history": state.history, "trace": state.trace,
                     "gain_cache": state.gain_cache,
                     **extra})


# --------------------------------------------------------------------------------------------- the loop
def train_rater_bilevel(
    data,
    proxy_config: ProxyConfig,
    rater_config: RaterConfig,
    config: BilevelConfig,
    checkpoint_dir: str | Path | None = None,
    on_step: Callable[[int], None] | None = None,
    vae=None,
    alignment_state: dict | None = None,
    device: torch.device | str = "cpu",
) -> RaterTrainingResult:
    """Train the rater on `data` (a RaterData, or its pool_*/val_* dict). `on_step(global_step)` runs after each
    step (tests use it to simulate a kill). Checkpoints go to checkpoint_dir/<fingerprint of config + uids>.
    `device`: where the models and the data tensors live (devices.resolve_device); the returned models are on CPU.
    It is not part of the checkpoint fingerprint: a run may resume on another device."""
    data = RaterData.from_mapping(data)
    n_pool, n_val = len(data.pool), len(data.val)
    epoch_steps = config.ul_epoch_steps or math.ceil(n_pool / config.batch_size)
    state = init_state(data, proxy_config, rater_config, config, vae, alignment_state, device)
    data = data.to(device)
    probe = data.pool.rows(np.sort(np.random.default_rng(config.seed).permutation(n_pool)[: config.probe_size]))
    ckpt_dir = None
    if checkpoint_dir is not None:
        configs = [asdict(proxy_config), asdict(rater_config), asdict(config)]
        ckpt_dir = Path(checkpoint_dir) / run_fingerprint(configs, data.pool.uids, data.val.uids)
        resume(state, ckpt_dir, config)

    # The rater's frozen inputs (the warm-up prior's values) are a function of the row alone: computed once for the
    # pool when the meta phase starts, not twice per step (16 prior passes a step at K = 4).
    prepared: list[torch.Tensor] = []

    def pool_batch(phase: str, step: int) -> Batch:
        index = torch.as_tensor(_batch(n_pool, config.batch_size, config.seed, phase, step))
        folds = None if state.pool_folds is None else state.pool_folds[index].to(device)
        if prepared:
            return Batch(data.pool.rows(index), prepared[0][index], prepared=True, folds=folds)
        return Batch(data.pool.rows(index), data.pool_features[index], folds=folds)

    members = rater_config.ensemble
    total = config.warmup_steps + members * config.meta_steps

    def pool_inputs() -> tuple[torch.Tensor, bool]:
        """The pool's rater inputs: computed once (prepared) when the rater has frozen proxy inputs."""
        if state.rater.proxy is not None and not prepared:  # e.g. resumed from the last checkpoint
            with torch.no_grad():
                prepared.append(state.rater.inputs(data.pool_features))
        return (prepared[0], True) if prepared else (data.pool_features, False)
    for step in tqdm(range(state.step, total), desc="rater (warm-up, then meta steps)", initial=state.step,
                     total=total, unit="step", mininterval=5):
        if step < config.warmup_steps:
            state.log(step, warmup_step(state, pool_batch("warmup", step).rows, config, step))
            if state.fold_priors:
                state.log(step, warmup_fold_step(state, data.pool, config, step))
        else:
            # Member r's meta phase: steps warmup + r·meta_steps onwards. Batches and noise are keyed by the global
            # step, so every member draws its own; member 0 is the one-member run step for step.
            member, meta = divmod(step - config.warmup_steps, config.meta_steps)
            if members > 1 and member == 0 and meta == 0 and state.warm_theta_hat is None:
                snapshot_warm_up(state, config)
                state.rater.active_member = 0
            if members > 1 and member > 0 and meta == 0:
                finish_member(state, *pool_inputs(), member - 1)
                start_member(state, config, member)
            if state.theta is None:
                start_meta_phase(state, config)
                if state.rater.proxy is not None:  # the rater's proxy inputs read θ̂ (or the fold priors) as
                    # warm-up left it
                    state.rater.attach_proxy(*(state.fold_priors or [state.theta_hat]))
                    state.rater.set_standardisation(data.pool_features)
            if state.rater.proxy is not None and not prepared:  # also after a resume into the meta phase
                with torch.no_grad():
                    prepared.append(state.rater.inputs(data.pool_features))
                record_probe(state, probe, config, step)
            batch = pool_batch("train", step)
            val_batch = data.val.rows(_batch(n_val, config.val_batch_size, config.seed, "val", step))
            reference = pool_batch("reference", step) if config.baseline == "reference" else None
            state.log(step, meta_step(state, batch, val_batch, reference, config, _ul(config, meta, epoch_steps), step))
            if (meta + 1) % config.trace_every == 0 or step == total - 1:
                record_probe(state, probe, config, step + 1)
        state.step = step + 1
        if ckpt_dir is not None and (state.step % config.checkpoint_every == 0 or state.step == total):
            save(state, ckpt_dir, {
                "ul": _ul(config, max(0, state.step - config.warmup_steps), epoch_steps),
                "config": {"bilevel": asdict(config), "proxy": asdict(proxy_config), "rater": asdict(rater_config)},
                "rng_note": "batches and noise are derived from (seed, phase, step); torch_rng in optimizers.pt",
            })
        if on_step is not None:
            on_step(state.step)

    if members > 1 and state.step == total and state.rater.active_member is not None:
        finish_member(state, *pool_inputs(), members - 1)
        state.rater.active_member = None
    if state.rater_average is not None and int(state.rater_average.n_averaged) > 0:
        with torch.no_grad():  # the averaged weights become the rater; its buffers (standardisation, banks) stay
            for mine, averaged in zip(state.rater.parameters(), state.rater_average.module.parameters()):
                if mine.requires_grad:
                    mine.copy_(averaged)
    state.rater.eval().cpu()
    theta = state.theta if state.theta is not None else state.theta_hat
    for model in {id(m): m for m in (theta, state.theta_hat)}.values():
        model.cpu()
        if getattr(model, "vae", None) is not None:
            model.vae.cpu()
    return RaterTrainingResult(rater=state.rater, history=state.history, trace=state.trace, theta=theta,
                               theta_hat=state.theta_hat)
