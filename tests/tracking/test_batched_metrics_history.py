"""The batched metrics-history dataset writes what kedro-mlflow's writes, in a real sqlite MLflow store."""
import mlflow
import pytest
from kedro_mlflow.io.metrics import MlflowMetricsHistoryDataset
from mlflow.tracking import MlflowClient

from alchemist_kedro.datasets.mlflow_metrics import BATCH, BatchedMlflowMetricsHistoryDataset


def _history(n: int) -> dict:
    return {"meta/val_loss": [{"step": s, "value": 1.0 / (s + 1)} for s in range(n)],
            "warmup/loss": [{"step": s, "value": float(s % 7)} for s in range(n // 3)],
            "final": {"step": 0, "value": 0.25}}


def _read(client: MlflowClient, run_id: str) -> dict:
    run = client.get_run(run_id)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


@pytest.fixture
def store(tmp_path):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield MlflowClient()
    mlflow.set_tracking_uri(previous)


def _save(cls, data: dict) -> str:
    with mlflow.start_run() as run:
        cls(prefix="rater").save(data)
    return run.info.run_id


def test_same_points_as_kedro_mlflow_s_dataset(store):
    small = _history(40)
    assert _read(store, _save(BatchedMlflowMetricsHistoryDataset, small)) == _read(
        store, _save(MlflowMetricsHistoryDataset, small))


def test_every_point_across_batch_boundaries_and_it_loads_back(store):
    data = _history(2 * BATCH + 17)  # more points than two log_batch calls take
    run_id = _save(BatchedMlflowMetricsHistoryDataset, data)
    batched = _read(store, run_id)
    assert batched == {f"rater.{k}": sorted((p["step"], p["value"]) for p in (v if isinstance(v, list) else [v]))
                       for k, v in data.items()}
    assert len(batched["rater.meta/val_loss"]) == 2 * BATCH + 17
    # It loads back through kedro-mlflow's reader, in the layout it was given.
    loaded = BatchedMlflowMetricsHistoryDataset(prefix="rater", run_id=run_id).load()
    assert [p["value"] for p in loaded["rater.meta/val_loss"]] == [p["value"] for p in data["meta/val_loss"]]


def test_without_an_active_run_it_starts_one_as_log_metric_does(store):
    assert mlflow.active_run() is None
    BatchedMlflowMetricsHistoryDataset().save({"loss": [{"step": 0, "value": 2.0}, {"step": 1, "value": 1.0}]})
    run = mlflow.active_run()
    try:
        assert run is not None
        assert _read(store, run.info.run_id) == {"loss": [(0, 2.0), (1, 1.0)]}
    finally:
        mlflow.end_run()
