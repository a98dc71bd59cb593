"""The evaluate stage's metrics (issue 6; method.md "Evaluation at our scale"). Library code: no Kedro here.

- `fd_onsfw`: Fréchet distance between real and generated images in the Open-NSFW ResNet-50 pooled-feature space,
  through torchmetrics' `FrechetInceptionDistance` with a custom feature extractor. NOT comparable to published FID
  (different network, different feature space, tiny sample counts): always report it under this name.
- `alignment`: mean cosine of (image, caption) in a contrastive projection fitted on clean validation pairs
  (models/alignment.py); the same score on real test pairs is its ceiling.
- The published metrics (Inception FID, CLIP-score) live in evaluation/published.py, outside the pipeline path.
- `mean_ci95` / `summarise_over_seeds`: mean ± 95% t-interval over seeds for the compare table.

Images everywhere are what the encoders take: a sequence of uint8 HxWx3 RGB numpy arrays.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from alchemist_kedro.encoders.base import ImageEncoder, check_images
from alchemist_kedro.models.alignment import AlignmentModel, alignment_scores

class EncoderFeatures(nn.Module):
    """Adapts an `ImageEncoder` (e.g. OpenNSFWEncoder) to torchmetrics' custom-feature-extractor contract.

    torchmetrics calls `forward` with the same uint8 (N, 3, H, W) tensor it was given and reads `num_features` to size
    its running sums (without it, it would push a random dummy image through the network to find out).
    """

    def __init__(self, encoder: ImageEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = int(encoder.dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        arrays = list(images.permute(0, 2, 3, 1).contiguous().cpu().numpy())
        # float64: torchmetrics accumulates in float64 but casts its result back to the features' dtype.
        return torch.from_numpy(self.encoder.embed_images(arrays)).double()


class PrecomputedFeatures(nn.Module):
    """Identity 'extractor': lets torchmetrics' FID run on features computed earlier (e.g. cached by a node)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}) features, got {tuple(features.shape)}")
        return features.double()


