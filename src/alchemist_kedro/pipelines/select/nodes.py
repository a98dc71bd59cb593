"""Select a training subset from any scorer's table (method.md "Shift-Gsample and the other strategies").

Inputs are a SCORE_SCHEMA table, the sample table (read shard by shard, only the columns needed) and the
quarantine table; outputs are the manifest, the ledger, a DataComp-style uid list, optional webdataset shards,
plots and metrics. All functions are pure: Kedro datasets do the I/O.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt

from alchemist_kedro.reporting import plots
from alchemist_kedro.reporting.defect_report import (
    REPORT_COLUMNS,
    defect_report,
    duplicate_report,
    evaluate_strategies,
    report_metrics,
)
from alchemist_kedro.schemas import LEDGER_STATUSES
from alchemist_kedro.scorers import build_score_table, get_scorer
from alchemist_kedro.scorers.base import ScoreBatch
from alchemist_kedro.selection.datacomp import datacomp_subset_array, non_datacomp_uids, uid_subset_array
from alchemist_kedro.selection.dedup import dedup, pair_features
from alchemist_kedro.selection.manifest import select_from_scores, strategy_params
from alchemist_kedro.selection.shards import img2dataset_tar
from alchemist_kedro.shard_engine import DIGEST_COLUMN, engine_for, Part, row_keys, source_digests
from alchemist_kedro.tables import concat_partitions, feature_matrix, load_partition, vector_column

logger = logging.getLogger(__name__)

# sha256 and caption feed the exact-duplicate step; defect and duplicate_group are evaluation-only side columns.
INDEX_COLUMNS = ["uid", "source", "location", "split", "sha256", "caption", "defect", "duplicate_group"]


def pool_scores(scores: pd.DataFrame, sample_index: pd.DataFrame, *_upstream: Any) -> pd.DataFrame:
    """The score table restricted to the training pool: val and test rows are scored but never selectable, and
    percentiles must be ranks within what is being selected from.

    `_upstream`: tables this node only waits for (the rater's scores, which `scores` may be read back from), so a
    default `kedro run` scores before it selects.
    """
    pool = set(sample_index.loc[sample_index["split"] == "pool", "uid"].astype(str))
    keep = scores["uid"].astype(str).isin(pool)
    if not keep.any():
        raise ValueError("no scored sample belongs to the pool split: nothing to select from")
    unscored = len(pool) - int(keep.sum())
    if unscored:
        logger.warning("select: %d pool samples have no score; they stay not_selected", unscored)
    logger.info("select: %d pool scores (%d val/test rows left out)", int(keep.sum()), int((~keep).sum()))
    return scores[keep].reset_index(drop=True)


def _score_shard(load_features: Callable[[], pd.DataFrame], scorer, group_batch_size: int) -> pd.DataFrame:
    frame = load_features()
    features = feature_matrix(frame, patches=getattr(scorer, "reads_patches", False))
    uids = frame["uid"].astype(str).tolist()
    scorer.check_batch(ScoreBatch(uids=uids, features=features))
    raw, weights = scorer.score_with_batch_weights(features, group_batch_size) if len(uids) else (np.zeros(0),) * 2
    return pd.DataFrame(
        {
            "uid": uids,
            "raw_score": np.asarray(raw, dtype=np.float64),
            "batch_weight": weights,
            "scorer_version": scorer.version,
            DIGEST_COLUMN: source_digests(frame),
        }
    )


def score_shards_with_rater(
    rater_model: dict, features: dict[str, Callable[[], pd.DataFrame]],
    existing_scores: dict[str, Callable[[], pd.DataFrame]], params: dict[str, Any],
) -> dict[str, Callable[[], pd.DataFrame]]:
    """Raw rater scores (instance logit, plus the Group MLP's batch weight) per feature shard, lazily saved.

    A shard already scored by the same rater version (a hash of its weights and config) over the same rows (uid and
    content digest) is skipped: re-running after a crash, or after adding shards, scores only what is new. Memory holds one shard.
    """
    scorer = get_scorer("rater", artifact=rater_model, batch_size=int(params["batch_size"]),
                        device=params.get("device", "cpu"))
    group_batch_size = int(params["group_batch_size"])
    # IncrementalDataset (what the catalog uses, for the empty first run) hands frames, not loaders: the engine reads
    # both. A shard's features are read for their uids only when its stored version matches.
    engine = engine_for(params, "select.rater_scoring")
    plan = engine.plan(
        features, existing_scores, {"rater": Part("scorer_version", scorer.version, ())},
        lambda shard: row_keys(load_partition(features[shard])), ordered_uids=False,
    )
    logger.info("rater scoring (%s): %d shard(s) to score, %d already scored", scorer.version, len(plan.tasks),
                len(features) - len(plan.tasks))
    return engine.run(plan, lambda task: _score_shard(features[task.shard], scorer, group_batch_size))


def rank_rater_scores(
    raw_scores: dict[str, Callable[[], pd.DataFrame]], features: dict[str, Any], rater_model: dict
) -> pd.DataFrame:
    """One SCORE_SCHEMA table over the whole corpus (ranks are global, not per shard), plus `batch_weight`.

    Only shards that still have features count: raw scores of a shard removed since are left on disk, unused.
    """
    version = get_scorer("rater", artifact=rater_model).version
    frames = [raw_scores[shard]() for shard in sorted(features) if shard in raw_scores]
    missing = sorted(set(features) - set(raw_scores))
    if missing:
        raise ValueError(f"rater scores missing for feature shard(s) {missing[:5]}: the scoring node did not write them")
    raw = pd.concat(frames, ignore_index=True)
    stale = raw["scorer_version"] != version
    if stale.any():
        raise ValueError(f"{int(stale.sum())} rater scores come from another rater version than {version}")
    table = build_score_table(raw["uid"], raw["raw_score"], "rater", version, higher_is_better=True)
    return table.merge(raw[["uid", "batch_weight"]], on="uid", how="left", validate="one_to_one")


def build_sample_index(
    samples_index: dict[str, Callable[[], pd.DataFrame]], samples: dict[str, Any] | None = None
) -> pd.DataFrame:
    """uid, source, location, split, defect and partition of every sample, loaded one shard at a time.

    ``samples`` (the full table's lazy partitions) is only checked for the same shard list: it orders this node
    after ingest; its loaders are never called, so no image bytes are read here.
    """
    if samples is not None and set(samples) != set(samples_index):
        raise ValueError("the sample-table view and the sample table list different shards")
    parts = []
    for partition, load in sorted(samples_index.items()):
        part = load()
        missing = [c for c in ("uid", "source", "location") if c not in part.columns]
        if missing:
            raise ValueError(f"sample partition {partition} lacks columns {missing}")
        part = part.reindex(columns=INDEX_COLUMNS)
        part["partition"] = partition
        parts.append(part)
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in [*INDEX_COLUMNS, "partition"]})
    return pd.concat(parts, ignore_index=True)


def deduplicate_pool(pool_scores: pd.DataFrame, sample_index: pd.DataFrame, embeddings: dict[str, Any],
                     params: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the selectable rows: one per duplicate group, the best-scored; the duplicate table of every scored row).

    No per-sample score can tell which of two identical pairs to drop, so duplicates are a property of the pool:
    exact (same image bytes and caption) and near (cosine of image ⊕ text embeddings above a threshold) groups,
    selection/dedup.py. Rows left out are in the ledger as not_selected, "duplicate of <kept uid>".
    """
    if not params["enabled"]:
        return pool_scores, pd.DataFrame({"uid": pool_scores["uid"].astype(str), "dedup_group": None, "group_size": 1,
                                          "duplicate_kind": None, "is_kept": True})
    table = pool_scores[["uid", "score"]].merge(sample_index[["uid", "sha256", "caption"]], on="uid", how="left",
                                                validate="one_to_one")
    features, near_threshold = None, params["near_threshold"]
    if near_threshold is not None and not embeddings:
        # A selection by a heuristic on a project that never cached features: say so, group exact copies only.
        logger.warning("select: no cached features; near dedup skipped, exact dedup only")
        near_threshold = None
    if near_threshold is not None:
        frame = concat_partitions(embeddings, ["uid", "image_emb", "text_emb"])
        frame = table[["uid"]].merge(frame, on="uid", how="left", validate="one_to_one")
        if frame["image_emb"].isna().any():
            raise ValueError(f"{int(frame['image_emb'].isna().sum())} scored rows have no features for near dedup")
        features = pair_features(vector_column(frame, "image_emb"), vector_column(frame, "text_emb"))
    # A row the scorer could not score (NaN) ranks worst: it is kept only when it duplicates nothing better.
    table["score"] = table["score"].fillna(-np.inf)
    exact = params["exact"]
    if exact is not None and table["sha256"].isna().all():
        # A sample table written without image hashes (not by this project's ingest): say so, group by features only.
        logger.warning("select: the sample table has no sha256 column; exact dedup skipped, near dedup only")
        exact = None
    duplicates = dedup(table, score_column="score", features=features, exact=exact, near_threshold=near_threshold)
    dropped = int((~duplicates["is_kept"]).sum())
    logger.info("select: %d duplicate groups (%d rows); %d duplicates left out of the selection",
                int(duplicates["dedup_group"].nunique()), int(duplicates["dedup_group"].notna().sum()), dropped)
    keep = set(duplicates.loc[duplicates["is_kept"], "uid"])
    return pool_scores[pool_scores["uid"].isin(keep)].reset_index(drop=True), duplicates


def build_ledger(manifest: pd.DataFrame, sample_index: pd.DataFrame, quarantine: pd.DataFrame,
                 duplicates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every input row exactly once: samples are selected / not_selected, quarantine rows are quarantined.

    Samples the scorer did not score (e.g. val/test splits) are not_selected with the reason saying why, and so are
    duplicates the dedup step left out ("duplicate of <kept uid>"); a scored uid that is not in the sample table
    means a stale score table, and stops the run.
    """
    if sample_index["uid"].duplicated().any():
        raise ValueError("sample table has duplicate uids; ingest should have quarantined them")
    stale = ~manifest["uid"].isin(sample_index["uid"])
    if stale.any():
        raise ValueError(f"{int(stale.sum())} scored uids are not in the sample table (stale scores?), "
                         f"e.g. {manifest.loc[stale, 'uid'].head(3).tolist()}")
    by_uid = manifest.set_index("uid")[["selected", "strategy"]]
    joined = sample_index[["uid", "source", "location", "split"]].join(by_uid, on="uid")
    scored = joined["selected"].notna()
    picked = scored & joined["selected"].fillna(False).astype(bool)
    reason = np.where(picked, "picked by " + joined["strategy"].fillna("").astype(str), "")
    reason = np.where(scored & ~picked, "not picked by " + joined["strategy"].fillna("").astype(str), reason)
    reason = np.where(~scored, "not scored (split " + joined["split"].fillna("?").astype(str) + ")", reason)
    if duplicates is not None and (~duplicates["is_kept"]).any():
        kept_of = duplicates[duplicates["is_kept"] & duplicates["dedup_group"].notna()].set_index("dedup_group")["uid"]
        dropped = duplicates[~duplicates["is_kept"]]
        dropped_reason = pd.Series(("duplicate of " + dropped["dedup_group"].map(kept_of).astype(str) + " ("
                                    + dropped["duplicate_kind"].astype(str) + ")").to_numpy(), index=dropped["uid"])
        is_dropped = joined["uid"].isin(dropped_reason.index).to_numpy()
        reason = np.where(is_dropped, joined["uid"].map(dropped_reason).fillna("").astype(str), reason)
    samples_part = pd.DataFrame(
        {
            "uid": joined["uid"].astype(str),
            "source": joined["source"].astype(str),
            "location": joined["location"].astype(str),
            "status": np.where(picked, "selected", "not_selected"),
            "reason": reason,
        }
    )
    quarantine_part = pd.DataFrame(
        {
            "uid": quarantine["uid"].astype(str),
            "source": quarantine["source"].astype(str),
            "location": quarantine["location"].astype(str),
            "status": "quarantined",
            "reason": quarantine["reason"].astype(str),
        }
    )
    ledger = pd.concat([samples_part, quarantine_part], ignore_index=True)
    check_ledger(ledger, manifest, n_samples=len(sample_index), n_quarantined=len(quarantine))
    return ledger


def check_ledger(ledger: pd.DataFrame, manifest: pd.DataFrame, n_samples: int, n_quarantined: int) -> None:
    """Raise unless every input row is in the ledger exactly once with a known status matching the manifest."""
    if len(ledger) != n_samples + n_quarantined:
        raise AssertionError(f"ledger has {len(ledger)} rows, inputs have {n_samples} + {n_quarantined}")
    bad = ~ledger["status"].isin(LEDGER_STATUSES)
    if bad.any():
        raise AssertionError(f"unknown ledger statuses {sorted(ledger.loc[bad, 'status'].unique())}")
    in_samples = ledger["status"] != "quarantined"
    if ledger.loc[in_samples, "uid"].duplicated().any():
        raise AssertionError("a sample uid appears twice in the ledger")
    if ledger.duplicated(subset=["uid", "source", "location", "status"]).any():
        raise AssertionError("an input row appears twice in the ledger")
    ledger_selected = set(ledger.loc[ledger["status"] == "selected", "uid"])
    manifest_selected = set(manifest.loc[manifest["selected"], "uid"])
    if ledger_selected != manifest_selected:
        raise AssertionError("ledger's selected uids differ from the manifest's")


def defect_kind_report(manifest: pd.DataFrame, pool_scores: pd.DataFrame, sample_index: pd.DataFrame,
                       heuristic_scores: dict[str, Any], heuristic_feature_scores: dict[str, Any],
                       params: dict[str, Any], duplicates: pd.DataFrame | None = None,
                       ) -> tuple[pd.DataFrame, dict[str, dict[str, float]]]:
    """Per defect kind (the evaluation-only `defect` column): mean percentile, share kept, clean-vs-kind ROC-AUC,
    for this selection and for every heuristic table present at its best strategy (topk / band / shift_gsample, the
    same k). Each heuristic goes through the same dedup groups (`duplicates`, the dedup step's table), keeping each
    group's best member by ITS score, as `select.scorer=<heuristic>` would select; duplicates are counted by group
    (reporting/defect_report.py, the `all_defects_by_group` row). → (table for data/08_reporting, MLflow metrics).
    Empty when the corpus has no defect labels."""
    side = sample_index.loc[sample_index["split"] == "pool", ["uid", "defect", "duplicate_group"]]
    if not side["defect"].notna().any():
        return pd.DataFrame(columns=["scorer", "strategy", *REPORT_COLUMNS]), {}
    # Duplicates the dedup step left out are rows of the pool this selection did not keep.
    scored = pool_scores[["uid", "score"]].merge(manifest[["uid", "selected"]], on="uid", how="left")
    scored["selected"] = scored["selected"].fillna(False).astype(bool)
    side = side[side["uid"].isin(scored["uid"])]
    scorer = str(manifest["scorer"].iloc[0]) if len(manifest) else "?"
    strategy = str(manifest["strategy"].iloc[0]) if len(manifest) else "?"
    frames = [defect_report(scored[["uid", "score"]], side, scored[["uid", "selected"]]).assign(
        scorer=scorer, strategy=strategy)]
    metrics = {f"select.defects.{k}": v for k, v in report_metrics(frames[0], "selection").items()}
    dup = duplicate_report(side, scored)
    metrics.update({f"select.duplicates.{k}": v for k, v in dup.items()})
    tables = {**{k: v for k, v in heuristic_feature_scores.items()}, **{k: v for k, v in heuristic_scores.items()}}
    for name in sorted(tables):
        if name in params["heuristics"] or not params["heuristics"]:
            table = load_partition(tables[name])[["uid", "score"]]
            table = table[table["uid"].isin(scored["uid"])]
            if len(table) != len(scored):
                logger.warning("select: the %s table covers %d of %d pool rows; left out of the defect report",
                               name, len(table), len(scored))
                continue
            best = evaluate_strategies(table, side, seed=int(manifest["seed"].iloc[0]), dedup_groups=duplicates,
                                       count=int(scored["selected"].sum()))
            frames.append(best.report.assign(scorer=name, strategy=best.best))
            metrics.update({f"select.defects.heuristic.{k}": v
                            for k, v in report_metrics(best.report, f"{name}_{best.best}").items()})
    report = pd.concat(frames, ignore_index=True)[["scorer", "strategy", *REPORT_COLUMNS]]
    keys = [k for k in metrics if k.endswith((".kept_share", ".roc_auc", ".kept_share_vs_clean"))
            or "duplicates" in k]
    return report, {k: {"value": float(metrics[k]), "step": 0} for k in keys}


def selected_uid_list(manifest: pd.DataFrame) -> np.ndarray:
    """DataComp ``--subset_file``: the selected uids, sorted, fixed-width unicode."""
    return uid_subset_array(manifest.loc[manifest["selected"], "uid"])


def datacomp_subset_file(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """DataComp ``resharder.py --subset-file``: {"selected_uids": sorted (u8, u8) array} when every selected uid is
    a DataComp 32-hex uid; {} (nothing written, and the log says why) when they are not."""
    uids = manifest.loc[manifest["selected"], "uid"].astype(str)
    bad = non_datacomp_uids(uids)
    if bad:
        logger.info("select: no DataComp (u8, u8) subset file: %d of %d selected uids are not 32-hex DataComp uids "
                    "(e.g. %r); the readable selected_uids list is written as usual", len(bad), len(uids), bad[0])
        return {}
    return {"selected_uids": datacomp_subset_array(uids)}


def selection_metrics(manifest: pd.DataFrame, sample_index: pd.DataFrame) -> dict[str, dict[str, float]]:
    """N, k, ratio, mean/std of picked percentiles; and (evaluation only) each defect kind's share, selected vs pool."""
    picked = manifest.loc[manifest["selected"], "percentile"].to_numpy()
    n, k = len(manifest), int(manifest["selected"].sum())
    metrics = {
        "select.n": float(n),
        "select.k": float(k),
        "select.ratio": k / n if n else 0.0,
        "select.picked_percentile_mean": float(picked.mean()) if k else float("nan"),
        "select.picked_percentile_std": float(picked.std()) if k else float("nan"),
    }
    if "defect" in sample_index.columns and sample_index["defect"].notna().any():
        joined = manifest[["uid", "selected"]].merge(sample_index[["uid", "defect"]], on="uid", how="left")
        kinds = joined["defect"].fillna("none").astype(str)
        for kind in sorted(kinds.unique()):
            is_kind = (kinds == kind).to_numpy()
            metrics[f"select.defect_share.pool.{kind}"] = float(is_kind.mean())
            metrics[f"select.defect_share.selected.{kind}"] = (
                float(is_kind[joined["selected"].to_numpy()].mean()) if k else 0.0
            )
    return {name: {"value": value, "step": 0} for name, value in metrics.items()}


def plot_score_histogram(manifest: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Score histogram with the selected region overlaid."""
    title = f"{manifest['scorer'].iloc[0] if len(manifest) else ''} scores: {params['strategy']} {strategy_params(params)}, k={manifest['selected'].sum():,}"
    return plots.score_histogram(manifest, bins=int(params["histogram_bins"]), title=title)


def plot_training_dynamics(trace: pd.DataFrame, manifest: pd.DataFrame) -> plt.Figure:
    """Fig. 3-style plot: the rater run's probe samples' loss and gradient norm over training, by score band."""
    if trace.empty or not trace["uid"].isin(manifest["uid"]).any():
        raise ValueError("the rater's per-sample trace shares no uid with the selection: rerun the rater pipeline")
    return plots.training_dynamics_by_band(trace, manifest)


def plot_contact_sheets(
    manifest: pd.DataFrame,
    sample_index: pd.DataFrame,
    samples_images: dict[str, Callable[[], pd.DataFrame]],
    params: dict[str, Any],
) -> plt.Figure:
    """Thumbnails with captions for a few samples per percentile band (head / middle / tail).

    Only the partitions holding the shown samples are loaded, and only their image/caption columns.
    """
    sheet = params["contact_sheet"]
    per_band = int(sheet["per_band"])
    rng = np.random.default_rng(int(params["seed"]))
    shown: list[tuple[str, pd.DataFrame]] = []
    for lo, hi in sheet["bands"]:
        in_band = manifest[(manifest["percentile"] >= lo) & (manifest["percentile"] <= hi)]
        rows = in_band.iloc[np.sort(rng.choice(len(in_band), size=min(per_band, len(in_band)), replace=False))]
        shown.append((f"percentile {lo:.0%}–{hi:.0%}", rows.sort_values("percentile")))
    wanted = pd.concat([rows for _, rows in shown])[["uid"]].merge(sample_index[["uid", "partition"]], on="uid")
    images = []
    for partition in sorted(wanted["partition"].unique()):
        part = samples_images[partition]()
        images.append(part.loc[part["uid"].isin(wanted["uid"]), ["uid", "caption", "image"]])
    image_table = pd.concat(images, ignore_index=True) if images else pd.DataFrame(columns=["uid", "caption", "image"])
    bands = [(label, rows.merge(image_table, on="uid", how="inner")) for label, rows in shown]
    return plots.contact_sheet(bands, caption_chars=int(sheet["caption_chars"]))


def selected_shards(
    manifest: pd.DataFrame,
    sample_index: pd.DataFrame,
    samples: dict[str, Callable[[], pd.DataFrame]],
    params: dict[str, Any],
) -> dict[str, Callable[[], bytes]]:
    """Webdataset tars (img2dataset layout) of the selected subset, one per sample partition that has any; lazy,
    so one shard is in memory at a time. Empty unless ``write_shards`` is on."""
    if not params["write_shards"]:
        return {}
    chosen = set(manifest.loc[manifest["selected"], "uid"])
    partitions = sorted(sample_index.loc[sample_index["uid"].isin(chosen), "partition"].unique())

    def shard(partition: str, index: int) -> Callable[[], bytes]:
        def build() -> bytes:
            part = samples[partition]()
            return img2dataset_tar(part[part["uid"].isin(chosen)], index)

        return build

    return {f"{i:05d}": shard(p, i) for i, p in enumerate(partitions)}
