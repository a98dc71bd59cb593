"""Ground-truth attribution by unlearning (Wang et al., "Data Attribution for Text-to-Image Models by Unlearning
Synthesized Images", NeurIPS 2024), the teacher FastGDA distils.

For a query ẑ (a generated image and its caption): raise the model's loss on ẑ with a Fisher-preconditioned step on
the cross-attention key/value projections only (attn2.to_k / attn2.to_v of the diffusers UNet, as the paper), the
diagonal Fisher F estimated on the training set (EWC): Δθ = η · (F + δ)⁻¹ ∇L(ẑ). The regulariser keeps what the rest
of the training set needs, so the pairs whose loss still rises are the ones the query shares its knowledge with.
Influence of training pair z = L(z; θ + Δθ) − L(z; θ), both at the same K stratified timesteps and ε seeded by
(noise_seed, uid, k): the common random numbers of heldout_loss.py, so the difference is the step's, not the draw's.

η is set per step so the step's Fisher norm √(ΔθᵀFΔθ) = step_size · mean training loss. With F the empirical Fisher
of the per-pair losses, ΔθᵀFΔθ ≈ E_z[(∇L(z)·Δθ)²]: step_size is the RMS first-order change of a training pair's
loss, as a fraction of the mean loss, whatever the model's scale.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from alchemist_kedro.evaluation.heldout_loss import crn_noise, per_timestep_loss
from alchemist_kedro.models.proxy import ProxyT2I, stratified_timesteps

KV_SUFFIXES = ("attn2.to_k", "attn2.to_v")
QUERY_NOISE_TAG = "attribute-query"  # the query's ε stream, apart from every training pair's


@dataclass
class UnlearningConfig:
    timesteps: int = 2  # K CRN timesteps of every training pair's loss, before and after
    query_timesteps: int = 8  # CRN timesteps of the query loss whose gradient is the step
    steps: int = 1  # preconditioned ascent steps per query (the gradient recomputed after each)
    step_size: float = 0.2  # RMS first-order loss change of a training pair per step, fraction of the mean loss
    damping: float = 1e-3  # δ = damping · mean(F): keeps (F + δ)⁻¹ finite where F is ~0
    fisher_samples: int | None = 256  # training pairs the diagonal Fisher is estimated on (seeded); None = all
    fisher_timesteps: int = 2
    noise_seed: int = 0
    batch_size: int = 256  # rows per no-grad forward (speed only)
    fisher_batch_size: int = 16  # pairs per per-sample-gradient backward (memory: ~1.5 MB per row here)
    seed: int = 0  # the Fisher subset draw

    def __post_init__(self):
        if min(self.timesteps, self.query_timesteps, self.steps, self.fisher_timesteps) < 1:
            raise ValueError(f"unlearning: timesteps, query_timesteps, steps, fisher_timesteps must be >= 1: {self}")
        if self.step_size <= 0 or self.damping < 0:
            raise ValueError(f"unlearning: step_size must be > 0 and damping >= 0, got {self.step_size}, "
                             f"{self.damping}")


def kv_modules(model: ProxyT2I) -> dict[str, nn.Linear]:
    """The cross-attention key/value projections, the only weights the unlearning step moves."""
    modules = {name: m for name, m in model.unet.named_modules() if name.endswith(KV_SUFFIXES)}
    if not modules:
        raise ValueError("attribution: the UNet has no cross-attention key/value projections (attn2.to_k / "
                         "attn2.to_v); it needs at least one CrossAttn block")
    return modules


def _crn_loss(model: ProxyT2I, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor,
              num_timesteps: int) -> torch.Tensor:
    """(B, K) loss at the K stratified timesteps with the given (B, K, ...) ε; gradients flow."""
    b, k = len(x0), num_timesteps
    t = stratified_timesteps(k, model.config.num_train_timesteps).repeat(b)
    loss = model.loss_at(x0.repeat_interleave(k, 0), t, noise.reshape(b * k, *x0.shape[1:]),
                         tokens.float().repeat_interleave(k, 0), mask.repeat_interleave(k, 0))
    return loss.view(b, k)


def diagonal_fisher(model: ProxyT2I, data: dict, config: UnlearningConfig) -> dict[str, torch.Tensor]:
    """EWC's diagonal empirical Fisher of the key/value weights: mean over training pairs of (∂L(z)/∂W)², L(z) the
    pair's loss averaged over `fisher_timesteps` CRN timesteps.

    Per-pair gradients of a Linear layer without a per-pair backward: ∂L(z)/∂W = Σ_tokens (∂L/∂out)ᵀ · in, from a
    forward hook (the layer's input) and a tensor hook (the gradient at its output) of one batched backward. Exact,
    since no UNet layer mixes rows of a batch (GroupNorm and attention are per row).
    """
    modules = kv_modules(model)
    uids = list(data["uids"])
    n = len(uids)
    rows = np.arange(n)
    if config.fisher_samples is not None and config.fisher_samples < n:
        rows = np.sort(np.random.default_rng(config.seed).choice(n, int(config.fisher_samples), replace=False))
    k = config.fisher_timesteps
    fisher = {name: torch.zeros_like(m.weight) for name, m in modules.items()}
    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def forward_hook(module, inputs, output):
            x = inputs[0].detach()

            def grad_hook(grad):
                captured[name] = torch.einsum("blo,bli->boi", grad.float(), x.float())
            output.register_hook(grad_hook)
        return forward_hook

    handles = [m.register_forward_hook(hook(name)) for name, m in modules.items()]
    was_training = model.training
    model.eval()
    requires = {p: p.requires_grad for p in model.unet.parameters()}
    try:
        for p in model.unet.parameters():  # weight gradients of the other layers are never needed
            p.requires_grad_(False)
        for m in modules.values():
            m.weight.requires_grad_(True)
        for start in range(0, len(rows), config.fisher_batch_size):
            idx = rows[start:start + config.fisher_batch_size]
            x0 = model.encode(data["images"][idx].float())
            noise = crn_noise([uids[i] for i in idx], k, tuple(x0.shape[1:]), config.noise_seed)
            loss = _crn_loss(model, x0, data["tokens"][idx], data["mask"][idx], noise, k)
            captured.clear()
            (loss.sum() / k).backward()  # row (b, t) carries 1/K of pair b's loss: a pair's gradient is its rows' sum
            for name in modules:
                per_pair = captured[name].view(len(idx), k, *fisher[name].shape).sum(1)
                fisher[name] += per_pair.pow(2).sum(0)
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in requires.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    return {name: value / len(rows) for name, value in fisher.items()}


def query_gradient(model: ProxyT2I, image: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, query_id: str,
                   config: UnlearningConfig) -> tuple[dict[str, torch.Tensor], float]:
    """∇ of the query's loss (mean over `query_timesteps` CRN timesteps) w.r.t. the key/value weights; its loss."""
    modules = kv_modules(model)
    requires = {p: p.requires_grad for p in model.unet.parameters()}
    was_training = model.training
    model.eval()
    try:
        for p in model.unet.parameters():
            p.requires_grad_(False)
        weights = [m.weight.requires_grad_(True) for m in modules.values()]
        x0 = model.encode(image[None].float())
        noise = crn_noise([f"{QUERY_NOISE_TAG}:{query_id}"], config.query_timesteps, tuple(x0.shape[1:]),
                          config.noise_seed)
        loss = _crn_loss(model, x0, tokens[None], mask[None], noise, config.query_timesteps).mean()
        grads = torch.autograd.grad(loss, weights)
    finally:
        for p, flag in requires.items():
            p.requires_grad_(flag)
        model.train(was_training)
    return dict(zip(modules, grads)), float(loss.detach())


@torch.no_grad()
def unlearning_step(model: ProxyT2I, grad: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor],
                    target_norm: float, damping: float) -> float:
    """In place: W += η (F + δ)⁻¹ g, η so that √(ΔᵀFΔ) = target_norm. → η."""
    modules = kv_modules(model)
    mean_fisher = torch.stack([f.mean() for f in fisher.values()]).mean()
    delta = float(damping) * mean_fisher + 1e-30
    direction = {name: grad[name] / (fisher[name] + delta) for name in modules}
    fisher_norm = torch.sqrt(sum((direction[n].pow(2) * fisher[n]).sum() for n in modules))
    if not torch.isfinite(fisher_norm) or fisher_norm <= 0:
        raise ValueError("attribution: the query gradient is zero or not finite; nothing to unlearn")
    eta = float(target_norm) / float(fisher_norm)
    for name, module in modules.items():
        module.weight.add_(direction[name], alpha=eta)
    return eta


