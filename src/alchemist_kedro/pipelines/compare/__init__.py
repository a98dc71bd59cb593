"""`kedro run --pipelines compare --params compare.preset=quick`: arms × seeds → comparison table and plot."""
from alchemist_kedro.pipelines.compare.pipeline import create_pipeline

__all__ = ["create_pipeline"]
