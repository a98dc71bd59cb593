"""The `alignment` metric's model: a small CLIP-style contrastive projection of image features ↔ text embeddings.

No CLIP weights install offline (method.md, "Evaluation at our scale"), so text-image agreement is measured in a
space learned here: two heads (linear, or one-hidden-layer MLPs) map Open-NSFW image features and MiniLM text
embeddings to a shared unit sphere, trained with the symmetric InfoNCE loss and a learned temperature (CLIP, Radford
et al. 2021) ONLY on the clean validation pairs, then frozen. The score of a (generated image, caption) pair is the
cosine of the two projections; the same score on real test pairs is its ceiling.

The evaluate pipeline fits it once per corpus and reuses it for every arm, so arms are scored in the same space.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONFIG_KEY = "config_json"  # same metadata key as datasets.torch_safetensors, so either can read the other's files


@dataclass
class AlignmentConfig:
    image_dim: int = 1024  # Open-NSFW pooled feature; fit_alignment sets it from the data
    text_dim: int = 384  # MiniLM sentence embedding; fit_alignment sets it from the data
    projection_dim: int = 64
    hidden_dim: int = 0  # 0: linear heads; > 0: Linear-GELU-Linear heads of this width
    epochs: int = 100
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-2
    initial_temperature: float = 0.07  # CLIP's initial τ
    max_logit_scale: float = 100.0  # CLIP clamps 1/τ at 100 to keep training stable


def _head(input_dim: int, hidden_dim: int, output_dim: int) -> nn.Module:
    if hidden_dim <= 0:
        return nn.Linear(input_dim, output_dim)
    return nn.Sequential(nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, output_dim))


class AlignmentModel(nn.Module):
    """Standardise each side with statistics of the training pairs, project, L2-normalise."""

    def __init__(self, config: AlignmentConfig) -> None:
        super().__init__()
        self.config = config
        # Open-NSFW features are non-negative ReLU averages sharing a large common mean; without centring, every
        # projection starts near one direction and InfoNCE spends its steps undoing that.
        self.register_buffer("image_mean", torch.zeros(config.image_dim))
        self.register_buffer("image_std", torch.ones(config.image_dim))
        self.register_buffer("text_mean", torch.zeros(config.text_dim))
        self.register_buffer("text_std", torch.ones(config.text_dim))
        self.image_head = _head(config.image_dim, config.hidden_dim, config.projection_dim)
        self.text_head = _head(config.text_dim, config.hidden_dim, config.projection_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.initial_temperature)))

    def embed_images(self, image_feats: torch.Tensor) -> torch.Tensor:
        """(N, image_dim) → (N, projection_dim), unit norm."""
        return F.normalize(self.image_head((image_feats - self.image_mean) / self.image_std), dim=-1)

    def embed_texts(self, text_feats: torch.Tensor) -> torch.Tensor:
        """(N, text_dim) → (N, projection_dim), unit norm."""
        return F.normalize(self.text_head((text_feats - self.text_mean) / self.text_std), dim=-1)

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Per-pair cosine (N,) of row i's image and row i's text."""
        return (self.embed_images(image_feats) * self.embed_texts(text_feats)).sum(-1)

    def contrastive_loss(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch: pair i is the positive, the batch's other rows the negatives."""
        images, texts = self.embed_images(image_feats), self.embed_texts(text_feats)
        scale = self.logit_scale.clamp(max=math.log(self.config.max_logit_scale)).exp()
        logits = scale * images @ texts.T
        targets = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _as_float_tensor(values: np.ndarray, name: str, dim: int | None = None) -> torch.Tensor:
    array = np.asarray(values, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (N, dim) array, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name}: expected feature dim {dim}, got {array.shape[1]}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return torch.from_numpy(array)


def fit_alignment(
    image_feats: np.ndarray, text_feats: np.ndarray, config: AlignmentConfig | None = None, seed: int = 0
) -> AlignmentModel:
    """Train the projection on paired rows (row i of each is one image and its caption); return it frozen, in eval.

    Deterministic for a seed (on one machine and thread count): initialisation and batch order come from it alone.
    """
    images = _as_float_tensor(image_feats, "image_feats")
    texts = _as_float_tensor(text_feats, "text_feats")
    if len(images) != len(texts):
        raise ValueError(f"image_feats has {len(images)} rows but text_feats {len(texts)}: they must be paired")
    if len(images) < 2:
        raise ValueError("fit_alignment needs at least 2 pairs (InfoNCE needs negatives)")
    config = replace(config or AlignmentConfig(), image_dim=images.shape[1], text_dim=texts.shape[1])

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AlignmentModel(config)
    # A feature that never varies (a dead ReLU channel) would divide by zero: give it unit scale instead.
    model.image_mean.copy_(images.mean(0))
    model.image_std.copy_(images.std(0).clamp_min(1e-6))
    model.text_mean.copy_(texts.mean(0))
    model.text_std.copy_(texts.std(0).clamp_min(1e-6))

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            if len(batch) < 2:  # a lone leftover row has no negatives
                continue
            loss = model.contrastive_loss(images[batch], texts[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return _frozen(model)


def _frozen(model: AlignmentModel) -> AlignmentModel:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@torch.no_grad()
def alignment_scores(model: AlignmentModel, image_feats: np.ndarray, text_feats: np.ndarray) -> np.ndarray:
    """float32 (N,) cosine between row i's projected image feature and row i's projected text embedding."""
    images = _as_float_tensor(image_feats, "image_feats", model.config.image_dim)
    texts = _as_float_tensor(text_feats, "text_feats", model.config.text_dim)
    if len(images) != len(texts):
        raise ValueError(f"image_feats has {len(images)} rows but text_feats {len(texts)}: they must be paired")
    return model.eval()(images, texts).numpy().astype(np.float32)


def alignment_to_artifact(model: AlignmentModel) -> dict:
    """What a TorchSafetensorsDataset stores: {"state_dict": tensors, "config": JSON-able dict}."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state_dict": state, "config": asdict(model.config)}


def alignment_from_artifact(artifact: dict) -> AlignmentModel:
    model = AlignmentModel(AlignmentConfig(**artifact["config"]))
    model.load_state_dict(artifact["state_dict"], strict=True)
    return _frozen(model)


def save_alignment(model: AlignmentModel, path: str | Path) -> None:
    """One .safetensors file, the JSON config in its metadata header (the layout TorchSafetensorsDataset reads)."""
    from safetensors.torch import save_file

    artifact = alignment_to_artifact(model)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in artifact["state_dict"].items()}
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(artifact["config"], sort_keys=True)})


def load_alignment(path: str | Path) -> AlignmentModel:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"alignment model not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path}: no {CONFIG_KEY!r} in its safetensors metadata; not an alignment model file")
    return alignment_from_artifact({"state_dict": load_file(str(path)), "config": json.loads(metadata[CONFIG_KEY])})
