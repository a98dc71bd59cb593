"""Per-defect-kind evaluation of a score table and a selection (evaluation only: the `defect` side column).

For each defect kind: n rows, mean percentile (0 = best) under the score table, share kept by a selection, and the
clean-vs-kind ROC-AUC (clean = positive, higher score = cleaner: 1.0 = every clean row above every row of the kind,
0.5 = chance, below 0.5 = the scorer prefers the defect). Plus an ``all_defects`` row and the ``clean`` row (its keep
share is the bar a kind's keep share is read against).

``evaluate_strategies`` runs a heuristic's table through several strategies at one ratio (top-k, the middle band,
Shift-Gsample, as the paper reports each heuristic at its best strategy) and names the best: the one that keeps the
fewest defective rows.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from alchemist_kedro.selection.strategies import Ranking, select

CLEAN = "clean"
ALL_DEFECTS = "all_defects"
REPORT_COLUMNS = ["kind", "n", "mean_percentile", "kept_share", "kept_share_vs_clean", "roc_auc"]
DEFAULT_STRATEGIES = ("topk", "band", "shift_gsample")


def _side_kinds(side: pd.DataFrame) -> pd.DataFrame:
    missing = {"uid", "defect"} - set(side.columns)
    if missing:
        raise ValueError(f"the side table needs columns uid and defect; missing {sorted(missing)}")
    if side["uid"].duplicated().any():
        raise ValueError("the side table has duplicate uids")
    kinds = side["defect"].astype(object).where(side["defect"].notna(), CLEAN).astype(str)
    if (kinds == ALL_DEFECTS).any():
        raise ValueError(f"{ALL_DEFECTS!r} is reserved for the pooled row; rename that defect kind")
    return pd.DataFrame({"uid": side["uid"].to_numpy(), "kind": kinds.to_numpy()})


def _with_percentiles(scores: pd.DataFrame) -> pd.DataFrame:
    if not {"uid", "score"} <= set(scores.columns):
        raise ValueError("the score table needs columns uid and score")
    if scores["uid"].duplicated().any():
        raise ValueError("the score table has duplicate uids")
    table = scores[["uid", "score"] + (["percentile"] if "percentile" in scores.columns else [])].copy()
    if "percentile" not in table.columns:
        # The selection convention: sort by (-score, uid), p = (rank + 0.5) / N, 0 = best.
        ranking = Ranking(table["score"].to_numpy(dtype=np.float64), uids=table["uid"].array)
        table["percentile"] = ranking.percentiles()
    return table


def _auc(clean_scores: np.ndarray, kind_scores: np.ndarray) -> float:
    if clean_scores.size == 0 or kind_scores.size == 0:
        return float("nan")
    labels = np.concatenate([np.ones(clean_scores.size), np.zeros(kind_scores.size)])
    return float(roc_auc_score(labels, np.concatenate([clean_scores, kind_scores])))


def defect_report(
    scores: pd.DataFrame, side: pd.DataFrame, selection: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per kind (``clean`` first, then ``all_defects``, then the kinds by name) over the scored rows.

    ``scores``: uid, score (higher = better), optionally percentile (else computed, 0 = best). ``side``: uid, defect
    (null = clean). ``selection``: uid, selected (bool) for every scored uid, or None (kept shares are NaN then).
    Side rows without a score are left out; scored rows without a side row are an error (their kind is unknown).
    """
    table = _with_percentiles(scores).merge(_side_kinds(side), on="uid", how="left")
    if table["kind"].isna().any():
        raise ValueError(f"{int(table['kind'].isna().sum())} scored uids have no row in the side table")
    if selection is not None:
        if not {"uid", "selected"} <= set(selection.columns):
            raise ValueError("the selection needs columns uid and selected")
        table = table.merge(selection[["uid", "selected"]], on="uid", how="left")
        if table["selected"].isna().any():
            raise ValueError(f"the selection lacks {int(table['selected'].isna().sum())} uids of the score table")
        table["selected"] = table["selected"].astype(bool)

    clean = table["kind"] == CLEAN
    clean_scores = table.loc[clean, "score"].to_numpy(dtype=np.float64)
    groups = [(CLEAN, clean), (ALL_DEFECTS, ~clean)]
    groups += [(kind, table["kind"] == kind) for kind in sorted(set(table["kind"]) - {CLEAN})]
    clean_kept = float(table.loc[clean, "selected"].mean()) if selection is not None and clean.any() else float("nan")
    rows = []
    for kind, mask in groups:
        part = table[mask]
        kept = float(part["selected"].mean()) if selection is not None and len(part) else float("nan")
        rows.append(
            {
                "kind": kind,
                "n": int(len(part)),
                "mean_percentile": float(part["percentile"].mean()) if len(part) else float("nan"),
                "kept_share": kept,
                "kept_share_vs_clean": kept / clean_kept if clean_kept > 0 else float("nan"),
                "roc_auc": float("nan") if kind == CLEAN else _auc(clean_scores, part["score"].to_numpy(np.float64)),
            }
        )
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def duplicate_report(side: pd.DataFrame, selection: pd.DataFrame) -> dict[str, float]:
    """Duplicate groups (side column ``duplicate_group``) and how many of them the selection keeps twice or more."""
    if "duplicate_group" not in side.columns:
        raise ValueError("the side table has no duplicate_group column")
    joined = side[["uid", "duplicate_group"]].dropna().merge(selection[["uid", "selected"]], on="uid", how="inner")
    kept = joined.groupby("duplicate_group")["selected"].sum()
    return {
        "groups": float(kept.size),
        "groups_with_more_than_one_kept": float((kept > 1).sum()),
        "max_kept_in_a_group": float(kept.max()) if kept.size else 0.0,
    }


