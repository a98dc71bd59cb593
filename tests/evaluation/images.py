"""Small synthetic image sets drawn with Pillow: emoji-like coloured shapes on light backgrounds, and pixel noise."""
import numpy as np
from PIL import Image, ImageDraw


def coloured_shapes(count: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(180, 256, 3)))
        x, y = (int(v) for v in rng.integers(2, size // 3, 2))
        extent = int(rng.integers(size // 4, size // 2))
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw = ImageDraw.Draw(image)
        (draw.ellipse if index % 2 else draw.rectangle)([x, y, x + extent, y + extent], fill=fill)
        images.append(np.asarray(image))
    return images


def pixel_noise(count: int, size: int = 32, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]
