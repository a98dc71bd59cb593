"""Tables logged as a run's MLflow dataset inputs (schema, row count and digest; the rows stay on disk)."""
from __future__ import annotations

import logging
import warnings

import mlflow
import mlflow.data
import pandas as pd

logger = logging.getLogger(__name__)


def log_table_input(frame: pd.DataFrame, name: str, source: str | None, context: str) -> str | None:
    """Log `frame` as a dataset input of the active run, once per run per (name, digest); returns the digest.

    None when no run is active (a notebook, a test calling nodes) or the same table is already logged.
    """
    run = mlflow.active_run()
    if run is None:
        return None
    with warnings.catch_warnings():
        # A local path matches MLflow's "" and "file" schemes, both LocalArtifactDatasetSource: same result.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = mlflow.data.from_pandas(frame, source=source, name=name)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    if any(d.dataset.name == name and d.dataset.digest == dataset.digest for d in logged):
        return None
    mlflow.log_input(dataset, context=context)
    logger.info("mlflow: %s logged as the run's %s dataset input (digest %s, %d rows)", name, context,
                dataset.digest, len(frame))
    return dataset.digest
