"""Nodes of the train_t2i pipeline. Inputs, the loop and the figure live in training/ and reporting/."""
from __future__ import annotations

from alchemist_kedro.reporting.plots import sample_grid_figure
from alchemist_kedro.training.downstream import build_t2i_inputs, train_downstream

__all__ = ["build_t2i_inputs", "train_t2i_model"]


def train_t2i_model(inputs: dict, params: dict):
    """Train → (model artifact, MLflow metrics history, training summary, sample-grid figure)."""
    result, artifact, metrics, summary = train_downstream(inputs, params)
    figure = sample_grid_figure(result.model, inputs["grid"], int(params["training"]["seed"]),
                                int(params["grid"]["columns"]))
    return artifact, metrics, summary, figure
