"""Web-like defects injected into the embedded emoji training pool.

Each defect kind is one small function, registered by name in ``DEFECT_MAKERS``. A maker takes the
pool emoji it is built from, the whole pool (for makers that borrow other emoji) and a seeded numpy
``Generator``, and returns the image bytes, file extension and caption of one defective row. Makers
only ever see pool emoji, so validation and test emoji cannot leak into the pool.
"""
from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

IMAGE_SIZE = 64


@dataclass(frozen=True)
class EmojiSample:
    """One clean emoji: its PNG bytes exactly as shipped (RGBA) and its caption."""

    unified: str
    caption: str
    subcategory: str
    png_bytes: bytes

    @cached_property
    def rgba(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.png_bytes))
        return image.convert("RGBA")

    @cached_property
    def on_white(self) -> Image.Image:
        return flatten_on_white(self.rgba)


@dataclass(frozen=True)
class DefectImage:
    image_bytes: bytes
    extension: str  # "png" or "jpg": the webdataset member suffix
    caption: str


DefectMaker = Callable[[EmojiSample, Sequence[EmojiSample], np.random.Generator], DefectImage]


def flatten_on_white(image: Image.Image) -> Image.Image:
    """RGBA → RGB over white, the same background the ingest reader uses.

    Filters must run on the flattened image: transparent emoji pixels carry arbitrary RGB values that
    blurring or resampling would otherwise smear into dark halos.
    """
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def encode_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(channel) for channel in rng.integers(0, 256, size=3))


def mean_opaque_colour(image: Image.Image) -> tuple[int, int, int]:
    pixels = np.asarray(image.convert("RGBA"), dtype=np.float64)
    opaque = pixels[..., 3] > 127
    if not opaque.any():
        return (255, 255, 255)
    return tuple(int(round(channel)) for channel in pixels[opaque][:, :3].mean(axis=0))


def pick_other(pool: Sequence[EmojiSample], rng: np.random.Generator) -> EmojiSample:
    return pool[int(rng.integers(len(pool)))]


def make_plain(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """A flat fill: a failed thumbnail or placeholder served where the emoji should be."""
    colour = mean_opaque_colour(source.rgba) if rng.random() < 0.5 else random_colour(rng)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour)
    return DefectImage(encode_png(image), "png", source.caption)


def make_near_blank(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """Almost flat: a light base colour with a faint gradient, sensor-like noise and at most a ghost of the emoji."""
    base = rng.integers(170, 256, size=3).astype(np.float64)
    ramp = np.linspace(-1.0, 1.0, IMAGE_SIZE)
    angle = rng.uniform(0, 2 * np.pi)
    gradient = np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]
    pixels = base + rng.uniform(3, 10) * gradient[..., None]
    pixels = pixels + rng.normal(0, rng.uniform(1, 3), size=pixels.shape)
    # A washed-out page often still shows the faintest trace of what was meant to be there.
    ghost_strength = rng.uniform(0.0, 0.08)
    ghost = np.asarray(source.on_white, dtype=np.float64)
    pixels = (1 - ghost_strength) * pixels + ghost_strength * ghost
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return DefectImage(encode_png(image), "png", source.caption)


