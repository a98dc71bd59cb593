"""Paired-by-seed verdicts on synthetic runs tables whose differences are known."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from alchemist_kedro.evaluation import compare_verdicts, paired_table
from alchemist_kedro.evaluation.verdicts import best_heuristic, claim_table, paired_difference

SEEDS = range(5)
SEED_EFFECT = [0.3, -0.2, 0.5, 0.0, -0.4]  # what a seed does to every arm alike: pairing must remove it


def _runs(shifts: dict[str, float], jitter: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """test_loss = 1 + seed effect + the arm's shift + small noise; fwd and alignment carry no arm effect."""
    rng = np.random.default_rng(seed)
    scorers = {"full": "none", "random": "none", "alchemist": "rater", "gsample": "rater",
               "edge_density_band": "edge_density", "clarity": "clarity", "no_group_mlp": "rater_no_group"}
    rows = []
    for arm, shift in shifts.items():
        for s in SEEDS:
            rows.append({"arm": arm, "seed": s, "scorer": scorers[arm], "strategy": "x",
                         "test_loss": 1 + SEED_EFFECT[s] + shift + jitter * rng.normal(),
                         "fwd": 2 + SEED_EFFECT[s] + 0.05 * rng.normal(), "alignment": 0.01 * rng.normal()})
    return pd.DataFrame(rows)


def test_paired_difference_is_scipys_paired_t_test():
    runs = _runs({"random": 0.0, "alchemist": -0.1})
    arm, base = runs[runs.arm == "alchemist"], runs[runs.arm == "random"]
    d = paired_difference(arm, base, "test_loss")
    diffs = arm["test_loss"].to_numpy() - base["test_loss"].to_numpy()
    assert d["n_seeds"] == 5 and d["seeds"] == list(SEEDS)
    assert d["mean_difference"] == pytest.approx(diffs.mean())
    assert d["p_value"] == pytest.approx(stats.ttest_rel(arm["test_loss"], base["test_loss"]).pvalue)
    half = stats.t.ppf(0.975, 4) * diffs.std(ddof=1) / math.sqrt(5)
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx((diffs.mean() - half, diffs.mean() + half))
    assert list(d["seed_differences"].values()) == pytest.approx(list(diffs))
    # Unpaired, the seed effect (sd ≈ 0.35) would swamp a 0.1 difference; paired, the interval is tight.
    assert d["ci95_high"] < -0.05
    assert stats.ttest_ind(arm["test_loss"], base["test_loss"]).pvalue > 0.5


def test_known_difference_holds_and_none_is_not_shown():
    runs = _runs({"full": -0.05, "random": 0.0, "alchemist": -0.1, "edge_density_band": 0.02, "clarity": 0.2})
    paired, markdown = compare_verdicts(runs)
    row = paired.set_index(["metric", "arm", "baseline"]).loc[("test_loss", "alchemist", "random")]
    assert row["arm_beats_baseline"] == "holds" and row["ci95_high"] < 0 and row["p_value"] < 0.01
    assert row["better"] == "lower" and row["n_seeds"] == 5
    no_effect = paired.set_index(["metric", "arm", "baseline"]).loc[("fwd", "alchemist", "random")]
    assert no_effect["arm_beats_baseline"] == "not shown" and no_effect["ci95_low"] < 0 < no_effect["ci95_high"]
    worse = paired.set_index(["metric", "arm", "baseline"]).loc[("test_loss", "clarity", "alchemist")]
    assert worse["arm_beats_baseline"] == "contradicted"
    # Every arm against each of the three baselines, per metric; an arm is never its own baseline.
    assert len(paired) == 3 * 3 * 4 and not (paired["arm"] == paired["baseline"]).any()

    claims = claim_table(runs).set_index(["claim", "metric"])
    first = "Alchemist-50% beats Random-50%"
    assert claims.loc[(first, "test_loss"), "verdict"] == "holds"
    assert claims.loc[(first, "fwd"), "verdict"] == "not shown"
    # Best heuristic on test_loss: edge_density_band (1.02) beats clarity (1.2); alchemist beats it.
    heuristic = "Alchemist-50% beats the best heuristic at its best strategy"
    assert claims.loc[(heuristic, "test_loss"), "baseline"] == "edge_density_band"
    assert claims.loc[(heuristic, "test_loss"), "verdict"] == "holds"
    assert claims.loc[("Gsample beats Top-K", "test_loss"), "verdict"] == "not run"
    assert claims.loc[("Power check: Full beats Random-50%", "test_loss"), "verdict"] == "holds"

    assert "## Alchemist-50% beats Random-50%" in markdown
    assert "- Alchemist-50% beats Random-50%: **holds** on test_loss; **not shown** on fwd, alignment" in markdown
    assert "- Gsample beats Top-K: **not run** (gsample, topk absent)" in markdown
    assert "## Gsample beats Top-K" not in markdown  # absent claims are listed once, without an empty section
    assert "- The Group MLP helps (rater with it vs without): **not run** (no_group_mlp absent)" in markdown


def test_no_difference_anywhere_is_not_shown():
    runs = _runs({"full": 0.0, "random": 0.0, "alchemist": 0.0, "gsample": 0.0})
    claims = claim_table(runs)
    tested = claims[claims["verdict"] != "not run"]
    assert len(tested) and (tested["verdict"] == "not shown").all()
    _, markdown = compare_verdicts(runs)
    assert "**holds** on" not in markdown and "**contradicted** on" not in markdown


def test_one_seed_and_bad_tables():
    runs = _runs({"random": 0.0, "alchemist": -0.5})
    one_seed = runs[runs.seed == 0]
    paired = paired_table(one_seed, metrics=["test_loss"], baselines=["random"])
    assert paired["n_seeds"].tolist() == [1] and paired["arm_beats_baseline"].tolist() == ["not shown"]
    assert math.isnan(paired["p_value"].iloc[0]) and paired["mean_difference"].iloc[0] < 0
    assert best_heuristic(runs, "test_loss", "lower") is None  # no heuristic arm in this run
    with pytest.raises(ValueError, match="repeats arm × seed"):
        paired_table(pd.concat([runs, runs.iloc[:1]]))
    with pytest.raises(ValueError, match="no direction"):
        paired_table(runs, metrics=["made_up"])
    with pytest.raises(ValueError, match="not columns"):
        paired_table(runs, metrics=["fd_onsfw"])  # a known metric this runs table lacks
