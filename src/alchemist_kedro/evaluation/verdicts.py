"""Paired-by-seed comparisons of compare arms and the paper's claims stated as verdicts (issue 13; paper §4, Tables 1
and 4). Library code: no Kedro here.

Arms share seeds (the same seed means the same initial weights, batch order and noise draws, and the same sampling
noise at evaluation), so the per-seed difference arm − baseline removes what the seed does to both: a paired t-test
on those differences is the test, with a Student-t 95% interval on their mean.

A claim "A beats B" on a metric is
- `holds` when the paired interval excludes 0 on the claimed side (equivalently p < 0.05 and the mean difference
  points the metric's better way),
- `contradicted` when it excludes 0 on the other side,
- `not shown` when it contains 0, or with fewer than 2 paired seeds,
- `not run` when an arm or the metric is absent.
No correction for multiple comparisons: the file says how many it makes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# Which way is better, per metric: losses and distances fall, alignment and caption use rise.
METRIC_DIRECTIONS: dict[str, str] = {
    "test_loss": "lower",
    "test_loss_low_t": "lower",
    "test_loss_mid_t": "lower",
    "test_loss_high_t": "lower",
    "test_caption_gain": "higher",
    "fwd": "lower",
    "fd_onsfw": "lower",
    "alignment": "higher",
}
BASELINES = ("random", "full", "alchemist")
HOLDS, CONTRADICTED, NOT_SHOWN, NOT_RUN = "holds", "contradicted", "not shown", "not run"
# Arms whose scores come from no scorer or from a rater: everything else with a scorer is a heuristic.
NON_HEURISTIC_SCORERS = ("none", "rater")

# (title, arm, baseline, what the paper reports). baseline "best_heuristic" is resolved per metric.
CLAIMS: tuple[tuple[str, str, str, str], ...] = (
    ("Power check: Full beats Random-50%", "full", "random",
     "none (a power check: at equal epochs full trains twice the steps, so a metric that can tell arms apart "
     "should separate these two)"),
    ("Alchemist-50% beats Random-50%", "alchemist", "random", "Table 1: FID 16.20 vs 19.70, CLIP-Score 0.2325 vs 0.2220"),
    ("Alchemist-50% beats Full (at equal epochs, so half the steps)", "alchemist", "full",
     "Table 1: FID 16.20 vs 17.48, CLIP-Score 0.2325 vs 0.2336 (\"comparable performance ... with half the data\")"),
    ("Alchemist-50% beats the best heuristic at its best strategy", "alchemist", "best_heuristic",
     "Table 1: FID 16.20 vs 17.36 (Aesthetic, the best heuristic), CLIP-Score 0.2325 vs 0.2299"),
    ("Shift-Gsample beats Gsample", "alchemist", "gsample", "Table 4: FID 18.37 vs 19.22"),
    ("Gsample beats Top-K", "gsample", "topk", "Table 4: FID 19.22 vs 48.20"),
    ("Shift-Gsample beats Top-K", "alchemist", "topk", "Table 4: FID 18.37 vs 48.20"),
    ("The Group MLP helps (rater with it vs without)", "alchemist", "no_group_mlp", "Table 4: FID 18.22 vs 18.37"),
    ("Alchemist-20% (the small subset) matches Random-50%", "alchemist_small", "random",
     "Table 1: FID 18.22 vs 19.70, CLIP-Score 0.2277 vs 0.2220 (\"comparable to 50% random\")"),
    # Not the paper's: this product's select default. With the embedding-prior rater the head of the ranking is
    # what to keep (README "Which rater default"), so the default is the rater's Top-K, the `topk` arm.
    ("Rater Top-K-50% (the select default) beats Random-50%", "topk", "random",
     "none (Table 4 has Top-K far behind: FID 48.20 vs Random's 19.70, with the paper's ranking whose head is plain)"),
    ("Rater Top-K-50% (the select default) beats the best heuristic at its best strategy", "topk", "best_heuristic",
     "none (this product's default selection)"),
)

_PER_METRIC_BASELINE = {title for title, _, baseline, _ in CLAIMS if baseline == "best_heuristic"}
_PARITY = {CLAIMS[2][0], CLAIMS[8][0]}  # the paper's words are "comparable" (Table 1 still shows them ahead)


def paired_difference(arm: pd.DataFrame, baseline: pd.DataFrame, metric: str, confidence: float = 0.95) -> dict:
    """arm − baseline on `metric` over the seeds both ran (frames with `seed` and `metric` columns, one row a seed).

    → {n_seeds, seeds, seed_differences {seed: diff}, mean_difference, ci95_low, ci95_high, p_value}; the interval
    and p are NaN with fewer than 2 paired seeds.
    """
    from scipy import stats

    joined = arm[["seed", metric]].merge(baseline[["seed", metric]], on="seed", suffixes=("_arm", "_base"),
                                         validate="one_to_one").dropna().sort_values("seed")
    a, b = joined[f"{metric}_arm"].to_numpy(float), joined[f"{metric}_base"].to_numpy(float)
    diffs = a - b
    n = len(diffs)
    out = {"n_seeds": n, "seeds": [int(s) for s in joined["seed"]],
           "seed_differences": {int(s): float(d) for s, d in zip(joined["seed"], diffs)},
           "mean_difference": float(diffs.mean()) if n else math.nan,
           "ci95_low": math.nan, "ci95_high": math.nan, "p_value": math.nan}
    if n < 2:
        return out
    sd = float(diffs.std(ddof=1))
    mean = out["mean_difference"]
    if sd == 0.0:  # every seed moved by the same amount: the t statistic is ±inf (or 0/0 when nothing moved)
        out.update(ci95_low=mean, ci95_high=mean, p_value=1.0 if mean == 0 else 0.0)
        return out
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sd / math.sqrt(n)
    out.update(ci95_low=mean - half, ci95_high=mean + half, p_value=float(stats.ttest_rel(a, b).pvalue))
    return out


def verdict(difference: dict, better: str) -> str:
    """holds / contradicted / not shown for "the arm beats the baseline" from `paired_difference`'s interval."""
    low, high = difference["ci95_low"], difference["ci95_high"]
    if difference["n_seeds"] < 2 or math.isnan(low) or math.isnan(high):
        return NOT_SHOWN
    sign = -1.0 if better == "lower" else 1.0
    if sign * low > 0 and sign * high > 0:
        return HOLDS
    if sign * low < 0 and sign * high < 0:
        return CONTRADICTED
    return NOT_SHOWN


