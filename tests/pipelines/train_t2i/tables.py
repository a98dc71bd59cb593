"""Tiny sample / feature / manifest tables in the real schemas (PartitionedDataset-style {name: loader})."""
import io

import numpy as np
import pandas as pd
from PIL import Image

from tests.conf_values import base_params

TOKENS, TOKEN_DIM = 4, 32
COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 30)]


def png(colour, size=32):
    buf = io.BytesIO()
    image = Image.new("RGB", (size, size), (245, 245, 245))
    image.paste(Image.new("RGB", (size // 2, size // 2), colour), (size // 4, size // 4))
    image.save(buf, format="PNG")
    return buf.getvalue()


def tables(n_pool=32, n_val=12, n_test=8):
    """Pool/val/test rows of 4 coloured squares; tokens and text_emb encode the colour (plus noise)."""
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(4, TOKENS * TOKEN_DIM)).astype(np.float32)
    text_codes = rng.normal(size=(4, 24)).astype(np.float32)
    image_codes = np.abs(rng.normal(size=(4, 1024))).astype(np.float32)
    rows, feats = [], []
    for i, split in enumerate(["pool"] * n_pool + ["val"] * n_val + ["test"] * n_test):
        uid, c = f"u{i:03d}", i % 4
        rows.append({"uid": uid, "caption": f"a {['red', 'green', 'blue', 'yellow'][c]} square", "image": png(COLOURS[c]),
                     "split": split, "source": "fixture", "location": "x", "defect": None})
        feats.append({"uid": uid, "image_emb": image_codes[c] + 0.1 * np.abs(rng.normal(size=1024)).astype(np.float32),
                      "text_emb": text_codes[c] + 0.1 * rng.normal(size=24).astype(np.float32),
                      "text_tokens": codes[c], "text_mask": np.array([1, 1, 1, 0], np.int8), "fingerprint": "fp"})
    samples, features = pd.DataFrame(rows), pd.DataFrame(feats)
    return ({"a": lambda: samples.iloc[:20], "b": lambda: samples.iloc[20:]},
            {"a": lambda: features.iloc[:25], "b": lambda: features.iloc[25:]})


def manifest(n_pool=32, selected_every=1):
    uids = [f"u{i:03d}" for i in range(n_pool)]
    return pd.DataFrame({"uid": uids, "score": np.linspace(1, 0, n_pool), "percentile": np.linspace(0, 1, n_pool),
                         "selected": [i % selected_every == 0 for i in range(n_pool)]})


def t2i_params(tmp_path, epochs=1.0):
    return base_params(
        "train_t2i",
        threads=1,
        checkpoint_dir=str(tmp_path / "t2i_ckpt"),
        model={"resolution": 16, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
               "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 8,
               "cross_attention_dim": TOKEN_DIM, "attention_heads": 2, "sample_steps": 3, "guidance_scale": 2.0},
        training={"epochs": epochs, "batch_size": 8, "checkpoint_every": 2, "lr_warmup_steps": 1},
        grid={"uids": None, "count": 4, "columns": 2},
    )
