"""aesthetic: the LAION improved aesthetic predictor on L2-normalised CLIP ViT-L/14 image embeddings; higher = better.

Neither CLIP ViT-L/14 nor the head can be downloaded here, so both come from configured paths, and a run without
them stops with a message naming the files to provide (never a silent stand-in under the same name).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.models.aesthetic_head import PUBLISHED_HEAD_FILE, load_aesthetic_head
from alchemist_kedro.scorers.base import Scorer, ScoreBatch, file_sha256, register_scorer

MISSING_WEIGHTS_MESSAGE = (
    "The `aesthetic` scorer needs two sets of weights that are not bundled and cannot be downloaded by this run:\n"
    "  1. CLIP ViT-L/14: set heuristics.scorer_params.aesthetic.clip_model to a local folder holding config.json, "
    "model.safetensors and preprocessor_config.json (e.g. `CLIPVisionModelWithProjection.from_pretrained("
    "'openai/clip-vit-large-patch14').save_pretrained(dir)` plus CLIPImageProcessor's save_pretrained, run where "
    "the hub is reachable), or to a hub id already in the local Hugging Face cache;\n"
    f"  2. the LAION head `{PUBLISHED_HEAD_FILE}` (github.com/christophschuhmann/improved-aesthetic-predictor), "
    "or the same state dict as .safetensors: set heuristics.scorer_params.aesthetic.head_weights to its path.\n"
    "Problem: {problem}"
)


class AestheticWeightsMissing(FileNotFoundError):
    """The aesthetic scorer's CLIP model or head weights are not configured or not found."""


def _clip_weights_digest(clip_model: str) -> str:
    """sha256 of the local folder's weight files, or the hub id itself (resolved in the cache, which is immutable)."""
    folder = Path(clip_model)
    if folder.is_dir():
        digest = hashlib.sha256()
        files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
        for path in files:
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
        return digest.hexdigest()[:16]
    return f"hub:{clip_model}"


@register_scorer
class AestheticScorer(Scorer):
    name = "aesthetic"
    higher_is_better = True
    needs = frozenset({"image"})
    unversioned_params = frozenset({"device", "model_batch_size", "clip_model", "head_weights"})

    def __init__(
        self,
        clip_model: str | None = None,
        head_weights: str | None = None,
        device: str = "cpu",
        model_batch_size: int = 64,
    ) -> None:
        if not clip_model:
            raise AestheticWeightsMissing(MISSING_WEIGHTS_MESSAGE.format(problem="clip_model is not set"))
        if not head_weights:
            raise AestheticWeightsMissing(MISSING_WEIGHTS_MESSAGE.format(problem="head_weights is not set"))
        if not Path(head_weights).is_file():
            raise AestheticWeightsMissing(MISSING_WEIGHTS_MESSAGE.format(problem=f"no file at {head_weights}"))
        super().__init__(
            clip_model=str(clip_model),
            head_weights=str(head_weights),
            device=device,
            model_batch_size=model_batch_size,
        )
        from transformers import CLIPVisionModelWithProjection

        try:  # transformers 5 without torchvision: the PIL processor, explicitly (same maths, no warning)
            from transformers import CLIPImageProcessorPil as ProcessorClass
        except ImportError:  # pragma: no cover - other transformers versions
            from transformers import CLIPImageProcessor as ProcessorClass
        try:
            self.processor = ProcessorClass.from_pretrained(clip_model, local_files_only=True)
            self.clip = CLIPVisionModelWithProjection.from_pretrained(clip_model, local_files_only=True)
        except OSError as error:
            raise AestheticWeightsMissing(
                MISSING_WEIGHTS_MESSAGE.format(problem=f"cannot load CLIP from {clip_model!r}: {error}")
            ) from error
        self.head = load_aesthetic_head(head_weights)
        if self.head.config.input_dim != self.clip.config.projection_dim:
            raise ValueError(
                f"aesthetic: the head takes {self.head.config.input_dim}-d embeddings but {clip_model} projects to "
                f"{self.clip.config.projection_dim}-d (the published head is for ViT-L/14, 768-d)"
            )
        self.device = resolve_device(device, stage="aesthetic")
        self.clip.to(self.device).eval()
        self.head.to(self.device).eval()
        self.model_batch_size = model_batch_size
        self._weights_digest = f"clip:{_clip_weights_digest(str(clip_model))}|head:{file_sha256(head_weights)[:16]}"

    def weights_digest(self) -> str:
        return self._weights_digest

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> torch.Tensor:
        """L2-normalised CLIP image embeddings, (N, projection_dim) float32."""
        pixels = self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        embeddings = self.clip(pixel_values=pixels).image_embeds
        return torch.nn.functional.normalize(embeddings.float(), dim=-1)

    @torch.no_grad()
    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        scores = np.empty(len(batch), dtype=np.float64)
        for start in range(0, len(batch), self.model_batch_size):
            part = batch.images[start : start + self.model_batch_size]
            scores[start : start + len(part)] = self.head(self.embed(part)).cpu().double().numpy()
        return scores
