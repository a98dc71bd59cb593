"""Heuristic scores: raw statistics shard by shard (resumable), then global ranks, histograms and Spearman.

Raw-score partitions (`heuristic_raw_scores`, one per sample shard, same partition id) hold `uid`,
`decode_error` (null when the image decoded) and, per scorer, `<scorer>` (raw float64) and `<scorer>_version`.
A shard is rescored only for the scorers whose version (settings + weights hash) differs from what the partition
holds, or when its uids no longer match the sample table's.

Scorers that read cached features instead of pixels (`needs` has "features": alignment_minilm_onsfw) are listed in
the same `heuristics.scorers` but run in their own branch (`score_feature_scorers`), straight from the feature table
and the frozen model they need; their tables join the histograms and the Spearman matrix like the others.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alchemist_kedro.reporting.plots import correlation_figure, raw_score_histogram
from alchemist_kedro.scorers import ScoreBatch, Scorer, build_score_table, get_scorer, scorer_class
from alchemist_kedro.scorers.base import accepted_params
from alchemist_kedro.scorers.decode import decode_images
from alchemist_kedro.shard_engine import DIGEST_COLUMN, engine_for, Part, ShardTask, row_keys, source_digests
from alchemist_kedro.tables import feature_matrix, load_partition

logger = logging.getLogger(__name__)

# Knobs shared by every scorer that accepts them (passed only to those whose constructor takes them).
SHARED_SCORER_PARAMS = ("short_side", "interpolation", "threads", "device")


def version_column(scorer_name: str) -> str:
    return f"{scorer_name}_version"


# Feature scorers this pipeline can build, and the node input that carries the frozen model each one needs.
FEATURE_SCORER_ARTIFACTS = {"alignment_minilm_onsfw": "alignment_model"}


def configured_scorers(params: dict[str, Any]) -> list[str]:
    """`heuristics.scorers`, checked: not empty, no name twice, every name registered."""
    names = list(params["scorers"] or [])
    if not names:
        raise ValueError("heuristics.scorers is empty: list at least one scorer (e.g. clarity)")
    if len(set(names)) != len(names):
        raise ValueError(f"heuristics.scorers lists a scorer twice: {names}")
    for name in names:
        scorer_class(name)  # unknown names fail here, with the list of registered ones
    return names


def feature_scorer_names(params: dict[str, Any]) -> list[str]:
    """The configured scorers that read cached features (the `score_feature_scorers` branch), in config order."""
    return [name for name in configured_scorers(params) if "features" in scorer_class(name).needs]


def image_scorer_names(params: dict[str, Any]) -> list[str]:
    """The configured scorers that read decoded images / captions (the `score_shards` branch), in config order."""
    return [name for name in configured_scorers(params) if "features" not in scorer_class(name).needs]


def build_scorers(params: dict[str, Any]) -> list[Scorer]:
    """The configured image / caption scorers, each built once: shared knobs + `scorer_params[name]`.

    Feature scorers in the list are skipped here: they are built by `score_feature_scorers` from their model.
    """
    names = image_scorer_names(params)
    per_scorer = params["scorer_params"] or {}
    unknown = set(per_scorer) - set(configured_scorers(params))
    if unknown:
        logger.info("heuristics.scorer_params has settings for scorers not in heuristics.scorers: %s", sorted(unknown))
    scorers = []
    for name in names:
        accepted = accepted_params(scorer_class(name))
        settings = {key: params[key] for key in SHARED_SCORER_PARAMS if key in accepted and key in params}
        settings.update(per_scorer.get(name) or {})
        scorers.append(get_scorer(name, **settings))
    return scorers


def _set_threads(threads: int | None) -> None:
    # OpenCV and torch keep process-wide thread pools; the ONNX session takes its count in its constructor.
    if threads:
        import cv2
        import torch

        cv2.setNumThreads(int(threads))
        torch.set_num_threads(int(threads))


def _check_sample_columns(table: pd.DataFrame, shard: str, scorers: list[Scorer]) -> None:
    needed = {"uid"} | {need for scorer in scorers for need in scorer.needs}
    missing = needed - set(table.columns)
    if missing:
        raise ValueError(f"sample shard {shard!r} lacks columns {sorted(missing)} (schemas.SAMPLE_SCHEMA)")
    if table["uid"].isna().any():
        raise ValueError(f"sample shard {shard!r} has null uids")


def score_table_shard(
    table: pd.DataFrame, scorers: list[Scorer], batch_size: int, shard: str = "<in memory>"
) -> pd.DataFrame:
    """Raw scores of one sample-table shard: decode each image once, hand the same arrays to every scorer.

    Rows whose image does not decode keep NaN raw scores and say why in `decode_error` (never dropped).
    """
    _check_sample_columns(table, shard, scorers)
    uids = table["uid"].astype(str).tolist()
    count = len(uids)
    raw = {scorer.name: np.full(count, np.nan, dtype=np.float64) for scorer in scorers}
    decode_errors: list[str | None] = [None] * count
    wants_images = any("image" in scorer.needs for scorer in scorers)
    wants_captions = any("caption" in scorer.needs for scorer in scorers)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        if wants_images:
            images, errors = decode_images(table["image"].iloc[start:stop].tolist())
            decode_errors[start:stop] = errors
            good = [i for i, error in enumerate(errors) if error is None]
        else:
            images, good = None, list(range(stop - start))
        captions = table["caption"].iloc[start:stop].tolist() if wants_captions else None
        batch = ScoreBatch(
            uids=[uids[start + i] for i in good],
            images=[images[i] for i in good] if images is not None else None,
            captions=[captions[i] for i in good] if captions is not None else None,
        )
        if not len(batch):
            continue
        rows = start + np.asarray(good)
        for scorer in scorers:
            values = np.asarray(scorer.score_batch(batch), dtype=np.float64)
            if values.shape != (len(batch),):
                raise ValueError(
                    f"scorer {scorer.name!r} returned shape {values.shape} for a batch of {len(batch)} (shard {shard!r})"
                )
            raw[scorer.name][rows] = values
    failed = sum(error is not None for error in decode_errors)
    if failed:
        logger.warning("shard %r: %d of %d images did not decode; their raw scores are NaN", shard, failed, count)
    columns: dict[str, Any] = {"uid": uids, DIGEST_COLUMN: source_digests(table),
                               "decode_error": pd.array(decode_errors, dtype="string")}
    for scorer in scorers:
        columns[scorer.name] = raw[scorer.name]
        columns[version_column(scorer.name)] = scorer.version
    return pd.DataFrame(columns)


def score_shards(
    samples: dict[str, Callable[[], pd.DataFrame]],
    sample_uids: dict[str, Callable[[], pd.DataFrame]],
    existing_raw_scores: dict[str, pd.DataFrame],
    params: dict[str, Any],
) -> tuple[dict[str, Callable[[], pd.DataFrame]], dict[str, str]]:
    """Raw scores per shard, saved lazily one partition at a time; shards already scored are left untouched.

    samples: the sample table partitions (lazy); sample_uids: the same partitions, uid, sha256 and caption only (cheap
    resume check on row keys); existing_raw_scores: raw-score partitions already on disk ({} on a first run).
    Returns (partitions to write, {scorer: version}).
    """
    _set_threads(params["threads"])
    scorers = build_scorers(params)
    if not scorers:
        # The image branch's outputs (raw-score partitions, their ranking) need at least one scorer to exist; an
        # empty partitioned output would fail to load on a first run, far from the cause.
        raise ValueError(
            "heuristics.scorers lists only feature scorers; keep at least one image scorer (e.g. clarity) with them"
        )
    batch_size = int(params["batch_size"])
    if batch_size < 1:
        raise ValueError(f"heuristics.batch_size must be >= 1, got {batch_size}")
    versions = {scorer.name: scorer.version for scorer in scorers}
    logger.info("heuristics: scorers %s", versions)

    # One part per scorer: its raw column stays valid while its version column holds its version and the shard's
    # uids are the same, in the same order (kept and new columns are joined by position).
    engine = engine_for(params, "heuristics")
    parts = {scorer.name: Part(version_column(scorer.name), scorer.version, (scorer.name,)) for scorer in scorers}
    by_name = {scorer.name: scorer for scorer in scorers}
    plan = engine.plan(
        samples, existing_raw_scores, parts,
        lambda shard: row_keys(sample_uids[shard]()) if shard in sample_uids else None,
        ordered_uids=True,
    )
    logger.info(
        "heuristics: %d of %d shards to score, %d already scored by these scorer versions",
        len(plan.tasks), len(samples), len(samples) - len(plan.tasks),
    )

    progress = {"done": 0, "rows": 0, "started": None}

    def compute(task: ShardTask) -> pd.DataFrame:
        # Again here: with executor ray this runs in a worker process, whose OpenCV / torch pools the driver's call
        # did not touch (two workers at cv2's default of one thread per core oversubscribe the machine).
        _set_threads(params["threads"])
        if progress["started"] is None:
            progress["started"] = time.perf_counter()
        shard, to_run = task.shard, [by_name[name] for name in task.parts]
        shard_start = time.perf_counter()
        scored = score_table_shard(samples[shard](), to_run, batch_size, shard)
        if task.kept:
            # Same uids in the same order (the plan checked): keep the still-valid columns of the other scorers.
            existing = load_partition(existing_raw_scores[shard])
            kept = existing.drop(columns=[c for c in scored.columns if c in existing.columns and c != "uid"])
            scored = kept.reset_index(drop=True).join(scored.drop(columns="uid"))
        seconds = time.perf_counter() - shard_start
        progress["done"] += 1
        progress["rows"] += len(scored)
        elapsed = time.perf_counter() - progress["started"]
        logger.info(
            "heuristics: shard %d/%d %r: %d rows in %.1f s (%.0f rows/s; %s); overall %.0f rows/s",
            progress["done"], len(plan.tasks), shard, len(scored), seconds, len(scored) / max(seconds, 1e-9),
            ", ".join(s.name for s in to_run), progress["rows"] / max(elapsed, 1e-9),
        )
        return scored

    return engine.run(plan, compute), versions


def rank_scores(
    raw_scores: dict[str, Callable[[], pd.DataFrame]],
    sample_uids: dict[str, Callable[[], pd.DataFrame]],
    scorer_versions: dict[str, str],
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """One SCORE_SCHEMA table per scorer, ranked over the whole corpus (not per shard), and a summary.

    Only shards present in the sample table count; raw-score partitions of shards that no longer exist are ignored
    (and reported). Every row must carry the current scorer version, else the raw scores are stale: an error.
    """
    missing = sorted(set(sample_uids) - set(raw_scores))
    if missing:
        raise ValueError(f"no raw scores for sample shards {missing[:5]} ({len(missing)} in all): run score_shards")
    orphans = sorted(set(raw_scores) - set(sample_uids))
    if orphans:
        logger.warning("heuristics: ignoring raw scores of %d shards no longer in the samples: %s", len(orphans),
                       orphans[:5])
    parts = []
    for shard in sorted(sample_uids):
        part = raw_scores[shard]()
        if part["uid"].astype(str).tolist() != sample_uids[shard]()["uid"].astype(str).tolist():
            raise ValueError(f"raw scores of shard {shard!r} do not match its sample uids: rerun score_shards")
        parts.append(part)
    corpus = pd.concat(parts, ignore_index=True)

    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {"rows": len(corpus), "shards": len(parts),
                               "decode_errors": int(corpus["decode_error"].notna().sum()), "scorers": {}}
    for name, version in scorer_versions.items():
        stored = corpus.get(version_column(name))
        if stored is None or not bool((stored == version).all()):
            raise ValueError(f"raw scores for {name!r} are not all at version {version}: rerun score_shards")
        cls = scorer_class(name)
        table = build_score_table(corpus["uid"], corpus[name], name, version, cls.higher_is_better)
        tables[name] = table
        raw = table["raw_score"]
        summary["scorers"][name] = {
            "version": version,
            "higher_is_better": cls.higher_is_better,
            "nan": int(raw.isna().sum()),
            "mean": float(raw.mean()) if raw.notna().any() else None,
            "std": float(raw.std()) if raw.notna().sum() > 1 else None,
            "min": float(raw.min()) if raw.notna().any() else None,
            "max": float(raw.max()) if raw.notna().any() else None,
        }
    return tables, summary


def _configured_tables(params: dict[str, Any], *table_sets: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The configured scorers' tables, in config order, from the image and feature branches' outputs.

    Only the configured names are loaded: the scores folder may hold tables of scorers dropped from the config.
    """
    merged: dict[str, Any] = {}
    for tables in table_sets:
        merged.update(tables)
    missing = [name for name in params["scorers"] if name not in merged]
    if missing:
        raise ValueError(f"heuristics: no score table for configured scorers {missing}")
    return {
        name: (merged[name]() if callable(merged[name]) else merged[name]) for name in params["scorers"]
    }


