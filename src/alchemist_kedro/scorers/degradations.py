"""Generic image degradations: the default low-quality group of `diffusion_quality` is the clean images put
through these. A stand-in for human-picked HQ / LQ groups (the paper's), not a model of the corpus' defects."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

DEGRADATIONS = ("blur", "jpeg", "downup", "noise")


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"degrade: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return image


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One degradation of a uint8 RGB image, at a strength relative to its short side (so it reads the same at
    any resolution)."""
    image = _check(image)
    short = min(image.shape[:2])
    if kind == "blur":
        sigma = max(1.0, short / 48)
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    if kind == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=8)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    if kind == "downup":
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "noise":
        noisy = image.astype(np.float32) + rng.normal(0.0, 25.0, image.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    raise ValueError(f"degrade: unknown degradation {kind!r}; one of {list(DEGRADATIONS)}")


def degraded_group(images: list[np.ndarray], kinds: tuple[str, ...] | list[str] = DEGRADATIONS,
                   seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Image i gets degradation kinds[i % len(kinds)]: an LQ group as large as the HQ one, each kind equally often.
    Returns the images and the kind each got."""
    if not kinds:
        raise ValueError("degraded_group: no degradation kinds")
    rng = np.random.default_rng(seed)
    names = [kinds[i % len(kinds)] for i in range(len(images))]
    return [degrade(image, kind, rng) for image, kind in zip(images, names)], names
