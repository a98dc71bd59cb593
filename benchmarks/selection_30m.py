"""Time shift_gsample at 30M scores against `np.argsort(-scores, kind="stable")` of the same array, in one run.

    .venv/bin/python benchmarks/selection_30m.py [--n 30000000] [--repeats 1]

Prints wall times, the ratio shift_gsample / argsort (goal <= 1x, stretch <= 0.5x), the naive route (stable argsort
+ inverse permutation + Gumbel-top-k) for reference, and peak memory (tracemalloc peak of numpy allocations during
the call, plus the process's max RSS). Scores are float64 N(0, 1) like rater logits, rows in uid order (uids=None).
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from alchemist_kedro.selection.strategies import Ranking, resolve_k, select_indices

GIB = 1024**3


def timed(fn, repeats: int):
    best, out, peak = float("inf"), None, 0
    for _ in range(repeats):
        tracemalloc.start()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    return best, out, peak


def naive_shift_gsample(scores, k, seed, drop_top=0.2, mu=0.6, sigma=0.2):
    n = scores.size
    order = np.argsort(-scores, kind="stable")
    p = np.empty(n)
    p[order] = (np.arange(n) + 0.5) / n
    logw = np.where(p < drop_top, -np.inf, -((p - mu) ** 2) / (2 * sigma**2))
    keys = logw + np.random.default_rng(seed).gumbel(size=n)
    return np.argpartition(-keys, k - 1)[:k]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000_000)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    scores = np.random.default_rng(0).standard_normal(args.n)
    k = resolve_k(args.n, ratio=args.ratio)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB

    # Alternate the two measurements (best of --repeats each): the 2 cores here are shared, so load drifts.
    t_ours = t_sort = t_rank = float("inf")
    peak_ours = peak_sort = 0
    rss1 = rss0
    for _ in range(args.repeats):
        t, _, peak_sort = timed(lambda: np.argsort(-scores, kind="stable"), 1)
        t_sort = min(t_sort, t)
        t, picked, peak_ours = timed(
            lambda: select_indices(Ranking(scores), "shift_gsample", k, seed=0, drop_top=0.2, mu=0.6, sigma=0.2), 1
        )
        t_ours = min(t_ours, t)
        rss1 = max(rss1, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)
        t, _, _ = timed(lambda: Ranking(scores).order, 1)
        t_rank = min(t_rank, t)
    assert picked.size == k and np.unique(picked).size == k

    print(f"N = {args.n:,}  k = {k:,}  (ratio {args.ratio}, drop_top 0.2, mu 0.6, sigma 0.2)")
    print(f"np.argsort(-scores, kind='stable'): {t_sort:7.2f} s   peak {peak_sort / GIB:.2f} GiB")
    print(f"shift_gsample (rank + sample):      {t_ours:7.2f} s   peak {peak_ours / GIB:.2f} GiB (tracemalloc)")
    print(f"  of which packed-key ranking:      {t_rank:7.2f} s")
    print(f"ratio shift_gsample / argsort:      {t_ours / t_sort:7.2f} x   (goal <= 1, stretch <= 0.5)")
    print(f"max RSS before / after shift_gsample: {rss0:.2f} / {rss1:.2f} GiB (delta {rss1 - rss0:.2f} GiB)")
    if not args.skip_naive:
        t_naive, _, peak_naive = timed(lambda: naive_shift_gsample(scores, k, 0), 1)
        print(f"naive argsort + Gumbel:             {t_naive:7.2f} s   peak {peak_naive / GIB:.2f} GiB"
              f"   ratio {t_naive / t_sort:.2f} x")


if __name__ == "__main__":
    main()
