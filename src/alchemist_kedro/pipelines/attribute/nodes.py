"""Nodes of the attribute pipeline: which training pairs made a generation. The methods live in attribution/
(unlearning ground truth, rankings and mAP, the counterfactual retraining); these assemble tables and figures.

Queries: generations of the trained downstream model for `queries.count` test captions (evenly spaced in uid order),
split seeded into train queries (the attributor learns from their ground truth) and held-out ones (every figure).
Training pairs: the selection the model was trained on (the manifest's selected uids), as train_t2i reads them.
"""
from __future__ import annotations

import io
import logging
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image

from alchemist_kedro.attribution.counterfactual import COUNTERFACTUAL_COLUMNS, counterfactual_table
from alchemist_kedro.attribution.ranking import (
    BASELINES,
    AttributorTraining,
    attributor_orders,
    baseline_orders,
    embed_training_set,
    ground_truth_order,
    mean_average_precision,
    train_attributor,
)
from alchemist_kedro.attribution.unlearning import UnlearningConfig, unlearning_influence
from alchemist_kedro.encoders import get_image_encoder
from alchemist_kedro.models.attributor import attributor_from_artifact, attributor_to_artifact
from alchemist_kedro.models.proxy import generator_for
from alchemist_kedro.models.t2i import t2i_from_artifact, to_uint8_images
from alchemist_kedro.reporting.plots import attribution_sheet
from alchemist_kedro.tables import concat_partitions, join_split, take_rows, vector_column
from alchemist_kedro.training.t2i import T2ITrainingConfig

logger = logging.getLogger(__name__)

QUERY_COLUMNS = ["query_id", "uid", "caption", "split", "image"]
GROUND_TRUTH_COLUMNS = ["query_id", "rank", "train_uid", "influence"]


def _model(t2i_model: dict | None):
    if t2i_model is None:
        raise ValueError("attribute: no downstream T2I model at data/06_models/t2i.safetensors; run "
                         "`kedro run --pipelines train_t2i` first")
    return t2i_from_artifact(t2i_model)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def build_attribution_inputs(selection_manifest: pd.DataFrame, samples: dict, features: dict,
                             t2i_model: dict | None, params: dict) -> dict:
    """The training pairs (selected uids, images at the model's resolution, token states, cached embeddings) and the
    query captions. The `defect` column is never read."""
    if t2i_model is None:
        _model(t2i_model)  # its error says what to run
    resolution = int(t2i_model["config"]["resolution"])
    selected = selection_manifest.loc[selection_manifest["selected"].astype(bool), "uid"].astype(str).tolist()
    train = join_split(samples, features, resolution, uids=selected)
    if train["missing_features"]:
        logger.warning("attribute: %d selected pairs have no features and are not attributed",
                       train["missing_features"])
    test = join_split(samples, features, resolution, split="test")
    count = int(params["queries"]["count"])
    held_out = int(params["queries"]["held_out"])
    if not 0 < held_out < count:
        raise ValueError(f"attribute: queries.held_out must be in [1, count - 1] = [1, {count - 1}], got {held_out}")
    if count > len(test["uids"]):
        raise ValueError(f"attribute: queries.count = {count} but the test split has {len(test['uids'])} captions")
    pick = np.unique(np.linspace(0, len(test["uids"]) - 1, count).round().astype(int))
    queries = take_rows(test, pick)
    split = np.array(["train"] * len(pick), dtype=object)
    split[np.random.default_rng(int(params["queries"]["seed"])).choice(len(pick), held_out, replace=False)] = "held_out"
    queries["split"] = split.tolist()
    queries["ids"] = [f"q{i:03d}" for i in range(len(pick))]
    feats = concat_partitions(features, ["uid", "image_emb"]).set_index("uid")
    train["image_emb"] = vector_column(feats.loc[train["uids"]].reset_index(), "image_emb")
    return {"train": train, "queries": queries}


def _image_encoder(params: dict):
    config = dict(params["image_encoder"])
    return get_image_encoder(config.pop("name"), **config)


