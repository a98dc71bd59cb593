"""Seconds to save a training history into a fresh sqlite MLflow store: kedro-mlflow's MlflowMetricsHistoryDataset
(one log_metric a point) against the batched one the catalog uses (log_batch, 1,000 points a call).

    .venv/bin/python benchmarks/mlflow_history.py [--history data/08_reporting/rater_training_history.parquet]

Without the parquet (a `kedro run` writes it) a synthetic history of --points points is used.
"""
import argparse
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset

from alchemist_kedro.datasets.mlflow_metrics import BatchedMlflowMetricsHistoryDataset

ROOT = Path(__file__).resolve().parents[1]


def history(path: Path, points: int) -> dict:
    table = (pd.read_parquet(path) if path.exists() else
             pd.DataFrame({"metric": [f"m{i % 8}" for i in range(points)], "step": range(points), "value": 0.5}))
    return {name: [{"step": int(s), "value": float(v)} for s, v in zip(part["step"], part["value"])]
            for name, part in table.groupby("metric")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--history", default=str(ROOT / "data/08_reporting/rater_training_history.parquet"))
    ap.add_argument("--points", type=int, default=12000)
    args = ap.parse_args()
    data = history(Path(args.history), args.points)
    n = sum(len(v) for v in data.values())
    seconds = {}
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        for name, cls in {"batched": BatchedMlflowMetricsHistoryDataset, "kedro-mlflow": MlflowMetricsHistoryDataset}.items():
            with mlflow.start_run():
                start = time.perf_counter()
                cls(prefix="rater").save(data)
                seconds[name] = time.perf_counter() - start
    print(f"{n} points, {len(data)} metrics: " + ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items())
          + f"; ratio {seconds['kedro-mlflow'] / seconds['batched']:.0f}x")


if __name__ == "__main__":
    main()
