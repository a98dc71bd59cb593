"""`kedro run --pipeline rater`: samples + features → trained meta-gradient rater."""
from alchemist_kedro.pipelines.rater.pipeline import create_pipeline

__all__ = ["create_pipeline"]
