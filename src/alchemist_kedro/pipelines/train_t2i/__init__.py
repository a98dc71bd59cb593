"""`kedro run --pipelines train_t2i`: selection manifest + samples + features → downstream T2I model."""
from alchemist_kedro.pipelines.train_t2i.pipeline import create_pipeline

__all__ = ["create_pipeline"]
