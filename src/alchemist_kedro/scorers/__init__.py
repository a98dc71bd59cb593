"""Scorers: one file each, registered by name; importing this package registers them all.

A new scorer: one module with a `@register_scorer` class, plus one import line below.
"""
from alchemist_kedro.scorers import (  # noqa: F401  (registration)
    aesthetic, alignment, clarity, clip_score, diffusion_quality, edge_density, frequency, nsfw, rater,
)
from alchemist_kedro.scorers.base import (
    ScoreBatch,
    Scorer,
    available_scorers,
    build_score_table,
    get_scorer,
    register_scorer,
    scorer_class,
)

__all__ = [
    "ScoreBatch",
    "Scorer",
    "available_scorers",
    "build_score_table",
    "get_scorer",
    "register_scorer",
    "scorer_class",
]
