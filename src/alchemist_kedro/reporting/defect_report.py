"""Per-defect-kind evaluation of a score table and a selection (evaluation only: the `defect` side column).

For each defect kind: n rows, mean percentile (0 = best) under the score table, share kept by a selection, and the
clean-vs-kind ROC-AUC (clean = positive, higher score = cleaner: 1.0 = every clean row above every row of the kind,
0.5 = chance, below 0.5 = the scorer prefers the defect). Plus an ``all_defects`` row and the ``clean`` row (its keep
share is the bar a kind's keep share is read against).

Duplicates are counted by group when the side table has ``duplicate_group`` (set on a copy AND on the row it
copies): which member of a group is kept is arbitrary (identical pairs score alike), so a kept copy is a defect only
when another member of its group is kept too. ``all_defects_by_group`` is then the pooled row with the duplicates
counted that way: the non-duplicate defect rows kept plus, per group, the members kept beyond the first. The per-row
``all_defects`` and the duplicate kinds' own rows stay as they are (a kept copy whose original was left out still
counts there).

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

from alchemist_kedro.selection.dedup import best_of_each_group
from alchemist_kedro.selection.strategies import Ranking, resolve_k, select

CLEAN = "clean"
ALL_DEFECTS = "all_defects"
ALL_DEFECTS_BY_GROUP = "all_defects_by_group"
REPORT_COLUMNS = ["kind", "n", "mean_percentile", "kept_share", "kept_share_vs_clean", "roc_auc"]
DEFAULT_STRATEGIES = ("topk", "band", "shift_gsample")


def _side_kinds(side: pd.DataFrame) -> pd.DataFrame:
    missing = {"uid", "defect"} - set(side.columns)
    if missing:
        raise ValueError(f"the side table needs columns uid and defect; missing {sorted(missing)}")
    if side["uid"].duplicated().any():
        raise ValueError("the side table has duplicate uids")
    kinds = side["defect"].astype(object).where(side["defect"].notna(), CLEAN).astype(str)
    if kinds.isin([ALL_DEFECTS, ALL_DEFECTS_BY_GROUP]).any():
        raise ValueError(f"{ALL_DEFECTS!r} and {ALL_DEFECTS_BY_GROUP!r} are reserved for the pooled rows; rename that "
                         "defect kind")
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


def defective_kept_by_group(picked: np.ndarray, defective: np.ndarray, groups: np.ndarray) -> int:
    """Defect rows kept, a duplicate group's members counted beyond the first kept one only (module docstring).
    ``groups``: each row's duplicate group or None; a defect row in a group is a copy, its clean original shares the
    group."""
    groups = pd.Series(groups, dtype=object)
    in_group = groups.notna().to_numpy()
    kept_per_group = pd.Series(picked[in_group]).groupby(groups[in_group].to_numpy()).sum()
    return int((picked & defective & ~in_group).sum() + (kept_per_group - 1).clip(lower=0).sum())


def defect_report(
    scores: pd.DataFrame, side: pd.DataFrame, selection: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per kind (``clean`` first, then ``all_defects``, then the kinds by name) over the scored rows.

    ``scores``: uid, score (higher = better), optionally percentile (else computed, 0 = best). ``side``: uid, defect
    (null = clean), optionally duplicate_group (then an ``all_defects_by_group`` row follows ``all_defects``).
    ``selection``: uid, selected (bool) for every scored uid, or None (kept shares are NaN then).
    Side rows without a score are left out; scored rows without a side row are an error (their kind is unknown).
    """
    kinds = _side_kinds(side)
    if "duplicate_group" in side.columns:
        kinds["duplicate_group"] = side["duplicate_group"].to_numpy()
    table = _with_percentiles(scores).merge(kinds, on="uid", how="left")
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
        if kind == ALL_DEFECTS and "duplicate_group" in table.columns:
            kept = float("nan")
            if selection is not None and len(part):
                kept = defective_kept_by_group(table["selected"].to_numpy(), (~clean).to_numpy(),
                                               table["duplicate_group"].to_numpy()) / len(part)
            rows.append({"kind": ALL_DEFECTS_BY_GROUP, "n": int(len(part)), "mean_percentile": float("nan"),
                         "kept_share": kept, "kept_share_vs_clean": kept / clean_kept if clean_kept > 0 else float("nan"),
                         "roc_auc": float("nan")})
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
    # strategy, k, defective_kept, defective_share, clean_kept_share, best; with duplicate groups in the side table
    # also defective_kept_by_group and defective_share_by_group (the module docstring), which `best` is chosen by
    summary: pd.DataFrame
    report: pd.DataFrame  # defect_report under the best strategy's selection
    selections: dict[str, pd.DataFrame]  # strategy -> uid, selected (every scored uid)


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


