"""The downstream text-to-image model: what a selection is finally judged by (paper §4, Table 1).

Same parts as the proxy (diffusers UNet2DConditionModel + DDPMScheduler, MiniLM token states as cross-attention
context, optional frozen AutoencoderKL), so noise, timesteps, min-SNR loss and caption dropout are the proxy's own
code (`ProxyT2I.loss_at`, `training_loss`). What differs is the architecture — its own block widths and depth,
bigger than the rater's proxy by default (the paper's transfer claim: score once with a small proxy, train any
model) — and what the proxy never needs: an EMA copy and sampling with classifier-free guidance through a diffusers
DDIMScheduler.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from diffusers import DDIMScheduler

from alchemist_kedro.devices import module_device
from alchemist_kedro.models.proxy import ProxyConfig, ProxyT2I


@dataclass
class T2IConfig(ProxyConfig):
    """ProxyConfig plus sampling. Its values (conf/base/parameters_train_t2i.yml) are deliberately not the rater
    proxy's: a different, bigger model, as in the paper's transfer claim."""

    # Sampling (evaluation grids and the evaluate pipeline).
    sample_steps: int  # DDIM steps
    guidance_scale: float  # CFG: ε_uncond + s · (ε_cond − ε_uncond); 1.0 = no guidance
    eta: float  # DDIM η (0 = deterministic given the initial noise)
    # The downstream model is a UNet (pixels or VAE latents), never the rater's embedding prior: fixed, not conf.
    space: str = field(default="pixels", kw_only=True)
    prior_hidden_dim: int = field(default=0, kw_only=True)
    prior_blocks: int = field(default=0, kw_only=True)
    standardise_caption: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if self.space != "pixels":
            raise ValueError("the downstream T2I model is a UNet: space must be pixels")


def t2i_config_from_dict(values: dict) -> T2IConfig:
    known = {f.name for f in fields(T2IConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown T2IConfig keys {sorted(unknown)}")
    return T2IConfig(**values)


class T2IModel(ProxyT2I):
    """A text-conditioned UNet; `generate` samples images for caption token states with CFG."""

    config: T2IConfig

    def __init__(self, config: T2IConfig, vae=None):
        super().__init__(config, vae=vae)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Model space → images in [-1, 1]."""
        if self.vae is None:
            return x0.clamp(-1, 1)
        return self.vae.decode(x0 / self.vae.config.scaling_factor).sample.clamp(-1, 1)

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        generator: torch.Generator,
        guidance_scale: float | None = None,
        num_steps: int | None = None,
        batch_size: int = 32,
    ) -> torch.Tensor:
        """(N, L, D) token states + (N, L) mask → (N, 3, R, R) images in [-1, 1].

        The initial noise of all N images is drawn first from `generator`, so image i does not depend on the batch
        size. The unconditional branch is the training null caption: zero tokens and an all-zero mask.
        """
        cfg = self.config
        scale = cfg.guidance_scale if guidance_scale is None else float(guidance_scale)
        steps = cfg.sample_steps if num_steps is None else int(num_steps)
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        was_training = self.training
        self.eval()
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        device = module_device(self.unet)
        noise = torch.randn((len(tokens), c, s, s), generator=generator)  # CPU draws: the same on every device
        out = []
        for start in range(0, len(tokens), batch_size):
            tok = tokens[start : start + batch_size].float().to(device)
            msk = mask[start : start + batch_size].to(device)
            x = noise[start : start + batch_size].to(device) * scheduler.init_noise_sigma
            guided = scale != 1.0
            context = torch.cat([torch.zeros_like(tok), tok]) if guided else tok
            context_mask = torch.cat([torch.zeros_like(msk), msk]) if guided else msk
            for t in scheduler.timesteps:
                model_in = torch.cat([x, x]) if guided else x
                pred = self.denoise(model_in, t, context, context_mask)
                if guided:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + scale * (cond - uncond)
                x = scheduler.step(pred.float(), t, x, eta=cfg.eta, generator=generator).prev_sample
            out.append(self.decode(x).float().cpu())
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, 3, cfg.resolution, cfg.resolution))


class EMA:
    """Exponential moving average of the UNet's weights (diffusers' EMAModel without its hub/pickle machinery).

    The average lives in a frozen UNet copy, so it checkpoints as one more safetensors state dict.
    """

    def __init__(self, model: T2IModel, decay: float):
        self.decay = float(decay)
        self.unet = copy.deepcopy(model.unet).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: T2IModel, step: int) -> None:
        # diffusers' warm-up: decay = min(decay, (1 + step) / (10 + step)), so early averages are not stuck at init.
        d = min(self.decay, (1 + step) / (10 + step))
        live = model.unet.state_dict()
        for name, value in self.unet.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(live[name].detach(), alpha=1 - d)
            else:
                value.copy_(live[name])

    def copy_to(self, model: T2IModel) -> T2IModel:
        averaged = copy.deepcopy(model)
        averaged.unet.load_state_dict(self.unet.state_dict())
        return averaged


def t2i_to_artifact(model: T2IModel) -> dict:
    """What TorchSafetensorsDataset stores: UNet weights + the JSON config (one .safetensors file)."""
    return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.unet.state_dict().items()},
            "config": asdict(model.config)}


def t2i_from_artifact(artifact: dict, vae=None) -> T2IModel:
    # Artifacts written before pooled_text_conditioning existed were trained without it.
    model = T2IModel(t2i_config_from_dict({"pooled_text_conditioning": False, **artifact["config"]}), vae=vae)
    model.unet.load_state_dict(artifact["state_dict"], strict=True)
    return model.eval()


def to_uint8_images(images: torch.Tensor) -> list[np.ndarray]:
    """(N, 3, R, R) in [-1, 1] → list of uint8 (R, R, 3), what the encoders and image grids take."""
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(array)
