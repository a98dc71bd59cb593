from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from alchemist_kedro.reporting import defect_report, duplicate_report, evaluate_strategies, report_metrics


@pytest.fixture
def tables():
    # Scores, best first: c1 8, m1 7.5, c2 7, c3 6, c4 5, m2 4, n2 2, n1 1 -> percentiles 1/16, 3/16, ... 15/16.
    scores = pd.DataFrame(
        {"uid": ["c1", "c2", "c3", "c4", "n1", "n2", "m1", "m2"], "score": [8, 7, 6, 5, 1, 2, 7.5, 4]}
    )
    side = pd.DataFrame(
        {
            "uid": ["c1", "c2", "c3", "c4", "n1", "n2", "m1", "m2", "unscored"],
            "defect": [None, None, None, None, "noise", "noise", "mismatched_caption", "mismatched_caption", "noise"],
        }
    )
    selection = pd.DataFrame({"uid": scores["uid"], "selected": [True, True, True, False, False, False, True, False]})
    return scores, side, selection


def test_per_kind_rows_have_the_known_figures(tables):
    scores, side, selection = tables
    report = defect_report(scores, side, selection).set_index("kind")
    assert list(report.index) == ["clean", "all_defects", "mismatched_caption", "noise"]
    assert report["n"].tolist() == [4, 4, 2, 2]  # the unscored side row is left out
    assert report.loc["clean", "mean_percentile"] == pytest.approx((1 + 5 + 7 + 9) / 16 / 4)
    assert report.loc["noise", "mean_percentile"] == pytest.approx((13 + 15) / 16 / 2)
    assert report.loc["mismatched_caption", "mean_percentile"] == pytest.approx((3 + 11) / 16 / 2)
    assert report.loc["all_defects", "mean_percentile"] == pytest.approx((3 + 11 + 13 + 15) / 16 / 4)
    # Clean above noise everywhere; above m1 (7.5) only c1, above m2 (4) all four: 5 of 8 pairs.
    assert np.isnan(report.loc["clean", "roc_auc"])
    assert report.loc["noise", "roc_auc"] == 1.0
    assert report.loc["mismatched_caption", "roc_auc"] == pytest.approx(5 / 8)
    assert report.loc["all_defects", "roc_auc"] == pytest.approx(13 / 16)
    assert report["kept_share"].tolist() == [0.75, 0.25, 0.5, 0.0]
    assert report.loc["mismatched_caption", "kept_share_vs_clean"] == pytest.approx(0.5 / 0.75)


def test_a_given_percentile_column_is_used_and_no_selection_means_nan_shares(tables):
    scores, side, _ = tables
    report = defect_report(scores.assign(percentile=0.5), side).set_index("kind")
    assert (report["mean_percentile"] == 0.5).all()
    assert report["kept_share"].isna().all()


def test_a_scorer_that_prefers_the_defect_gets_an_auc_below_half(tables):
    scores, side, _ = tables
    flipped = scores.assign(score=-scores["score"])
    report = defect_report(flipped, side).set_index("kind")
    assert report.loc["noise", "roc_auc"] == 0.0
    assert report.loc["mismatched_caption", "roc_auc"] == pytest.approx(3 / 8)


def test_bad_tables_are_refused(tables):
    scores, side, selection = tables
    with pytest.raises(ValueError, match="side table"):
        defect_report(scores, side[side["uid"] != "c1"])
    with pytest.raises(ValueError, match="selection lacks"):
        defect_report(scores, side, selection.iloc[:-1])
    with pytest.raises(ValueError, match="duplicate uids"):
        defect_report(pd.concat([scores, scores]), side)


def test_report_metrics_flatten_the_table(tables):
    scores, side, selection = tables
    metrics = report_metrics(defect_report(scores, side, selection), "select.report.rater")
    assert metrics["select.report.rater.noise.roc_auc"] == 1.0
    assert metrics["select.report.rater.clean.kept_share"] == 0.75
    assert "select.report.rater.clean.roc_auc" not in metrics


def strategy_tables(defective_ranks: np.ndarray, n: int = 100):
    scores = pd.DataFrame({"uid": [f"u{i:03d}" for i in range(n)], "score": np.arange(n, 0, -1, dtype=float)})
    defect = np.full(n, None, dtype=object)
    defect[defective_ranks] = "plain"
    return scores, pd.DataFrame({"uid": scores["uid"], "defect": defect})


def test_band_wins_when_defects_sit_at_both_ends():
    # Ranks 0-24 (the head) and 75-99 (the tail) defective: the 25-75% band keeps none of them.
    scores, side = strategy_tables(np.r_[0:25, 75:100])
    evaluation = evaluate_strategies(scores, side, ratio=0.5)
    summary = evaluation.summary.set_index("strategy")
    assert evaluation.best == "band"
    assert summary["k"].tolist() == [50, 50, 50]
    assert summary.loc["band", "defective_kept"] == 0
    assert summary.loc["topk", "defective_kept"] == 25
    assert summary.loc["shift_gsample", "defective_kept"] > 0
    assert summary["best"].tolist() == [False, True, False]
    assert evaluation.report.set_index("kind").loc["plain", "kept_share"] == 0.0
    band = evaluation.selections["band"].set_index("uid")["selected"]
    assert band.iloc[25:75].all() and not band.iloc[:25].any() and not band.iloc[75:].any()


