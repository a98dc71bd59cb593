"""The strategy comparison (paper Table 1 / Table 4 at our scale): every arm selects from a score table, trains the
same downstream model for the same epochs and seeds, and is evaluated on the same test captions.

An arm's node reuses the select, train_t2i and evaluate pipelines' own functions per seed; the preset decides which
arms run (an inactive arm's node returns no rows) and overrides the train_t2i / evaluate knobs by deep merge.
"""
from __future__ import annotations

import copy
import json
import logging
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from alchemist_kedro.evaluation import summarise_over_seeds
from alchemist_kedro.models.alignment import alignment_from_artifact
from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import t2i_from_artifact, to_uint8_images
from alchemist_kedro.pipelines.evaluate.nodes import build_image_encoder, evaluate_generated, real_test_features
from alchemist_kedro.pipelines.rater.nodes import _concat
from alchemist_kedro.pipelines.select.nodes import select_from_scores
from alchemist_kedro.pipelines.train_t2i.nodes import build_t2i_inputs, join_split, train_t2i_model

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
    index = _concat(sample_index, ["uid", "split"]) if isinstance(sample_index, dict) else sample_index
    scores = arm_score_table(arm, score_tables, index)
    train_params = deep_merge(train_params, preset.get("train_t2i"))
    evaluate_params = deep_merge(evaluate_params, preset.get("evaluate"))
    torch.set_num_threads(int(train_params.get("threads", 2)))
    alignment = alignment_from_artifact(alignment_model)
    encoder = build_image_encoder(evaluate_params)
    test = None
    rows, grid = [], None
    for seed in preset["seeds"]:
        select_params = {"strategy": arm["strategy"], "ratio": arm.get("ratio"), "count": arm.get("count"),
                         "seed": int(seed), "scorer": arm.get("scorer") or "none",
                         "strategies": {arm["strategy"]: arm.get("params") or {}}}
        manifest = select_from_scores(scores, select_params)
        params = deep_merge(train_params, {"training": {"seed": int(seed)}})
        inputs = build_t2i_inputs(manifest, samples, features, params)
        artifact, _, summary, figure = train_t2i_model(inputs, params)
        plt.close(figure)
        model = t2i_from_artifact(artifact)
        if test is None:
            test = join_split(samples, features, model.config.resolution, split="test")
            limit = evaluate_params.get("max_test_samples")
            test = {k: (v[: int(limit)] if limit and k != "missing_features" else v) for k, v in test.items()}
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
    return runs, summary, metrics, child_runs, _summary_plot(summary), _grid_figure(arm_results, order)


def _summary_plot(summary: pd.DataFrame):
    panels = [("test_loss", "test_loss (lower is better)"), ("fwd", "FWD (lower is better)"),
              ("fd_onsfw", "fd_onsfw (lower is better)"), ("test_caption_gain", "test_caption_gain (higher is better)"),
              ("alignment", "alignment (higher is better)"), ("train_seconds", "training time (s)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    x = np.arange(len(summary))
    for ax, (metric, title) in zip(axes, panels):
        err = np.nan_to_num(summary[f"{metric}_ci95"].to_numpy(dtype=float))
        ax.bar(x, summary[f"{metric}_mean"], yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        if metric == "alignment":
            ax.axhline(summary["alignment_ceiling_mean"].mean(), color="grey", ls="--", label="real test pairs")
            ax.legend(fontsize=7)
        ax.set_xticks(x, summary["arm"], rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"mean ± 95% CI over seeds (n = {int(summary['n_seeds'].max())})", fontsize=9)
    fig.tight_layout()
    return fig


def _grid_figure(arm_results, order):
    """Row 0: the real test images of the fixed captions; then one row of seed-0 samples per arm."""
    grids = {r["rows"][0]["arm"]: r["grid"] for r in arm_results if r["rows"] and r["grid"]}
    arms = [a for a in order if a in grids]
    first = grids[arms[0]]
    rows = [("real", first.get("real") or [])] + [(arm, grids[arm]["images"]) for arm in arms]
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns, 1.5 * len(rows) + 0.9), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest")
            if r == 0 and c < len(first["captions"]):
                # Emoji captions share their opening words ("an emoji of a ..."): show where they differ.
                ax.set_title(textwrap.fill(first["captions"][c].removeprefix("an emoji of ")[:40], 16), fontsize=6)
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("real test images (top) and seed-0 samples for their captions, one row per arm", fontsize=9)
    return fig


def verdicts_report(runs: pd.DataFrame, compare: dict):
    """compare_runs → (paired-by-seed table of every arm against random / full / alchemist per metric, the
    verdicts markdown: which of the paper's claims hold on this run). The statistics are evaluation/verdicts.py's."""
    from alchemist_kedro.evaluation.verdicts import compare_verdicts

    options = dict(compare.get("verdicts") or {})
    return compare_verdicts(runs, metrics=options.get("metrics"), directions=options.get("directions"),
                            confidence=float(options.get("confidence", 0.95)),
                            title=f"compare preset `{compare['preset']}`")
