"""Image and text encoders, registered by name (see base.py). Importing this package registers the built-ins.

Heavy dependencies (onnxruntime, torch, transformers) are imported when an encoder is built, not here.
"""
from alchemist_kedro.encoders import clip, minilm, open_nsfw  # noqa: F401  (registration side effect)
from alchemist_kedro.encoders.base import (
    ImageEncoder,
    TextEncoder,
    get_image_encoder,
    get_text_encoder,
    image_encoder_names,
    register_image_encoder,
    register_text_encoder,
    text_encoder_names,
)
from alchemist_kedro.encoders.clip import CLIPImageEncoder, CLIPTextEncoder
from alchemist_kedro.encoders.minilm import MiniLMEncoder
from alchemist_kedro.encoders.open_nsfw import OpenNSFWEncoder

__all__ = [
    "CLIPImageEncoder",
    "CLIPTextEncoder",
    "ImageEncoder",
    "MiniLMEncoder",
    "OpenNSFWEncoder",
    "TextEncoder",
    "get_image_encoder",
    "get_text_encoder",
    "image_encoder_names",
    "register_image_encoder",
    "register_text_encoder",
    "text_encoder_names",
]