def test_topk_wins_when_defects_sit_in_the_tail():
    scores, side = strategy_tables(np.r_[50:100])
    evaluation = evaluate_strategies(scores, side, ratio=0.5)
    assert evaluation.best == "topk"
    assert evaluation.summary.set_index("strategy").loc["topk", "defective_kept"] == 0
    assert evaluation.report.set_index("kind").loc["clean", "kept_share"] == 1.0


def test_duplicate_report_counts_groups_kept_twice():
    side = pd.DataFrame({"uid": list("abcdef"), "duplicate_group": ["g1", "g1", "g2", "g2", None, None]})
    selection = pd.DataFrame({"uid": list("abcdef"), "selected": [True, True, True, False, True, True]})
    assert duplicate_report(side, selection) == {
        "groups": 2.0, "groups_with_more_than_one_kept": 1.0, "max_kept_in_a_group": 2.0
    }


def _duplicate_tables():
    # o1/d1 and o2/d2: an original and its copy, identical scores would tie; here d1 scores above o1.
    scores = pd.DataFrame({"uid": ["d1", "o1", "o2", "d2", "c1", "c2", "n1", "n2"],
                           "score": [9.0, 8.9, 8.0, 7.9, 7.0, 6.0, 1.0, 0.5]})
    side = pd.DataFrame({"uid": scores["uid"],
                         "defect": ["exact_duplicate", None, None, "exact_duplicate", None, None, "noise", "noise"],
                         "duplicate_group": ["g1", "g1", "g2", "g2", None, None, None, None]})
    return scores, side


def test_a_kept_copy_is_a_defect_only_when_its_original_is_kept_too():
    scores, side = _duplicate_tables()
    # d1 kept without o1 (one member of g1), o2 and d2 both kept (one too many), one noise row kept.
    selection = pd.DataFrame({"uid": scores["uid"], "selected": [True, False, True, True, True, False, True, False]})
    report = defect_report(scores, side, selection).set_index("kind")
    assert report.loc["all_defects", "kept_share"] == pytest.approx(3 / 4)  # per row: d1, d2, n1
    assert report.loc["all_defects_by_group", "kept_share"] == pytest.approx(2 / 4)  # d2 (g2 twice) and n1
    assert report.loc["all_defects_by_group", "n"] == 4
    assert list(report.index[:3]) == ["clean", "all_defects", "all_defects_by_group"]
    # Without the group column the pooled row is not there.
    assert "all_defects_by_group" not in defect_report(scores, side[["uid", "defect"]], selection)["kind"].tolist()


def test_strategies_after_dedup_keep_each_group_s_best_member_by_this_score_at_the_given_count():
    scores, side = _duplicate_tables()
    groups = pd.DataFrame({"uid": scores["uid"], "dedup_group": ["g1", "g1", "g2", "g2", None, None, None, None]})
    plain = evaluate_strategies(scores, side, strategies=("topk",), count=4)
    deduped = evaluate_strategies(scores, side, strategies=("topk",), count=4, dedup_groups=groups)
    picked = lambda e: set(e.selections["topk"].query("selected")["uid"])
    assert picked(plain) == {"d1", "o1", "o2", "d2"}
    assert picked(deduped) == {"d1", "o2", "c1", "c2"}  # o1 and d2 lose to their group's better member
    assert plain.summary.loc[0, "defective_kept"] == 2 and plain.summary.loc[0, "defective_kept_by_group"] == 2
    assert deduped.summary.loc[0, "defective_kept"] == 1 and deduped.summary.loc[0, "defective_kept_by_group"] == 0
    assert deduped.summary.loc[0, "k"] == 4


def test_the_best_strategy_is_chosen_by_duplicates_counted_by_group():
    # Top-k keeps the copy d1 but not its original o1 (a defect by row, none by group); bottom-k keeps the noise row
    # n1 (one either way). By rows a tie, which the earlier strategy (bottomk) would win; by group top-k wins.
    scores = pd.DataFrame({"uid": ["d1", "c1", "c2", "c3", "n1", "o1"], "score": [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]})
    side = pd.DataFrame({"uid": scores["uid"], "defect": ["exact_duplicate", None, None, None, "noise", None],
                         "duplicate_group": ["g1", None, None, None, None, "g1"]})
    evaluation = evaluate_strategies(scores, side, strategies=("bottomk", "topk"), ratio=0.5)
    summary = evaluation.summary.set_index("strategy")
    assert summary["defective_kept"].tolist() == [1, 1]
    assert summary["defective_kept_by_group"].tolist() == [1, 0]
    assert evaluation.best == "topk"
    assert evaluate_strategies(scores, side[["uid", "defect"]], strategies=("bottomk", "topk")).best == "bottomk"
