"""Selection: strategies over any scorer's table, and the outputs a user trains from (uid lists, shards, plots)."""
from alchemist_kedro.selection.strategies import (
    STRATEGIES,
    Ranking,
    SelectionError,
    rank_order,
    register_strategy,
    resolve_k,
    select,
    select_indices,
)

__all__ = [
    "STRATEGIES",
    "Ranking",
    "SelectionError",
    "rank_order",
    "register_strategy",
    "resolve_k",
    "select",
    "select_indices",
]
