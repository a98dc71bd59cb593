"""Fréchet Wavelet Distance on image sets with known answers: zero against itself, growing with blur and noise."""
import numpy as np
import pytest
from scipy import ndimage

from alchemist_kedro.evaluation import frechet_wavelet_distance, wavelet_packets
from alchemist_kedro.evaluation.fwd import default_level
from tests.evaluation.images import coloured_shapes


def _blurred(images, sigma):
    return [np.clip(ndimage.gaussian_filter(x.astype(float), (sigma, sigma, 0)), 0, 255).round().astype(np.uint8)
            for x in images]


def _noisy(images, std, seed=0):
    rng = np.random.default_rng(seed)
    return [np.clip(x + rng.normal(0, std, x.shape), 0, 255).round().astype(np.uint8) for x in images]


def test_haar_packets_are_an_orthonormal_split_of_the_image():
    images = coloured_shapes(3, 16)
    packets = wavelet_packets(images)  # 16 px → level 2: 16 packets of 3 × 4 × 4
    assert packets.shape == (3, 16, 48)
    # Haar is orthonormal: the packets carry exactly the image's energy (pixels in [0, 1]).
    energy = (np.stack(images).astype(np.float64) / 255) ** 2
    np.testing.assert_allclose((packets**2).sum(axis=(1, 2)), energy.sum(axis=(1, 2, 3)), rtol=1e-10)
    # A flat image has all its energy in the approximation packet ("aa"), the first in natural order.
    flat = [np.full((16, 16, 3), 200, np.uint8)] * 2
    assert np.abs(wavelet_packets(flat)[:, 1:]).max() < 1e-12
    assert [default_level(s) for s in (8, 16, 32, 64, 256)] == [1, 2, 3, 4, 4]


def test_fwd_is_zero_against_itself_and_small_between_two_draws():
    real, other = coloured_shapes(200, 16, seed=0), coloured_shapes(200, 16, seed=7)
    assert frechet_wavelet_distance(real, real) == pytest.approx(0.0, abs=1e-8)
    same_distribution = frechet_wavelet_distance(real, other)
    assert 0 < same_distribution < frechet_wavelet_distance(real, _blurred(real, 1.0))


@pytest.mark.parametrize("degrade, strengths", [(_blurred, [0.5, 1.0, 2.0, 3.0]), (_noisy, [5, 10, 20, 40])])
def test_fwd_grows_monotonically_with_degradation(degrade, strengths):
    real = coloured_shapes(200, 16, seed=0)
    distances = [frechet_wavelet_distance(real, degrade(real, s)) for s in strengths]
    assert all(b > a for a, b in zip(distances, distances[1:])), distances
    assert distances[0] > 0


def test_fwd_rejects_sets_it_cannot_compare():
    real = coloured_shapes(4, 16)
    with pytest.raises(ValueError, match="differ in size"):
        frechet_wavelet_distance(real, coloured_shapes(4, 32))
    with pytest.raises(ValueError, match="at least 2 images"):
        frechet_wavelet_distance(real, real[:1])
    with pytest.raises(ValueError, match="level 5"):
        wavelet_packets(real, level=5)


def test_per_packet_distance_is_torchmetrics_frechet_distance():
    from alchemist_kedro.evaluation import frechet_distance
    from alchemist_kedro.evaluation.fwd import gaussian_frechet, packet_statistics

    real, generated = wavelet_packets(coloured_shapes(60, 16, seed=0)), wavelet_packets(_noisy(coloured_shapes(60, 16), 20))
    (mean_r, cov_r), (mean_g, cov_g) = packet_statistics(real), packet_statistics(generated)
    for packet in (0, 5, 15):
        assert gaussian_frechet(mean_r[packet], cov_r[packet], mean_g[packet], cov_g[packet]) == pytest.approx(
            frechet_distance(real[:, packet], generated[:, packet]), rel=1e-6, abs=1e-9)
