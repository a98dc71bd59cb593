"""A small synthetic pool for the rater tests: clean = smooth coloured shapes with a matching caption; defects =
pure-noise images and captions naming the wrong colour; val = clean. Features come from a toy "encoder" that, like a
pretrained one, sees colour layout and high-frequency energy."""
from __future__ import annotations

import numpy as np
import torch

from alchemist_kedro.models.proxy import ProxyConfig
from tests.conf_values import base_params

COLOURS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], dtype=np.float32)
RES, TOKEN_DIM, TOKENS = 16, 32, 4


def tiny_proxy_config(**overrides) -> ProxyConfig:
    cfg = dict(
        resolution=RES,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        cross_attention_dim=TOKEN_DIM,
        attention_heads=2,
        space="pixels",  # the fixture's images are pixels; tests of the embedding prior ask for it
        patch_cells=False,  # the fixture's features carry no patch_emb; the patch-prior test asks for it
    )
    cfg.update(overrides)
    return ProxyConfig(**base_params("rater.proxy", **cfg))


def _image(rng, colour, shape):
    yy, xx = np.mgrid[0:RES, 0:RES].astype(np.float32)
    cy, cx = rng.uniform(5, RES - 5, size=2)
    r = rng.uniform(3, 5)
    if shape == 0:
        inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2
    else:
        inside = (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    img = np.zeros((3, RES, RES), np.float32) - 0.2
    img[:, inside] = COLOURS[colour][:, None] * 0.9
    return img


def _toy_image_features(img):
    pooled = img.reshape(3, 4, RES // 4, 4, RES // 4).mean(axis=(2, 4)).ravel()
    lap = img[:, 1:-1, 1:-1] * 4 - img[:, :-2, 1:-1] - img[:, 2:, 1:-1] - img[:, 1:-1, :-2] - img[:, 1:-1, 2:]
    return np.concatenate([pooled, (lap**2).mean(axis=(1, 2))])


def make_data(n_pool=256, n_val=64, seed=0, defect_share=0.5):
    rng = np.random.default_rng(seed)
    vocab = rng.normal(size=(len(COLOURS) + 2 + 1, TOKEN_DIM)).astype(np.float32)  # colours, shapes, "a"

    def build(n, allow_defects):
        images, tokens, feats, defects = [], [], [], []
        for i in range(n):
            colour, shape = rng.integers(len(COLOURS)), rng.integers(2)
            defect = None
            if allow_defects:
                u = rng.random()
                defect = "noise" if u < defect_share / 2 else ("mismatch" if u < defect_share else None)
            img = rng.uniform(-1, 1, (3, RES, RES)).astype(np.float32) if defect == "noise" else _image(rng, colour, shape)
            said = (colour + rng.integers(1, len(COLOURS))) % len(COLOURS) if defect == "mismatch" else colour
            tok = np.stack([vocab[said], vocab[len(COLOURS) + shape], vocab[-1], np.zeros(TOKEN_DIM, np.float32)])
            images.append(img)
            tokens.append(tok)
            feats.append(np.concatenate([_toy_image_features(img), tok[:3].mean(0)]))
            defects.append(defect)
        mask = np.tile(np.array([1, 1, 1, 0], np.int64), (n, 1))
        return (torch.tensor(np.stack(images)), torch.tensor(np.stack(tokens)), torch.tensor(mask),
                torch.tensor(np.stack(feats).astype(np.float32)), defects)

    px, pt, pm, pf, pd = build(n_pool, True)
    vx, vt, vm, vf, _ = build(n_val, False)
    data = {
        "pool_images": px, "pool_tokens": pt, "pool_mask": pm, "pool_features": pf,
        "pool_uids": [f"pool-{i:05d}" for i in range(n_pool)],
        "val_images": vx, "val_tokens": vt, "val_mask": vm, "val_features": vf,
        "val_uids": [f"val-{i:05d}" for i in range(n_val)],
    }
    return data, pd
