"""clip_score: cosine of a CLIP model's image and caption embeddings (the image-text agreement LAION and DataComp
filter on), with CLIP weights from a local folder or a hub id already in the local cache; nothing is downloaded.

The raw cosine is kept (CLIP-score's 100·max(cos, 0) only rescales it); higher = the caption fits the image better.
"""
from __future__ import annotations

import numpy as np

from alchemist_kedro.encoders.clip import CLIPImageEncoder, CLIPTextEncoder
from alchemist_kedro.scorers.base import ScoreBatch, Scorer, register_scorer


@register_scorer
class ClipScoreScorer(Scorer):
    name = "clip_score"
    higher_is_better = True
    needs = frozenset({"image", "caption"})
    # Where the weights live does not change the scores; their contents (weights_digest) do.
    unversioned_params = frozenset({"threads", "clip_model", "batch_size", "device"})

    def __init__(self, clip_model: str | None = None, batch_size: int = 32, threads: int | None = None,
                 device: str | None = "cpu") -> None:
        if not clip_model:
            raise ValueError(
                "clip_score needs CLIP weights: set heuristics.scorer_params.clip_score.clip_model to a local "
                "save_pretrained folder (config.json, model.safetensors, tokenizer and preprocessor files) or a hub "
                "id already in the local Hugging Face cache, e.g. openai/clip-vit-large-patch14"
            )
        super().__init__(clip_model=str(clip_model), batch_size=batch_size, threads=threads, device=device)
        self.images = CLIPImageEncoder(clip_model, batch_size=batch_size, threads=threads, device=device)
        self.texts = CLIPTextEncoder(clip_model, batch_size=batch_size, threads=threads, device=device)
        if self.images.dim != self.texts.dim:
            raise ValueError(f"clip_score: {clip_model} projects images to {self.images.dim}-d but text to "
                             f"{self.texts.dim}-d")

    def weights_digest(self) -> str:
        return f"{self.images.fingerprint}|{self.texts.fingerprint}"

    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        self.check_batch(batch)
        image_embeds = self.images.embed_images(batch.images)  # L2-normalised
        text_embeds = self.texts.embed_texts(list(batch.captions))  # L2-normalised
        return np.einsum("nd,nd->n", image_embeds, text_embeds).astype(np.float64)
