"""Where a rater configuration stands per defect kind: train the rater as conf says (plus --set overrides), then print
the clean-vs-kind ROC-AUC on the pool of the rater's score and of the signals it learns from (θ's and θ̂'s per-sample
loss, θ̂'s caption gain L(∅) − L(c)), and the defective share a 50% top-k of each keeps. Issue 12's experiments.

    .venv/bin/python benchmarks/rater_signals.py [--data data] [--env openclipart] [--threads 1] [--set rater.training.mode=eq9 ...]

Needs a finished `make run` (samples, features). The `defect` side column is read here for evaluation only. One
run trains one rater (~2-4 min on one core with the default conf); the seed-to-seed spread of the top-k share is
about ±0.7 points, so compare configurations on more than one `--set rater.training.seed=`.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import roc_auc_score

from alchemist_kedro.evaluation.downstream import fit_alignment_on_val
from alchemist_kedro.models.proxy import ProxyConfig, per_sample_loss
from alchemist_kedro.models.rater import RaterConfig, score_with_rater
from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs
from alchemist_kedro.reporting.defect_report import evaluate_strategies
from alchemist_kedro.selection.dedup import dedup, pair_features
from alchemist_kedro.tables import concat_partitions
from alchemist_kedro.training.bilevel import BilevelConfig, train_rater_bilevel

ROOT = Path(__file__).resolve().parents[1]


ENV: str | None = None  # --env: a generated conf env (conf_env.py) keeps its outputs under data/<layer>/<env>/


def at(data: Path, relative: str) -> Path:
    """data/<layer>/<name>, or data/<layer>/<env>/<name> for the outputs of `kedro run --env <env>`."""
    layer, rest = relative.split("/", 1)
    return data / layer / ENV / rest if ENV else data / relative


def partitions(folder: Path, columns=None) -> dict:
    return {p.stem: (lambda p=p: pd.read_parquet(p, columns=columns)) for p in sorted(folder.glob("*.parquet"))}


def conf_parameters(env: str | None) -> dict:
    """The parameters as `kedro run [--env ENV]` resolves them (globals, runtime_params defaults, env overrides)."""
    from kedro.config import OmegaConfigLoader

    from alchemist_kedro.settings import CONFIG_LOADER_ARGS

    return OmegaConfigLoader(conf_source=str(ROOT / "conf"), env=env, **CONFIG_LOADER_ARGS)["parameters"]


def set_dotted(tree: dict, dotted: str, value: str) -> None:
    *path, last = dotted.split(".")
    for key in path:
        tree = tree[key]
    tree[last] = yaml.safe_load(value)


def topk_defective_share(score: np.ndarray, clean: np.ndarray) -> float:
    keep = np.argsort(-score, kind="stable")[: len(score) // 2]
    return float((~clean[keep]).mean())


def pool_defects(data: Path, uids: list[str]) -> np.ndarray:
    """The evaluation-only `defect` side column for these pool uids ("" = clean)."""
    side = concat_partitions(partitions(at(data, "03_primary/samples"), ["uid", "defect"])).set_index("uid")
    return side.loc[uids, "defect"].fillna("").astype(str).to_numpy()


def per_kind_auc(signals: dict[str, np.ndarray], defect: np.ndarray, digits: int = 3,
                 kind_width: int | None = None) -> pd.DataFrame:
    """Clean-vs-kind ROC-AUC of each signal (higher = the kind ranks below clean rows), one row per kind and ALL."""
    clean = defect == ""
    rows = []
    for kind in [*sorted(set(defect[~clean])), "ALL"]:
        rows_in = clean | (defect == kind) if kind != "ALL" else np.ones_like(clean)
        rows.append({"kind": kind[:kind_width], "n": int((defect == kind).sum() if kind != "ALL" else (~clean).sum()),
                     **{name: round(roc_auc_score(clean[rows_in], s[rows_in]), digits) for name, s in signals.items()}})
    return pd.DataFrame(rows)


def print_report(signals: dict[str, np.ndarray], defect: np.ndarray, **table) -> None:
    """The per-kind ROC-AUC table and each signal's defective share in a 50% top-k."""
    clean = defect == ""
    print("clean-vs-kind ROC-AUC on the pool (higher = the signal ranks the kind below clean rows):")
    print(per_kind_auc(signals, defect, **table).to_string(index=False))
    print("defective share kept by a 50% top-k:",
          ", ".join(f"{name} {100 * topk_defective_share(s, clean):.1f}%" for name, s in signals.items()),
          f"(random {100 * (~clean).mean():.1f}%)")


