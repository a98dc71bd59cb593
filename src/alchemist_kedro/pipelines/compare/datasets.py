"""Catalog datasets of the compare pipeline: optional score tables in, MLflow child runs out."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import AbstractDataset


class ScoreTablesDataset(AbstractDataset[None, dict]):
    """Every score table present: {"rater": rater_filepath, <name>: scores_dir/<name>.parquet} → {name: (uid, score)}.

    Absent tables are simply missing from the dict, so a preset whose arms need no scorer runs before any scoring;
    an active arm naming a missing scorer fails in its node, naming it. Read-only.
    """

    def __init__(self, rater_filepath: str, scores_dir: str, metadata: dict | None = None):
        self._rater = Path(rater_filepath)
        self._dir = Path(scores_dir)
        self.metadata = metadata  # kedro-viz reads its layer here

    def load(self) -> dict:
        paths = {p.stem: p for p in sorted(self._dir.glob("*.parquet"))} if self._dir.is_dir() else {}
        if self._rater.is_file():
            paths["rater"] = self._rater
        return {name: pd.read_parquet(path, columns=["uid", "score"]) for name, path in paths.items()}

    def save(self, data: None) -> None:
        raise NotImplementedError("ScoreTablesDataset is read-only; scorers write the tables")

    def _describe(self) -> dict[str, Any]:
        return {"rater_filepath": str(self._rater), "scores_dir": str(self._dir)}


class MlflowChildRunsDataset(AbstractDataset[list, None]):
    """Saves one nested MLflow run per row under the active (kedro-mlflow) run: tags, params and metrics.

    Row: {"run_name": str, "tags": {...}, "params": {...}, "metrics": {...}}. Each arm × seed thus appears in
    `mlflow ui` as its own run (tagged arm / seed / ratio) under the comparison's parent run, where the table and
    plot are logged. Write-only.
    """

    def __init__(self, metadata: dict | None = None):
        self.metadata = metadata

    def save(self, data: list) -> None:
        import mlflow

        for row in data:
            with mlflow.start_run(run_name=row["run_name"], nested=True, tags=row.get("tags")):
                if row.get("params"):
                    mlflow.log_params(row["params"])
                if row.get("metrics"):
                    mlflow.log_metrics({k: float(v) for k, v in row["metrics"].items()})

    def load(self) -> list:
        raise NotImplementedError("MlflowChildRunsDataset is write-only; read the runs with mlflow.search_runs")

    def _describe(self) -> dict[str, Any]:
        return {}
