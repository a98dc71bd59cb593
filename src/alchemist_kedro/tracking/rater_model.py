"""The trained rater as an MLflow pyfunc model: a table of image/text features in, instance scores out.

Logged as a "model from code" (MLflow runs rater_pyfunc_entry.py at load): nothing is pickled, the only artifact is
the safetensors file (weights + config), and the scoring is the select pipeline's (scorers.rater.RaterScorer).
Loading needs this package installed (the project's environment).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import DataType
from mlflow.types.schema import Array, ColSpec, Schema
from safetensors import safe_open
from safetensors.torch import save_file

ENTRY_POINT = Path(__file__).with_name("rater_pyfunc_entry.py")
# Same header key as datasets.torch_safetensors, so the logged file also loads with the project's dataset.
CONFIG_KEY = "config_json"
FEATURE_COLUMNS = ("image_emb", "text_emb")


def feature_matrix(frame: pd.DataFrame, columns: tuple[str, ...] = FEATURE_COLUMNS) -> np.ndarray:
    """(N, F) float32 image_emb ⊕ text_emb [⊕ patch_emb] (FEATURE_SCHEMA's columns), the rater's input, as select
    builds it."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"rater input lacks columns {missing}; it needs {list(columns)} (features table)")
    if not len(frame):
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate([np.stack(frame[c].map(lambda v: np.asarray(v, np.float32)).to_list()) for c in columns],
                          axis=1)


def rater_signature(patches: bool = False) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(Array(DataType.float), name)
                       for name in FEATURE_COLUMNS + (("patch_emb",) if patches else ())]),
        outputs=Schema([ColSpec(DataType.double, "score")]),
    )


def write_rater_file(artifact: dict, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in artifact["state_dict"].items()}
    save_file(state, str(path), metadata={CONFIG_KEY: json.dumps(artifact["config"], sort_keys=True)})


def read_rater_file(path: str | Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()[CONFIG_KEY])
        state = {k: f.get_tensor(k) for k in f.keys()}
    return {"state_dict": state, "config": config}


class RaterPyfunc(PythonModel):
    """predict(table with image_emb, text_emb) → DataFrame(score): the rater's instance logit, higher = better."""

    def load_context(self, context) -> None:
        from alchemist_kedro.scorers.rater import RaterScorer

        config = context.model_config or {}
        columns = FEATURE_COLUMNS + (("patch_emb",) if config.get("patch_emb_dim") else ())
        self.layout = {c: config.get(f"{c}_dim") for c in columns}
        self.scorer = RaterScorer(read_rater_file(context.artifacts["rater"]),
                                  batch_size=int(config.get("batch_size", 4096)))

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from alchemist_kedro.scorers.base import ScoreBatch

        frame = pd.DataFrame(model_input)
        for column, dim in self.layout.items():
            widths = set(frame[column].map(len)) if len(frame) else set()
            if dim is not None and widths - {dim}:
                raise ValueError(f"{column} has widths {sorted(widths)}; this rater was trained on {dim}")
        features = feature_matrix(frame, tuple(self.layout))
        uids = [str(i) for i in range(len(frame))]
        scores = self.scorer.score_batch(ScoreBatch(uids=uids, features=features)) if len(frame) else np.zeros(0)
        return pd.DataFrame({"score": np.asarray(scores, dtype=np.float64)}, index=frame.index)


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "safetensors", "numpy", "pandas")]


def log_rater_model(artifact: dict, image_dim: int, text_dim: int, name: str = "rater",
                    batch_size: int = 4096, patch_dim: int = 0) -> mlflow.models.model.ModelInfo:
    """Log `artifact` ({"state_dict", "config"}) to the active run as pyfunc model `name`.

    Its config, weights digest and scorer version are model tags (and run tags, for the runs table).
    """
    from alchemist_kedro.scorers.rater import RaterScorer

    scorer = RaterScorer(artifact)
    tags = {"rater.config": json.dumps(artifact["config"], sort_keys=True),
            "rater.weights_sha256": scorer.weights_digest(), "rater.scorer_version": scorer.version}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rater.safetensors"
        write_rater_file(artifact, path)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(ENTRY_POINT),
            artifacts={"rater": str(path)},
            model_config={"image_emb_dim": int(image_dim), "text_emb_dim": int(text_dim),
                          **({"patch_emb_dim": int(patch_dim)} if patch_dim else {}), "batch_size": int(batch_size)},
            signature=rater_signature(bool(patch_dim)),
            pip_requirements=_requirements(),
            tags=tags,
        )
    mlflow.set_tags({f"{name}.{k.removeprefix('rater.')}": v for k, v in tags.items() if k != "rater.config"})
    return info