def generate_queries(t2i_model: dict | None, inputs: dict, params: dict) -> tuple[dict, pd.DataFrame]:
    """Generate one image per query caption; embed queries and training pairs in the same image-feature space.

    image_features `model_resolution`: the training images go through the encoder at the model's resolution, as the
    generated ones are (the evaluate pipeline's convention: resolution is not what gets compared); `cached`: the
    training pairs keep their cached image_emb. → (queries with their features, the query table)."""
    torch.set_num_threads(int(params["threads"]))
    model = _model(t2i_model)
    queries, train = dict(inputs["queries"]), inputs["train"]
    conf = params["queries"]
    began = time.perf_counter()
    generated = model.generate(queries["tokens"], queries["mask"], generator_for(int(conf["seed"]), "attribute"),
                               guidance_scale=conf.get("guidance_scale"), num_steps=conf.get("sample_steps"))
    queries["generated"] = generated
    queries["generation_seconds"] = time.perf_counter() - began
    encoder = _image_encoder(params)
    images = to_uint8_images(generated)
    began = time.perf_counter()
    queries["image_emb"] = encoder.embed_images(images)
    queries["encode_seconds_per_query"] = (time.perf_counter() - began) / len(images)
    mode = params["image_features"]
    if mode == "model_resolution":
        train_image = encoder.embed_images(to_uint8_images(train["images"]))
    elif mode == "cached":
        train_image = train["image_emb"]
        if train_image.shape[1] != queries["image_emb"].shape[1]:
            raise ValueError(f"attribute: cached image_emb is {train_image.shape[1]}-d but {params['image_encoder']} "
                             f"gives {queries['image_emb'].shape[1]}-d; use image_features: model_resolution")
    else:
        raise ValueError(f"attribute: image_features must be model_resolution or cached, got {mode!r}")
    queries["train_image_emb"] = train_image
    table = pd.DataFrame({"query_id": queries["ids"], "uid": queries["uids"], "caption": queries["captions"],
                          "split": queries["split"], "image": [_png(image) for image in images]})
    return queries, table[QUERY_COLUMNS]


def unlearning_ground_truth(t2i_model: dict | None, inputs: dict, queries: dict, params: dict
                            ) -> tuple[pd.DataFrame, dict]:
    """Every query's influence on every training pair by unlearning it. → (long table: query_id, rank,
    train_uid, influence; one row per training pair per query, rank 0 = most influential), timing summary)."""
    torch.set_num_threads(int(params["threads"]))
    model = _model(t2i_model)
    config = UnlearningConfig(**params["unlearning"])
    result = unlearning_influence(model, inputs["train"], {"ids": queries["ids"], "images": queries["generated"],
                                                           "tokens": queries["tokens"], "mask": queries["mask"]},
                                  config)
    influence = result["influence"]
    orders = ground_truth_order(influence)
    uids = np.asarray(inputs["train"]["uids"], dtype=object)
    n = influence.shape[1]
    table = pd.DataFrame({
        "query_id": np.repeat(np.asarray(queries["ids"], dtype=object), n),
        "rank": np.tile(np.arange(n), len(orders)),
        "train_uid": uids[orders].ravel(),
        "influence": np.take_along_axis(influence, orders, axis=1).ravel(),
    })
    summary = {"fisher_seconds": result["fisher_seconds"],
               "seconds_per_query": float(np.mean(result["seconds_per_query"])),
               "query_loss_before": result["query_loss_before"].tolist(),
               "query_loss_after": result["query_loss_after"].tolist(),
               "train_loss_mean": float(result["base_loss"].mean()),
               "influence_median": float(np.median(influence)), "influence_positive_share": float((influence > 0).mean())}
    logger.info("attribute: unlearning ground truth for %d queries × %d pairs, %.1f s per query (+ %.1f s Fisher); "
                "query loss %.4f → %.4f, median training-pair rise %.4f", len(orders), n,
                summary["seconds_per_query"], result["fisher_seconds"], result["query_loss_before"].mean(),
                result["query_loss_after"].mean(), summary["influence_median"])
    return table[GROUND_TRUTH_COLUMNS], summary


def influence_matrix(ground_truth: pd.DataFrame, query_ids, train_uids) -> np.ndarray:
    """The long ground-truth table back to (Q, N) in the given query and training-pair order."""
    wide = ground_truth.pivot(index="query_id", columns="train_uid", values="influence")
    missing = set(query_ids) - set(wide.index) or set(train_uids) - set(wide.columns)
    if missing:
        raise ValueError(f"attribute: the ground-truth table lacks {sorted(missing)[:5]} (rerun the pipeline)")
    return wide.loc[list(query_ids), list(train_uids)].to_numpy(dtype=np.float64)


def _split_rows(queries: dict, split: str) -> np.ndarray:
    return np.flatnonzero(np.asarray(queries["split"]) == split)


