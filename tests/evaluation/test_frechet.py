"""fd_onsfw and the Fréchet-distance wiring through torchmetrics, checked against scipy on the same features."""
import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from alchemist_kedro.encoders.base import ImageEncoder
from alchemist_kedro.evaluation import (
    EncoderFeatures,
    fd_onsfw,
    fd_onsfw_from_features,
    frechet_distance,
    open_nsfw_features,
)
from tests.evaluation.images import coloured_shapes, pixel_noise

torch.set_num_threads(2)


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula, written out independently of torchmetrics."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


class ChannelStatistics(nn.Module):
    """A tiny extractor with torchmetrics' contract: uint8 NCHW in, (N, 6) per-channel mean and std out."""

    num_features = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.double().flatten(2) / 255
        return torch.cat([pixels.mean(-1), pixels.std(-1)], dim=1)


class ChannelHistogramEncoder(ImageEncoder):
    """A fast stand-in ImageEncoder (HWC uint8 list in): 4-bin histograms per channel, so layout bugs show."""

    name = "channel_histogram"
    dim = 12

    @property
    def fingerprint(self) -> str:
        return self.name

    def embed_images(self, images):
        rows = [np.concatenate([np.histogram(im[..., c], bins=4, range=(0, 256))[0] for c in range(3)]) / im[..., 0].size
                for im in images]
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def open_nsfw():
    pytest.importorskip("onnx", reason="the open_nsfw encoder needs the onnx package")
    from alchemist_kedro.encoders import OpenNSFWEncoder

    return OpenNSFWEncoder(batch_size=8, threads=2)


@pytest.fixture(scope="module")
def shapes():
    return coloured_shapes(16)


@pytest.fixture(scope="module")
def shape_and_noise_features(open_nsfw, shapes):
    """Open-NSFW features of 16 shapes then 8 noise images, computed once (the ResNet-50 is slow on CPU)."""
    return open_nsfw_features(shapes + pixel_noise(8), open_nsfw, batch_size=8)


def test_torchmetrics_with_a_custom_extractor_equals_scipy():
    real, fake = coloured_shapes(10, seed=3), pixel_noise(9)
    metric = FrechetInceptionDistance(feature=ChannelStatistics())
    to_tensor = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # noqa: E731
    metric.update(to_tensor(real), real=True)
    metric.update(to_tensor(fake), real=False)
    extractor = ChannelStatistics()
    expected = scipy_frechet(extractor(to_tensor(real)).numpy(), extractor(to_tensor(fake)).numpy())
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-6)


def test_frechet_distance_in_the_shared_span_is_exact_when_features_outnumber_images():
    rng = np.random.default_rng(0)
    # d = 64 > 10 + 12 rows: the span reduction is used; the distance must equal the full-space formula.
    real = rng.normal(size=(10, 64))
    generated = rng.normal(0.3, 1.5, size=(12, 64)) + rng.normal(size=64)
    assert frechet_distance(real, generated) == pytest.approx(scipy_frechet(real, generated), rel=1e-6)
    low_dim = rng.normal(size=(40, 5)), rng.normal(1.0, 2.0, size=(30, 5))  # no reduction: N > d
    assert frechet_distance(*low_dim) == pytest.approx(scipy_frechet(*low_dim), rel=1e-6)


def test_encoder_features_feed_torchmetrics_the_encoders_own_features():
    encoder = ChannelHistogramEncoder()
    real, fake = coloured_shapes(8, seed=5), pixel_noise(7, seed=9)
    metric = FrechetInceptionDistance(feature=EncoderFeatures(encoder))
    to_tensor = lambda images: torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # noqa: E731
    metric.update(to_tensor(real), real=True)
    metric.update(to_tensor(fake), real=False)
    expected = scipy_frechet(encoder.embed_images(real).astype(np.float64), encoder.embed_images(fake).astype(np.float64))
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-5)
    assert fd_onsfw(real, fake, encoder, batch_size=3) == pytest.approx(expected, rel=1e-5)


def test_mixed_image_sizes_keep_their_order():
    encoder = ChannelHistogramEncoder()
    images = coloured_shapes(3, size=32) + coloured_shapes(2, size=24, seed=4) + coloured_shapes(2, size=32, seed=6)
    np.testing.assert_allclose(open_nsfw_features(images, encoder, batch_size=2), encoder.embed_images(images), rtol=1e-6, atol=1e-6)


def test_fd_onsfw_of_a_set_with_itself_is_zero(open_nsfw, shapes):
    assert fd_onsfw(shapes[:6], shapes[:6], open_nsfw, batch_size=6) == pytest.approx(0.0, abs=1e-3)


def test_fd_onsfw_is_small_within_a_distribution_and_large_across(shape_and_noise_features):
    features = shape_and_noise_features
    first_half, second_half, noise = features[:8], features[8:16], features[16:]
    within = fd_onsfw_from_features(first_half, second_half)
    across = fd_onsfw_from_features(first_half, noise)
    assert 0 < within < 0.5 * across
    assert fd_onsfw_from_features(features[:16], features[:16]) == pytest.approx(0.0, abs=1e-3)


def test_bad_inputs_are_refused(open_nsfw):
    with pytest.raises(ValueError, match="at least 2"):
        fd_onsfw(coloured_shapes(1), coloured_shapes(3), open_nsfw)
    with pytest.raises(ValueError, match="1024"):
        fd_onsfw_from_features(np.zeros((4, 12)), np.zeros((4, 12)))
