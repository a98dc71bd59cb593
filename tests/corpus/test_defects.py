from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from alchemist_kedro.corpus.defects import (
    BOILERPLATE_TEMPLATES,
    CAPTION_KINDS,
    DEFAULT_DEFECT_WEIGHTS,
    DEFECT_KINDS,
    DEFECT_MAKERS,
    DEFECT_SIDES,
    DUPLICATE_KINDS,
    NON_DESCRIPTIVE_WORDS,
    SEO_TAGS,
    EmojiSample,
    caption_words,
    flatten_on_white,
)

from .conftest import SUBCATEGORIES, draw_fake_emoji

SEEDS = range(8)
THINGS = ("red apple", "grinning face", "racing car", "blue whale", "tulip", "rocket", "violin", "teapot",
          "snowman", "pine tree", "owl", "lighthouse")


@pytest.fixture(scope="module")
def pool() -> list[EmojiSample]:
    return [
        EmojiSample(
            f"1F{600 + index}",
            f"an emoji of a {THINGS[index]}",
            SUBCATEGORIES[index % 5],
            draw_fake_emoji(index),
            f"emoji_u1f{600 + index}",
        )
        for index in range(12)
    ]


def make(kind: str, pool: list[EmojiSample], seed: int, source_index: int = 0):
    return DEFECT_MAKERS[kind](pool[source_index], pool, np.random.default_rng(seed))


def pixels(image_bytes: bytes) -> np.ndarray:
    return np.asarray(flatten_on_white(Image.open(io.BytesIO(image_bytes))), dtype=np.float64)


def distinct_colour_count(array: np.ndarray) -> int:
    return len(np.unique(array.reshape(-1, 3), axis=0))


def thumbnail(image_bytes: bytes) -> np.ndarray:
    image = Image.fromarray(pixels(image_bytes).astype(np.uint8)).resize((16, 16), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64)


def laplacian_variance(array: np.ndarray) -> float:
    grey = array.mean(axis=2)
    laplacian = grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1]
    return float(laplacian.var())


def test_every_kind_is_registered_and_yields_a_64px_image(pool):
    assert DEFECT_KINDS == tuple(DEFECT_MAKERS)
    assert len(DEFECT_KINDS) == 19
    for kind in DEFECT_KINDS:
        defect = make(kind, pool, seed=0)
        image = Image.open(io.BytesIO(defect.image_bytes))
        assert image.size == (64, 64)
        assert image.format == {"png": "PNG", "jpg": "JPEG"}[defect.extension]
        assert defect.caption


def test_makers_are_deterministic_per_seed(pool):
    for kind in DEFECT_KINDS:
        assert make(kind, pool, seed=5) == make(kind, pool, seed=5)


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_is_a_flat_fill_under_the_source_caption(pool, seed):
    defect = make("plain", pool, seed)
    assert pixels(defect.image_bytes).std(axis=(0, 1)).max() == 0
    assert defect.caption == pool[0].caption


@pytest.mark.parametrize("seed", SEEDS)
def test_near_blank_is_almost_but_not_entirely_flat(pool, seed):
    array = pixels(make("near_blank", pool, seed).image_bytes)
    source_spread = pixels(pool[0].png_bytes).std(axis=(0, 1)).mean()
    assert 0 < array.std(axis=(0, 1)).mean() < 0.25 * source_spread


@pytest.mark.parametrize("seed", SEEDS)
def test_noise_has_high_pixel_variance_and_no_structure_of_the_source(pool, seed):
    array = pixels(make("noise", pool, seed).image_bytes)
    assert array.std() > 40
    source = pixels(pool[0].png_bytes)
    assert abs(np.corrcoef(array.ravel(), source.ravel())[0, 1]) < 0.3


@pytest.mark.parametrize("seed", SEEDS)
def test_collage_mixes_many_colours_and_differs_from_the_source(pool, seed):
    array = pixels(make("collage", pool, seed).image_bytes)
    assert distinct_colour_count(array) > 50
    assert np.abs(array - pixels(pool[0].png_bytes)).mean() > 30


@pytest.mark.parametrize("seed", SEEDS)
def test_mismatched_caption_belongs_to_an_emoji_of_another_subcategory(pool, seed):
    defect = make("mismatched_caption", pool, seed)
    assert defect.image_bytes == pool[0].png_bytes
    assert defect.caption != pool[0].caption
    owner = next(sample for sample in pool if sample.caption == defect.caption)
    assert owner.subcategory != pool[0].subcategory