def _directions(runs: pd.DataFrame, metrics: Sequence[str] | None, directions: Mapping[str, str] | None) -> dict:
    table = {**METRIC_DIRECTIONS, **(directions or {})}
    wanted = list(metrics) if metrics is not None else list(table)
    unknown = [m for m in wanted if table.get(m) not in ("lower", "higher")]
    if unknown:
        raise ValueError(f"metrics {unknown} have no direction (lower/higher is better); pass directions")
    absent = [m for m in wanted if m not in runs.columns]
    if metrics is not None and absent:  # asked for by name: say so rather than drop it
        raise ValueError(f"metrics {absent} are not columns of the runs table {list(runs.columns)}")
    return {m: table[m] for m in wanted if m in runs.columns}


def _check_runs(runs: pd.DataFrame) -> None:
    missing = {"arm", "seed"} - set(runs.columns)
    if missing:
        raise ValueError(f"runs table lacks columns {sorted(missing)}: one row per arm × seed is expected")
    duplicated = runs.duplicated(["arm", "seed"])
    if duplicated.any():
        raise ValueError(f"runs table repeats arm × seed rows: {runs.loc[duplicated, ['arm', 'seed']].values.tolist()}")


def _row(metric: str, better: str, arm: str, baseline: str, difference: dict) -> dict:
    return {"metric": metric, "better": better, "arm": arm, "baseline": baseline,
            "n_seeds": difference["n_seeds"], "mean_difference": difference["mean_difference"],
            "ci95_low": difference["ci95_low"], "ci95_high": difference["ci95_high"],
            "p_value": difference["p_value"],
            "seed_differences": "; ".join(f"{s}: {d:.6g}" for s, d in difference["seed_differences"].items()),
            "arm_beats_baseline": verdict(difference, better)}


