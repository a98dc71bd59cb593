"""Features pipeline: encoder features per sample, cached per shard and keyed by the encoders' fingerprint."""
from alchemist_kedro.pipelines.features.pipeline import create_pipeline

__all__ = ["create_pipeline"]
