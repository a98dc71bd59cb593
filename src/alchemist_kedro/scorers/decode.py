"""Decode once, score many: a shard's image bytes become RGB uint8 arrays once, shared by every image scorer.

The three image statistics (clarity, frequency, edge_density) also share one grayscale, resized view per batch,
memoised on the batch (`grayscale_batch`).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from alchemist_kedro.scorers.base import ScoreBatch

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}

def decode_image(data: bytes | None) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, WebP, ...) -> (H, W, 3) RGB uint8. Raises ValueError on anything else."""
    if data is None or len(data) == 0:
        raise ValueError("no image bytes")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ValueError("not a decodable image")
    return image


def decode_images(encoded: Sequence[bytes | None]) -> tuple[list[np.ndarray | None], list[str | None]]:
    """Decode each item; a failure gives (None, "decode_error: <why>") for that row instead of an exception."""
    images: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for data in encoded:
        try:
            images.append(decode_image(data))
            errors.append(None)
        except (ValueError, cv2.error) as error:
            images.append(None)
            errors.append(f"decode_error: {error}")
    return images, errors


def resized_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, aspect ratio kept (rounded)."""
    scale = short_side / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def grayscale_float(image: np.ndarray, short_side: int | None, interpolation: str) -> np.ndarray:
    """RGB uint8 -> float32 luma in [0, 1] (BT.601), resized so the short side is `short_side` (None = native)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    # Luma before resizing: resizing one channel is a third of the work, and both are linear, so the order is
    # immaterial for the linear interpolations.
    gray = _luma(image)
    if short_side is not None:
        height, width = resized_size(*gray.shape, short_side)
        if (height, width) != gray.shape:
            gray = cv2.resize(gray, (width, height), interpolation=INTERPOLATIONS[interpolation])
            # Bicubic / Lanczos overshoot: keep the statistics on a [0, 1] image.
            np.clip(gray, 0.0, 1.0, out=gray)
    return gray


def _luma(image: np.ndarray) -> np.ndarray:
    # ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, cv2's RGB2GRAY weights), in float32 so it is not rounded to
    # 8 bits first as cv2's uint8 path would.
    gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    gray *= np.float32(1.0 / 255.0)
    return gray


def grayscale_batch(batch: ScoreBatch, short_side: int | None, interpolation: str) -> list[np.ndarray]:
    """The batch's images as float32 [0, 1] luma, resized; computed once per batch and settings."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {sorted(INTERPOLATIONS)}")
    if batch.images is None:
        raise ValueError("the batch has no images")
    return batch.cached(
        ("grayscale", short_side, interpolation),
        lambda: [grayscale_float(image, short_side, interpolation) for image in batch.images],
    )


def grayscale8_batch(batch: ScoreBatch, short_side: int | None, interpolation: str) -> list[np.ndarray]:
    """The same luma rounded to 8 bits (what Canny and Otsu take); computed once per batch and settings."""
    return batch.cached(
        ("grayscale8", short_side, interpolation),
        lambda: [
            np.rint(gray * 255.0).astype(np.uint8) for gray in grayscale_batch(batch, short_side, interpolation)
        ],
    )