def selection_report(data: Path, uids: list[str], scores: dict[str, np.ndarray], near_threshold: float | None,
                     ratio: float = 0.5) -> None:
    """What `select` would keep with each score: the dedup step (exact + near at `near_threshold`, the best member of
    each group by that score), then top-k `ratio` of the rows left; defective share per row and with duplicates
    counted by group, and each kind's keep share over the clean rows' (the issue's ≤ 0.5 bar)."""
    side = concat_partitions(partitions(at(data, "03_primary/samples"),
                                        ["uid", "defect", "duplicate_group", "sha256", "caption"])).set_index("uid")
    side = side.loc[uids].reset_index()
    feats = concat_partitions(partitions(at(data, "04_feature/features"), ["uid", "image_emb", "text_emb"]))
    feats = feats.set_index("uid").loc[uids]
    pair = pair_features(np.stack(feats["image_emb"].to_numpy()), np.stack(feats["text_emb"].to_numpy()))
    rows = []
    for name, score in scores.items():
        table = side[["uid", "sha256", "caption"]].assign(score=score)
        groups = dedup(table, features=pair, near_threshold=near_threshold)
        e = evaluate_strategies(table[["uid", "score"]], side[["uid", "defect", "duplicate_group"]],
                                strategies=("topk",), ratio=ratio, dedup_groups=groups)
        s, report = e.summary.iloc[0], e.report.set_index("kind")
        rows.append({"score": name, "k": int(s["k"]), "defective": round(100 * s["defective_share"], 1),
                     "by group": round(100 * s["defective_share_by_group"], 1),
                     **report.loc[~report.index.isin(["clean", "all_defects", "all_defects_by_group"]),
                                  "kept_share_vs_clean"].round(2).to_dict()})
    table = pd.DataFrame(rows).set_index("score").T
    print(f"select's view (dedup at near_threshold {near_threshold}, top-k {ratio:.0%} of the rows left): defective % "
          "of the selection, then each kind's keep share ÷ the clean rows' (goal ≤ 0.5):")
    print(table.to_string())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--env", default=None, help="read the outputs of `kedro run --env ENV` (e.g. openclipart)")
    ap.add_argument("--set", action="append", default=[], help="dotted conf override, e.g. rater.training.mode=eq9")
    ap.add_argument("--save-scores", default=None, help="write uid + the rater's score to this parquet "
                    "(benchmarks/rater_ensemble.py averages several)")
    args = ap.parse_args()
    global ENV
    ENV = args.env
    torch.set_num_threads(args.threads)
    conf = conf_parameters(ENV)
    params = {"rater": conf["rater"]}
    for item in args.set:
        set_dotted(params, *item.split("=", 1))
    rp, data = params["rater"], Path(args.data)
    samples = partitions(at(data, "03_primary/samples"), ["uid", "image", "split", "caption", "sha256"])
    features = partitions(at(data, "04_feature/features"))
    inputs = build_rater_inputs(samples, features, rp)
    proxy_config = ProxyConfig(**rp["proxy"])
    alignment = None
    if rp["model"]["alignment_feature"]:
        evaluate = conf["evaluate"]
        alignment = fit_alignment_on_val(partitions(at(data, "03_primary/samples"), ["uid", "split"]), features, evaluate)
    rater_config = RaterConfig(feature_dim=int(inputs.pool_features.shape[1]), text_dim=inputs.text_dim,
                               patch_dim=inputs.patch_dim,
                               alignment_config=alignment["config"] if alignment else None,
                               proxy_config=asdict(proxy_config) if rp["model"]["proxy_features"] else None,
                               **rp["model"])
    start = time.perf_counter()
    result = train_rater_bilevel(inputs, proxy_config, rater_config, BilevelConfig(**rp["training"]),
                                 alignment_state=alignment["state_dict"] if alignment else None)
    seconds = time.perf_counter() - start

    pool = inputs.pool

    def loss(model, null=False):
        tokens, mask = (torch.zeros_like(pool.tokens), torch.zeros_like(pool.mask)) if null else (pool.tokens, pool.mask)
        with torch.no_grad():
            return per_sample_loss(model, pool.images, tokens, mask, pool.uids, num_timesteps=8, noise_seed=0).numpy()

    signals = {"rater": score_with_rater(result.rater, inputs.pool_features.numpy()),
               "-L(θ)": -loss(result.theta), "-L(θ̂)": -loss(result.theta_hat),
               "gain θ̂": loss(result.theta_hat, null=True) - loss(result.theta_hat)}
    print(f"overrides: {args.set or 'none'}; training {seconds:.0f} s on {args.threads} thread(s)")
    print_report(signals, pool_defects(data, pool.uids))
    near = conf["select"]["dedup"]["near_threshold"]
    selection_report(data, pool.uids, {"rater": signals["rater"]}, near)
    if args.save_scores:
        with torch.no_grad():  # the rater's inputs before standardisation (alignment, L̂, gain, patch anomaly, …)
            derived = result.rater.inputs(inputs.pool_features).numpy()
        table = pd.DataFrame({"uid": pool.uids, "score": signals["rater"], "gain_theta_hat": signals["gain θ̂"]})
        table = table.assign(**{f"input_{j}": derived[:, j] for j in range(derived.shape[1])})
        table.to_parquet(args.save_scores, index=False)

if __name__ == "__main__":
    main()
