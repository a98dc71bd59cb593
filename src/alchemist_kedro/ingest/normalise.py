"""Pure functions that turn raw caption/image bytes into canonical ones, or say why they cannot.

``decode_caption(bytes) -> str`` and ``normalise_image(bytes, settings) -> NormalisedImage`` raise
``Quarantined(reason, detail)`` with a reason from ``schemas.QUARANTINE_REASONS``.
"""
from __future__ import annotations

import hashlib
import io
import re
import struct
import threading
import warnings
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's bomb guard is a module global; a lock keeps "set, decode, restore" atomic if a
# ThreadRunner ever normalises two partitions at once.
_PILLOW_GLOBALS = threading.Lock()
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


class Quarantined(Exception):
    """A row that cannot become a sample: ``reason`` is machine-readable, ``detail`` is for people."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class NormaliseSettings:
    resolution: int = 64  # output side, pixels (short-side resize, centre crop)
    min_side: int = 16  # shorter original side below this -> too_small
    max_image_pixels: int = 89_478_485  # Pillow's default bomb limit; width*height above it -> too_large
    png_compress_level: int = 6
    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers `resolution`: big JPEGs
    # then cost a fraction of a full decode, and the Lanczos resize that follows hides the DCT scaling.
    jpeg_draft: bool = True

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> NormaliseSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in params.items() if key in known})


@dataclass(frozen=True)
class NormalisedImage:
    png: bytes  # RGB, resolution x resolution
    width: int  # original size after EXIF orientation
    height: int
    sha256: str  # of the original bytes


def decode_caption(raw: bytes | None) -> str:
    """Strict UTF-8, stripped. Raises Quarantined(non_utf8_caption | empty_caption)."""
    if raw is None:
        raise Quarantined("empty_caption", "no caption")
    try:
        caption = bytes(raw).decode("utf-8", errors="strict")
    except UnicodeDecodeError as error:
        raise Quarantined("non_utf8_caption", f"caption bytes are not UTF-8 ({error.reason} at byte {error.start})") from error
    caption = caption.strip()
    if not caption:
        raise Quarantined("empty_caption", "caption is empty or whitespace only")
    return caption


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency composited on white, 16/32-bit scaled to 8 bits."""
    if image.mode == "RGB":
        if "transparency" not in image.info:
            return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        # 16-bit data (PNG 16-bit grey opens as I or I;16) spans 0..65535; keep 8-bit-range data as is.
        scale = 255.0 / 65535.0 if values.max(initial=0) > 255 else 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _resize_and_crop(image: Image.Image, resolution: int) -> Image.Image:
    width, height = image.size
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    resized = image.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return resized.crop((left, top, left + resolution, top + resolution))


def _decode(data: bytes, settings: NormaliseSettings) -> tuple[Image.Image, int, int]:
    # Image.open reads the header only; the cap is checked here, before any pixel is decoded. Pillow's own guard
    # is off for the open (it only warns between 1x and 2x its limit, and a warnings filter set elsewhere could
    # silence that) and back on, at the cap, for the rest of the decode.
    Image.MAX_IMAGE_PIXELS = None
    image = Image.open(io.BytesIO(data))
    Image.MAX_IMAGE_PIXELS = settings.max_image_pixels
    width, height = image.size
    if width * height > settings.max_image_pixels:
        raise Quarantined("too_large", f"{width}x{height} = {width * height} pixels > max_image_pixels {settings.max_image_pixels}")
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    if min(width, height) < settings.min_side:
        raise Quarantined("too_small", f"{width}x{height}: shorter side < min_side {settings.min_side}")
    if settings.jpeg_draft and image.format == "JPEG":
        # Draft must come before load(); a requested square keeps the shorter side >= resolution.
        image.draft("RGB", (settings.resolution, settings.resolution))
    image.load()  # full decode now, so truncated data fails here and not in resize
    image = ImageOps.exif_transpose(image)
    return image, width, height


def normalise_image(data: bytes | None, settings: NormaliseSettings) -> NormalisedImage:
    """Original bytes -> PNG of an RGB ``resolution`` square. Raises Quarantined with one of
    decode_error, truncated, too_large, too_small, unsupported_mode."""
    if not data:
        raise Quarantined("decode_error", "image bytes are empty")
    digest = hashlib.sha256(data).hexdigest()
    with _PILLOW_GLOBALS, warnings.catch_warnings():
        previous_limit = Image.MAX_IMAGE_PIXELS
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image, width, height = _decode(data, settings)
        except Quarantined:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise Quarantined("too_large", str(error)) from error
        except UnidentifiedImageError as error:
            # Pillow's message names the BytesIO by memory address: drop it, or reruns would differ.
            message = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(error))
            raise Quarantined("decode_error", f"not an image Pillow can open ({message})") from error
        except OSError as error:
            if "truncated" in str(error).lower():
                raise Quarantined("truncated", str(error)) from error
            raise Quarantined("decode_error", f"{type(error).__name__}: {error}") from error
        except (SyntaxError, ValueError, EOFError, TypeError, IndexError, KeyError, struct.error) as error:
            # Pillow's plugins signal corrupt headers with all of these.
            detail = f"{type(error).__name__}: {error}"
            reason = "truncated" if "truncat" in detail.lower() else "decode_error"
            raise Quarantined(reason, detail) from error
        finally:
            Image.MAX_IMAGE_PIXELS = previous_limit
    try:
        rgb = _to_rgb(image)
    except (ValueError, OSError) as error:
        raise Quarantined("unsupported_mode", f"cannot convert mode {image.mode} to RGB ({error})") from error
    square = _resize_and_crop(rgb, settings.resolution)
    buffer = io.BytesIO()
    square.save(buffer, format="PNG", compress_level=settings.png_compress_level)
    return NormalisedImage(png=buffer.getvalue(), width=width, height=height, sha256=digest)

