"""A throwaway copy of the project (conf/base as shipped, tiny rater knobs) with small real sample and feature
shards, and one real `kedro run --pipelines rater,select` through the CLI into a temp MLflow store (sqlite)."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from alchemist_kedro.hashing import row_digests
import yaml
from PIL import Image

from alchemist_kedro.schemas import FEATURE_SCHEMA, QUARANTINE_SCHEMA, SAMPLE_SCHEMA

REPO = Path(__file__).resolve().parents[1]
TOKENS, TOKEN_DIM, IMAGE_DIM, TEXT_DIM = 4, 32, 12, 6
PATCH_CELLS = 2  # patch_emb: cells of globals.yml's patch_dim (128)
DEFECTS = ("blank", "noise", "blur")


def _png(rng: np.random.Generator, defect: str | None) -> bytes:
    if defect == "blank":
        pixels = np.full((64, 64, 3), 250, np.uint8)
    elif defect == "noise":
        pixels = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    else:
        pixels = np.full((64, 64, 3), 240, np.uint8)
        pixels[16:48, 16:48] = rng.integers(0, 255, 3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_data(project: Path, n_pool: int = 48, n_val: int = 12, n_test: int = 6) -> None:
    """Two shards of samples + features in the real schemas; DataComp-style 32-hex uids; a quarantine table."""
    rng = np.random.default_rng(0)
    splits = ["pool"] * n_pool + ["val"] * n_val + ["test"] * n_test
    samples, features = [], []
    for i, split in enumerate(splits):
        uid = f"{int(rng.integers(0, 2**62)):016x}{int(rng.integers(0, 2**62)):016x}"
        defect = DEFECTS[i % 3] if split == "pool" and i % 4 == 0 else None
        samples.append({"uid": uid, "caption": f"sample {i} ({defect or 'clean'})", "image": _png(rng, defect),
                        "width": 64, "height": 64, "sha256": f"{i:064x}", "source": "tiny", "split": split,
                        "location": f"tiny.tar/{i}", "shard": f"{i % 2:05d}", "defect": defect,
                        "duplicate_group": None})
        features.append({"uid": uid, "image_emb": rng.normal(size=IMAGE_DIM).astype(np.float32),
                         "text_emb": rng.normal(size=TEXT_DIM).astype(np.float32),
                         "text_tokens": rng.normal(size=TOKENS * TOKEN_DIM).astype(np.float32),
                         "text_mask": np.array([1, 1, 1, 0], np.int8),
                         "patch_emb": rng.normal(size=PATCH_CELLS * 128).astype(np.float32), "fingerprint": "fp",
                         "source_digest": row_digests([samples[-1]["sha256"]], [samples[-1]["caption"]])[0]})
    samples, features = pd.DataFrame(samples), pd.DataFrame(features)
    for folder in ("03_primary/samples", "04_feature/features"):
        (project / "data" / folder).mkdir(parents=True)
    for shard in ("00000", "00001"):
        rows = samples["shard"] == shard
        samples[rows].to_parquet(project / f"data/03_primary/samples/tiny__{shard}.parquet", schema=SAMPLE_SCHEMA,
                                 index=False)
        features[rows.to_numpy()].to_parquet(project / f"data/04_feature/features/tiny__{shard}.parquet",
                                             schema=FEATURE_SCHEMA, index=False)
    pd.DataFrame({"uid": ["broken"], "source": ["tiny"], "location": ["tiny.tar/x"], "shard": ["00000"],
                  "reason": ["decode_error"], "detail": ["truncated PNG"]}).to_parquet(
        project / "data/03_primary/quarantine.parquet", schema=QUARANTINE_SCHEMA, index=False)


def build(root: Path) -> Path:
    project = root / "project"
    shutil.copytree(REPO / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # Kedro requires it; the package comes from the installed / PYTHONPATH copy
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    write_data(project)
    local = {
        "rater": {
            "threads": 1,
            "checkpoint_dir": "data/06_models/rater_checkpoints",
            "proxy": {"resolution": 16, "block_out_channels": [16, 32],
                      "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                      "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
                      "cross_attention_dim": TOKEN_DIM},
            "model": {"hidden_dim": 8, "group_hidden_dim": 4},
            "training": {"warmup_steps": 2, "meta_steps": 3, "batch_size": 8, "val_batch_size": 4,
                         "checkpoint_every": 2, "trace_every": 1, "probe_size": 12, "ul_start": 0.5},
        },
        "select": {"contact_sheet": {"per_band": 3}},
    }
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    return project


def kedro_run(project: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALCHEMIST_MLFLOW_URI": tracking_uri, "KEDRO_DISABLE_TELEMETRY": "true",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    kedro = Path(sys.executable).parent / "kedro"
    result = subprocess.run([str(kedro), "run", *args], cwd=project, env=env, capture_output=True, text=True,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result
