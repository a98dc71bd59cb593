from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from alchemist_kedro.corpus.defects import DEFECT_KINDS, DEFECT_MAKERS, EmojiSample, flatten_on_white

from .conftest import SUBCATEGORIES, draw_fake_emoji

SEEDS = range(8)


@pytest.fixture(scope="module")
def pool() -> list[EmojiSample]:
    return [
        EmojiSample(
            f"1F{600 + index}", f"an emoji of a thing number {index}", SUBCATEGORIES[index % 5], draw_fake_emoji(index)
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
    assert len(DEFECT_KINDS) == 10
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
