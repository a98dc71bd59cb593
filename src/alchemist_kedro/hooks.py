"""Project hooks: what each `kedro run` records in MLflow beyond kedro-mlflow's own logging.

- the experiment tagged as model training, so `mlflow ui` opens on its runs table;
- a run name and tags saying what ran (pipelines; scorer, strategy, ratio when it selects; preset; env);
- the selection manifest as the run's dataset input (digest, schema, row count).
The MLflow side lives in `alchemist_kedro.tracking`; these only say when.
"""
from __future__ import annotations

import logging
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl

from alchemist_kedro.tracking import inputs, runs

logger = logging.getLogger(__name__)

# Catalog entries logged as the run's dataset inputs, with the context when a node writes them (else when read).
TRACKED_TABLES = {"selection_manifest": "selection"}


class TrackingHooks:
    def __init__(self) -> None:
        self._catalog = None

    @hook_impl
    def after_catalog_created(self, catalog) -> None:
        self._catalog = catalog

    # trylast: kedro-mlflow's before_pipeline_run must have started the run first.
    @hook_impl(trylast=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        try:
            self._describe_run(run, run_params, pipeline, catalog)
        except Exception as error:  # noqa: BLE001 - a label must never stop a run
            logger.warning("mlflow: could not name or tag run %s: %s", run.info.run_id, error)

    def _describe_run(self, run, run_params: dict[str, Any], pipeline, catalog) -> None:
        client = mlflow.MlflowClient()
        runs.mark_model_training(client, run.info.experiment_id)
        names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        names = [names] if isinstance(names, str) else list(names)
        parameters = catalog.load("parameters") if "parameters" in catalog else {}
        if "select" in parameters and "select_scores" in catalog:
            # The scorer is named once, by the catalog's score table (globals.yml / --params select.scorer).
            scorer = getattr(catalog.get("select_scores"), "scorer", None)
            parameters = {**parameters, "select": {**parameters["select"], "scorer": scorer}}
        uses = runs.parameter_groups(pipeline.inputs())
        # Only replace kedro-mlflow's default name: a name set in mlflow.yml (tracking.run.name) stays.
        if run.info.run_name == "+".join(names):
            client.set_tag(run.info.run_id, "mlflow.runName",
                           runs.run_name(names, parameters, uses, env=run_params.get("env")))
        tags = runs.run_tags(parameters, uses)
        if tags:
            mlflow.set_tags(tags)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if dataset_name in TRACKED_TABLES:
            self._log(dataset_name, data, TRACKED_TABLES[dataset_name])

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, data: Any, node) -> None:
        if dataset_name in TRACKED_TABLES:
            self._log(dataset_name, data, "training")  # read by this run (train_t2i), not written by it

    def _log(self, name: str, data: Any, context: str) -> None:
        try:
            inputs.log_table_input(data, name=name, source=self._source(name), context=context)
        except Exception as error:  # noqa: BLE001 - tracking must never fail a finished node
            logger.warning("mlflow: could not log %s as a dataset input: %s", name, error)

    def _source(self, name: str) -> str | None:
        """The file the catalog wrote or read (its version's path when versioned)."""
        try:
            dataset = self._catalog.get(name)
            return str(dataset._get_load_path())  # noqa: SLF001 - the exact versioned path has no public getter
        except Exception:  # noqa: BLE001
            return None
