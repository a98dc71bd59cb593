"""clarity, frequency, edge_density against values computed by hand on small synthetic images."""
import cv2
import numpy as np
import pytest

from alchemist_kedro.scorers import ScoreBatch, get_scorer
from alchemist_kedro.scorers.decode import decode_images, grayscale_float
from alchemist_kedro.scorers.frequency import high_frequency_share


def rgb(gray8: np.ndarray) -> np.ndarray:
    return np.repeat(gray8[..., None], 3, axis=2)


def score(name: str, images: list[np.ndarray], **params) -> np.ndarray:
    return get_scorer(name, **params).score_batch(ScoreBatch(uids=[str(i) for i in range(len(images))], images=images))


FLAT = rgb(np.full((64, 64), 137, np.uint8))
# 1-px checkerboard of 0 and 255, already at the short side (256): no resize.
CHECKERBOARD = rgb((np.indices((256, 256)).sum(axis=0) % 2 * 255).astype(np.uint8))
# Left half black, right half white.
VERTICAL_EDGE = rgb(np.where(np.arange(256)[None, :] < 128, 0, 255).astype(np.uint8).repeat(256, axis=0))


@pytest.fixture(scope="module")
def sharp_and_blurred() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    sharp = rgb(cv2.resize(blocks, (256, 256), interpolation=cv2.INTER_NEAREST))  # 8-px blocks: strong edges
    return sharp, cv2.GaussianBlur(sharp, (0, 0), 2.0)


def test_flat_image_scores_zero_on_every_statistic():
    assert score("clarity", [FLAT])[0] == pytest.approx(0.0, abs=1e-12)
    assert score("frequency", [FLAT])[0] == pytest.approx(0.0, abs=1e-9)
    assert score("edge_density", [FLAT])[0] == 0.0


def test_checkerboard_laplacian_variance_is_16():
    # Every pixel v in {0, 1} has 4 neighbours 1 - v (reflect-101 borders too): L = 4(1 - v) - 4v = +-4, mean 0.
    assert score("clarity", [CHECKERBOARD])[0] == pytest.approx(16.0, rel=1e-5)


def test_checkerboard_power_is_all_at_the_highest_frequency():
    # All power at (0.5, 0.5) cycles/px, radius 0.707 > 0.25, up to the Hann window's leakage to its neighbours.
    assert score("frequency", [CHECKERBOARD])[0] > 0.99


def test_vertical_edge_statistics():
    # Laplacian: +-1 on the two columns either side of the step, 0 elsewhere -> variance 2 * 256 / 256**2.
    assert score("clarity", [VERTICAL_EDGE])[0] == pytest.approx(2 / 256, rel=1e-5)
    # Canny with non-maximum suppression keeps one column of the 256 -> 1/256 of the pixels.
    assert score("edge_density", [VERTICAL_EDGE])[0] == pytest.approx(1 / 256)


def test_blur_lowers_clarity_frequency_and_edge_density(sharp_and_blurred):
    sharp, blurred = sharp_and_blurred
    for name in ("clarity", "frequency", "edge_density"):
        sharp_score, blurred_score = score(name, [sharp, blurred])
        assert blurred_score < sharp_score, name


def test_frequency_share_matches_a_direct_full_spectrum_computation():
    rng = np.random.default_rng(1)
    image = rng.random((24, 30))
    centred = image - image.mean()
    power = np.abs(np.fft.fft2(centred * np.outer(np.hanning(24), np.hanning(30)))) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(24), np.fft.fftfreq(30), indexing="ij"))
    expected = power[radius > 0.25].sum() / power[radius > 0].sum()
    assert high_frequency_share(image[None], 0.25)[0] == pytest.approx(expected, rel=1e-5)
    # Batched over a stack = one image at a time.
    stack = rng.random((3, 24, 30))
    batched = high_frequency_share(stack, 0.3, chunk=2)
    assert batched == pytest.approx([high_frequency_share(s[None], 0.3)[0] for s in stack], rel=1e-6)


def test_mixed_sizes_in_one_batch_score_like_separate_batches(sharp_and_blurred):
    sharp, _ = sharp_and_blurred
    wide = cv2.resize(sharp, (384, 256))
    together = score("frequency", [sharp, wide], short_side=128)
    apart = [score("frequency", [image], short_side=128)[0] for image in (sharp, wide)]
    assert together == pytest.approx(apart, rel=1e-6)


def test_grayscale_is_bt601_luma_resized_to_the_short_side():
    image = np.zeros((64, 96, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 200, 100, 50
    gray = grayscale_float(image, 256, "bilinear")
    assert gray.shape == (256, 384)
    assert gray.dtype == np.float32
    assert gray.mean() == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, rel=1e-5)
    assert grayscale_float(image, None, "bilinear").shape == (64, 96)


def test_settings_change_the_version_and_threads_do_not():
    assert get_scorer("clarity").version == get_scorer("clarity", short_side=256).version
    assert get_scorer("clarity").version != get_scorer("clarity", short_side=128).version
    assert get_scorer("frequency").version != get_scorer("frequency", cutoff=0.3).version
    assert get_scorer("clarity").version.startswith("clarity-")


def test_bad_settings_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="interpolation"):
        get_scorer("clarity", interpolation="fancy")
    with pytest.raises(TypeError, match="unknown settings"):
        get_scorer("clarity", cut_off=0.3)
    with pytest.raises(KeyError, match="registered scorers"):
        get_scorer("sharpness")
    with pytest.raises(ValueError, match="needs images"):
        get_scorer("clarity").score_batch(ScoreBatch(uids=["a"]))


def test_decode_images_reports_failures_per_row():
    ok, png = cv2.imencode(".png", cv2.cvtColor(VERTICAL_EDGE, cv2.COLOR_RGB2BGR))
    assert ok
    images, errors = decode_images([png.tobytes(), b"not an image", None])
    assert np.array_equal(images[0], VERTICAL_EDGE)  # RGB order, exact
    assert images[1] is None and images[2] is None
    assert errors[0] is None and errors[1].startswith("decode_error") and errors[2].startswith("decode_error")
