"""The selection manifest: a score table + a strategy → which rows are picked (method.md "Shift-Gsample ...").

Used by the select pipeline and by every compare arm, so both select the same way.
"""
from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from alchemist_kedro.selection.strategies import Ranking, resolve_k, select_indices

logger = logging.getLogger(__name__)


def strategy_params(params: dict[str, Any]) -> dict[str, Any]:
    """The knobs of the configured strategy (``select.strategies.<name>``), as passed to it."""
    return dict(params["strategies"].get(params["strategy"]) or {})


def select_from_scores(scores: pd.DataFrame, params: dict[str, Any], scorer: str | None = None) -> pd.DataFrame:
    """Manifest: one row per scored uid with score, percentile (0 = best), selected, strategy, params (JSON), seed
    and scorer. The scorer's name is the one the table was loaded as (its `scorer` column, which the catalog's
    ScoreTableDataset sets), unless the caller names it: it is never read from a second place that could disagree."""
    if scores["uid"].duplicated().any():
        raise ValueError("score table has duplicate uids: one score per sample is required")
    ranking = Ranking(scores["score"].to_numpy(dtype=np.float64), uids=scores["uid"].array)
    k = resolve_k(ranking.n, params["ratio"], params["count"])
    knobs = strategy_params(params)
    picked = select_indices(ranking, params["strategy"], k, seed=int(params["seed"]),
                            allow_fewer=bool(params["allow_fewer"]), **knobs)
    selected = np.zeros(ranking.n, dtype=bool)
    selected[picked] = True
    logger.info("select: %s picked %d of %d (k = %d)", params["strategy"], selected.sum(), ranking.n, k)
    return pd.DataFrame(
        {
            "uid": scores["uid"].astype(str).array,  # Arrow strings (pandas 3's str), not an object array
            "score": ranking.scores,
            "percentile": ranking.percentiles(),
            "selected": selected,
            "strategy": params["strategy"],
            "params": json.dumps(knobs, sort_keys=True),
            "seed": int(params["seed"]),
            "scorer": scorer if scorer is not None else scorer_of(scores),
        }
    )




def scorer_of(scores: pd.DataFrame) -> str:
    """The one scorer name a score table carries in its `scorer` column ("" when it has none)."""
    if "scorer" not in scores.columns or not len(scores):
        return ""
    names = scores["scorer"].dropna().astype(str).unique()
    if len(names) != 1:
        raise ValueError(f"a score table must come from one scorer, this one names {sorted(names)[:5]}")
    return str(names[0])
