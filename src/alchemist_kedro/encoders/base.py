"""One interface for the image and text encoders whose features the rater reads.

An encoder is one file that subclasses `ImageEncoder` or `TextEncoder` and registers itself by name with
`@register_image_encoder("name")` / `@register_text_encoder("name")`; conf picks it by that name.

Every encoder has a `fingerprint`: its name, the sha256[:16] of its weight file(s) and, where set, a hash of the
settings that change its output. The features pipeline stores it with each cached shard and recomputes a shard only
when it changes, so swapping weights (or a setting that matters) can never silently reuse stale features.
"""
from __future__ import annotations

import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alchemist_kedro.hashing import files_digest, json_digest
from alchemist_kedro.registry import Registry


def weights_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256[:16] over the named files' contents, in sorted-name order (one file: its own sha256[:16])."""
    return files_digest(paths)


def settings_digest(settings: dict[str, Any]) -> str:
    """A short stable hash of JSON-able settings (sorted keys)."""
    return json_digest(settings)


def make_fingerprint(name: str, weights: str, settings: dict[str, Any] | None = None) -> str:
    """`name@weights`, plus `+settings_hash[:8]` when the encoder has settings that change its output."""
    return f"{name}@{weights}" + (f"+{settings_digest(settings)[:8]}" if settings else "")


def check_images(images: Sequence[np.ndarray]) -> None:
    """Raise a ValueError naming the first image that is not a uint8 HxWx3 RGB array."""
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray):
            raise ValueError(f"image {index}: expected a numpy array, got {type(image).__name__}")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"image {index}: expected an HxWx3 RGB array, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image {index}: expected dtype uint8, got {image.dtype}")


def check_texts(texts: Sequence[str]) -> None:
    """Raise a ValueError naming the first entry that is not a string."""
    if isinstance(texts, str):
        raise ValueError("expected a list of texts, got a single string")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"text {index}: expected a string, got {type(text).__name__} ({text!r})")


def batches(count: int, batch_size: int) -> Iterable[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


class ImageEncoder(ABC):
    """Images (uint8 HxWx3 RGB arrays, any size) → float32 (N, dim) embeddings."""

    name: str
    dim: int
    patches_dim: int = 0  # > 0: embed_with_patches also gives local descriptors (features' patch_emb)

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...

    @abstractmethod
    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def embed_with_patches(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, (N, patches_dim) local patch descriptors), one pass; only encoders with patches_dim > 0."""
        raise ValueError(f"image encoder {self.name!r} has no patch descriptors")


class TextEncoder(ABC):
    """Texts → float32 (N, dim) sentence embeddings, and per-token states for cross-attention."""

    name: str
    dim: int  # sentence embedding size
    token_dim: int  # per-token hidden-state size

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    @abstractmethod
    def token_states(self, texts: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 (N, max_tokens, token_dim) zero-padded states and int8 (N, max_tokens) mask (1 = real token)."""

    def encode(self, texts: Sequence[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings, token states, mask). Encoders that get all three from one forward pass override this."""
        states, mask = self.token_states(texts, max_tokens)
        return self.embed_texts(texts), states, mask


class TransformerTextEncoder(TextEncoder):
    """A transformers tokenizer + model giving the sentence embedding and the token states in ONE forward pass.

    Subclasses set `_tokenizer`, `_max_length`, `batch_size`, `max_tokens` and implement `_forward`.
    """

    _tokenizer: Any
    _max_length: int
    batch_size: int
    max_tokens: int
    device: Any = "cpu"  # the torch device `_model` sits on (devices.resolve_device)

    @abstractmethod
    def _forward(self, encoded) -> tuple[Any, Any]:
        """Tokenized batch → (L2-normalised sentence embeddings (B, dim), last hidden states (B, L, token_dim))."""

    def encode(self, texts: Sequence[str], max_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        check_texts(texts)
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        if max_tokens < 1:
            raise ValueError(f"{self.name}: max_tokens must be >= 1, got {max_tokens}")
        count = len(texts)
        embeddings = np.zeros((count, self.dim), dtype=np.float32)
        states = np.zeros((count, max_tokens, self.token_dim), dtype=np.float32)
        mask = np.zeros((count, max_tokens), dtype=np.int8)
        for part in batches(count, self.batch_size):
            encoded = self._tokenizer(
                list(texts[part]), padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
            )
            with torch.inference_mode():
                pooled, hidden = self._forward(encoded.to(self.device))
            encoded, pooled, hidden = encoded.to("cpu"), pooled.float().cpu(), hidden.float().cpu()
            embeddings[part] = pooled.numpy()
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

    def prompt_token_ids(self, text: str, max_tokens: int | None = None) -> tuple[list[int], list[int]]:
        """The token ids behind `token_states([text])`'s first `max_tokens` positions, and 1 where special."""
        max_tokens = self.max_tokens if max_tokens is None else int(max_tokens)
        ids = self._tokenizer(text, truncation=True, max_length=self._max_length)["input_ids"][:max_tokens]
        return ids, self._tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)

    def token_string(self, token_id: int) -> str:
        return self._tokenizer.convert_ids_to_tokens(int(token_id))


IMAGE_ENCODERS: Registry[Callable[..., ImageEncoder]] = Registry("image encoder")
TEXT_ENCODERS: Registry[Callable[..., TextEncoder]] = Registry("text encoder")


def register_image_encoder(name: str) -> Callable:
    return IMAGE_ENCODERS.register(name)


def register_text_encoder(name: str) -> Callable:
    return TEXT_ENCODERS.register(name)


def image_encoder_names() -> list[str]:
    return IMAGE_ENCODERS.names()


def text_encoder_names() -> list[str]:
    return TEXT_ENCODERS.names()


def get_image_encoder(name: str, **config: Any) -> ImageEncoder:
    """Build the image encoder registered as `name` with its conf settings (e.g. batch_size, threads, path)."""
    return _build("image encoder", name, IMAGE_ENCODERS.get(name), config)


def get_text_encoder(name: str, **config: Any) -> TextEncoder:
    """Build the text encoder registered as `name` with its conf settings (e.g. batch_size, path)."""
    return _build("text encoder", name, TEXT_ENCODERS.get(name), config)


def _build(kind: str, name: str, factory: Callable, config: dict[str, Any]) -> Any:
    # Check the conf keys against the constructor first, so a typo names itself instead of a bare TypeError.
    try:
        inspect.signature(factory).bind(**config)
    except TypeError as error:
        accepted = [p for p in inspect.signature(factory).parameters if p != "self"]
        raise ValueError(f"{kind} {name!r}: bad settings {sorted(config)} ({error}); accepted: {accepted}") from None
    return factory(**config)
