"""`kedro run --pipelines ingest`: read users' image-text sources into the sample table and ledger."""
from alchemist_kedro.pipelines.ingest.pipeline import create_pipeline

__all__ = ["create_pipeline"]
