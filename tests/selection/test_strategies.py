"""Property tests for the selection strategies (method.md, "Shift-Gsample and the other strategies")."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from alchemist_kedro.selection.strategies import (
    STRATEGIES,
    Ranking,
    SelectionError,
    first_rank_at_or_above,
    rank_order,
    resolve_k,
    select,
    select_indices,
)

PARAMS = {
    "random": {},
    "topk": {},
    "bottomk": {},
    "block": {"start": 0.3},
    "gsample": {"mu": 0.5, "sigma": 0.2},
    "shift_gsample": {"drop_top": 0.2, "mu": 0.6, "sigma": 0.2},
}
RANDOMISED = ("random", "gsample", "shift_gsample")


@st.composite
def score_tables(draw, min_size=1, max_size=300):
    n = draw(st.integers(min_size, max_size))
    tied = draw(st.booleans())  # few distinct values -> many exact ties, to exercise the uid tie-break
    if tied:
        values = draw(st.lists(st.sampled_from([-1.0, -0.0, 0.0, 0.5, 2.0]), min_size=n, max_size=n))
    else:
        values = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31))
    uids = np.array([f"{x:032x}" for x in np.random.default_rng(seed).choice(2**62, size=n, replace=False)])
    return np.array(values, dtype=np.float64), uids


def reference_order(scores, uids):
    return np.lexsort((uids, -scores))  # -(-0.0) == -(0.0): the two zeros tie and go by uid


def pick(strategy, scores, uids, k, seed=0, **extra):
    params = {**PARAMS[strategy], **extra}
    return select_indices(Ranking(scores, uids), strategy, k, seed=seed, **params)


def eligible(strategy, n):
    if strategy == "block":
        return n - first_rank_at_or_above(0.3, n)
    if strategy == "shift_gsample":
        return n - first_rank_at_or_above(0.2, n)
    return n


def test_every_strategy_is_covered():
    assert set(STRATEGIES) == set(PARAMS)


@settings(max_examples=60, deadline=None)
@given(score_tables())
def test_rank_order_is_minus_score_then_uid(table):
    scores, uids = table
    np.testing.assert_array_equal(rank_order(scores, uids), reference_order(scores, uids))


def test_rank_order_truncation_collisions_resolved_exactly():
    # Scores that differ only in their lowest mantissa bits collide in the packed key and must be re-sorted.
    rng = np.random.default_rng(3)
    scores = 1.0 + rng.integers(0, 40, 5000) * np.finfo(float).eps
    uids = np.array([f"{i:08d}" for i in rng.permutation(5000)])
    np.testing.assert_array_equal(rank_order(scores, uids), reference_order(scores, uids))


@pytest.mark.parametrize("strategy", sorted(PARAMS))
@settings(max_examples=25, deadline=None)
@given(table=score_tables(), fraction=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_exact_size_no_duplicates_deterministic_and_bounded(strategy, table, fraction, seed):
    scores, uids = table
    n = scores.size
    k = int(fraction * eligible(strategy, n))
    picked = pick(strategy, scores, uids, k, seed=seed)
    assert picked.size == k
    assert np.unique(picked).size == k
    assert picked.min(initial=0) >= 0 and picked.max(initial=0) < n
    np.testing.assert_array_equal(np.sort(picked), np.sort(pick(strategy, scores, uids, k, seed=seed)))

    order = reference_order(scores, uids)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    percentile = (rank + 0.5) / n
    if strategy == "topk":
        assert set(picked) == set(order[:k])
    elif strategy == "bottomk":
        assert set(picked) == set(order[n - k :])
    elif strategy == "block":
        r0 = int(np.argmax(percentile[order] >= 0.3)) if (percentile >= 0.3).any() else n
        assert set(picked) == set(order[r0 : r0 + k])
    elif strategy == "shift_gsample":
        assert (percentile[picked] >= 0.2).all()  # never from the dropped top 20%


@pytest.mark.parametrize("strategy", RANDOMISED)
def test_different_seeds_differ(strategy):
    scores = np.random.default_rng(0).standard_normal(400)
    uids = np.array([f"{i:04d}" for i in range(400)])
    a, b = (set(pick(strategy, scores, uids, 60, seed=s)) for s in (1, 2))
    assert a != b


def test_ties_broken_by_uid_not_row_position():
    scores = np.zeros(6)
    uids = np.array(["f", "a", "e", "b", "d", "c"])
    table = pd.DataFrame({"uid": uids, "score": scores})
    assert set(uids[select(table, "topk", count=2)]) == {"a", "b"}
    assert set(uids[select(table, "bottomk", count=2)]) == {"e", "f"}


@pytest.mark.parametrize("strategy, params", [("shift_gsample", {"drop_top": 0.5}), ("block", {"start": 0.9})])
def test_fewer_than_k_eligible_raises_or_takes_all_with_flag(strategy, params, caplog):
    scores = np.arange(100, dtype=float)
    ranking = Ranking(scores)
    with pytest.raises(SelectionError, match="only"):
        select_indices(ranking, strategy, 60, **params)
    picked = select_indices(ranking, strategy, 60, allow_fewer=True, **params)
    assert picked.size == (50 if strategy == "shift_gsample" else 10)
    assert "allow_fewer" in caplog.text


def test_k_rounds_half_up_and_count_wins():
    assert resolve_k(5, ratio=0.5) == 3
    assert resolve_k(10, ratio=0.3) == 3
    assert resolve_k(10, count=7) == 7
    with pytest.raises(ValueError):
        resolve_k(10, ratio=0.3, count=3)


def test_select_returns_mask_aligned_with_table():
    table = pd.DataFrame({"uid": [f"u{i}" for i in range(50)], "score": np.linspace(1, 0, 50)})
    mask = select(table, "topk", ratio=0.2)
    assert mask.dtype == bool and mask.shape == (50,)
    assert mask[:10].all() and not mask[10:].any()


# ---- the picked percentiles follow the target (truncated) Gaussian --------------------------------------------
N, K = 20_000, 500


def truncated_gaussian_cdf(mu, sigma, lo):
    z = stats.norm(mu, sigma)
    return lambda x: np.clip((z.cdf(x) - z.cdf(lo)) / (z.cdf(1.0) - z.cdf(lo)), 0.0, 1.0)


def picked_percentiles(strategy, **params):
    scores = np.random.default_rng(7).standard_normal(N)
    ranking = Ranking(scores)
    picked = select_indices(ranking, strategy, K, seed=11, **params)
    return ranking.percentiles()[picked]


@pytest.mark.parametrize(
    "strategy, params, target",
    [
        ("gsample", {"mu": 0.5, "sigma": 0.2}, (0.5, 0.2, 0.0)),
        ("shift_gsample", {"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}, (0.6, 0.2, 0.2)),
        ("shift_gsample", {"drop_top": 0.4, "mu": 0.6, "sigma": 0.2}, (0.6, 0.2, 0.4)),
    ],
)
def test_picked_percentiles_match_target_gaussian(strategy, params, target):
    assert stats.kstest(picked_percentiles(strategy, **params), truncated_gaussian_cdf(*target)).pvalue > 1e-3


@pytest.mark.parametrize(
    "params, wrong_target",
    [
        ({"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}, (0.5, 0.2, 0.2)),  # wrong mu
        ({"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}, (0.6, 0.1, 0.2)),  # wrong sigma
        ({"drop_top": 0.0, "mu": 0.6, "sigma": 0.2}, (0.6, 0.2, 0.4)),  # shift missing from the sampler
    ],
)
def test_ks_check_rejects_a_wrong_target(params, wrong_target):
    assert stats.kstest(picked_percentiles("shift_gsample", **params), truncated_gaussian_cdf(*wrong_target)).pvalue < 1e-3
