"""Project pipelines."""
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The main job (`kedro run`). train_t2i, evaluate and compare stay separate commands: they train downstream models.
DEFAULT_PIPELINES = ("ingest", "features", "rater", "heuristics", "select")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum((pipelines[name] for name in DEFAULT_PIPELINES), Pipeline([]))
    return pipelines
