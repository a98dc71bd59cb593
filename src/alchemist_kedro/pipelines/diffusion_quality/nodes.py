"""diffusion_quality (Yandex's Algorithm 1): fit the K (layer, token) pairs on HQ / LQ groups, then score every sample.

HQ = `groups.max_rows` images drawn (seeded) from the `groups.hq_split` split of the samples table; LQ = the same
images through generic degradations. Only uid, split and image are read from the samples: never the evaluation-only
`defect` column. The scorer is rebuilt from the fit table in the score node (the fit table is its `fit` setting,
hence part of its version), so the two nodes share data, not a live model.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from alchemist_kedro.reporting.plots import separation_figure
from alchemist_kedro.scorers import ScoreBatch, Scorer, build_score_table, get_scorer
from alchemist_kedro.scorers.decode import decode_images
from alchemist_kedro.scorers.degradations import degraded_group
from alchemist_kedro.tables import load_partition

logger = logging.getLogger(__name__)

SAMPLE_COLUMNS = ["uid", "split", "image"]  # all this pipeline reads of a sample shard


def build_scorer(params: dict[str, Any], t2i_model: dict | None, text_encoder: dict[str, Any],
                 fit: pd.DataFrame | None = None) -> Scorer:
    """The diffusion_quality scorer from params:diffusion_quality. Source t2i: the `t2i_model` artifact, its prompt
    encoded by params:features.text_encoder (name, max_tokens, the rest as the encoder's settings), the encoder whose
    token states the model was trained on."""
    source = params["source"]
    settings: dict[str, Any] = {
        "source": source, "keywords": list(params["keywords"]), "timestep": int(params["timestep"]),
        "k": int(params["k"]), "seed": int(params["seed"]),
        "include_special_tokens": bool(params.get("include_special_tokens", False)),
        "batch_size": int(params["batch_size"]), "threads": int(params["threads"]), "fit": fit,
        "device": params.get("device", "cpu"),
    }
    if source == "t2i":
        if t2i_model is None:
            raise ValueError("diffusion_quality: source t2i needs the downstream T2I model "
                             "(data/06_models/t2i.safetensors): run `kedro run --pipelines train_t2i` first, "
                             "or set diffusion_quality.source: sd_folder with a path")
        encoder = dict(text_encoder)
        settings.update(artifact=t2i_model, text_encoder=encoder.pop("name"),
                        max_tokens=int(encoder.pop("max_tokens", 16)), text_encoder_params=encoder)
    elif source == "sd_folder":
        settings["path"] = params.get("path")
    # Any other source: the scorer's own error lists the valid ones.
    return get_scorer("diffusion_quality", **settings)


def _select_columns(frame: pd.DataFrame, shard: str) -> pd.DataFrame:
    missing = set(SAMPLE_COLUMNS) - set(frame.columns)
    if missing:
        raise ValueError(f"sample shard {shard!r} lacks columns {sorted(missing)} (schemas.SAMPLE_SCHEMA)")
    if frame["uid"].isna().any():
        raise ValueError(f"sample shard {shard!r} has null uids")
    return frame[SAMPLE_COLUMNS]


def hq_images(samples: dict[str, Callable[[], pd.DataFrame]], groups: dict[str, Any],
              seed: int) -> tuple[list[np.ndarray], list[str]]:
    """The HQ group: up to `max_rows` decodable images of split `hq_split`, drawn with `seed` (uid order first, so
    the draw does not depend on the shard layout). Undecodable ones are left out of the group (counted in the log)."""
    split = groups["hq_split"]
    parts = [_select_columns(load_partition(load), shard) for shard, load in sorted(samples.items())]
    rows = pd.concat([part[part["split"] == split] for part in parts], ignore_index=True)
    if not len(rows):
        raise ValueError(f"diffusion_quality: split {split!r} (groups.hq_split) has no rows in the samples table")
    rows = rows.sort_values("uid", kind="mergesort").reset_index(drop=True)
    max_rows = groups.get("max_rows")
    if max_rows is not None and len(rows) > int(max_rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), int(max_rows), replace=False))
        rows = rows.iloc[keep].reset_index(drop=True)
    images, errors = decode_images(rows["image"].tolist())
    good = [i for i, error in enumerate(errors) if error is None]
    if len(good) < len(rows):
        logger.warning("diffusion_quality: %d of %d %s images do not decode; left out of the HQ group",
                       len(rows) - len(good), len(rows), split)
    if len(good) < 2:
        raise ValueError(f"diffusion_quality: {len(good)} decodable {split!r} images; the fit needs at least 2")
    return [images[i] for i in good], rows["uid"].iloc[good].astype(str).tolist()


def fit_diffusion_quality(samples: dict[str, Callable[[], pd.DataFrame]], t2i_model: dict | None,
                          text_encoder: dict[str, Any], params: dict[str, Any]
                          ) -> tuple[pd.DataFrame, Figure, dict[str, dict[str, float]]]:
    """Algorithm 1 step 2: norms of the HQ and LQ groups → the K pairs with the largest HQ > LQ separation count.
    → (fit table, its bar plot, MLflow metrics)."""
    groups = params["groups"]
    scorer = build_scorer(params, t2i_model, text_encoder)
    hq, uids = hq_images(samples, groups, int(params["seed"]))
    lq, kinds = degraded_group(hq, tuple(groups["degradations"]), seed=int(params["seed"]))
    start = time.perf_counter()
    fit = scorer.fit(hq, lq)
    seconds = time.perf_counter() - start
    logger.info("diffusion_quality: fit on %d HQ (%s) + %d LQ (%s) images in %.1f s; %s; chosen pairs:\n%s",
                len(hq), groups["hq_split"], len(lq), ", ".join(sorted(set(kinds))), seconds, scorer.version,
                fit[["rank", "layer_name", "token", "separation", "separation_rate"]].to_string(index=False))
    metrics = {f"diffusion_quality.fit.rank_{int(r.rank)}.separation_rate": float(r.separation_rate)
               for r in fit.itertuples()}
    metrics["diffusion_quality.fit.mean_separation_rate"] = float(fit["separation_rate"].mean())
    metrics["diffusion_quality.fit.hq_images"] = float(len(hq))
    metrics["diffusion_quality.fit.seconds"] = seconds
    return (fit, separation_figure(fit, f"diffusion_quality: {len(fit)} pairs, {len(hq)} HQ vs {len(lq)} LQ"),
            {k: {"value": v, "step": 0} for k, v in metrics.items()})


def score_diffusion_quality(samples: dict[str, Callable[[], pd.DataFrame]], t2i_model: dict | None,
                            text_encoder: dict[str, Any], fit: pd.DataFrame, params: dict[str, Any]
                            ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """score(x) = sum of N_{l,m}(x) over the fit's K pairs, for every sample row, one shard at a time. Rows whose
    image does not decode keep a NaN score (ranked last by build_score_table, never dropped).
    → (SCORE_SCHEMA table over the whole corpus, a summary with the decode-only and scoring times side by side)."""
    scorer = build_scorer(params, t2i_model, text_encoder, fit=fit)
    batch_size = int(params["batch_size"])
    uids: list[str] = []
    raw: list[np.ndarray] = []
    decode_seconds = score_seconds = 0.0
    decode_errors = 0
    for shard, load in sorted(samples.items()):
        table = _select_columns(load_partition(load), shard)
        for start in range(0, len(table), batch_size):
            part = table.iloc[start:start + batch_size]
            tick = time.perf_counter()
            images, errors = decode_images(part["image"].tolist())
            decode_seconds += time.perf_counter() - tick
            decode_errors += sum(error is not None for error in errors)
            tick = time.perf_counter()
            values = scorer.score_batch(ScoreBatch(uids=part["uid"].astype(str).tolist(), images=images))
            score_seconds += time.perf_counter() - tick
            uids.extend(part["uid"].astype(str))
            raw.append(np.asarray(values, dtype=np.float64))
    if not uids:
        raise ValueError("diffusion_quality: the samples table is empty; run the ingest pipeline first")
    scores = build_score_table(uids, np.concatenate(raw), scorer.name, scorer.version, scorer.higher_is_better)
    summary = {"version": scorer.version, "rows": len(uids), "decode_errors": decode_errors,
               "decode_seconds": round(decode_seconds, 3), "score_seconds": round(score_seconds, 3),
               "rows_per_second": round(len(uids) / max(score_seconds, 1e-9), 1),
               "decode_only_rows_per_second": round(len(uids) / max(decode_seconds, 1e-9), 1),
               "pairs": fit[["layer_name", "token_index", "token", "separation_rate"]].to_dict("records")}
    logger.info("diffusion_quality: scored %d rows (%d undecodable) in %.1f s (%.0f rows/s; decoding alone %.0f "
                "rows/s)", len(uids), decode_errors, score_seconds, summary["rows_per_second"],
                summary["decode_only_rows_per_second"])
    return scores, summary
