"""Web-like defects injected into an embedded training pool (emoji, openclipart).

Each defect kind is one small function, registered by name in ``DEFECT_MAKERS``. A maker takes the
pool item it is built from, the whole pool (for makers that borrow other items) and a seeded numpy
``Generator``, and returns the image bytes, file extension and caption of one defective row. Makers
only ever see pool items, so validation and test items cannot leak into the pool.

Kinds fall on three sides (``DEFECT_SIDES``): ``image`` (the picture is broken or overlaid, the caption is the
item's own), ``caption`` (the picture is the clean one, the caption does not describe it: what dominates real
web pairs and no image statistic can see) and ``duplicate`` (a copy of a clean row: a dataset property).
"""
from __future__ import annotations

import io
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from alchemist_kedro.registry import Registry

IMAGE_SIZE = 64


@dataclass(frozen=True)
class CleanSample:
    """One clean item: its 64-px PNG bytes (RGBA) exactly as written for the clean row, and its caption.

    ``item_id`` is the source's stable id (emoji: the ``unified`` code; openclipart: the relative path),
    ``subcategory`` groups similar items (a mismatched caption comes from another group), ``file_stem`` is the
    item's file name without extension (for file-name captions).
    """

    item_id: str
    caption: str
    subcategory: str
    png_bytes: bytes
    file_stem: str = ""

    @cached_property
    def rgba(self) -> Image.Image:
        image = Image.open(io.BytesIO(self.png_bytes))
        return image.convert("RGBA")

    @cached_property
    def on_white(self) -> Image.Image:
        return flatten_on_white(self.rgba)


# The emoji builder's historical name.
EmojiSample = CleanSample


@dataclass(frozen=True)
class DefectImage:
    image_bytes: bytes
    extension: str  # "png" or "jpg": the webdataset member suffix
    caption: str


DefectMaker = Callable[[CleanSample, Sequence[CleanSample], np.random.Generator], DefectImage]


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


def pick_other(pool: Sequence[CleanSample], rng: np.random.Generator) -> CleanSample:
    return pool[int(rng.integers(len(pool)))]


def make_plain(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """A flat fill: a failed thumbnail or placeholder served where the item should be."""
    colour = mean_opaque_colour(source.rgba) if rng.random() < 0.5 else random_colour(rng)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour)
    return DefectImage(encode_png(image), "png", source.caption)


