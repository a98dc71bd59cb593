"""Fréchet Wavelet Distance (Veeramacheneni et al., "Fréchet Wavelet Distance: A Domain-Agnostic Metric for Image
Generation", ICLR 2025), written from its definition with PyWavelets. Library code: no Kedro here.

FWD needs no pretrained network, so unlike fd_onsfw it carries no feature-space bias of its own:
1. every image (RGB scaled to [0, 1]) goes through a full 2-D wavelet packet transform of level L, giving 4^L
   packets (every path of approximation / horizontal / vertical / diagonal filters), each of side H / 2^L;
2. per packet, the coefficients of all channels are one vector per image, and a Fréchet distance is taken between
   the real and the generated vectors' Gaussian statistics;
3. FWD is the mean of the 4^L per-packet distances.

The paper's setting is Haar at level 4 for 256-px images (packets of 16×16). At 16–64 px that level would leave
1-px packets, so the default level keeps packets at 4×4 (level 2 at 16 px, 3 at 32 px) and is capped at the paper's
4: each packet is then a 48-d vector, a covariance that a few hundred test images estimate. Values at different
sizes or levels are not comparable; compare arms at one setting.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alchemist_kedro.encoders.base import check_images

PAPER_LEVEL = 4
PACKET_SIDE = 4  # pixels per packet side that the default level aims for at small sizes


def default_level(size: int) -> int:
    """The decomposition level for square images of side `size`: 4×4-px packets, at most the paper's level 4."""
    if size < 2:
        raise ValueError(f"a wavelet packet transform needs images of at least 2 px, got {size}")
    return int(max(1, min(PAPER_LEVEL, math.floor(math.log2(size / PACKET_SIDE)))))


def _as_unit_float(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 HxWx3 images → float64 (N, 3, H, W) in [0, 1] (the reference scales as torchvision's ToTensor)."""
    check_images(images)
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"FWD needs images of one size, got {sorted(shapes)}")
    return np.stack(images).astype(np.float64).transpose(0, 3, 1, 2) / 255.0


def wavelet_packets(images: Sequence[np.ndarray], wavelet: str = "haar", level: int | None = None,
                    mode: str = "reflect") -> np.ndarray:
    """(N, 4^level, 3 · h · w) packet coefficients, packets in natural order (a, h, v, d at every level).

    `mode` is the border extension; it does not matter for Haar on even sizes (no filter overlaps the border).
    """
    import pywt

    array = _as_unit_float(images)
    height, width = array.shape[2:]
    level = default_level(min(height, width)) if level is None else int(level)
    if level < 1 or min(height, width) < 2**level:
        raise ValueError(f"level {level} needs images of at least {2 ** max(level, 1)} px, got {height}×{width}")
    nodes = [array]
    for _ in range(level):
        children = []
        for node in nodes:
            approximation, (horizontal, vertical, diagonal) = pywt.dwt2(node, wavelet, mode=mode, axes=(-2, -1))
            children += [approximation, horizontal, vertical, diagonal]
        nodes = children
    return np.stack([node.reshape(len(array), -1) for node in nodes], axis=1)


def packet_statistics(packets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, P, d) packets → per-packet means (P, d) and unbiased covariances (P, d, d), as the reference keeps them."""
    if len(packets) < 2:
        raise ValueError(f"packet statistics need at least 2 images, got {len(packets)}")
    mean = packets.mean(axis=0)
    centred = packets - mean
    return mean, np.einsum("npi,npj->pij", centred, centred) / (len(packets) - 1)


def gaussian_frechet(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray) -> float:
    """||μa − μb||² + tr Σa + tr Σb − 2 tr (Σa Σb)^½, the trace root from the eigenvalues of Σa Σb.

    The same maths as torchmetrics' FID (`frechet_distance`), here in numpy: FWD takes 4^L of them on small
    matrices, where torchmetrics' per-call overhead would dominate.
    """
    eigenvalues = np.linalg.eigvals(cov_a @ cov_b)
    root_trace = np.sqrt(np.clip(eigenvalues.real, 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * root_trace)


def frechet_wavelet_distance(real_images: Sequence[np.ndarray], generated_images: Sequence[np.ndarray],
                             wavelet: str = "haar", level: int | None = None) -> float:
    """FWD between two sets of uint8 HxWx3 images of one size; 0 for identical sets, lower is better."""
    for name, images in (("real_images", real_images), ("generated_images", generated_images)):
        if len(images) < 2:
            raise ValueError(f"{name}: FWD needs at least 2 images per set, got {len(images)}")
    if real_images[0].shape != generated_images[0].shape:
        raise ValueError(f"real {real_images[0].shape} and generated {generated_images[0].shape} images differ in "
                         "size: resize one set first (FWD compares packets position by position)")
    real_mean, real_cov = packet_statistics(wavelet_packets(real_images, wavelet, level))
    generated_mean, generated_cov = packet_statistics(wavelet_packets(generated_images, wavelet, level))
    return float(np.mean([gaussian_frechet(real_mean[p], real_cov[p], generated_mean[p], generated_cov[p])
                          for p in range(len(real_mean))]))
