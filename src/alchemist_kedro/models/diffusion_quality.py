"""Cross-attention read-out of a text-conditioned diffusers UNet (Yandex's Alchemist, Algorithm 1, step 1).

An image is encoded (VAE latent mean, or pixels), noised to timestep t with ONE fixed noise draw shared by every image
(so two images differ only by their content, not by their noise), and denoised once with a fixed quality prompt. A
diffusers attention processor, set through `unet.set_attn_processor`, records every cross-attention layer's
probabilities. For layer l and prompt token m:

    A_{l,m} = the head-averaged attention probability of every spatial query to token m, a (h_l, w_l) map
    N_{l,m} = ||A_{l,m}||_2, the Frobenius norm of that map

Two UNet sources: (a) a local Stable-Diffusion-style folder (unet/, text_encoder/ + tokenizer/, optional vae/ and
scheduler/), loaded with `from_pretrained(..., local_files_only=True)`; (b) this project's downstream T2I model (the
`t2i_model` artifact), whose prompt is encoded by the project's text encoder (MiniLM token states), as in training.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.models.attention_processor import Attention
from PIL import Image


class CrossAttentionRecorder:
    """diffusers' plain `AttnProcessor` maths (explicit softmax, so the probabilities exist) that also stores the
    head-averaged probabilities, (B, queries, tokens), under its layer name in `store`."""

    def __init__(self, name: str, store: dict[str, torch.Tensor]):
        self.name = name
        self.store = store

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        query = attn.head_to_batch_dim(query)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B * heads, queries, tokens)
        self.store[self.name] = probs.detach().view(batch_size, attn.heads, *probs.shape[1:]).mean(1)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_recorders(unet) -> tuple[list[str], dict[str, torch.Tensor]]:
    """Give every cross-attention layer of `unet` a recorder (self-attention keeps its processor). Returns the
    layer names (l = 0..L-1, in `unet.attn_processors` order: down, up, then mid blocks) and the dict the recorders
    write to."""
    store: dict[str, torch.Tensor] = {}
    processors = dict(unet.attn_processors)
    layers = []
    for key in processors:
        name = key.removesuffix(".processor")
        if getattr(unet.get_submodule(name), "is_cross_attention", False):
            processors[key] = CrossAttentionRecorder(name, store)
            layers.append(name)
    if not layers:
        raise ValueError("diffusion_quality: the UNet has no cross-attention layer (is it text-conditioned?)")
    unet.set_attn_processor(processors)
    return layers, store


@dataclass
class PromptTokens:
    """The quality prompt as the UNet sees it: token states (1, S, D), the mask passed to the UNet (or None), the
    positions recorded (the prompt's tokens m = 1..M) and their token strings."""

    states: torch.Tensor
    mask: torch.Tensor | None
    positions: list[int]
    tokens: list[str]


def quality_prompt(keywords: list[str] | tuple[str, ...]) -> str:
    if not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError(f"diffusion_quality: keywords must be non-empty strings, got {keywords!r}")
    return ", ".join(k.strip() for k in keywords)


def _positions(ids: list[int], attention: list[int], special: list[int], include_special: bool) -> list[int]:
    return [i for i, (a, s) in enumerate(zip(attention, special)) if a and (include_special or not s)]


def to_model_input(images: list[np.ndarray], resolution: int) -> torch.Tensor:
    """uint8 (H, W, 3) images → (B, 3, R, R) in [-1, 1]: short side resized to R (bicubic), centre crop."""
    out = np.empty((len(images), resolution, resolution, 3), dtype=np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"diffusion_quality: expected uint8 (H, W, 3) images, got {image.dtype} {image.shape}")
        pil = Image.fromarray(image)
        scale = resolution / min(pil.size)
        w, h = max(resolution, round(pil.width * scale)), max(resolution, round(pil.height * scale))
        pil = pil.resize((w, h), Image.Resampling.BICUBIC)
        left, top = (w - resolution) // 2, (h - resolution) // 2
        out[i] = np.asarray(pil.crop((left, top, left + resolution, top + resolution)), dtype=np.float32)
    return torch.from_numpy(out).permute(0, 3, 1, 2) / 127.5 - 1.0


class CrossAttentionEstimator:
    """Step 1 of Algorithm 1 for one UNet + prompt + timestep: images → N of shape (B, L, M)."""

    def __init__(self, unet, prompt: PromptTokens, scheduler, timestep: int, resolution: int, encode, denoise,
                 seed: int = 0, batch_size: int = 8):
        num_train = int(scheduler.config.num_train_timesteps)
        if not isinstance(timestep, int) or not 0 <= timestep < num_train:
            raise ValueError(f"diffusion_quality: timestep must be an integer in [0, {num_train}), got {timestep!r}")
        if not prompt.positions:
            raise ValueError("diffusion_quality: the prompt has no token to record")
        self.unet = unet.eval()
        self.prompt = prompt
        self.scheduler = scheduler
        self.timestep = timestep
        self.resolution = int(resolution)
        self.batch_size = max(1, int(batch_size))
        self._encode, self._denoise = encode, denoise
        self.layers, self._store = install_recorders(unet)
        self.seed = int(seed)
        self._noise: torch.Tensor | None = None
        self.device = next(iter(unet.parameters())).device  # the caller places the modules

    @property
    def tokens(self) -> list[str]:
        return self.prompt.tokens

    def _shared_noise(self, like: torch.Tensor) -> torch.Tensor:
        if self._noise is None or self._noise.shape != like.shape[1:]:
            generator = torch.Generator().manual_seed(self.seed)  # a CPU draw: the same on every device
            self._noise = torch.randn(like.shape[1:], generator=generator, dtype=like.dtype).to(like.device)
        return self._noise

    @torch.no_grad()
    def maps(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Layer name → (B, h_l, w_l, M) head-averaged cross-attention maps for the prompt's tokens."""
        x0 = self._encode(to_model_input(images, self.resolution).to(self.device))
        noise = self._shared_noise(x0).expand_as(x0)
        t = torch.full((len(x0),), self.timestep, dtype=torch.long, device=self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        self._store.clear()
        states = self.prompt.states.to(self.device).expand(len(x0), -1, -1)
        mask = None if self.prompt.mask is None else self.prompt.mask.to(self.device).expand(len(x0), -1)
        self._denoise(x_t, t, states, mask)
        missing = [name for name in self.layers if name not in self._store]
        if missing:
            raise RuntimeError(f"diffusion_quality: cross-attention layers not called in the forward pass: {missing}")
        height, width = x0.shape[-2:]
        out = {}
        for name in self.layers:
            probs = self._store[name][..., self.prompt.positions]  # (B, queries, M)
            down = round((height * width / probs.shape[1]) ** 0.5)
            out[name] = probs.reshape(len(x0), height // down, width // down, len(self.prompt.positions))
        self._store.clear()
        return out

    def norms(self, images: list[np.ndarray]) -> np.ndarray:
        """(B, L, M) float64: N_{l,m} = ||A_{l,m}||_2 for every image."""
        parts = []
        for start in range(0, len(images), self.batch_size):
            maps = self.maps(list(images[start : start + self.batch_size]))
            parts.append(torch.stack([maps[name].pow(2).sum((1, 2)).sqrt() for name in self.layers], 1).double().cpu())
        if not parts:
            return np.zeros((0, len(self.layers), len(self.prompt.positions)))
        return torch.cat(parts).numpy()


def load_sd_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A local Stable-Diffusion-style folder → its parts; nothing is downloaded (local_files_only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    root = Path(path)
    for part in ("unet", "text_encoder", "tokenizer"):
        if not (root / part).is_dir():
            raise FileNotFoundError(f"diffusion_quality: {root} has no {part}/ folder (a Stable-Diffusion layout)")
    unet = UNet2DConditionModel.from_pretrained(str(root), subfolder="unet", local_files_only=True)
    text_encoder = AutoModel.from_pretrained(str(root / "text_encoder"), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    vae = None
    if (root / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(str(root), subfolder="vae", local_files_only=True).requires_grad_(False)
        vae.eval()
    if (root / "scheduler").is_dir():
        # Only the noise schedule (betas) matters here, whatever sampler class the folder names.
        scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(str(root), subfolder="scheduler"))
    else:
        scheduler = DDPMScheduler()
    return {"unet": unet.requires_grad_(False), "text_encoder": text_encoder, "tokenizer": tokenizer, "vae": vae,
            "scheduler": scheduler}


def sd_folder_files(path: str | os.PathLike[str]) -> list[Path]:
    root = Path(path)
    return sorted(p for part in ("unet", "text_encoder", "tokenizer", "vae", "scheduler")
                  for p in (root / part).rglob("*") if p.is_file())


def estimator_from_sd_folder(path, keywords, timestep: int, seed: int = 0, batch_size: int = 8,
                             include_special_tokens: bool = False, device="cpu") -> CrossAttentionEstimator:
    parts = load_sd_folder(path)
    tokenizer, text_encoder, vae, unet = parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["unet"]
    unet.to(device)
    if vae is not None:
        vae.to(device)
    # As the SD pipelines do: padded to the tokenizer's length, last hidden states, no attention mask to the UNet.
    max_length = min(int(tokenizer.model_max_length), int(text_encoder.config.max_position_embeddings))
    encoded = tokenizer(quality_prompt(keywords), padding="max_length", max_length=max_length, truncation=True,
                        return_tensors="pt")
    ids = encoded["input_ids"][0].tolist()
    with torch.no_grad():
        states = text_encoder(input_ids=encoded["input_ids"]).last_hidden_state
    special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    positions = _positions(ids, encoded["attention_mask"][0].tolist(), special, include_special_tokens)
    prompt = PromptTokens(states, None, positions, [tokenizer.convert_ids_to_tokens(ids[i]) for i in positions])
    if vae is not None:
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        resolution = unet.config.sample_size * down

        def encode(images):
            return vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    else:
        resolution = unet.config.sample_size

        def encode(images):
            return images

    def denoise(x_t, t, tokens, mask):
        return unet(x_t, t, encoder_hidden_states=tokens, encoder_attention_mask=mask).sample

    return CrossAttentionEstimator(unet, prompt, parts["scheduler"], timestep, resolution, encode, denoise, seed,
                                   batch_size)


def estimator_from_t2i(artifact: dict, text_encoder, keywords, timestep: int, max_tokens: int = 16, seed: int = 0,
                       batch_size: int = 8, include_special_tokens: bool = False,
                       device="cpu") -> CrossAttentionEstimator:
    """The project's downstream T2I model (`t2i_model` artifact) with the prompt encoded by `text_encoder` (the
    project's TransformerTextEncoder, e.g. MiniLM) into the token states it was trained on."""
    from alchemist_kedro.models.t2i import t2i_from_artifact

    model = t2i_from_artifact(artifact).to(device)
    model.requires_grad_(False)
    if model.vae is not None:
        model.vae.to(device)
    prompt_text = quality_prompt(keywords)
    _, states, mask = text_encoder.encode([prompt_text], max_tokens)
    ids, special = text_encoder.prompt_token_ids(prompt_text, max_tokens)
    attention = mask[0].tolist()
    positions = _positions(ids, attention[: len(ids)], special, include_special_tokens)
    prompt = PromptTokens(torch.from_numpy(states).float(), torch.from_numpy(mask).long(), positions,
                          [text_encoder.token_string(ids[i]) for i in positions])
    return CrossAttentionEstimator(model.unet, prompt, model.scheduler, timestep, model.config.resolution,
                                   model.encode, model.denoise, seed, batch_size)
