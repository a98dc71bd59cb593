"""Selection strategies over any scorer's table (method.md, "Shift-Gsample and the other strategies"; paper eq. 11).

Every strategy is one small pure-numpy function registered by name::

    @register_strategy("my_strategy")
    def my_strategy(ranking: Ranking, k: int, rng: np.random.Generator, *, allow_fewer: bool, **params) -> np.ndarray:
        ...  # return the selected ROW indices (exactly k, unless allow_fewer and fewer are eligible)

Conventions, shared by all strategies:
- Sort by (-score, uid), best first; rank r_i (0 = best); percentile p_i = (r_i + 0.5) / N (0 = best).
- k = round(ratio * N) (half up), or an explicit count.
- A NaN score means "the scorer could not score this row" (e.g. its image did not decode; scorers.build_score_table
  warns). Such rows rank after every scored row (in uid order among themselves), count in N, and are never selected:
  every strategy draws from the scored rows only, so asking for more than there are is the usual "fewer eligible than
  k" case (SelectionError, or all of them with allow_fewer=True and a warning).
- Weighted strategies sample exactly k WITHOUT replacement with probability proportional to w_i through Gumbel-top-k
  (Efraimidis-Spirakis), computed on the LOG weights directly so tiny sigmas never underflow to 0.

Speed (benchmarks/selection_30m.py): ranking is a sort of packed uint64 keys (the order-preserving bits of the score
in the high bits, the row index in the low bits), which numpy sorts with its SIMD quicksort -- several times faster
than `np.argsort(-scores, kind="stable")`. The low bits cost score precision, so keys whose truncated scores collide
are re-sorted exactly afterwards (only those few rows), and exact score ties are broken by uid there too. The
weighted strategies then work in rank space: a weight depends on an item's rank only, so log-weights and Gumbel
noise are laid out over rank positions and no inverse permutation of the 30M array is needed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from alchemist_kedro.registry import Registry

logger = logging.getLogger(__name__)

StrategyFn = Callable[..., np.ndarray]
STRATEGIES: Registry[StrategyFn] = Registry("strategy", "strategies")


class SelectionError(ValueError):
    """The request cannot be met exactly (e.g. fewer than k items have non-zero weight)."""


def register_strategy(name: str) -> Callable[[StrategyFn], StrategyFn]:
    """Register a strategy function under ``name`` (a new strategy = one function + this decorator)."""
    return STRATEGIES.register(name)


# --------------------------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------------------------
_SIGN = np.uint64(63)
_ONE = np.uint64(1)
_NEGATIVE_ZERO = np.uint64(1 << 63)
_POSITIVE_ZERO = np.uint64((1 << 63) - 1)


def _descending_key(scores: np.ndarray) -> np.ndarray:
    """uint64 keys whose ascending order is the descending order of the float64 scores (exact, total)."""
    bits = scores.view(np.uint64)
    # Non-negative floats: flip all but the sign bit (bigger float -> smaller key, below 2^63);
    # negative floats: keep the bits (more negative -> bigger key, at or above 2^63).
    key = bits >> _SIGN
    key -= _ONE  # 0 -> 0xFFFF.., 1 -> 0
    key >>= _ONE  # 0x7FFF.. for non-negative, 0 for negative
    key ^= bits
    # -0.0 lands on 2^63, right after +0.0's 2^63 - 1: equal scores must get equal keys (uid breaks the tie).
    key[key == _NEGATIVE_ZERO] = _POSITIVE_ZERO
    return key


def rank_order(scores: np.ndarray, uids: Any = None) -> np.ndarray:
    """Row indices sorted by (-score, uid), best first.

    ``uids`` breaks exact score ties; it may be a numpy array or a pandas array (only the tied rows are read).
    ``None`` means the rows are already in uid order, so ties go by row position.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    n = scores.size
    if n == 0:
        return np.empty(0, dtype=np.intp)
    missing = np.isnan(scores)
    if missing.any():
        # Unscored rows last, in uid order (as build_score_table ranks them); the scored rows sorted as usual.
        scored, unscored = np.flatnonzero(~missing), np.flatnonzero(missing)
        head = scored[rank_order(scores[scored], None if uids is None else uids[scored])]
        if uids is not None:
            unscored = unscored[np.argsort(np.asarray(uids[unscored]).astype(str), kind="stable")]
        return np.concatenate([head, unscored]).astype(np.int64, copy=False)
    index_bits = max(1, int(n - 1).bit_length())
    shift = np.uint64(index_bits)
    packed = _descending_key(scores)
    packed >>= shift
    packed <<= shift
    packed |= np.arange(n, dtype=np.uint64)  # the row index: a stable tie-break, and what we read back
    packed.sort()  # SIMD quicksort on uint64: unique keys, so stability is moot
    truncated = packed >> shift
    collide = truncated[1:] == truncated[:-1]
    del truncated
    packed &= np.uint64((1 << index_bits) - 1)
    order = packed.view(np.int64)  # the row indices, in place (they fit in the low bits)
    if collide.any():
        _resolve_collisions(order, collide, scores, uids)
    return order