def best_per_group(scores: pd.DataFrame, dedup_groups: pd.DataFrame) -> np.ndarray:
    """Mask over ``scores`` rows: the rows a dedup step would leave selectable under THIS score -- every row outside a
    group, and each group's best-scored member (selection/dedup.py's rule). ``dedup_groups``: uid, dedup_group (null =
    in no group), e.g. the select pipeline's duplicate table."""
    group = scores[["uid"]].merge(dedup_groups[["uid", "dedup_group"]], on="uid", how="left")["dedup_group"]
    labels = pd.factorize(group.astype(object))[0]  # null -> -1: give each ungrouped row its own label
    alone = labels < 0
    labels[alone] = labels.max(initial=-1) + 1 + np.arange(int(alone.sum()))
    return best_of_each_group(labels, scores["score"].to_numpy(dtype=np.float64), scores["uid"].to_numpy())


def evaluate_strategies(
    scores: pd.DataFrame,
    side: pd.DataFrame,
    ratio: float = 0.5,
    strategies: Sequence[str] = DEFAULT_STRATEGIES,
    seed: int = 0,
    strategy_params: Mapping[str, Mapping[str, Any]] | None = None,
    dedup_groups: pd.DataFrame | None = None,
    count: int | None = None,
) -> StrategyEvaluation:
    """Each strategy on one score table; best = fewest defective rows kept (the same k for all; duplicates counted by
    group when ``side`` has duplicate_group). k = round(ratio · rows), or ``count``. ``dedup_groups`` (uid,
    dedup_group): first leave one member per group selectable, the best by this table's score, as the select
    pipeline's dedup step would for this scorer; the strategies then pick k among those rows."""
    if not strategies:
        raise ValueError("give at least one strategy")
    strategy_params = strategy_params or {}
    kinds = _side_kinds(side)
    scored = scores[["uid", "score"]].reset_index(drop=True)
    known = scored.merge(kinds, on="uid", how="left")
    if known["kind"].isna().any():
        raise ValueError(f"{int(known['kind'].isna().sum())} scored uids have no row in the side table")
    defective = (known["kind"] != CLEAN).to_numpy()
    groups = None
    if "duplicate_group" in side.columns:
        groups = scored[["uid"]].merge(side[["uid", "duplicate_group"]], on="uid", how="left")["duplicate_group"]
        groups = groups.to_numpy(dtype=object)
    selectable = np.ones(len(scored), dtype=bool) if dedup_groups is None else best_per_group(scored, dedup_groups)
    candidates = scored[selectable].reset_index(drop=True)
    k = resolve_k(len(candidates), None if count is not None else ratio, count)
    rows, selections = [], {}
    for strategy in strategies:
        chosen = strategy_selection(candidates, strategy, k / max(len(candidates), 1), seed,
                                    strategy_params.get(strategy))
        picked = scored["uid"].isin(set(chosen.loc[chosen["selected"], "uid"])).to_numpy()
        selections[strategy] = pd.DataFrame({"uid": scored["uid"].to_numpy(), "selected": picked})
        row = {
            "strategy": strategy,
            "k": int(picked.sum()),
            "defective_kept": int((picked & defective).sum()),
            "defective_share": float((picked & defective).sum() / max(int(picked.sum()), 1)),
            "clean_kept_share": float(picked[~defective].mean()) if (~defective).any() else float("nan"),
        }
        if groups is not None:
            row["defective_kept_by_group"] = defective_kept_by_group(picked, defective, groups)
            row["defective_share_by_group"] = row["defective_kept_by_group"] / max(int(picked.sum()), 1)
        rows.append(row)
    summary = pd.DataFrame(rows)
    criterion = "defective_kept_by_group" if groups is not None else "defective_kept"
    best = str(summary.loc[int(np.argmin(summary[criterion].to_numpy())), "strategy"])
    summary["best"] = summary["strategy"] == best
    return StrategyEvaluation(best, summary, defect_report(scores, side, selections[best]), selections)