def make_collage(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """A chaotic mosaic of rotated, overlapping emoji fragments plus clutter; captioned as the source alone."""
    background = random_colour(rng) if rng.random() < 0.6 else (255, 255, 255)
    canvas = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), background + (255,))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 8))):
        # Clutter boxes may run off the canvas, like cropped banners and borders on a web page.
        x0, x1 = sorted(int(value) for value in rng.integers(-16, IMAGE_SIZE + 16, size=2))
        y0, y1 = sorted(int(value) for value in rng.integers(-16, IMAGE_SIZE + 16, size=2))
        colour = random_colour(rng) + (255,)
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 5)))
    fragments = [source] + [pick_other(pool, rng) for _ in range(int(rng.integers(4, 9)))]
    for fragment in fragments:
        left, top = rng.integers(0, IMAGE_SIZE // 2, size=2)
        crop_size = int(rng.integers(IMAGE_SIZE // 2, IMAGE_SIZE + 1))
        piece = fragment.rgba.crop((int(left), int(top), int(left) + crop_size, int(top) + crop_size))
        target_size = int(rng.integers(16, 49))
        piece = piece.resize((target_size, target_size), Image.Resampling.BILINEAR)
        piece = piece.rotate(float(rng.uniform(0, 360)), resample=Image.Resampling.BILINEAR, expand=True)
        low, high = -target_size // 2, IMAGE_SIZE - target_size // 2
        position = tuple(int(offset) for offset in rng.integers(low, high, size=2))
        canvas.alpha_composite(piece, dest=(max(position[0], 0), max(position[1], 0)))
    return DefectImage(encode_png(canvas.convert("RGB")), "png", source.caption)


def value_noise(rng: np.random.Generator, octaves: int = 4) -> np.ndarray:
    """Perlin-like fractal noise in [0, 255]: smoothly upsampled random grids summed over octaves."""
    total = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3))
    for octave in range(octaves):
        grid_size = 2 ** (octave + 2)
        grid = rng.uniform(0, 255, size=(grid_size, grid_size, 3)).astype(np.uint8)
        layer = Image.fromarray(grid, "RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
        total += np.asarray(layer, dtype=np.float64) / 2**octave
    # Summed octaves regress to the mean; stretch back to full range so it reads as noise, not a grey card.
    total -= total.min(axis=(0, 1), keepdims=True)
    total /= np.maximum(total.max(axis=(0, 1), keepdims=True), 1e-9)
    return total * 255


def make_noise(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """Pure noise (coloured uniform, grey Gaussian or fractal) under the source emoji's caption."""
    style = int(rng.integers(3))
    if style == 0:
        pixels = rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    elif style == 1:
        grey = rng.normal(128, 64, size=(IMAGE_SIZE, IMAGE_SIZE, 1))
        pixels = np.repeat(grey, 3, axis=2)
    else:
        pixels = value_noise(rng)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return DefectImage(encode_png(image), "png", source.caption)


def make_mismatched_caption(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """The source's clean image under the caption of an emoji from a different subcategory."""
    candidates = [other for other in pool if other.subcategory != source.subcategory]
    if not candidates:
        candidates = [other for other in pool if other.caption != source.caption]
    if not candidates:
        raise ValueError("a mismatched caption needs at least two distinct captions in the pool")
    other = candidates[int(rng.integers(len(candidates)))]
    return DefectImage(source.png_bytes, "png", other.caption)


def make_blur(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """Heavy Gaussian blur, as from an out-of-focus photo or an over-smoothed resize."""
    image = source.on_white.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(3.0, 6.0))))
    return DefectImage(encode_png(image), "png", source.caption)


def make_jpeg_artefacts(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """Re-encoded at JPEG quality 5-10: blocking and ringing, stored as a .jpg member like crawled data."""
    return DefectImage(encode_jpeg(source.on_white, quality=int(rng.integers(5, 11))), "jpg", source.caption)


def make_upscaled_thumbnail(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """Shrunk to an 8-12 px thumbnail and blown back up to 64 px (nearest → blocky, bilinear → mushy)."""
    thumbnail_size = int(rng.integers(8, 13))
    thumbnail = source.on_white.resize((thumbnail_size, thumbnail_size), Image.Resampling.BOX)
    resample = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    image = thumbnail.resize((IMAGE_SIZE, IMAGE_SIZE), resample)
    return DefectImage(encode_png(image), "png", source.caption)


def make_exact_duplicate(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """The same bytes and caption again under a new key, as mirrors and re-uploads produce."""
    return DefectImage(source.png_bytes, "png", source.caption)


def make_near_duplicate(source: EmojiSample, pool: Sequence[EmojiSample], rng: np.random.Generator) -> DefectImage:
    """A slightly shifted or re-cropped copy with a mild colour jitter, captioned the same."""
    image = source.rgba
    if rng.random() < 0.5:
        margin = int(rng.integers(1, 5))
        image = image.crop((margin, margin, IMAGE_SIZE - margin, IMAGE_SIZE - margin)).resize(
            (IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC
        )
    else:
        shift = tuple(int(offset) for offset in rng.integers(-3, 4, size=2))
        if shift == (0, 0):
            shift = (1, 0)
        shifted = Image.new("RGBA", image.size, (0, 0, 0, 0))
        shifted.paste(image, shift)
        image = shifted
    rgb, alpha = image.convert("RGB"), image.getchannel("A")
    rgb = ImageEnhance.Brightness(rgb).enhance(float(rng.uniform(0.9, 1.1)))
    rgb = ImageEnhance.Color(rgb).enhance(float(rng.uniform(0.85, 1.15)))
    image = rgb.convert("RGBA")
    image.putalpha(alpha)
    return DefectImage(encode_png(image), "png", source.caption)


# Order matters: it fixes each kind's random stream and its position in the manifest.
DEFECT_MAKERS: dict[str, DefectMaker] = {
    "plain": make_plain,
    "near_blank": make_near_blank,
    "collage": make_collage,
    "noise": make_noise,
    "mismatched_caption": make_mismatched_caption,
    "blur": make_blur,
    "jpeg_artefacts": make_jpeg_artefacts,
    "upscaled_thumbnail": make_upscaled_thumbnail,
    "exact_duplicate": make_exact_duplicate,
    "near_duplicate": make_near_duplicate,
}

DEFECT_KINDS: tuple[str, ...] = tuple(DEFECT_MAKERS)
