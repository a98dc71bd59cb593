"""The one NaN rule: a row a scorer could not score (NaN) ranks last everywhere and no strategy ever selects it; asking
for more rows than are scored stops (SelectionError) or, with allow_fewer, takes every scored row and says so."""
import logging

import numpy as np
import pandas as pd
import pytest

from alchemist_kedro.scorers import build_score_table
from alchemist_kedro.selection import SelectionError, STRATEGIES, rank_order
from alchemist_kedro.selection.manifest import select_from_scores
from tests.conf_values import base_params

N, UNSCORED = 60, 7
KNOBS = {"random": {}, "topk": {}, "bottomk": {}, "block": {"start": 0.2}, "gsample": {"mu": 0.5, "sigma": 0.2},
         "shift_gsample": {"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=N)
    raw[rng.choice(N, UNSCORED, replace=False)] = np.nan  # e.g. images that did not decode
    uids = [f"u{i:03d}" for i in rng.permutation(N)]
    # Oriented lower-is-better on purpose: NaN stays NaN through the flip and still ranks last.
    return build_score_table(uids, raw, "clarity", "clarity-1", higher_is_better=False)


def params(strategy: str, **overrides) -> dict:
    return base_params("select", strategy=strategy, strategies=KNOBS, **overrides)


def test_every_strategy_registered_is_covered():
    assert set(STRATEGIES) == set(KNOBS)


@pytest.mark.parametrize("strategy", sorted(KNOBS))
def test_unscored_rows_are_never_selected_and_rank_last(table, strategy):
    manifest = select_from_scores(table, params(strategy, ratio=0.5, count=None))
    unscored = manifest["score"].isna()
    assert unscored.sum() == UNSCORED and manifest["selected"].sum() == N // 2
    assert not (manifest["selected"] & unscored).any()
    # The manifest's percentiles are the score table's: one ranking, NaN rows last in uid order, in both places.
    by_uid = table.set_index("uid")["percentile"]
    np.testing.assert_array_equal(manifest["percentile"].to_numpy(), by_uid.loc[manifest["uid"]].to_numpy())
    last = manifest.sort_values("percentile").tail(UNSCORED)
    assert last["score"].isna().all() and last["uid"].is_monotonic_increasing


@pytest.mark.parametrize("strategy", sorted(KNOBS))
def test_more_than_the_scored_rows_stops_or_takes_them_all(table, strategy, caplog):
    scored = N - UNSCORED
    # block and shift_gsample may only take the scored ranks from start / drop_top = 0.2 on (rank 12 of 60).
    eligible = scored - 12 if strategy in ("block", "shift_gsample") else scored
    ask = eligible + 1
    with pytest.raises(SelectionError, match=f"{UNSCORED} rows have no score"):
        select_from_scores(table, params(strategy, ratio=None, count=ask))
    with caplog.at_level(logging.WARNING):
        manifest = select_from_scores(table, params(strategy, ratio=None, count=ask, allow_fewer=True))
    assert manifest["selected"].sum() == eligible and not (manifest["selected"] & manifest["score"].isna()).any()
    assert f"selecting all {eligible}" in caplog.text
    # Exactly the scored rows available: no error, none of the NaN rows.
    exact = select_from_scores(table, params(strategy, ratio=None, count=eligible))
    assert exact["selected"].sum() == eligible and not (exact["selected"] & exact["score"].isna()).any()


def test_deterministic_strategies_pick_as_if_the_unscored_rows_were_absent(table):
    scored = table[table["score"].notna()]
    for strategy in ("topk", "bottomk"):
        with_nan = select_from_scores(table, params(strategy, ratio=None, count=10))
        without = select_from_scores(scored, params(strategy, ratio=None, count=10))
        assert set(with_nan.loc[with_nan["selected"], "uid"]) == set(without.loc[without["selected"], "uid"])


def test_rank_order_puts_nan_last_in_uid_order_with_or_without_uids():
    scores = np.array([0.5, np.nan, 2.0, np.nan, 0.5, -np.inf])
    uids = np.array(["f", "e", "d", "c", "b", "a"], dtype=object)
    assert rank_order(scores, uids).tolist() == [2, 4, 0, 5, 3, 1]  # ties and NaN by uid
    assert rank_order(scores).tolist() == [2, 0, 4, 5, 1, 3]  # rows already in uid order
    assert rank_order(np.full(3, np.nan)).tolist() == [0, 1, 2]
