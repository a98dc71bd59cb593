"""`kedro run --pipelines select`: pick a training subset from a scorer's table."""
from alchemist_kedro.pipelines.select.pipeline import create_pipeline

__all__ = ["create_pipeline"]