def report_metrics(report: pd.DataFrame, prefix: str) -> dict[str, float]:
    """Flat ``<prefix>.<kind>.<column>`` metrics (MLflow-style names) from a ``defect_report`` table; NaNs left out."""
    metrics = {}
    for row in report.itertuples(index=False):
        for column in REPORT_COLUMNS[1:]:
            value = float(getattr(row, column))
            if not np.isnan(value):
                metrics[f"{prefix}.{row.kind}.{column}"] = value
    return metrics


@dataclass(frozen=True)
class StrategyEvaluation:
    best: str  # the strategy that kept the fewest defective rows (ties: the earlier one in `strategies`)
    summary: pd.DataFrame  # strategy, k, defective_kept, defective_share, clean_kept_share, best
    report: pd.DataFrame  # defect_report under the best strategy's selection
    selections: dict[str, pd.DataFrame]  # strategy -> uid, selected


def strategy_selection(
    scores: pd.DataFrame, strategy: str, ratio: float, seed: int = 0, params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """uid, selected for one strategy; ``band`` is the contiguous middle block (ratio 0.5: percentiles 25-75%)."""
    params = dict(params or {})
    if strategy == "band":
        center = params.pop("center", 0.5)
        start = params.pop("start", max(0.0, center - ratio / 2))
        mask = select(scores, "block", ratio=ratio, seed=seed, start=start, **params)
    else:
        mask = select(scores, strategy, ratio=ratio, seed=seed, **params)
    return pd.DataFrame({"uid": scores["uid"].to_numpy(), "selected": mask})


def evaluate_strategies(
    scores: pd.DataFrame,
    side: pd.DataFrame,
    ratio: float = 0.5,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seed: int = 0,
    strategy_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> StrategyEvaluation:
    """Each strategy at ``ratio`` on one score table; best = fewest defective rows kept (the same k for all)."""
    if not strategies:
        raise ValueError("give at least one strategy")
    strategy_params = strategy_params or {}
    kinds = _side_kinds(side)
    scored = scores[["uid", "score"]]
    known = scored.merge(kinds, on="uid", how="left")
    if known["kind"].isna().any():
        raise ValueError(f"{int(known['kind'].isna().sum())} scored uids have no row in the side table")
    defective = (known["kind"] != CLEAN).to_numpy()
    rows, selections = [], {}
    for strategy in strategies:
        chosen = strategy_selection(scored, strategy, ratio, seed, strategy_params.get(strategy))
        selections[strategy] = chosen
        picked = chosen["selected"].to_numpy()
        rows.append(
            {
                "strategy": strategy,
                "k": int(picked.sum()),
                "defective_kept": int((picked & defective).sum()),
                "defective_share": float((picked & defective).sum() / max(int(picked.sum()), 1)),
                "clean_kept_share": float(picked[~defective].mean()) if (~defective).any() else float("nan"),
            }
        )
    summary = pd.DataFrame(rows)
    best = str(summary.loc[int(np.argmin(summary["defective_kept"].to_numpy())), "strategy"])
    summary["best"] = summary["strategy"] == best
    return StrategyEvaluation(best, summary, defect_report(scores, side, selections[best]), selections)