@pytest.mark.parametrize("seed", SEEDS)
def test_blur_removes_most_edge_energy(pool, seed):
    blurred = pixels(make("blur", pool, seed).image_bytes)
    assert laplacian_variance(blurred) < 0.1 * laplacian_variance(pixels(pool[0].png_bytes))


@pytest.mark.parametrize("seed", SEEDS)
def test_jpeg_artefacts_is_a_low_quality_jpeg(pool, seed):
    defect = make("jpeg_artefacts", pool, seed)
    assert defect.extension == "jpg"
    image = Image.open(io.BytesIO(defect.image_bytes))
    # Quality 5-10 gives luminance quantisation steps far above the ~2-10 of ordinary web JPEGs.
    assert np.mean(image.quantization[0]) > 50
    assert np.abs(pixels(defect.image_bytes) - pixels(pool[0].png_bytes)).mean() > 1


@pytest.mark.parametrize("seed", SEEDS)
def test_upscaled_thumbnail_keeps_only_thumbnail_detail(pool, seed):
    array = pixels(make("upscaled_thumbnail", pool, seed).image_bytes)
    source = pixels(pool[0].png_bytes)
    blocky = distinct_colour_count(array) <= 12 * 12
    mushy = laplacian_variance(array) < 0.25 * laplacian_variance(source)
    assert blocky or mushy


def test_upscaled_thumbnail_uses_both_nearest_and_bilinear(pool):
    distinct_colours = [
        distinct_colour_count(pixels(make("upscaled_thumbnail", pool, seed).image_bytes)) for seed in SEEDS
    ]
    assert min(distinct_colours) <= 144 < max(distinct_colours)


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_duplicate_repeats_bytes_and_caption(pool, seed):
    defect = make("exact_duplicate", pool, seed, source_index=3)
    assert defect.image_bytes == pool[3].png_bytes
    assert defect.caption == pool[3].caption


@pytest.mark.parametrize("seed", SEEDS)
def test_near_duplicate_is_close_but_not_identical(pool, seed):
    defect = make("near_duplicate", pool, seed, source_index=3)
    assert defect.image_bytes != pool[3].png_bytes
    assert defect.caption == pool[3].caption
    # "Close" the way a dedup scorer sees it: at thumbnail scale its nearest pool emoji is its source.
    distances = [np.abs(thumbnail(defect.image_bytes) - thumbnail(sample.png_bytes)).mean() for sample in pool]
    assert int(np.argmin(distances)) == 3
    assert distances[3] > 0


# ------------------------------------------------------------------------------ sides and default shares


def test_every_kind_has_a_side_and_caption_kinds_are_a_third_by_default():
    assert set(DEFECT_SIDES) == set(DEFECT_KINDS)
    assert set(DUPLICATE_KINDS) == {"exact_duplicate", "near_duplicate"}
    assert {kind for kind, side in DEFECT_SIDES.items() if side == "caption"} == set(CAPTION_KINDS)
    caption_weight = sum(DEFAULT_DEFECT_WEIGHTS[kind] for kind in CAPTION_KINDS)
    assert caption_weight / sum(DEFAULT_DEFECT_WEIGHTS.values()) == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------ caption-side defects


@pytest.mark.parametrize("kind", CAPTION_KINDS)
def test_caption_kinds_keep_the_clean_image_and_replace_the_caption(pool, kind):
    captions = set()
    for seed in SEEDS:
        defect = make(kind, pool, seed)
        assert defect.image_bytes == pool[0].png_bytes and defect.extension == "png"
        assert defect.caption.strip() and defect.caption != pool[0].caption
        defect.caption.encode("utf-8")
        captions.add(defect.caption)
    # Varied templates, not one fixed string per kind.
    assert len(captions) >= 4


def own_words(pool, index=0):
    return set(caption_words(pool[index].caption))


@pytest.mark.parametrize("seed", SEEDS)
def test_boilerplate_alt_text_comes_from_the_templates_and_says_nothing_about_the_image(pool, seed):
    caption = make("boilerplate_alt_text", pool, seed).caption
    patterns = [template.split("{")[0] for template in BOILERPLATE_TEMPLATES]
    assert any(caption.startswith(prefix) for prefix in patterns)
    assert not own_words(pool) & set(caption_words(caption))


