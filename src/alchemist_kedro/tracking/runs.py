"""What a run and its experiment say in `mlflow ui`: the experiment kind, a run name and tags from the run's params."""
from __future__ import annotations

from typing import Any, Iterable

import mlflow

# MLflow 3's UI opens an experiment by this tag: genai_development lands on the GenAI overview ("Traces: 0"),
# custom_model_development on the runs table (mlflow/server/js: ExperimentKind; the onboarding skill's doc).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_model_training(client: mlflow.MlflowClient, experiment_id: str) -> bool:
    """Tag the experiment as model training unless it already has a kind (a user's own choice wins).

    Returns whether the tag was set. mlflow.yml sets it on creation; this covers stores created before.
    """
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND_TAG):
        return False
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return True


def _ratio_label(select: dict[str, Any]) -> str:
    if select.get("ratio") is not None:
        return f"ratio {float(select['ratio']):g}"
    return f"count {select.get('count')}"


def run_name(pipeline_names: Iterable[str] | None, parameters: dict[str, Any], uses: Iterable[str],
             env: str | None = None) -> str:
    """e.g. ``main · select rater shift_gsample ratio 0.5`` or ``compare · preset quick · env rater_eq6``.

    `uses`: the parameter groups the pipeline reads (``select`` for ``params:select...``); only those are named,
    so an ingest run is not labelled with a strategy it never applied.
    """
    names = [n for n in (pipeline_names or []) if n] or ["__default__"]
    parts = ["+".join("main" if n == "__default__" else n for n in names)]
    uses = set(uses)
    if "rater" in uses and (mode := (parameters.get("rater") or {}).get("training", {}).get("mode")):
        parts.append(f"rater {mode}")
    if "select" in uses and (select := parameters.get("select")):
        parts.append(f"select {select.get('scorer')} {select.get('strategy')} {_ratio_label(select)}")
    if "compare" in uses and (compare := parameters.get("compare")):
        parts.append(f"preset {compare.get('preset')}")
    if env and env not in ("local", "base"):
        parts.append(f"env {env}")
    return " · ".join(parts)


def run_tags(parameters: dict[str, Any], uses: Iterable[str]) -> dict[str, str]:
    """Filterable columns for the runs table (``tags.strategy = 'topk'``): the same facts as the name."""
    tags: dict[str, str] = {}
    select = parameters.get("select") or {}
    if "select" in set(uses) and select:
        tags.update({"strategy": str(select.get("strategy")), "scorer": str(select.get("scorer")),
                     "ratio": "" if select.get("ratio") is None else f"{float(select['ratio']):.3f}",
                     "count": "" if select.get("count") is None else str(select["count"])})
    return {k: v for k, v in tags.items() if v}


def parameter_groups(pipeline_inputs: Iterable[str]) -> set[str]:
    """``params:select.ratio`` / ``params:select`` → ``select``; namespaced compare arms → their top group too."""
    groups = set()
    for name in pipeline_inputs:
        if name.startswith("params:"):
            groups.add(name[len("params:"):].split(".")[0])
    return groups