def paired_table(runs: pd.DataFrame, metrics: Sequence[str] | None = None, baselines: Sequence[str] = BASELINES,
                 directions: Mapping[str, str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Every arm against each baseline present, per metric present: one row per (metric, arm, baseline).

    Columns: metric, better (lower/higher), arm, baseline, n_seeds, mean_difference (arm − baseline), ci95_low,
    ci95_high, p_value, seed_differences ("seed: diff; ..."), arm_beats_baseline (holds / contradicted / not shown).
    """
    _check_runs(runs)
    arms = list(dict.fromkeys(runs["arm"]))
    groups = {arm: frame for arm, frame in runs.groupby("arm", sort=False)}
    rows = [_row(metric, better, arm, base, paired_difference(groups[arm], groups[base], metric, confidence))
            for metric, better in _directions(runs, metrics, directions).items()
            for base in baselines if base in groups
            for arm in arms if arm != base]
    columns = ["metric", "better", "arm", "baseline", "n_seeds", "mean_difference", "ci95_low", "ci95_high", "p_value",
               "seed_differences", "arm_beats_baseline"]
    return pd.DataFrame(rows, columns=columns)


def heuristic_arms(runs: pd.DataFrame) -> list[str]:
    """Arms that select by an image/text heuristic: a scorer that is neither `none` nor a rater's table."""
    if "scorer" not in runs.columns:
        return []
    scorers = runs.groupby("arm", sort=False)["scorer"].first().astype(str)
    return [arm for arm, scorer in scorers.items()
            if scorer not in NON_HEURISTIC_SCORERS and not scorer.startswith("rater")]


def best_heuristic(runs: pd.DataFrame, metric: str, better: str) -> str | None:
    """The heuristic arm with the best mean on `metric`: each heuristic at its best strategy, then the best of them.

    compare_summary's `best_in_family` makes the same pick within each family by fd_onsfw; here it is made per metric.
    """
    arms = heuristic_arms(runs)
    if not arms or metric not in runs.columns:
        return None
    means = runs[runs["arm"].isin(arms)].groupby("arm")[metric].mean().dropna()
    if means.empty:
        return None
    return str(means.idxmin() if better == "lower" else means.idxmax())


def claim_table(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
                directions: Mapping[str, str] | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (claim, metric): the paired difference of the claim's arm against its baseline and its verdict."""
    _check_runs(runs)
    groups = {arm: frame for arm, frame in runs.groupby("arm", sort=False)}
    rows = []
    for title, arm, baseline, paper in CLAIMS:
        for metric, better in _directions(runs, metrics, directions).items():
            base = best_heuristic(runs, metric, better) if baseline == "best_heuristic" else baseline
            row = {"claim": title, "paper": paper, "metric": metric, "better": better, "arm": arm,
                   "baseline": base or baseline}
            if arm not in groups or base not in groups:
                absent = [a for a in (arm, base or "a heuristic arm") if a not in groups]
                rows.append({**row, "n_seeds": 0, "verdict": NOT_RUN, "absent": ", ".join(absent)})
                continue
            difference = paired_difference(groups[arm], groups[base], metric, confidence)
            rows.append({**_row(metric, better, arm, base, difference), "claim": title, "paper": paper,
                         "verdict": verdict(difference, better), "absent": ""})
    return pd.DataFrame(rows)


def _number(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def verdicts_markdown(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
                      directions: Mapping[str, str] | None = None, confidence: float = 0.95,
                      title: str = "compare") -> str:
    """The paper's claims in words, each with its per-metric paired table, for `compare_verdicts.md`."""
    claims = claim_table(runs, metrics, directions, confidence)
    seeds = sorted(int(s) for s in runs["seed"].unique())
    arms = list(dict.fromkeys(runs["arm"]))
    tested = claims[claims["verdict"] != NOT_RUN]
    header = [
        f"# Verdicts: {title}",
        "",
        f"Arms run: {', '.join(arms)}. Seeds: {', '.join(map(str, seeds))}.",
        "",
        f"Each claim is tested per metric on the difference arm − baseline paired by seed: its mean, the "
        f"{round(confidence * 100)}% Student-t interval, the paired t-test p and each seed's difference. "
        "**holds**: the interval excludes 0 on the claimed side; **contradicted**: it excludes 0 on the other side; "
        "**not shown**: it contains 0, or fewer than 2 seeds are paired; **not run**: an arm is absent. "
        f"{len(tested)} comparisons, no correction for multiple testing. "
        "Better is " + ", ".join(f"{m} {b}" for m, b in _directions(runs, metrics, directions).items()) + ".",
        "",
    ]
    overview, sections = [], []
    for title_, frame in claims.groupby("claim", sort=False):
        first = frame.iloc[0]
        if (frame["verdict"] == NOT_RUN).all():
            overview.append(f"- {title_}: **not run** ({first['absent']} absent)")
            continue
        sections += [f"## {title_}", "", f"Paper: {first['paper']}.", ""]
        summary = []
        for label in (HOLDS, CONTRADICTED, NOT_SHOWN, NOT_RUN):
            names = frame.loc[frame["verdict"] == label, "metric"].tolist()
            if names:
                summary.append(f"**{label}** on {', '.join(names)}")
        per_metric = title_ in _PER_METRIC_BASELINE
        versus = "the best heuristic arm per metric" if per_metric else f"`{first['baseline']}`"
        overview.append(f"- {title_}: " + "; ".join(summary))
        sections += [f"`{first['arm']}` vs {versus}: " + "; ".join(summary) + "."]
        if per_metric:
            sections.append("The heuristic is picked by this run's own means, which favours it over alchemist.")
        if title_ in _PARITY:
            sections.append("The paper claims parity here: **not shown** is consistent with parity but does not "
                            "demonstrate it.")
        sections.append("")
        sections += ["| metric | better | arm − baseline | 95% CI | p | n | per seed | verdict |",
                     "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for _, row in frame.iterrows():
            if row["verdict"] == NOT_RUN:
                sections.append(f"| {row['metric']} | {row['better']} | – | – | – | 0 | – | not run |")
                continue
            versus = f" (vs `{row['baseline']}`)" if per_metric else ""
            sections.append(
                f"| {row['metric']}{versus} | {row['better']} | {_number(row['mean_difference'])} | "
                f"[{_number(row['ci95_low'])}, {_number(row['ci95_high'])}] | {_p(row['p_value'])} | "
                f"{row['n_seeds']} | {row['seed_differences']} | {row['verdict']} |")
        sections.append("")
    return "\n".join(header + overview + [""] + sections)


def compare_verdicts(runs: pd.DataFrame, metrics: Sequence[str] | None = None,
                     directions: Mapping[str, str] | None = None, baselines: Sequence[str] = BASELINES,
                     confidence: float = 0.95, title: str = "compare") -> tuple[pd.DataFrame, str]:
    """→ (paired table of every arm against each baseline, the verdicts markdown)."""
    if runs.empty:
        raise ValueError("compare_verdicts: the runs table is empty")
    runs = runs.copy()
    runs["seed"] = runs["seed"].astype(int)
    return (paired_table(runs, metrics, baselines, directions, confidence),
            verdicts_markdown(runs, metrics, directions, confidence, title))