def train_distilled_attributor(inputs: dict, queries: dict, ground_truth: pd.DataFrame, params: dict
                               ) -> tuple[dict, dict]:
    """FastGDA: fit the MLP on the train queries' ground truth. → (attributor artifact, MLflow loss history)."""
    torch.set_num_threads(int(params["threads"]))
    conf = params["attributor"]
    rows = _split_rows(queries, "train")
    influence = influence_matrix(ground_truth, [queries["ids"][i] for i in rows], inputs["train"]["uids"])
    began = time.perf_counter()
    model, history = train_attributor(queries["image_emb"][rows], queries["text_emb"][rows],
                                      queries["train_image_emb"], inputs["train"]["text_emb"], influence,
                                      conf["hidden_sizes"], conf["out_dim"], conf["input_norm"], conf["dropout"],
                                      AttributorTraining(**conf["training"]), residual=bool(conf["residual"]))
    seconds = time.perf_counter() - began
    logger.info("attribute: attributor trained on %d queries in %.1f s, ranking loss %.4f → %.4f", len(rows), seconds,
                history[0], history[-1])
    metrics = {"attribute.attributor/loss": [{"step": i, "value": v} for i, v in enumerate(history)],
               "attribute.attributor_train_seconds": [{"step": 0, "value": seconds}]}
    return attributor_to_artifact(model), metrics


def _map_k(params: dict) -> list:
    return [k if k == "all" else int(k) for k in params["map_k"]]


def evaluate_attribution(inputs: dict, queries: dict, ground_truth: pd.DataFrame, attributor: dict,
                         ground_truth_summary: dict, params: dict
                         ) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    """mAP@k on the held-out queries for the distilled attributor and the baselines, and time per query.
    → (mAP table: method, k, map, queries; distilled rankings of every query (long, like the ground truth);
       MLflow metrics; the timings for the report)."""
    torch.set_num_threads(int(params["threads"]))
    train = inputs["train"]
    model = attributor_from_artifact(attributor)
    began = time.perf_counter()
    index = embed_training_set(model, queries["train_image_emb"], train["text_emb"])
    index_seconds = time.perf_counter() - began
    orders, scores, retrieval_seconds = attributor_orders(model, queries["image_emb"], queries["text_emb"], index)
    held = _split_rows(queries, "held_out")
    influence = influence_matrix(ground_truth, [queries["ids"][i] for i in held], train["uids"])
    methods = {"distilled": orders[held], **baseline_orders(queries["image_emb"][held], queries["text_emb"][held],
                                                            queries["train_image_emb"], train["text_emb"],
                                                            int(params["baseline_seed"]))}
    rows = [{"method": name, "k": str(k), "map": mean_average_precision(order, influence, k), "queries": len(held)}
            for name, order in methods.items() for k in _map_k(params)]
    table = pd.DataFrame(rows, columns=["method", "k", "map", "queries"])
    logger.info("attribute: mAP@k on %d held-out queries:\n%s", len(held),
                table.pivot(index="method", columns="k", values="map").to_string(float_format="%.4f"))
    n = orders.shape[1]
    uids = np.asarray(train["uids"], dtype=object)
    rankings = pd.DataFrame({"query_id": np.repeat(np.asarray(queries["ids"], dtype=object), n),
                             "rank": np.tile(np.arange(n), len(orders)), "train_uid": uids[orders].ravel(),
                             "score": np.take_along_axis(scores, orders, axis=1).ravel().astype(np.float64)})
    unlearning_seconds = float(ground_truth_summary["seconds_per_query"])
    retrieval_total = retrieval_seconds + float(queries["encode_seconds_per_query"])
    metrics = {f"attribute.map_{k}.{row.method}": row.map for row in table.itertuples() for k in [row.k]}
    metrics.update({
        "attribute.seconds_per_query.unlearning": unlearning_seconds,
        "attribute.seconds_per_query.retrieval": retrieval_seconds,
        "attribute.seconds_per_query.retrieval_with_encoder": retrieval_total,
        "attribute.speedup_vs_unlearning": unlearning_seconds / max(retrieval_total, 1e-12),
        "attribute.index_seconds": index_seconds,
        "attribute.held_out_queries": float(len(held)),
        "attribute.train_pairs": float(n),
    })
    timing = {key.removeprefix("attribute."): float(value) for key, value in metrics.items()
              if "seconds" in key or "speedup" in key}
    return table, rankings, {name: [{"step": 0, "value": float(v)}] for name, v in metrics.items()}, timing