def plot_histograms(
    score_tables: dict[str, Any], feature_score_tables: dict[str, Any], params: dict[str, Any]
) -> dict[str, Figure]:
    """One histogram figure per configured scorer (`<scorer>.png`), of its raw score."""
    tables = _configured_tables(params, score_tables, feature_score_tables)
    bins = int(params["report"]["histogram_bins"])
    return {
        f"{name}.png": raw_score_histogram(tables[name]["raw_score"].to_numpy(dtype=np.float64), name,
                                           scorer_class(name).higher_is_better,
                                           str(tables[name]["scorer_version"].iloc[0]), bins)
        for name in params["scorers"]
    }


def spearman_matrix(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Pairwise Spearman rho of the oriented `score` columns, rows aligned by uid (pairwise-complete)."""
    wide = pd.concat({name: table.set_index("uid")["score"] for name, table in tables.items()}, axis=1)
    return wide.corr(method="spearman")


def plot_correlation(
    score_tables: dict[str, Any],
    feature_score_tables: dict[str, Any],
    other_score_tables: dict[str, pd.DataFrame],
    params: dict[str, Any],
) -> tuple[Figure, pd.DataFrame]:
    """Spearman matrix between the configured scorers plus the other score tables named in
    `correlation.include` that exist: data/07_model_output/<name>_scores.parquet (e.g. `rater`) or a table another
    pipeline wrote to the scores folder (e.g. `diffusion_quality`); absent ones are logged and skipped, so the
    heuristics pipeline runs before or without them."""
    tables = _configured_tables(params, score_tables, feature_score_tables)  # in the configured order
    include = list(params["correlation"]["include"] or [])
    folder = {**score_tables, **feature_score_tables}
    for name in include:
        if name in other_score_tables:
            tables[name] = other_score_tables[name]
        elif name in folder:
            tables[name] = folder[name]() if callable(folder[name]) else folder[name]
        else:
            logger.info("heuristics: no %s_scores table yet; correlation without it", name)
    matrix = spearman_matrix(tables)
    return correlation_figure(matrix), matrix.rename_axis("scorer").reset_index()


def score_feature_scorers(
    features: dict[str, Callable[[], pd.DataFrame]], alignment_model: dict, params: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    """One SCORE_SCHEMA table per configured feature scorer, over every feature shard (ranks are global).

    Returns {} when none is configured, so the partitioned output writes nothing and leaves older tables alone.
    Not resumable shard by shard like the image scorers, on purpose: a feature scorer costs one small matmul per
    row, less than reading the feature shard a resume check would have to read to confirm its uids.
    """
    names = feature_scorer_names(params)
    if not names:
        return {}
    _set_threads(params["threads"])
    artifacts = {"alignment_model": alignment_model}
    per_scorer = params["scorer_params"] or {}
    scorers = []
    for name in names:
        if name not in FEATURE_SCORER_ARTIFACTS:
            raise ValueError(
                f"heuristics: feature scorer {name!r} has no model input in this pipeline (it scores "
                f"{sorted(FEATURE_SCORER_ARTIFACTS)}); the rater is scored by the select pipeline and joins the "
                "Spearman matrix through heuristics.correlation.include"
            )
        settings = {key: params[key] for key in ("threads",) if key in params}
        settings.update(per_scorer.get(name) or {})
        scorers.append(get_scorer(name, artifact=artifacts[FEATURE_SCORER_ARTIFACTS[name]], **settings))

    uids: list[str] = []
    raw: dict[str, list[np.ndarray]] = {scorer.name: [] for scorer in scorers}
    for shard in sorted(features):  # one shard in memory at a time
        frame = load_partition(features[shard])
        if not len(frame):
            continue
        batch = ScoreBatch(uids=frame["uid"].astype(str).tolist(), features=feature_matrix(frame))
        uids.extend(batch.uids)
        for scorer in scorers:
            values = np.asarray(scorer.score_batch(batch), dtype=np.float64)
            if values.shape != (len(batch),):
                raise ValueError(f"scorer {scorer.name!r} returned shape {values.shape} for {len(batch)} rows")
            raw[scorer.name].append(values)
    if not uids:
        raise ValueError("heuristics: the feature table is empty; run the features pipeline first")
    tables = {}
    for scorer in scorers:
        tables[scorer.name] = build_score_table(
            uids, np.concatenate(raw[scorer.name]), scorer.name, scorer.version, scorer.higher_is_better
        )
        logger.info("heuristics: %s (%s) scored %d feature rows", scorer.name, scorer.version, len(uids))
    return tables
