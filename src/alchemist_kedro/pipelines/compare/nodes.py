"""The strategy comparison (paper Table 1 / Table 4 at our scale): every arm selects from a score table, trains the
same downstream model for the same epochs and seeds, and is evaluated on the same test captions.

An arm's node reuses the select, train_t2i and evaluate pipelines' own functions per seed; the preset decides which
arms run (an inactive arm's node returns no rows) and overrides the train_t2i / evaluate knobs by deep merge.
"""
from __future__ import annotations

import copy
import json
import logging

import pandas as pd
import torch

from alchemist_kedro.evaluation import summarise_over_seeds
from alchemist_kedro.evaluation.downstream import (
    build_image_encoder,
    evaluate_generated,
    load_test_split,
    real_test_features,
)
from alchemist_kedro.evaluation.verdicts import compare_verdicts
from alchemist_kedro.models.alignment import alignment_from_artifact
from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import to_uint8_images
from alchemist_kedro.reporting.plots import compare_grid_figure, compare_summary_plot
from alchemist_kedro.selection.manifest import select_from_scores
from alchemist_kedro.tables import concat_partitions
from alchemist_kedro.training.downstream import build_t2i_inputs, train_downstream

logger = logging.getLogger(__name__)
METRICS = ["fd_onsfw", "alignment", "alignment_ceiling", "train_seconds", "test_loss", "test_loss_low_t",
           "test_loss_mid_t", "test_loss_high_t", "test_caption_gain", "fwd"]


def deep_merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_preset(compare: dict) -> dict:
    """{arms: [names], seeds: [ints], train_t2i: overrides, evaluate: overrides} of `compare.preset`."""
    name = compare["preset"]
    if name not in compare["presets"]:
        raise ValueError(f"unknown compare.preset {name!r}; presets: {sorted(compare['presets'])}")
    preset = compare["presets"][name]
    unknown = set(preset["arms"]) - set(compare["arms"])
    if unknown:
        raise ValueError(f"preset {name!r} names arms {sorted(unknown)} not defined under compare.arms")
    return preset


def arm_score_table(arm: dict, score_tables: dict, sample_index: pd.DataFrame) -> pd.DataFrame:
    """The arm's (uid, score) table over the pool. scorer: none → constant scores (for random / full)."""
    pool = sample_index.loc[sample_index["split"] == "pool", "uid"].astype(str)
    scorer = arm.get("scorer") or "none"
    if scorer == "none":
        return pd.DataFrame({"uid": pool.sort_values().to_numpy(), "score": 0.0})
    if scorer not in score_tables:
        raise ValueError(f"arm needs score table {scorer!r}, which does not exist yet: run its scorer first "
                         f"(present: {sorted(score_tables)})")
    table = score_tables[scorer]
    return table[table["uid"].isin(set(pool))].reset_index(drop=True)


