"""The published metrics, for a user who has their weights locally: Inception FID (torch-fidelity's Inception-v3) and
CLIP-score (torchmetrics' CLIPScore on a local CLIP folder). Not on any pipeline's path: no node calls them, so their
heavy dependencies stay optional. Nothing is ever downloaded: a missing path fails here, naming it.

Images are what the encoders take: a sequence of uint8 HxWx3 RGB numpy arrays.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from alchemist_kedro.encoders.base import check_images
from alchemist_kedro.evaluation.metrics import check_image_set, same_shape_batches, frechet_distance

INCEPTION_FEATURES = 2048


@contextmanager
def _weights_only_torch_load() -> Iterator[None]:
    # torch-fidelity 0.4 loads a local Inception file with weights_only off, i.e. full unpickling of a
    # user-supplied file; torch's override variable forces every torch.load in this block to the safe loader.
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def inception_fid_metric(weights_path: str | os.PathLike[str]):
    """torchmetrics' 2048-d Inception FID built from a LOCAL torch-fidelity weights file, never the download.

    The file is torch-fidelity's `pt_inception-2015-12-05-6726825d.pth` (a plain state dict), fetched by the user on a
    machine with network. Needs the torch-fidelity package (`pip install torch-fidelity==0.4.0`).
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"inception_fid: Inception weights file not found: {path}")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError as error:
        raise ModuleNotFoundError(
            "inception_fid needs torch-fidelity (pip install torch-fidelity==0.4.0, which imports torchvision); "
            "or leave it unset and read fd_onsfw"
        ) from error
    from torchmetrics.image.fid import FrechetInceptionDistance

    with _weights_only_torch_load():
        return FrechetInceptionDistance(feature=INCEPTION_FEATURES, feature_extractor_weights_path=str(path))


def inception_fid(real_images: Sequence[np.ndarray], generated_images: Sequence[np.ndarray],
                  weights_path: str | os.PathLike[str], batch_size: int = 16) -> float:
    """The published FID (Inception-v3 pool3, 2048-d) from local weights; torch-fidelity resizes to 299 itself.

    Features come from torchmetrics' own Inception module; the distance is `frechet_distance` (same maths, in the
    sets' shared span, so small sets do not pay for a 2048×2048 eigendecomposition).
    """
    check_image_set(real_images, "real_images")
    check_image_set(generated_images, "generated_images")
    inception = inception_fid_metric(weights_path).inception

    def features(images: Sequence[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            parts = [inception(batch).double().numpy() for batch in same_shape_batches(images, batch_size)]
        return np.concatenate(parts)

    return frechet_distance(features(real_images), features(generated_images))


class _CLIPFeatureTensors(nn.Module):
    """CLIPModel whose get_*_features return tensors again.

    transformers 5 returns a BaseModelOutputWithPooling (projected features in `pooler_output`) where torchmetrics
    1.9's CLIPScore expects the tensor transformers 4 returned; unwrapped, CLIPScore fails on `.norm`.
    """

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    @property
    def config(self):
        return self.clip.config

    @staticmethod
    def _tensor(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.clip.get_text_features(*args, **kwargs))


def _local_clip_loader(model_dir: str | os.PathLike[str]) -> Callable[[], tuple]:
    from alchemist_kedro.encoders.clip import resolve_model_dir

    folder = resolve_model_dir(model_dir, "clip_score")

    def load() -> tuple:
        from transformers import CLIPModel, CLIPProcessor

        model, info = CLIPModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        # Missing towers would load as random weights with only a log line; a CLIP-score from them is meaningless.
        if info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(f"clip_score: {folder} lacks {len(missing)} CLIPModel weights, e.g. {missing[:3]}")
        return _CLIPFeatureTensors(model.eval()), CLIPProcessor.from_pretrained(str(folder), local_files_only=True)

    return load


def clip_score_metric(model_dir: str | os.PathLike[str]):
    """torchmetrics' CLIPScore on a local CLIP folder (config, weights, tokenizer, image processor).

    torchmetrics only accepts a few hub ids as strings (and would download them); a loader callable is its supported
    way to hand over a model, so the folder is loaded here with local_files_only=True.
    """
    from torchmetrics.multimodal.clip_score import CLIPScore

    return CLIPScore(model_name_or_path=_local_clip_loader(model_dir))


def clip_score(images: Sequence[np.ndarray], captions: Sequence[str], model_dir: str | os.PathLike[str],
               batch_size: int = 16) -> float:
    """Mean CLIP-score (100 × cosine, floored at 0, as torchmetrics defines it) of each image with its caption."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions: they must be paired")
    if not images:
        raise ValueError("clip_score needs at least one image")
    check_images(images)
    metric = clip_score_metric(model_dir)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images[start:start + batch_size]]
            metric.update(chunk, list(captions[start:start + batch_size]))
    return float(metric.compute())
