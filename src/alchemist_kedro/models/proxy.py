"""The proxy T2I model: a small text-conditioned diffusion model composed from diffusers parts.

Two spaces (ProxyConfig.space): "pixels" — a UNet2DConditionModel on the (optionally VAE-encoded) image, the paper's
kind of proxy; "embedding" — a diffusion prior in the image-embedding space conditioned on the caption (DALL-E 2's
unCLIP prior, as an MLP), where the caption is the only thing that tells one noised embedding from another, so the
loss cannot ignore it.

The paper prefers an autoregressive proxy because a diffusion loss is noisy per sample. `per_sample_loss` answers
that (method.md, "Low-variance per-sample loss"): K fixed stratified timesteps and noise from a per-(uid, k) seed,
so a loss difference between two models or two samples reflects them and not the draw.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.models.embeddings import TimestepEmbedding, Timesteps

from alchemist_kedro.hashing import stable_seed


@dataclass
class ProxyConfig:
    resolution: int  # pixel-space side; the latent side is resolution / VAE downsampling
    block_out_channels: tuple[int, ...]
    # Cross-attention only at 16×16 and below: at 32×32 attention is 82% of a CPU step (stack-notes.md).
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    attention_heads: int  # diffusers reads `attention_head_dim` as the number of heads here
    norm_num_groups: int
    cross_attention_dim: int  # the text encoder's token dim (MiniLM)
    num_train_timesteps: int
    beta_schedule: str  # diffusers DDPMScheduler: linear | scaled_linear | squaredcos_cap_v2 (cosine)
    prediction_type: str  # epsilon | v_prediction
    snr_gamma: float | None  # min-SNR-γ (diffusers train_text_to_image.py); None = plain MSE
    caption_dropout: float  # plain training step only: null caption = zero tokens + zero mask (CFG-ready)
    vae_path: str | None  # local AutoencoderKL folder → latent space; None = pixel space
    # Also feed the caption's pooled token states (masked mean) through the UNet's class embedding, added to the
    # timestep embedding of every ResNet block: a global text path besides cross-attention. Off, a small proxy at
    # this scale learns to ignore its captions (the rater then cannot rank captions: issue 12).
    pooled_text_conditioning: bool
    # Keyword-only so the downstream T2IConfig (always a UNet) can fix them without reordering its own fields.
    space: str = field(kw_only=True)  # pixels (UNet on the image) | embedding (diffusion prior on image_emb)
    prior_hidden_dim: int = field(kw_only=True)  # embedding space: width of the prior's residual MLP
    prior_blocks: int = field(kw_only=True)  # embedding space: residual blocks
    # embedding space: standardise the pooled caption per dimension with the pool's statistics, as the image
    # embedding is (a sentence embedding shares a large common component too; the null caption stays 0).
    standardise_caption: bool = field(kw_only=True)
    # embedding space: the prior models [image_emb ; the features' patch cells] (prior_input), so its loss also sees
    # what covers part of an image (overlays), which the pooled embedding averages away. Needs features with patch_emb.
    # Unused by the pixel proxy, like prior_hidden_dim.
    patch_cells: bool = field(default=False, kw_only=True)

    def __post_init__(self):
        for name in ("block_out_channels", "down_block_types", "up_block_types"):
            setattr(self, name, tuple(getattr(self, name)))
        if self.space not in ("pixels", "embedding"):
            raise ValueError(f"proxy.space must be pixels or embedding, got {self.space!r}")
        if self.space == "embedding" and self.vae_path is not None:
            raise ValueError("proxy.vae_path is for the pixel-space proxy; the embedding prior reads image_emb")


def prior_cell_width(image_dim: int, cells: int, cell_dim: int) -> int:
    """Each patch cell's width in prior_input: image_dim / cells, or cell_dim when that is narrower."""
    return min(cell_dim, max(1, image_dim // cells))


def prior_input(image_emb: torch.Tensor, patch_emb: torch.Tensor, cell_dim: int) -> torch.Tensor:
    """[unit image_emb ; each unit patch cell / sqrt(cells)]: what an embedding prior with patch_cells models. The
    prior's loss is a mean over standardised dimensions, so the two parts get equal shares of it only at equal widths:
    each cell is projected (a fixed seed-0 Gaussian matrix, which keeps cosines) to image width / cells dimensions when
    wider. Otherwise 16 cells of 128 would be two thirds of the loss and a smooth (blurred, JPEG) image, whose patches
    are easy to model, would look easy overall."""
    cells = F.normalize(patch_emb.float().reshape(len(patch_emb), -1, cell_dim), dim=-1)
    width = prior_cell_width(image_emb.shape[1], cells.shape[1], cell_dim)
    if width < cell_dim:
        projection = torch.randn((cell_dim, width), generator=torch.Generator().manual_seed(0)) / width**0.5
        cells = F.normalize(cells @ projection.to(cells.device), dim=-1)
    return torch.cat([F.normalize(image_emb.float(), dim=1), cells.flatten(1) / cells.shape[1] ** 0.5], dim=1)


def load_vae(path: str | Path) -> AutoencoderKL:
    """A frozen AutoencoderKL from a local folder (save_pretrained layout). Never a hub id: no network here."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no AutoencoderKL config.json under {path}")
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    vae.requires_grad_(False).eval()
    return vae


class DiffusionProxy(nn.Module):
    """What both proxies share: the DDPM schedule and the (min-SNR weighted) per-sample loss. Subclasses define
    `encode` (data → the space they denoise), `denoise`, `network` (the trained module) and `output_layer`."""

    def __init__(self, config: ProxyConfig):
        super().__init__()
        self.config = config
        self.scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            prediction_type=config.prediction_type,
        )
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.clone().float(), persistent=False)

    def loss_at(self, x0, timesteps, noise, tokens, mask) -> torch.Tensor:
        """Per-sample (min-SNR weighted) diffusion loss at given (t, ε) draws; x0 already in model space."""
        x_t = self.scheduler.add_noise(x0, noise, timesteps)
        pred = self.denoise(x_t, timesteps, tokens, mask)
        if self.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(x0, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        if self.config.snr_gamma is not None:
            snr = self.alphas_cumprod[timesteps] / (1 - self.alphas_cumprod[timesteps])
            weight = torch.clamp(snr, max=self.config.snr_gamma)
            # diffusers train_text_to_image.py: divide by snr for ε-prediction, by snr + 1 for v-prediction.
            weight = weight / (snr + 1) if self.config.prediction_type == "v_prediction" else weight / snr
            loss = loss * weight
        return loss


def pooled_caption(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of the caption's token states (MiniLM's own sentence pooling); the null caption → 0."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class ProxyT2I(DiffusionProxy):
    """Pixel (or VAE-latent) space: a diffusers UNet2DConditionModel with cross-attention on the caption tokens."""

    def __init__(self, config: ProxyConfig, vae: AutoencoderKL | None = None):
        super().__init__(config)
        if config.vae_path is not None and vae is None:
            vae = load_vae(config.vae_path)
        # Kept out of the module tree: the VAE is frozen and must not land in the proxy's state dict / optimiser.
        self._vae = [vae] if vae is not None else []
        if vae is not None:
            down = 2 ** (len(vae.config.block_out_channels) - 1)
            in_channels, sample_size = vae.config.latent_channels, config.resolution // down
        else:
            in_channels, sample_size = 3, config.resolution
        self.unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            block_out_channels=config.block_out_channels,
            down_block_types=config.down_block_types,
            up_block_types=config.up_block_types,
            layers_per_block=config.layers_per_block,
            attention_head_dim=config.attention_heads,
            norm_num_groups=config.norm_num_groups,
            cross_attention_dim=config.cross_attention_dim,
            **({"class_embed_type": "projection", "projection_class_embeddings_input_dim": config.cross_attention_dim}
               if config.pooled_text_conditioning else {}),
        )

    @property
    def network(self) -> nn.Module:
        return self.unet

    @property
    def output_layer(self) -> nn.Module:
        return self.unet.conv_out

    @property
    def vae(self) -> AutoencoderKL | None:
        return self._vae[0] if self._vae else None

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, R, R) → the space the UNet denoises."""
        if self.vae is None:
            return images
        # The posterior mean, not a sample: a deterministic latent keeps the CRN loss deterministic.
        return self.vae.encode(images).latent_dist.mean * self.vae.config.scaling_factor

    def denoise(self, x_t, timesteps, tokens, mask) -> torch.Tensor:
        """The UNet's prediction for x_t at `timesteps`, conditioned on the caption's token states."""
        pooled = pooled_caption(tokens, mask) if self.config.pooled_text_conditioning else None
        return self.unet(x_t, timesteps, encoder_hidden_states=tokens, encoder_attention_mask=mask,
                         class_labels=pooled).sample


class _PriorBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.emb = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, h, emb):
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(emb)))