def test_filename_captions_look_like_file_names(pool):
    captions = [make("filename_caption", pool, seed).caption for seed in range(40)]
    assert all(" " not in c or c.startswith(("Screenshot", "WhatsApp", "download", "unnamed", "emoji_u")) for c in captions)
    assert all(c.rsplit(".", 1)[-1].lower() in {"jpg", "jpeg", "png", "webp", "gif"} for c in captions)
    assert any(c.startswith("IMG_") for c in captions) and any(c.startswith("DSC") for c in captions)
    # Some reuse the item's own file stem, as a re-saved download does.
    assert any(c.startswith(pool[0].file_stem) for c in captions)


@pytest.mark.parametrize("seed", SEEDS)
def test_keyword_spam_is_many_tags_mostly_unrelated(pool, seed):
    caption = make("keyword_spam", pool, seed).caption
    tags = [tag.strip() for tag in caption.split(",")]
    assert len(tags) >= 8 and len(set(tags)) == len(tags)
    related = [tag for tag in tags if tag in own_words(pool)]
    assert len(related) <= 1
    assert sum(tag in SEO_TAGS for tag in tags) >= len(tags) // 3


@pytest.mark.parametrize("seed", SEEDS)
def test_non_descriptive_is_one_word(pool, seed):
    caption = make("non_descriptive", pool, seed).caption
    assert caption in NON_DESCRIPTIVE_WORDS and len(caption.split()) == 1


def test_gibberish_has_no_real_words_and_uses_several_styles(pool):
    captions = [make("gibberish", pool, seed).caption for seed in range(24)]
    vocabulary = {word for sample in pool for word in caption_words(sample.caption)} | set(SEO_TAGS)
    assert all(not set(caption_words(c)) & vocabulary for c in captions)
    has_space = [(" " in c) for c in captions]
    has_non_ascii = [not c.isascii() for c in captions]
    assert any(has_space) and not all(has_space) and any(has_non_ascii)


# ------------------------------------------------------------------------------ overlay / colour defects


def changed_mask(defect, pool, index=0, tolerance=8):
    return np.abs(pixels(defect.image_bytes) - pixels(pool[index].png_bytes)).max(axis=2) > tolerance


@pytest.mark.parametrize("kind", ["text_banner", "corner_logo", "tiled_watermark"])
@pytest.mark.parametrize("seed", SEEDS)
def test_overlays_keep_most_of_the_clean_image_and_its_caption(pool, kind, seed):
    defect = make(kind, pool, seed)
    assert defect.caption == pool[0].caption
    changed = changed_mask(defect, pool)
    assert 0.01 < changed.mean() < 0.6, f"{kind}: {changed.mean():.3f} of pixels changed"


@pytest.mark.parametrize("seed", SEEDS)
def test_corner_logo_stays_in_one_corner(pool, seed):
    rows, cols = np.nonzero(changed_mask(make("corner_logo", pool, seed), pool))
    assert rows.max() - rows.min() < 26 and cols.max() - cols.min() < 26
    near_edge = lambda values: values.min() < 4 or values.max() > 59
    assert near_edge(rows) and near_edge(cols)


@pytest.mark.parametrize("seed", SEEDS)
def test_tiled_watermark_covers_every_quadrant_faintly(pool, seed):
    defect = make("tiled_watermark", pool, seed)
    changed = changed_mask(defect, pool, tolerance=4)
    for quadrant in (changed[:32, :32], changed[:32, 32:], changed[32:, :32], changed[32:, 32:]):
        assert quadrant.mean() > 0.01
    # Semi-transparent: no pixel is replaced outright by the watermark colour over most of the image.
    assert np.abs(pixels(defect.image_bytes) - pixels(pool[0].png_bytes)).mean() < 40


def test_text_banner_uses_both_bands_and_floating_text(pool):
    band_rows = []
    for seed in range(16):
        changed = changed_mask(make("text_banner", pool, seed), pool)
        full_rows = np.flatnonzero(changed.mean(axis=1) > 0.9)
        band_rows.append(len(full_rows))
    assert max(band_rows) >= 10 and min(band_rows) < 10


@pytest.mark.parametrize("seed", SEEDS)
def test_colour_inverted_is_the_negative_of_the_clean_image(pool, seed):
    defect = make("colour_inverted", pool, seed)
    assert defect.caption == pool[0].caption
    np.testing.assert_array_equal(pixels(defect.image_bytes), 255 - pixels(pool[0].png_bytes))
