"""Image and caption normalisation on real encoded images, checked on pixel values."""
import hashlib
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from alchemist_kedro.ingest.normalise import NormaliseSettings, Quarantined, decode_caption, normalise_image
from tests.ingest.helpers import image_bytes

SETTINGS = NormaliseSettings(resolution=64, min_side=16)


def _pixels(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    return np.asarray(image).astype(int)


def _encode(image: Image.Image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_output_is_rgb_square_with_original_size_and_sha256():
    data = image_bytes(size=(100, 50), fmt="JPEG", quality=90)
    result = normalise_image(data, SETTINGS)
    assert (result.width, result.height) == (100, 50)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    _pixels(result.png)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[:, :16] = (0, 0, 255, 255)  # opaque blue left half
    rgba[:, 16:] = (255, 0, 0, 0)  # fully transparent red right half: must not show as red or black
    pixels = _pixels(normalise_image(_encode(Image.fromarray(rgba, "RGBA")), SETTINGS).png)
    assert np.abs(pixels[32, 5] - (0, 0, 255)).max() <= 2
    assert np.abs(pixels[32, 58] - (255, 255, 255)).max() <= 2


def test_palette_with_transparent_index_and_la_become_white():
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette_png = _encode(palette, transparency=1)
    assert _pixels(normalise_image(palette_png, SETTINGS).png).min() >= 253
    la = Image.new("LA", (32, 32), (0, 0))
    assert _pixels(normalise_image(_encode(la), SETTINGS).png).min() >= 253


def test_exif_orientation_6_is_applied():
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # stored 40 wide, 20 high
    array[:, :20] = (255, 0, 0)  # stored left half red
    array[:, 20:] = (0, 0, 255)  # stored right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise: stored left becomes top
    data = _encode(Image.fromarray(array), "JPEG", quality=95, exif=exif.tobytes())
    result = normalise_image(data, SETTINGS)
    assert (result.width, result.height) == (20, 40)
    pixels = _pixels(result.png)
    assert pixels[4, 32, 0] > 200 and pixels[4, 32, 2] < 60  # top red
    assert pixels[60, 32, 2] > 200 and pixels[60, 32, 0] < 60  # bottom blue


def test_cmyk_jpeg_becomes_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    pixels = _pixels(normalise_image(_encode(cmyk, "JPEG", quality=95), SETTINGS).png)
    assert pixels[32, 32, 0] > 200 and pixels[32, 32, 1] < 60 and pixels[32, 32, 2] < 60


def test_16_bit_grey_png_is_scaled_to_8_bit_rgb():
    grey16 = Image.fromarray(np.full((32, 32), 40_000, dtype=np.uint16))
    data = _encode(grey16)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    pixels = _pixels(normalise_image(data, SETTINGS).png)
    assert np.abs(pixels - round(40_000 * 255 / 65_535)).max() <= 1


@pytest.mark.parametrize(
    ("data_factory", "settings", "reason"),
    [
        (lambda: image_bytes((200, 150), fmt="JPEG", quality=95)[:1500], SETTINGS, "truncated"),
        (lambda: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), SETTINGS, "decode_error"),
        (lambda: b"", SETTINGS, "decode_error"),
        (lambda: image_bytes((8, 8)), SETTINGS, "too_small"),
        (lambda: image_bytes((300, 200)), NormaliseSettings(max_image_pixels=10_000), "too_large"),
        # Past twice the limit Pillow raises DecompressionBombError inside Image.open itself.
        (lambda: image_bytes((300, 200)), NormaliseSettings(max_image_pixels=1_000), "too_large"),
    ],
    ids=["truncated", "random-bytes", "empty", "too-small", "over-cap", "bomb"],
)
def test_broken_images_are_quarantined_with_reason(data_factory, settings, reason):
    limit_before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(Quarantined) as caught:
        normalise_image(data_factory(), settings)
    assert caught.value.reason == reason
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the guard is restored after each call


def test_captions():
    assert decode_caption("  a café  \n".encode()) == "a café"
    with pytest.raises(Quarantined, match="non_utf8_caption"):
        decode_caption(b"caf\xe9 latte")
    for blank in (b" \t\n", b"", None):
        with pytest.raises(Quarantined, match="empty_caption"):
            decode_caption(blank)


@pytest.mark.parametrize(("limit", "reason"), [(60_000, None), (59_999, "too_large"), (40_000, "too_large")],
                         ids=["at-cap", "one-over", "between-1x-and-2x"])
def test_pixel_cap_is_exact_and_read_from_the_header(limit, reason):
    data = image_bytes((300, 200))  # 60 000 pixels
    settings = NormaliseSettings(max_image_pixels=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a caller that silences warnings must not turn the cap into a warning
        if reason is None:
            assert normalise_image(data, settings).width == 300
            return
        with pytest.raises(Quarantined) as caught:
            normalise_image(data, settings)
    assert caught.value.reason == reason
    assert f"max_image_pixels {limit}" in caught.value.detail  # the conf cap fired, not Pillow's 2x guard


def test_quarantine_detail_is_the_same_on_every_run():
    # A rerun must reproduce the quarantine table byte for byte (the fault matrix compares content hashes).
    details = set()
    for _ in range(3):
        with pytest.raises(Quarantined) as caught:
            normalise_image(b"\x00broken" * 20, SETTINGS)
        details.add(caught.value.detail)
    assert len(details) == 1 and "0x" not in details.pop()
