"""`kedro run --pipelines attribute`: which training pairs made a generation (unlearning ground truth, FastGDA)."""
from alchemist_kedro.pipelines.attribute.pipeline import create_pipeline

__all__ = ["create_pipeline"]
