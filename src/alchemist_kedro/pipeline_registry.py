"""Project pipelines."""
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The main job, in order; each name is added here only once its pipeline exists.
DEFAULT_PIPELINES = ("ingest", "features", "rater", "heuristics", "select")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
