"""transformers CLIP towers, from a local folder or a hub id already in the local cache (never downloaded).

`clip` (image): CLIPVisionModelWithProjection + CLIPImageProcessor → L2-normalised projected image embeddings.
`clip_text` (text): CLIPTextModelWithProjection + CLIPTokenizer → L2-normalised projected text embeddings, and the
last hidden states (the tokens a T2I UNet cross-attends to) for the first `max_tokens` positions with their mask.
Both load with local_files_only=True: on machines without network a missing model must fail here, with the path.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.encoders.base import (
    ImageEncoder,
    TransformerTextEncoder,
    batches,
    check_images,
    make_fingerprint,
    register_image_encoder,
    register_text_encoder,
    weights_digest,
)

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def resolve_model_dir(path: str | os.PathLike[str] | None, who: str) -> Path:
    """A local folder as is; otherwise a hub id looked up in the local Hugging Face cache only."""
    if not path:
        raise ValueError(f"{who}: set `path` to a local model folder or a cached hub id (e.g. openai/clip-vit-base-patch32)")
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    looks_like_hub_id = str(path).count("/") == 1 and not str(path).startswith((".", "/", "~"))
    if looks_like_hub_id:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(path), local_files_only=True))
        except Exception as error:  # noqa: BLE001 - every failure here means "not available offline"
            raise FileNotFoundError(
                f"{who}: {path!r} is neither a local folder nor a hub id in the local cache "
                f"(models are never downloaded here): {error}"
            ) from None
    raise FileNotFoundError(f"{who}: model folder {str(local)!r} does not exist")


def _weight_files(model_dir: Path, who: str) -> list[Path]:
    files = [p for p in model_dir.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"{who}: no *.safetensors or *.bin weights in {model_dir}")
    return files


def _load_tower(model_class: type, model_dir: Path, who: str):
    # A checkpoint without this tower's weights would load with random weights and only a log line: refuse it.
    model, info = model_class.from_pretrained(str(model_dir), local_files_only=True, output_loading_info=True)
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise ValueError(f"{who}: {model_dir} lacks {len(missing)} weights of {model_class.__name__}, e.g. {missing[:3]}")
    return model.eval()


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))


@register_image_encoder("clip")
class CLIPImageEncoder(ImageEncoder):
    name = "clip"

    def __init__(self, path: str | os.PathLike[str] | None = None, batch_size: int = 32, threads: int | None = None,
                 device: str | None = "cpu"):
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        self.path = resolve_model_dir(path, "clip")
        self.batch_size = batch_size
        _set_threads(threads)
        self._processor = CLIPImageProcessor.from_pretrained(str(self.path), local_files_only=True)
        self.device = resolve_device(device, stage="clip")
        self._model = _load_tower(CLIPVisionModelWithProjection, self.path, "clip").to(self.device)
        self.dim = int(self._model.config.projection_dim)
        self._fingerprint = make_fingerprint(self.name, weights_digest(_weight_files(self.path, "clip")))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        check_images(images)
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for part in batches(len(images), self.batch_size):
            pixels = self._processor(images=list(images[part]), return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                embeds = self._model(pixel_values=pixels.to(self.device)).image_embeds
            out[part] = torch.nn.functional.normalize(embeds.float(), dim=-1).cpu().numpy()
        return out


@register_text_encoder("clip_text")
class CLIPTextEncoder(TransformerTextEncoder):
    name = "clip_text"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        batch_size: int = 64,
        max_tokens: int = 16,
        threads: int | None = None,
        device: str | None = "cpu",
    ):
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        self.path = resolve_model_dir(path, "clip_text")
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        _set_threads(threads)
        self._tokenizer = CLIPTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.device = resolve_device(device, stage="clip_text")
        self._model = _load_tower(CLIPTextModelWithProjection, self.path, "clip_text").to(self.device)
        self.dim = int(self._model.config.projection_dim)
        self.token_dim = int(self._model.config.hidden_size)
        self._max_length = int(self._model.config.max_position_embeddings)
        self._fingerprint = make_fingerprint(self.name, weights_digest(_weight_files(self.path, "clip_text")))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _forward(self, encoded):
        import torch

        output = self._model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
        return torch.nn.functional.normalize(output.text_embeds, dim=-1), output.last_hidden_state