def run_arm(arm_name: str, score_tables: dict, sample_index, samples: dict, features: dict, alignment_model: dict,
            compare: dict, train_params: dict, evaluate_params: dict) -> dict:
    """All seeds of one arm: select → train_t2i → evaluate. → {"rows": [...], "grid": uint8 images of seed 0}."""
    preset = resolve_preset(compare)
    if arm_name not in preset["arms"]:
        return {"rows": [], "grid": None}
    arm = compare["arms"][arm_name]
    index = concat_partitions(sample_index, ["uid", "split"])
    scores = arm_score_table(arm, score_tables, index)
    train_params = deep_merge(train_params, preset.get("train_t2i"))
    evaluate_params = deep_merge(evaluate_params, preset.get("evaluate"))
    torch.set_num_threads(int(train_params["threads"]))
    alignment = alignment_from_artifact(alignment_model)
    encoder = build_image_encoder(evaluate_params)
    test = None
    rows, grid = [], None
    for seed in preset["seeds"]:
        select_params = {"strategy": arm["strategy"], "ratio": arm.get("ratio"), "count": arm.get("count"),
                         "seed": int(seed), "allow_fewer": False,
                         "strategies": {arm["strategy"]: arm.get("params") or {}}}
        manifest = select_from_scores(scores, select_params, scorer=arm.get("scorer") or "none")
        params = deep_merge(train_params, {"training": {"seed": int(seed)}})
        inputs = build_t2i_inputs(manifest, samples, features, params)
        result, _, _, summary = train_downstream(inputs, params)
        model = result.model
        if test is None:
            test = load_test_split(samples, features, model.config.resolution, evaluate_params["max_test_samples"])
            real_features = real_test_features(test, encoder, evaluate_params)  # the same for every seed
        metrics = evaluate_generated(model, test, alignment, encoder, {**evaluate_params, "seed": int(seed)},
                                     real_features=real_features)
        if grid is None:
            grid = {"captions": inputs["grid"]["captions"], "real": to_uint8_images(inputs["grid"]["images"]),
                    "images": to_uint8_images(model.generate(inputs["grid"]["tokens"], inputs["grid"]["mask"],
                                                             generator_for(int(seed), "t2i-grid")))}
        row = {"arm": arm_name, "seed": int(seed), "ratio": float(len(manifest[manifest["selected"]]) / len(manifest)),
               "strategy": arm["strategy"], "scorer": arm.get("scorer") or "none", "family": arm.get("family") or arm_name,
               "n_train": summary["num_train_samples"],
               "steps": summary["steps"], "train_seconds": summary["train_seconds"], **metrics}
        logger.info("compare: %s seed %s → %s", arm_name, seed, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        rows.append(row)
    return {"rows": rows, "grid": grid}


def comparison_report(compare: dict, *arm_results: dict):
    """→ (runs table, summary table mean ± 95% CI per arm, summary metrics, child runs, plot, grid figure)."""
    runs = pd.DataFrame([row for result in arm_results for row in result["rows"]])
    if runs.empty:
        raise ValueError("no arm ran: check compare.preset and its arms")
    order = [a for a in resolve_preset(compare)["arms"] if a in set(runs["arm"])]
    summary = summarise_over_seeds(runs, "arm", METRICS)
    meta = runs.groupby("arm", sort=False)[["ratio", "strategy", "scorer", "family", "n_train", "steps"]].first()
    summary = meta.reset_index().merge(summary, on="arm").set_index("arm").loc[order].reset_index()
    # The paper reports each heuristic at its best pruning strategy: flag the lowest-fd_onsfw arm of each family.
    best = summary.groupby("family", sort=False)["fd_onsfw_mean"].transform("min")
    summary["best_in_family"] = summary["fd_onsfw_mean"].eq(best)
    metrics = {f"{row['arm']}.{m}_mean": [{"step": 0, "value": float(row[f"{m}_mean"])}]
               for _, row in summary.iterrows() for m in METRICS}
    child_runs = [
        {"run_name": f"{row['arm']}/seed{row['seed']}",
         "tags": {"arm": row["arm"], "seed": str(row["seed"]), "ratio": f"{row['ratio']:.3f}",
                  "strategy": row["strategy"], "scorer": row["scorer"], "family": row["family"],
                  "preset": compare["preset"]},
         "params": {"n_train": int(row["n_train"]), "steps": int(row["steps"])},
         "metrics": {k: float(row[k]) for k in runs.columns if k not in ("arm", "seed", "strategy", "scorer", "family")}}
        for _, row in runs.iterrows()
    ]
    return runs, summary, metrics, child_runs, compare_summary_plot(summary), compare_grid_figure(arm_results, order)


def verdicts_report(runs: pd.DataFrame, compare: dict):
    """compare_runs → (paired-by-seed table of every arm against random / full / alchemist per metric, the
    verdicts markdown: which of the paper's claims hold on this run). The statistics are evaluation/verdicts.py's."""
    options = compare["verdicts"]
    return compare_verdicts(runs, metrics=options["metrics"], directions=options.get("directions"),
                            confidence=float(options["confidence"]),
                            title=f"compare preset `{compare['preset']}`")