def make_near_blank(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """Almost flat: a light base colour with a faint gradient, sensor-like noise and at most a ghost of the item."""
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


def make_collage(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """A chaotic mosaic of rotated, overlapping item fragments plus clutter; captioned as the source alone."""
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


def make_noise(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """Pure noise (coloured uniform, grey Gaussian or fractal) under the source item's caption."""
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


def make_mismatched_caption(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The source's clean image under the caption of an item from a different subcategory."""
    candidates = [other for other in pool if other.subcategory != source.subcategory]
    if not candidates:
        candidates = [other for other in pool if other.caption != source.caption]
    if not candidates:
        raise ValueError("a mismatched caption needs at least two distinct captions in the pool")
    other = candidates[int(rng.integers(len(candidates)))]
    return DefectImage(source.png_bytes, "png", other.caption)


def make_blur(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """Heavy Gaussian blur, as from an out-of-focus photo or an over-smoothed resize."""
    image = source.on_white.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(3.0, 6.0))))
    return DefectImage(encode_png(image), "png", source.caption)


def make_jpeg_artefacts(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """Re-encoded at JPEG quality 5-10: blocking and ringing, stored as a .jpg member like crawled data."""
    return DefectImage(encode_jpeg(source.on_white, quality=int(rng.integers(5, 11))), "jpg", source.caption)


def make_upscaled_thumbnail(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """Shrunk to an 8-12 px thumbnail and blown back up to 64 px (nearest → blocky, bilinear → mushy)."""
    thumbnail_size = int(rng.integers(8, 13))
    thumbnail = source.on_white.resize((thumbnail_size, thumbnail_size), Image.Resampling.BOX)
    resample = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    image = thumbnail.resize((IMAGE_SIZE, IMAGE_SIZE), resample)
    return DefectImage(encode_png(image), "png", source.caption)


def make_exact_duplicate(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The same bytes and caption again under a new key, as mirrors and re-uploads produce."""
    return DefectImage(source.png_bytes, "png", source.caption)


def make_near_duplicate(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
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


# ------------------------------------------------------------------------------------- caption-side defects
# The picture is the clean one; the caption is what crawled alt text often is instead of a description.

BOILERPLATE_TEMPLATES = (
    "image", "Image", "click here to enlarge", "Click to enlarge", "product photo", "Product Image",
    "stock image {n}", "stock photo #{n}", "picture {n}", "photo {n} of {m}", "thumbnail", "image not available",
    "no image available", "view larger image", "placeholder", "default image", "featured image", "banner",
    "advertisement", "logo", "icon", "image description", "alt text", "insert image here", "image {n}",
    "untitled-{n}", "see more", "download", "Loading...", "screenshot", "main product image", "gallery image {n}",
)
NON_DESCRIPTIVE_WORDS = (
    "nice", "untitled", "photo", "pic", "wow", "cool", "lol", "beautiful", "amazing", "cute", "awesome", "love",
    "art", "misc", "other", "stuff", "test", "new", "yes", "ok", "random", "this", "mine", "null", "none", "N/A",
    "default", "favourite", "happy", "Untitled", "Photo", "pics",
)
SEO_TAGS = (
    "free", "download", "hd", "wallpaper", "best", "cheap", "2023", "2024", "png", "vector", "clipart", "cute",
    "funny", "love", "instagram", "sale", "discount", "4k", "high quality", "transparent", "background", "design",
    "template", "gift", "trending", "viral", "meme", "aesthetic", "sticker", "printable", "logo", "icon", "art",
    "illustration", "cartoon", "shop now", "buy", "online", "deal", "new", "top", "popular", "images", "photos",
)
# Words every caption of a source shares ("an emoji of a ...", "a drawing of ..."): no use as a spam tag.
CAPTION_FILLER = frozenset({"a", "an", "the", "of", "and", "with", "emoji", "drawing", "in", "on", "for"})
MOJIBAKE = ("Ã©", "Ã¤", "â€™", "â€œ", "ï¿½", "Â", "Ã¶", "Ã¼", "Ã±", "â€", "Ã")
CONSONANTS = "bcdfghjklmnpqrstvwxz"
VOWELS = "aeiouy"


def caption_words(caption: str) -> list[str]:
    words = (word.strip(string.punctuation) for word in caption.lower().split())
    return [word for word in words if word and word not in CAPTION_FILLER]


def make_boilerplate_alt_text(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under CMS boilerplate alt text ("click here to enlarge", "stock image 123", ...)."""
    template = BOILERPLATE_TEMPLATES[int(rng.integers(len(BOILERPLATE_TEMPLATES)))]
    n = int(rng.integers(1, 10_000))
    caption = template.format(n=n, m=n + int(rng.integers(1, 20)))
    return DefectImage(source.png_bytes, "png", caption)


def make_filename_caption(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image captioned with a file name, as scrapers record when alt text is missing."""
    year, month, day = int(rng.integers(2009, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hour, minute, second = (int(value) for value in rng.integers(0, 60, size=3) % [24, 60, 60])
    date = f"{year}{month:02d}{day:02d}"
    stem = source.file_stem or source.item_id.lower()
    k = int(rng.integers(1, 10))
    style = int(rng.integers(7))
    if style == 0:
        caption = f"IMG_{int(rng.integers(10_000)):04d}." + ("jpg", "JPG", "jpeg")[int(rng.integers(3))]
    elif style == 1:
        caption = f"DSC{int(rng.integers(100_000)):05d}.JPG" if rng.random() < 0.5 else f"DSC_{int(rng.integers(10_000)):04d}.jpg"
    elif style == 2:
        caption = (f"{stem}_final({k}).png", f"{stem}-copy.png", f"{stem} ({k}).png", f"{stem}_v{k}_small.png")[
            int(rng.integers(4))
        ]
    elif style == 3:
        caption = f"Screenshot {year}-{month:02d}-{day:02d} at {hour:02d}.{minute:02d}.{second:02d}.png"
    elif style == 4:
        digits = "".join(rng.choice(list("0123456789abcdef"), size=32))
        caption = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}.jpg" if rng.random() < 0.5 else f"{digits}.webp"
    elif style == 5:
        caption = (f"image{int(rng.integers(1000))}.gif", f"download ({k}).jpg", f"unnamed ({k}).png")[int(rng.integers(3))]
    else:
        caption = (
            f"PXL_{date}_{hour:02d}{minute:02d}{second:02d}{int(rng.integers(1000)):03d}.jpg"
            if rng.random() < 0.5
            else f"WhatsApp Image {year}-{month:02d}-{day:02d} at {hour:02d}.{minute:02d}.{second:02d}.jpeg"
        )
    return DefectImage(source.png_bytes, "png", caption)


def make_keyword_spam(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under 8-24 comma-separated SEO tags, mostly unrelated to it (at most one of its own words)."""
    n_tags = int(rng.integers(8, 25))
    own = caption_words(source.caption)
    borrowed = [
        word
        for other in (pick_other(pool, rng) for _ in range(6))
        for word in caption_words(other.caption)
        if word not in own
    ]
    tags: list[str] = []
    while len(tags) < n_tags:
        if borrowed and rng.random() < 0.4:
            tag = borrowed[int(rng.integers(len(borrowed)))]
        else:
            tag = SEO_TAGS[int(rng.integers(len(SEO_TAGS)))]
        if tag not in tags and tag not in own:
            tags.append(tag)
        elif len(set(SEO_TAGS) | set(borrowed)) <= len(tags):
            break
    if own and rng.random() < 0.4:
        tags.insert(int(rng.integers(len(tags) + 1)), own[int(rng.integers(len(own)))])
    separator = ", " if rng.random() < 0.7 else ","
    return DefectImage(source.png_bytes, "png", separator.join(tags))


def make_non_descriptive(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under one non-descriptive word ("nice", "untitled", "photo", ...)."""
    return DefectImage(source.png_bytes, "png", NON_DESCRIPTIVE_WORDS[int(rng.integers(len(NON_DESCRIPTIVE_WORDS)))])


def make_gibberish(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under gibberish: pseudo-words, keyboard mash, mojibake or an opaque token."""
    style = int(rng.integers(4))
    if style == 0:
        words = []
        for _ in range(int(rng.integers(2, 7))):
            syllables = int(rng.integers(1, 4))
            words.append("".join(str(rng.choice(list(CONSONANTS))) + str(rng.choice(list(VOWELS))) for _ in range(syllables)))
        caption = " ".join(words)
    elif style == 1:
        caption = "".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(8, 31))))
    elif style == 2:
        pieces = [
            str(rng.choice(MOJIBAKE)) if rng.random() < 0.5 else str(rng.choice(list(string.ascii_letters)))
            for _ in range(int(rng.integers(6, 20)))
        ]
        caption = "".join(pieces)
    else:
        caption = "".join(rng.choice(list(string.ascii_letters + string.digits + "+/"), size=int(rng.integers(12, 33))))
        caption += "=" * int(rng.integers(0, 3))
    return DefectImage(source.png_bytes, "png", caption)


# ------------------------------------------------------------------------- overlay / colour defects (image)
# A clean picture with something on top, or its colours inverted: sharpness, edge density and frequency barely move.

BANNER_TEXTS = ("SALE", "50% OFF", "FREE", "NEW!", "www.shop.com", "BUY NOW", "SAMPLE", "HOT DEAL", "click here", "LIMITED")
WATERMARK_TEXTS = ("© stock", "SAMPLE", "PREVIEW", "watermark", "shutterstck", "© photos", "draft", "COPY")
LOGO_TEXTS = ("TM", "©", "HD", "AC", "R", "XYZ", "GO", "4K", "pro")


@lru_cache(maxsize=None)
def overlay_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: the same glyphs on every machine, so builds stay byte-identical.
    return ImageFont.load_default(size=size)


def composite(base: Image.Image, layer: Image.Image) -> Image.Image:
    return Image.alpha_composite(base.convert("RGBA"), layer).convert("RGB")


def make_text_banner(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under an advert-style banner (a band with text) or semi-transparent text across it."""
    layer = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = BANNER_TEXTS[int(rng.integers(len(BANNER_TEXTS)))]
    font = overlay_font(int(rng.integers(10, 15)))
    colour = random_colour(rng)
    contrast = (255, 255, 255) if sum(colour) < 384 else (0, 0, 0)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_x = (IMAGE_SIZE - (right - left)) // 2 - left
    if rng.random() < 0.6:
        height = int(rng.integers(14, 23))
        y0 = 0 if rng.random() < 0.5 else IMAGE_SIZE - height
        draw.rectangle((0, y0, IMAGE_SIZE, y0 + height), fill=colour + (int(rng.integers(170, 256)),))
        text_y = y0 + (height - (bottom - top)) // 2 - top
        draw.text((text_x, text_y), text, font=font, fill=contrast + (255,))
    else:
        text_y = int(rng.integers(8, IMAGE_SIZE - 20)) - top
        draw.text((text_x, text_y), text, font=font, fill=colour + (int(rng.integers(140, 221)),),
                  stroke_width=1, stroke_fill=contrast + (int(rng.integers(100, 181)),))
    return DefectImage(encode_png(composite(source.on_white, layer)), "png", source.caption)


def make_corner_logo(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image with a small badge or brand mark (14-24 px) stamped into one corner."""
    layer = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    size = int(rng.integers(14, 25))
    margin = int(rng.integers(0, 4))
    x0 = margin if rng.random() < 0.5 else IMAGE_SIZE - margin - size
    y0 = margin if rng.random() < 0.5 else IMAGE_SIZE - margin - size
    box = (x0, y0, x0 + size - 1, y0 + size - 1)
    colour = random_colour(rng) + (int(rng.integers(200, 256)),)
    contrast = (255, 255, 255, 255) if sum(colour[:3]) < 384 else (0, 0, 0, 255)
    shape = int(rng.integers(3))
    if shape == 0:
        draw.ellipse(box, fill=colour, outline=contrast, width=1)
    elif shape == 1:
        draw.rounded_rectangle(box, radius=size // 4, fill=colour)
    else:
        draw.polygon([(x0 + size // 2, y0), (x0 + size - 1, y0 + size - 1), (x0, y0 + size - 1)], fill=colour)
    if shape < 2 or rng.random() < 0.5:
        text = LOGO_TEXTS[int(rng.integers(len(LOGO_TEXTS)))]
        font = overlay_font(max(7, size // 2))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text((x0 + (size - (right - left)) // 2 - left, y0 + (size - (bottom - top)) // 2 - top), text,
                  font=font, fill=contrast)
    return DefectImage(encode_png(composite(source.on_white, layer)), "png", source.caption)


def make_tiled_watermark(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image under a stock-photo watermark: faint text tiled on a rotated grid over the whole picture."""
    big = 2 * IMAGE_SIZE
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    text = WATERMARK_TEXTS[int(rng.integers(len(WATERMARK_TEXTS)))]
    font = overlay_font(int(rng.integers(8, 12)))
    grey = int(rng.choice([0, 96, 160, 255]))
    fill = (grey, grey, grey, int(rng.integers(70, 131)))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    step_x, step_y = (right - left) + int(rng.integers(4, 10)), (bottom - top) + int(rng.integers(5, 11))
    for row, y in enumerate(range(0, big, step_y)):
        for x in range(-(row % 2) * step_x // 2, big, step_x):
            draw.text((x, y), text, font=font, fill=fill)
    layer = layer.rotate(float(rng.uniform(-40, 40)), resample=Image.Resampling.BILINEAR)
    offset = IMAGE_SIZE // 2
    layer = layer.crop((offset, offset, offset + IMAGE_SIZE, offset + IMAGE_SIZE))
    return DefectImage(encode_png(composite(source.on_white, layer)), "png", source.caption)


def make_colour_inverted(source: CleanSample, pool: Sequence[CleanSample], rng: np.random.Generator) -> DefectImage:
    """The clean image with its colours inverted (a negative: a broken colour profile or a CSS filter)."""
    return DefectImage(encode_png(ImageOps.invert(source.on_white)), "png", source.caption)


# Order matters: it fixes each kind's random stream and its position in the manifest. New kinds go at the end,
# so the older kinds keep their streams (and rows) when kinds are added.
DEFECT_MAKERS: Registry[DefectMaker] = Registry.of("defect kind", {
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
    "boilerplate_alt_text": make_boilerplate_alt_text,
    "filename_caption": make_filename_caption,
    "keyword_spam": make_keyword_spam,
    "non_descriptive": make_non_descriptive,
    "gibberish": make_gibberish,
    "text_banner": make_text_banner,
    "corner_logo": make_corner_logo,
    "tiled_watermark": make_tiled_watermark,
    "colour_inverted": make_colour_inverted,
})

DEFECT_KINDS: tuple[str, ...] = tuple(DEFECT_MAKERS)

CAPTION_KINDS: tuple[str, ...] = (
    "mismatched_caption", "boilerplate_alt_text", "filename_caption", "keyword_spam", "non_descriptive", "gibberish",
)
DUPLICATE_KINDS: tuple[str, ...] = ("exact_duplicate", "near_duplicate")
DEFECT_SIDES: dict[str, str] = {
    kind: "caption" if kind in CAPTION_KINDS else "duplicate" if kind in DUPLICATE_KINDS else "image"
    for kind in DEFECT_KINDS
}

# 6 caption kinds of 19 at weight 13/12 against 1 for the rest: caption-side rows are one third of the defects.
CAPTION_WEIGHT = 13 / 12
DEFAULT_DEFECT_WEIGHTS: dict[str, float] = {
    kind: CAPTION_WEIGHT if DEFECT_SIDES[kind] == "caption" else 1.0 for kind in DEFECT_KINDS
}
