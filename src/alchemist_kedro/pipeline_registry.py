"""Project pipelines."""
from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The main job (`kedro run`). train_t2i, evaluate and compare stay separate commands: they train downstream models.
DEFAULT_PIPELINES = ("ingest", "features", "rater", "heuristics", "select")


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    # `if name in pipelines`: a trimmed project (the CLI tests' temp projects) may register only some of them.
    pipelines["__default__"] = sum(
        (pipelines[name] for name in DEFAULT_PIPELINES if name in pipelines), Pipeline([])
    )
    return pipelines