def _resolve_collisions(order: np.ndarray, collide: np.ndarray, scores: np.ndarray, uids: Any) -> None:
    """Re-sort, in place, the runs of rows whose truncated keys collided: exactly by score, then by uid."""
    in_run = np.zeros(order.size, dtype=bool)
    in_run[:-1] |= collide
    in_run[1:] |= collide
    positions = np.flatnonzero(in_run)
    # A new run starts wherever the previous sorted position is not a collision with this one.
    starts = np.ones(positions.size, dtype=bool)
    starts[1:] = ~collide[positions[1:] - 1]
    run_id = np.cumsum(starts)
    rows = order[positions]
    exact = _descending_key(scores[rows])
    if uids is None:
        tie = rows  # rows already in uid order
    else:
        tie = np.asarray(uids[rows]).astype(str)
    within = np.lexsort((tie, exact, run_id))
    order[positions] = rows[within]


@dataclass
class Ranking:
    """Scores of one table plus their (lazily computed) best-first order; what every strategy receives."""

    scores: np.ndarray
    uids: Any = None
    _order: np.ndarray | None = field(default=None, repr=False)
    _scored: int | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.scores.size)

    @property
    def n_scored(self) -> int:
        """Rows with a score (not NaN): the first n_scored ranks; the only rows a strategy may select."""
        if self._scored is None:
            order = self.order
            # NaN rows rank last, so a scored last row means there are none: no second pass over a 30M array.
            if self.n == 0 or not np.isnan(self.scores[order[-1]]):
                self._scored = self.n
            else:
                self._scored = self.n - int(np.count_nonzero(np.isnan(self.scores)))
        return self._scored

    @property
    def order(self) -> np.ndarray:
        if self._order is None:
            self._order = rank_order(self.scores, self.uids)
        return self._order

    def percentiles(self) -> np.ndarray:
        """p_i = (r_i + 0.5) / N per row, in row order (an inverse permutation: only for reporting)."""
        p = np.empty(self.n, dtype=np.float64)
        p[self.order] = (np.arange(self.n, dtype=np.float64) + 0.5) / self.n
        return p


def first_rank_at_or_above(percentile: float, n: int) -> int:
    """The smallest rank r with (r + 0.5) / n >= percentile (so rows before it have p < percentile), exactly."""
    r = int(np.clip(np.ceil(percentile * n - 0.5), 0, n))
    while r > 0 and (r - 1 + 0.5) / n >= percentile:
        r -= 1
    while r < n and (r + 0.5) / n < percentile:
        r += 1
    return r


def _not_enough(name: str, eligible: int, k: int, allow_fewer: bool, why: str, unscored: int = 0) -> int:
    if eligible >= k:
        return k
    message = f"{name}: only {eligible} items are eligible ({why}) but k = {k} were asked for"
    if unscored:
        message += f" ({unscored} rows have no score and are never selected)"
    if not allow_fewer:
        raise SelectionError(message + "; lower the ratio/count or pass allow_fewer=True to take them all")
    logger.warning("%s; allow_fewer=True, so selecting all %d", message, eligible)
    return eligible


def _gumbel_top_k(log_weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of k draws without replacement, P proportional to exp(log_weights) (Efraimidis-Spirakis).

    key_i = log w_i + G_i with G_i = -log E_i, E_i ~ Exp(1); the k largest keys = the k smallest log E_i - log w_i.
    """
    m = log_weights.size
    if k >= m:
        return np.arange(m)
    if k == 0:
        return np.empty(0, dtype=np.intp)
    keys = rng.standard_exponential(m)
    np.log(keys, out=keys)
    keys -= log_weights
    return np.argpartition(keys, k - 1)[:k]


def _gaussian_log_weights(lo_rank: int, hi_rank: int, n: int, mu: float, sigma: float) -> np.ndarray:
    """log w over ranks lo_rank..hi_rank-1: -(p - mu)^2 / (2 sigma^2), p = (r + 0.5) / n."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    logw = np.arange(lo_rank, max(lo_rank, hi_rank), dtype=np.float64)
    logw += 0.5
    logw /= n
    logw -= mu
    np.square(logw, out=logw)
    logw *= -1.0 / (2.0 * sigma * sigma)
    return logw


# --------------------------------------------------------------------------------------------------------------
# Strategies: each returns selected row indices
# --------------------------------------------------------------------------------------------------------------
@register_strategy("random")
def random(ranking: Ranking, k: int, rng: np.random.Generator, *, allow_fewer: bool = False) -> np.ndarray:
    """Uniform without replacement over the scored rows (needs no ranking)."""
    scored = np.isnan(ranking.scores)  # not ranking.n_scored: that would sort
    np.logical_not(scored, out=scored)
    unscored = ranking.n - int(np.count_nonzero(scored))
    k = _not_enough("random", ranking.n - unscored, k, allow_fewer, "scored rows", unscored)
    if not unscored:
        return rng.choice(ranking.n, size=k, replace=False)
    return rng.choice(np.flatnonzero(scored), size=k, replace=False)


@register_strategy("topk")
def topk(ranking: Ranking, k: int, rng: np.random.Generator, *, allow_fewer: bool = False) -> np.ndarray:
    """The k best by (-score, uid)."""
    k = _not_enough("topk", ranking.n_scored, k, allow_fewer, "scored rows", ranking.n - ranking.n_scored)
    return ranking.order[:k].copy()


@register_strategy("bottomk")
def bottomk(ranking: Ranking, k: int, rng: np.random.Generator, *, allow_fewer: bool = False) -> np.ndarray:
    """The k worst scored rows by (-score, uid)."""
    scored = ranking.n_scored
    k = _not_enough("bottomk", scored, k, allow_fewer, "scored rows", ranking.n - scored)
    return ranking.order[scored - k : scored].copy()


@register_strategy("block")
def block(
    ranking: Ranking, k: int, rng: np.random.Generator, *, start: float = 0.0, allow_fewer: bool = False
) -> np.ndarray:
    """The contiguous percentile window [start, start + k/N): ranks r0 .. r0 + k - 1, r0 the first with p >= start."""
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"block start must be in [0, 1], got {start}")
    r0 = first_rank_at_or_above(start, ranking.n)
    k = _not_enough("block", max(0, ranking.n_scored - r0), k, allow_fewer,
                    f"scored ranks from start={start} to the end", ranking.n - ranking.n_scored)
    return ranking.order[r0 : r0 + k].copy()


