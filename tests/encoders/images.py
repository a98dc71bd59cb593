"""Small, visibly different RGB test images drawn with Pillow (no downloads)."""
import io

import numpy as np
from PIL import Image, ImageDraw


def drawn_images(size: int = 64) -> list[np.ndarray]:
    """Four uint8 HxWx3 images: red disc on white, blue square on black, a gradient, green stripes."""
    disc = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(disc).ellipse([8, 8, size - 8, size - 8], fill=(220, 30, 30))
    square = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(square).rectangle([16, 16, size - 16, size - 16], fill=(30, 60, 230))
    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    gradient = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128, np.uint8)], -1)
    stripes = Image.new("RGB", (size, size), (250, 250, 200))
    draw = ImageDraw.Draw(stripes)
    for x in range(0, size, 8):
        draw.rectangle([x, 0, x + 3, size], fill=(20, 160, 40))
    return [np.asarray(disc), np.asarray(square), gradient, np.asarray(stripes)]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
