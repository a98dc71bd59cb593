"""`kedro run --pipelines evaluate`: the trained T2I model on the test captions → fd_onsfw, alignment."""
from alchemist_kedro.pipelines.evaluate.pipeline import create_pipeline

__all__ = ["create_pipeline"]