@register_strategy("gsample")
def gsample(
    ranking: Ranking,
    k: int,
    rng: np.random.Generator,
    *,
    mu: float = 0.5,
    sigma: float = 0.2,
    allow_fewer: bool = False,
) -> np.ndarray:
    """Gaussian over percentiles: w_i = exp(-(p_i - mu)^2 / 2 sigma^2)."""
    return shift_gsample(ranking, k, rng, drop_top=0.0, mu=mu, sigma=sigma, allow_fewer=allow_fewer, _name="gsample")


@register_strategy("shift_gsample")
def shift_gsample(
    ranking: Ranking,
    k: int,
    rng: np.random.Generator,
    *,
    drop_top: float = 0.2,
    mu: float = 0.6,
    sigma: float = 0.2,
    allow_fewer: bool = False,
    _name: str = "shift_gsample",
) -> np.ndarray:
    """Paper eq. 11: w_i = 0 for p_i < drop_top, else exp(-(p_i - mu)^2 / 2 sigma^2)."""
    if not 0.0 <= drop_top <= 1.0:
        raise ValueError(f"drop_top must be in [0, 1], got {drop_top}")
    n, scored = ranking.n, ranking.n_scored
    lo = first_rank_at_or_above(drop_top, n)
    k = _not_enough(_name, max(0, scored - lo), k, allow_fewer,
                    f"w > 0 only for scored rows with p >= drop_top={drop_top}", n - scored)
    # Noise is drawn per rank position, not per row: the rank -> row map is fixed by the data, so this is the same
    # distribution and spares an inverse permutation of the whole array. Unscored rows (ranks >= scored) get no weight.
    picked_ranks = _gumbel_top_k(_gaussian_log_weights(lo, scored, n, mu, sigma), k, rng)
    picked_ranks += lo
    return ranking.order[picked_ranks]


# --------------------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------------------
def resolve_k(n: int, ratio: float | None = None, count: int | None = None) -> int:
    """k = an explicit count, or round(ratio * N) rounding halves up."""
    if (ratio is None) == (count is None):
        raise ValueError("give exactly one of ratio or count")
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return int(count)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return int(np.floor(ratio * n + 0.5))


def select_indices(
    ranking: Ranking,
    strategy: str,
    k: int,
    seed: int = 0,
    allow_fewer: bool = False,
    **params: Any,
) -> np.ndarray:
    """Row indices chosen by ``strategy`` (exactly k, or fewer only with allow_fewer=True and a logged warning)."""
    fn = STRATEGIES.get(strategy)  # an unknown name raises, listing the registered ones
    rng = np.random.default_rng(seed)
    return np.asarray(fn(ranking, k, rng, allow_fewer=allow_fewer, **params), dtype=np.intp)


def select(
    score_table: pd.DataFrame,
    strategy: str,
    ratio: float | None = None,
    count: int | None = None,
    seed: int = 0,
    allow_fewer: bool = False,
    **params: Any,
) -> np.ndarray:
    """Boolean mask aligned with ``score_table`` rows (columns ``uid``, ``score``) marking the selected rows."""
    ranking = Ranking(score_table["score"].to_numpy(dtype=np.float64), uids=score_table["uid"].array)
    k = resolve_k(ranking.n, ratio, count)
    mask = np.zeros(ranking.n, dtype=bool)
    mask[select_indices(ranking, strategy, k, seed=seed, allow_fewer=allow_fewer, **params)] = True
    return mask
