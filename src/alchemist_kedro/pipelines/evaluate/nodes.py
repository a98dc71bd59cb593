"""Nodes of the evaluate pipeline: the metrics are evaluation/downstream.py's; these only assemble and report."""
from __future__ import annotations

import torch

from alchemist_kedro.devices import resolve_device
from alchemist_kedro.evaluation.downstream import (
    build_image_encoder,
    evaluate_generated,
    fit_alignment_on_val,
    load_test_split,
)
from alchemist_kedro.models.alignment import alignment_from_artifact
from alchemist_kedro.models.t2i import t2i_from_artifact
from alchemist_kedro.tables import metrics_history

__all__ = ["build_test_set", "evaluate_t2i", "fit_alignment_on_val"]


def build_test_set(samples: dict, features: dict, t2i_model: dict, params: dict) -> dict:
    """Test-split samples joined with their text features, images at the model's resolution."""
    return load_test_split(samples, features, int(t2i_model["config"]["resolution"]), params["max_test_samples"])


def evaluate_t2i(t2i_model: dict, test: dict, alignment_model: dict, params: dict):
    """→ (MLflow metrics {<name>: value}, prefixed "eval." by the catalog, report dict for data/08_reporting)."""
    torch.set_num_threads(int(params["threads"]))
    model = t2i_from_artifact(t2i_model).to(resolve_device(params.get("device"), stage="evaluate"))
    metrics = evaluate_generated(model, test, alignment_from_artifact(alignment_model), build_image_encoder(params),
                                 params)
    report = {"metrics": metrics, "test_uids": len(test["uids"]), "missing_features": test["missing_features"],
              "model": t2i_model["config"], "note": "fd_onsfw is not comparable to published FID"}
    return metrics_history(metrics), report