class PriorDenoiser(nn.Module):
    """Residual MLP denoiser of a D-dim embedding: timestep and pooled caption enter every block as one embedding
    (the caption through `class_embedding`, diffusers' name for that path in the UNet)."""

    def __init__(self, dim: int, token_dim: int, hidden: int, blocks: int):
        super().__init__()
        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden, hidden)
        self.class_embedding = nn.Linear(token_dim, hidden)
        self.proj_in = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_PriorBlock(hidden) for _ in range(blocks))
        self.norm_out = nn.LayerNorm(hidden)
        self.proj_out = nn.Linear(hidden, dim)

    def forward(self, x_t, timesteps, pooled):
        emb = F.silu(self.time_embedding(self.time_proj(timesteps).to(x_t.dtype)) + self.class_embedding(pooled))
        h = self.proj_in(x_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj_out(F.silu(self.norm_out(h)))


class EmbeddingProxy(DiffusionProxy):
    """Embedding space: a diffusion prior p(image embedding | caption) on the cached image_emb. Embeddings are
    L2-normalised, then standardised per dimension with the pool's statistics: a pretrained embedding shares a large
    common component across images, and without standardising the image-specific part is so small next to the unit
    noise that the prior learns to ignore the caption (measured: caption sensitivity 0.02% on the emoji pool)."""

    def __init__(self, config: ProxyConfig, dim: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None,
                 caption_mean: torch.Tensor | None = None, caption_std: torch.Tensor | None = None,
                 caption_dim: int | None = None):
        super().__init__(config)
        self.dim = int(dim)
        # The caption's width comes from the data (the rater pipeline feeds text_emb, whose width can differ from
        # the token states' cross_attention_dim, e.g. CLIP's projection).
        token_dim = int(caption_dim) if caption_dim is not None else config.cross_attention_dim
        self.net = PriorDenoiser(self.dim, token_dim, config.prior_hidden_dim, config.prior_blocks)
        # Persistent buffers: a checkpoint (network state dict) carries the statistics it was trained with.
        self.net.register_buffer("data_mean", torch.zeros(self.dim) if mean is None else mean.float().clone())
        self.net.register_buffer("data_std", torch.ones(self.dim) if std is None else std.float().clone())
        if config.standardise_caption:
            self.net.register_buffer("caption_mean", torch.zeros(token_dim) if caption_mean is None
                                     else caption_mean.float().clone())
            self.net.register_buffer("caption_std", torch.ones(token_dim) if caption_std is None
                                     else caption_std.float().clone())

    @staticmethod
    def statistics(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of L2-normalised embeddings (the std floored so constant dims stay finite)."""
        unit = F.normalize(embeddings.float(), dim=1)
        return unit.mean(0), unit.std(0).clamp_min(1e-6 + 1e-3 * float(unit.std(0).mean()))

    @staticmethod
    def caption_statistics(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dimension mean and std of the pooled captions (null captions left out)."""
        pooled = pooled_caption(tokens.float(), mask)[mask.sum(1) > 0]
        if len(pooled) < 2:
            raise ValueError("caption statistics need at least two non-empty captions")
        std = pooled.std(0)
        return pooled.mean(0), std.clamp_min(1e-6 + 1e-3 * float(std.mean()))

    def caption(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = pooled_caption(tokens, mask)
        if not self.config.standardise_caption:
            return pooled
        present = (mask.sum(1) > 0).to(pooled.dtype)[:, None]  # the null caption stays the zero vector
        return (pooled - self.net.caption_mean) / self.net.caption_std * present

    @property
    def network(self) -> nn.Module:
        return self.net

    @property
    def output_layer(self) -> nn.Module:
        return self.net.proj_out

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 2 or images.shape[1] != self.dim:
            raise ValueError(f"the embedding proxy takes (B, {self.dim}) image embeddings, got {tuple(images.shape)}")
        return (F.normalize(images.float(), dim=1) - self.net.data_mean) / self.net.data_std

    def denoise(self, x_t, timesteps, tokens, mask) -> torch.Tensor:
        """The prior's estimate of the clean embedding x0 (not ε): see loss_at."""
        return self.net(x_t, timesteps, self.caption(tokens, mask))

    def loss_at(self, x0, timesteps, noise, tokens, mask) -> torch.Tensor:
        """Plain MSE on x0, as unCLIP's prior is trained (proxy.prediction_type / snr_gamma are the UNet's). With ε
        as the target the caption's share of the loss vanishes at both ends of the schedule (at high noise ε ≈ x_t,
        at low noise x0 ≈ x_t); with x0 as the target, at high noise the loss is how well the caption alone predicts
        the image embedding."""
        x_t = self.scheduler.add_noise(x0, noise, timesteps)
        return F.mse_loss(self.denoise(x_t, timesteps, tokens, mask).float(), x0.float(), reduction="none").mean(1)


def build_proxy(config: ProxyConfig, images: torch.Tensor, vae: AutoencoderKL | None = None,
                tokens: torch.Tensor | None = None, mask: torch.Tensor | None = None) -> DiffusionProxy:
    """The proxy for `config.space`, for training on `images` ((N, 3, R, R) pixels or (N, D) image embeddings; the
    embedding prior takes its standardisation from them, and from the captions when standardise_caption)."""
    if config.space == "embedding":
        if images.ndim != 2:
            raise ValueError(f"proxy.space=embedding trains on image embeddings (N, D), got {tuple(images.shape)}")
        captions = ()
        if config.standardise_caption:
            if tokens is None or mask is None:
                raise ValueError("standardise_caption needs the pool's caption tokens and mask")
            captions = EmbeddingProxy.caption_statistics(tokens, mask)
        return EmbeddingProxy(config, images.shape[1], *EmbeddingProxy.statistics(images), *captions,
                              caption_dim=tokens.shape[-1] if tokens is not None else None)
    return ProxyT2I(config, vae=vae)


def generator_for(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(stable_seed(*parts))


def stratified_timesteps(num_timesteps: int, num_train_timesteps: int) -> torch.Tensor:
    """K fixed timesteps at the mid-quantiles of the schedule: (k + 0.5) / K · T."""
    k = torch.arange(num_timesteps, dtype=torch.float64)
    return ((k + 0.5) / num_timesteps * num_train_timesteps).long().clamp(0, num_train_timesteps - 1)


def per_sample_loss(
    proxy: DiffusionProxy,
    images: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    uids: list[str],
    *,
    num_timesteps: int = 4,
    crn: bool = True,
    noise_seed: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B,) loss, the mean over K evaluations per sample.

    crn=True: K stratified timesteps and ε seeded by (noise_seed, uid, k), i.e. the same draws for a sample in any
    batch, model or step (common random numbers). crn=False: K random timesteps and fresh ε from `generator`.
    Gradients flow if the caller has grad enabled. Caption dropout is off: this is the loss the rater sees.
    """
    b, k = len(uids), num_timesteps
    x0 = proxy.encode(images)
    shape = x0.shape[1:]
    if crn:
        t = stratified_timesteps(k, proxy.config.num_train_timesteps).repeat(b)
        noise = torch.stack(
            [torch.randn(shape, generator=generator_for(noise_seed, uid, j)) for uid in uids for j in range(k)]
        )
    else:
        t = torch.randint(0, proxy.config.num_train_timesteps, (b * k,), generator=generator)
        noise = torch.randn((b * k, *shape), generator=generator)
    # Drawn on the CPU generators, then moved: the same draws on every device.
    loss = proxy.loss_at(
        x0.repeat_interleave(k, 0), t.to(x0.device), noise.to(x0.device, x0.dtype), tokens.repeat_interleave(k, 0),
        mask.repeat_interleave(k, 0)
    )
    return loss.view(b, k).mean(1)


def draw_training_noise(proxy: DiffusionProxy, x0: torch.Tensor, generator: torch.Generator, caption_dropout: float = 0.0):
    """One random (t, ε) per sample and a caption-dropout mask, all from `generator` (a function of seed and step)."""
    b = x0.shape[0]
    t = torch.randint(0, proxy.config.num_train_timesteps, (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    keep = torch.rand(b, generator=generator) >= caption_dropout
    return t.to(x0.device), noise.to(x0.device, x0.dtype), keep.to(x0.device, x0.dtype)


def training_loss(proxy: DiffusionProxy, images, tokens, mask, generator, caption_dropout=None) -> torch.Tensor:
    """(B,) loss of the proxy's plain training step: random t, caption dropout (null = zero tokens + zero mask)."""
    p = proxy.config.caption_dropout if caption_dropout is None else caption_dropout
    x0 = proxy.encode(images)
    t, noise, keep = draw_training_noise(proxy, x0, generator, p)
    return proxy.loss_at(x0, t, noise, tokens * keep[:, None, None], mask * keep[:, None].to(mask.dtype))