def same_shape_batches(images: Sequence[np.ndarray], batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 (n, 3, H, W) tensors of at most batch_size images; a new batch starts where the image size changes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(image)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def check_image_set(images: Sequence[np.ndarray], name: str) -> None:
    if len(images) < 2:
        raise ValueError(f"{name}: a Fréchet distance needs at least 2 images per set, got {len(images)}")
    check_images(images)


def _shared_span(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets in an orthonormal basis of the span of their centred rows and the mean difference.

    The Fréchet distance only sees ||μ_r - μ_g||² and traces of functions of the covariances, all unchanged by an
    orthogonal change of basis; both covariances vanish outside that span, so it is exact there. With N images and
    d = 1024 features the span has dim ≤ N_r + N_g - 1: torchmetrics' general eigendecomposition then costs
    milliseconds instead of tens of seconds on 2 CPU cores.
    """
    real_mean, generated_mean = real.mean(0), generated.mean(0)
    spanning = np.concatenate([real - real_mean, generated - generated_mean, (real_mean - generated_mean)[None]])
    if len(spanning) >= real.shape[1]:
        return real, generated
    _, singular, basis = np.linalg.svd(spanning, full_matrices=False)
    keep = singular > singular.max(initial=0.0) * max(spanning.shape) * np.finfo(np.float64).eps
    if not keep.any():  # two identical constant sets: any one axis gives the (zero) distance
        keep[0] = True
    basis = basis[keep]
    return real @ basis.T, generated @ basis.T


def frechet_distance(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    """Fréchet distance between two (N, d) feature sets by torchmetrics' FID maths, in float64.

    Exact, computed in the sets' shared span (see `_shared_span`) when that is smaller than d.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = np.asarray(real_features, dtype=np.float64)
    generated = np.asarray(generated_features, dtype=np.float64)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"expected two (N, d) arrays of one d, got shapes {real.shape} and {generated.shape}")
    if len(real) < 2 or len(generated) < 2:
        raise ValueError("a Fréchet distance needs at least 2 rows per set")
    if not (np.isfinite(real).all() and np.isfinite(generated).all()):
        raise ValueError("features contain NaN or inf")
    real, generated = _shared_span(real, generated)
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(torch.from_numpy(np.ascontiguousarray(real)), real=True)
    metric.update(torch.from_numpy(np.ascontiguousarray(generated)), real=False)
    return float(metric.compute())


def fd_onsfw_metric(encoder: ImageEncoder):
    """torchmetrics' FID object with the Open-NSFW extractor, for streaming use (`update(uint8 NCHW, real=)`).

    Exact but it eigendecomposes a 1024×1024 matrix at `compute` (tens of seconds on 2 cores); `fd_onsfw` gives the
    same number from the same features in the reduced span.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(feature=EncoderFeatures(encoder))


def open_nsfw_features(images: Sequence[np.ndarray], encoder: ImageEncoder, batch_size: int = 16) -> np.ndarray:
    """float64 (N, dim) features through `EncoderFeatures`, i.e. exactly what the torchmetrics metric would see."""
    check_images(images)
    extractor = EncoderFeatures(encoder)
    parts = [extractor(batch).numpy() for batch in same_shape_batches(images, batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, extractor.num_features))


def fd_onsfw(real_images: Sequence[np.ndarray], generated_images: Sequence[np.ndarray],
             encoder: ImageEncoder | None = None, batch_size: int = 16) -> float:
    """Fréchet distance in Open-NSFW feature space; `encoder` defaults to a new OpenNSFWEncoder (build it once and
    pass it when scoring many sets: loading the ResNet-50 costs seconds).

    With N images and 1024 features the covariances are rank ≤ N-1, so the value carries a large finite-sample bias:
    compare arms only at equal N (same test captions, same real set), never against published FIDs.
    """
    if encoder is None:
        from alchemist_kedro.encoders.open_nsfw import OpenNSFWEncoder

        encoder = OpenNSFWEncoder(batch_size=batch_size)
    check_image_set(real_images, "real_images")
    check_image_set(generated_images, "generated_images")
    return frechet_distance(open_nsfw_features(real_images, encoder, batch_size),
                            open_nsfw_features(generated_images, encoder, batch_size))


def fd_onsfw_from_features(real_features: np.ndarray, generated_features: np.ndarray) -> float:
    """`fd_onsfw` on Open-NSFW features already computed (the evaluate pipeline needs them for `alignment` too)."""
    for name, features in (("real_features", real_features), ("generated_features", generated_features)):
        if np.ndim(features) != 2 or np.shape(features)[1] != 1024:
            raise ValueError(f"{name}: expected Open-NSFW (N, 1024) features, got shape {np.shape(features)}")
    return frechet_distance(real_features, generated_features)


def alignment(model: AlignmentModel, image_features: np.ndarray, text_features: np.ndarray) -> float:
    """Mean per-pair cosine in the frozen alignment space: row i of each array is one image and its caption."""
    return float(np.mean(alignment_scores(model, image_features, text_features)))


def alignment_with_ceiling(model: AlignmentModel, generated_image_features: np.ndarray,
                           real_image_features: np.ndarray, caption_features: np.ndarray) -> dict[str, float]:
    """`alignment` of generated images with their captions, and of the real test images with the same captions."""
    return {
        "alignment": alignment(model, generated_image_features, caption_features),
        "alignment_ceiling": alignment(model, real_image_features, caption_features),
    }


def mean_ci95(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the Student-t interval over seeds; half-width is NaN with fewer than 2 values."""
    from scipy import stats

    array = np.asarray(values, dtype=np.float64)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan"), float("nan")
    mean = float(array.mean())
    if array.size < 2:
        return mean, float("nan")
    # ddof=1: the seeds are a sample, and the t quantile with n-1 dof assumes the unbiased variance.
    sem = float(array.std(ddof=1)) / np.sqrt(array.size)
    return mean, float(stats.t.ppf(0.5 + confidence / 2, df=array.size - 1) * sem)


def summarise_over_seeds(runs, by: str | Sequence[str], metrics: Sequence[str], confidence: float = 0.95):
    """One row per group (e.g. per arm): `<metric>_mean`, `<metric>_ci95` (half-width), and `n_seeds`.

    `runs` is a pandas DataFrame with one row per arm × seed.
    """
    import pandas as pd

    keys = [by] if isinstance(by, str) else list(by)
    missing = [c for c in [*keys, *metrics] if c not in runs.columns]
    if missing:
        raise ValueError(f"summarise_over_seeds: columns {missing} not in {list(runs.columns)}")
    rows = []
    for group, frame in runs.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,), strict=True))
        row["n_seeds"] = len(frame)
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci95(frame[metric].to_numpy(), confidence)
        rows.append(row)
    return pd.DataFrame(rows)
