"""The sampling-free and the encoder-free metrics of one trained downstream model on the test split (issue 13):
`test_loss` (overall and by timestep band), `test_caption_gain` and `fwd`. Library code: no Kedro here.

`params` is the evaluate parameters' dict: `test_loss: {timesteps, noise_seed, batch_size, derangement_seed}` and
`fwd: {wavelet, level}`, each key optional.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from alchemist_kedro.evaluation.fwd import frechet_wavelet_distance
from alchemist_kedro.evaluation.heldout_loss import heldout_loss_metrics
from alchemist_kedro.models.proxy import ProxyT2I
from alchemist_kedro.models.t2i import to_uint8_images

# 6 = 2 timesteps per band: at 256 test pairs, own + deranged captions cost 3k UNet forwards, about a quarter of
# sampling the same captions (25 DDIM steps × 2 for CFG); CRN keeps arm differences stable at that K.
DEFAULT_TIMESTEPS = 6


def downstream_metrics(model: ProxyT2I, test: dict, generated_images: Sequence[np.ndarray], params: dict) -> dict:
    """{test_loss, test_loss_low_t/mid_t/high_t, test_loss_shuffled, test_caption_gain, test_loss_seconds, fwd}.

    `test`: join_split's layout (images (N, 3, R, R) in [-1, 1] at the model's resolution, tokens, mask, uids);
    `generated_images`: uint8 HxWx3, one per test caption, at the same resolution.
    """
    loss = dict(params.get("test_loss") or {})
    wavelet = dict(params.get("fwd") or {})
    began = time.perf_counter()
    metrics = heldout_loss_metrics(
        model, test, num_timesteps=int(loss.get("timesteps", DEFAULT_TIMESTEPS)),
        noise_seed=int(loss.get("noise_seed", 0)), batch_size=int(loss.get("batch_size", 256)),
        derangement_seed=int(loss.get("derangement_seed", 0)))
    metrics["test_loss_seconds"] = time.perf_counter() - began
    metrics["fwd"] = frechet_wavelet_distance(to_uint8_images(test["images"]), list(generated_images),
                                              wavelet=str(wavelet.get("wavelet", "haar")), level=wavelet.get("level"))
    return metrics
