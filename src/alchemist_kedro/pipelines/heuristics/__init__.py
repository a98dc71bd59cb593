"""Heuristic scores (clarity, frequency, edge_density, nsfw, aesthetic): `kedro run --pipelines heuristics`."""
from alchemist_kedro.pipelines.heuristics.pipeline import create_pipeline

__all__ = ["create_pipeline"]