def counterfactual_check(t2i_model: dict | None, inputs: dict, queries: dict, ground_truth: pd.DataFrame,
                         rankings: pd.DataFrame, params: dict, training_params: dict) -> tuple[pd.DataFrame, dict]:
    """Retrain (train_t2i's training settings, a short `epochs`) without the top-k pairs of `counterfactual.queries`
    held-out queries by each of `counterfactual.attributions`, and without k random ones. → (table, MLflow metrics)."""
    conf = params["counterfactual"]
    count = int(conf["queries"])
    if count <= 0:
        return pd.DataFrame(columns=COUNTERFACTUAL_COLUMNS), {}
    torch.set_num_threads(int(params["threads"]))
    model = _model(t2i_model)
    held = _split_rows(queries, "held_out")[:count]
    sources = {"distilled": rankings, "ground_truth": ground_truth}
    unknown = set(conf["attributions"]) - set(sources)
    if unknown or not conf["attributions"]:
        raise ValueError(f"attribute: counterfactual.attributions must list distilled and/or ground_truth, "
                         f"got {conf['attributions']!r}")
    position = {uid: i for i, uid in enumerate(inputs["train"]["uids"])}
    ranked = {}
    for method in conf["attributions"]:
        table = sources[method]
        ranked[method] = {int(q): table[table["query_id"] == queries["ids"][q]].sort_values("rank")["train_uid"]
                          .map(position).to_numpy() for q in held}
    training = T2ITrainingConfig(**{**training_params, "epochs": float(conf["epochs"])})
    query_data = {"ids": queries["ids"], "images": queries["generated"], "tokens": queries["tokens"],
                  "mask": queries["mask"]}
    unlearning = UnlearningConfig(**params["unlearning"])
    table = counterfactual_table(inputs["train"], query_data, ranked, model.config, training, int(conf["k"]),
                                 unlearning.query_timesteps, unlearning.noise_seed, int(conf["seed"]))
    means = table[table["removal"] != "none"].groupby("removal")[["loss_rise", "relative_rise"]].mean()
    logger.info("attribute: counterfactual (retrain %.2f epochs without k = %d pairs):\n%s", training.epochs,
                int(conf["k"]), table.to_string(index=False, float_format="%.5f"))
    metrics = {f"attribute.counterfactual.{name}.{column}": float(means.loc[name, column])
               for name in means.index for column in means.columns}
    return table, {name: [{"step": 0, "value": v}] for name, v in metrics.items()}


def attribution_report(inputs: dict, queries: dict, ground_truth: pd.DataFrame, rankings: pd.DataFrame,
                       map_table: pd.DataFrame, counterfactual: pd.DataFrame, ground_truth_summary: dict,
                       timing: dict, params: dict):
    """→ (the per-query sheet figure for `sheet.queries` held-out queries, the JSON report)."""
    conf = params["sheet"]
    top_k = int(conf["top_k"])
    train = inputs["train"]
    position = {uid: i for i, uid in enumerate(train["uids"])}
    thumbs = to_uint8_images(train["images"])
    generated = to_uint8_images(queries["generated"])
    sheets = []
    for q in _split_rows(queries, "held_out")[:int(conf["queries"])]:
        qid = queries["ids"][q]
        truth = ground_truth[ground_truth["query_id"] == qid].set_index("train_uid")["influence"]
        rows = []
        for label, table in (("ground truth (unlearning)", ground_truth), ("distilled attributor", rankings)):
            top = table[table["query_id"] == qid].sort_values("rank").head(top_k)["train_uid"].tolist()
            rows.append((label, [thumbs[position[u]] for u in top], [train["captions"][position[u]] for u in top],
                         [float(truth[u]) for u in top]))
        sheets.append({"caption": queries["captions"][q], "image": generated[q], "rows": rows})
    report = {
        "queries": {"train": int(len(_split_rows(queries, "train"))),
                    "held_out": int(len(_split_rows(queries, "held_out")))},
        "train_pairs": len(train["uids"]),
        "map": map_table.pivot(index="method", columns="k", values="map").to_dict(orient="index"),
        "methods": ["distilled", *BASELINES],
        "ground_truth": ground_truth_summary,
        "timing": timing,
        "counterfactual": counterfactual.to_dict(orient="records"),
        "generation_seconds": float(queries["generation_seconds"]),
    }
    return attribution_sheet(sheets), report