def training_losses(model: ProxyT2I, data: dict, noise: torch.Tensor, config: UnlearningConfig) -> torch.Tensor:
    """(N,) mean loss of every training pair at the K CRN timesteps (`noise`: crn_noise of their uids)."""
    return per_timestep_loss(model, data["images"], data["tokens"], data["mask"], list(data["uids"]),
                             num_timesteps=config.timesteps, batch_size=config.batch_size, noise=noise).mean(1)


def unlearning_influence(model: ProxyT2I, data: dict, queries: dict, config: UnlearningConfig,
                         fisher: dict[str, torch.Tensor] | None = None) -> dict:
    """Influence of every training pair on every query: (Q, N) loss increases after unlearning that query.

    `data`: the training set in join_split's layout (images at the model's resolution, tokens, mask, uids);
    `queries`: {ids, images (Q, 3, R, R) in [-1, 1], tokens, mask}. The model is restored after each query.
    → {influence (Q, N) float64, base_loss (N,), query_loss_before / _after (Q,), eta (Q,), fisher_seconds,
       seconds_per_query (Q,)}.
    """
    modules = kv_modules(model)
    original = {name: m.weight.detach().clone() for name, m in modules.items()}
    began = time.perf_counter()
    fisher = diagonal_fisher(model, data, config) if fisher is None else fisher
    fisher_seconds = time.perf_counter() - began
    x_shape = tuple(model.encode(data["images"][:1].float()).shape[1:])
    noise = crn_noise(list(data["uids"]), config.timesteps, x_shape, config.noise_seed)
    base = training_losses(model, data, noise, config)
    target = config.step_size * float(base.mean())
    q = len(queries["ids"])
    influence = np.empty((q, len(base)), dtype=np.float64)
    before, after, etas, seconds = (np.empty(q) for _ in range(4))
    for i, query_id in enumerate(queries["ids"]):
        tick = time.perf_counter()
        try:
            args = (queries["images"][i], queries["tokens"][i], queries["mask"][i], str(query_id), config)
            for step in range(config.steps):
                grad, loss = query_gradient(model, *args)
                if step == 0:
                    before[i] = loss
                etas[i] = unlearning_step(model, grad, fisher, target, config.damping)
            after[i] = query_gradient(model, *args)[1]
            influence[i] = (training_losses(model, data, noise, config) - base).numpy()
        finally:
            with torch.no_grad():
                for name, module in modules.items():
                    module.weight.copy_(original[name])
        seconds[i] = time.perf_counter() - tick
    return {"influence": influence, "base_loss": base.numpy(), "query_loss_before": before,
            "query_loss_after": after, "eta": etas, "fisher_seconds": fisher_seconds, "seconds_per_query": seconds}
