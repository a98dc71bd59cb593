"""Could the rater's alignment input be fitted on the pool instead of the 200 clean val pairs? Print, per defect kind,
the clean-vs-kind ROC-AUC of the alignment cosine from a projection fitted on val (what the rater reads today) and
from a cross-fitted one: the pool split in two by rater.models.fold_of, each half scored by a projection fitted on
val + the other half (as CLIP-score filtering, with a model trained on the noisy data itself).

    .venv/bin/python benchmarks/alignment_crossfit.py [--data data] [--env openclipart]

Needs a finished `make run` (samples, features). Reads the evaluation-only `defect` column. A few seconds per fit.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

import rater_signals as rs  # benchmarks/
from alchemist_kedro.models.alignment import AlignmentConfig, alignment_scores, fit_alignment
from alchemist_kedro.models.rater import fold_of
from alchemist_kedro.tables import concat_partitions


def stack(column: pd.Series) -> np.ndarray:
    return np.stack(column.to_numpy()).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(rs.ROOT / "data"))
    ap.add_argument("--env", default=None, help="read the outputs of `kedro run --env ENV` (e.g. openclipart)")
    ap.add_argument("--folds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rs.ENV, data = args.env, Path(args.data)
    side = concat_partitions(rs.partitions(rs.at(data, "03_primary/samples"), ["uid", "split", "defect"]))
    feats = concat_partitions(rs.partitions(rs.at(data, "04_feature/features"), ["uid", "image_emb", "text_emb"]))
    rows = side.merge(feats, on="uid").sort_values("uid", kind="stable")
    val, pool = rows[rows["split"] == "val"], rows[rows["split"] == "pool"].reset_index(drop=True)
    evaluate = rs.conf_parameters(args.env)["evaluate"]  # the rater's val projection is fitted with these
    config, seed = AlignmentConfig(**evaluate["alignment"]), int(evaluate["seed"])
    vi, vt, pi, pt = stack(val["image_emb"]), stack(val["text_emb"]), stack(pool["image_emb"]), stack(pool["text_emb"])

    on_val = alignment_scores(fit_alignment(vi, vt, config, seed=seed), pi, pt)
    def crossfit(fold: np.ndarray) -> np.ndarray:
        out = np.zeros(len(pool))
        for f in range(args.folds):
            train = fold != f
            model = fit_alignment(np.concatenate([pi[train], vi]), np.concatenate([pt[train], vt]), config,
                                  seed=seed + f)
            out[~train] = alignment_scores(model, pi[~train], pt[~train])
        return out

    # By the whole row, a near copy (a logo pasted on an image, the same caption) can sit in the other half and be
    # memorised; by the caption alone, every row sharing a caption falls in one half.
    scores = {"val-fitted": on_val,
              "cross-fitted, folds by row": crossfit(fold_of(torch.from_numpy(np.concatenate([pi, pt], 1)),
                                                             args.folds).numpy()),
              "cross-fitted, folds by caption": crossfit(fold_of(torch.from_numpy(pt), args.folds).numpy())}

    defect = pool["defect"].fillna("").astype(str).to_numpy()
    clean = defect == ""
    table = []
    for kind in [*sorted(set(defect[~clean])), "ALL"]:
        keep = clean | (defect == kind) if kind != "ALL" else np.ones_like(clean)
        table.append({"kind": kind, **{name: round(roc_auc_score(clean[keep], score[keep]), 2)
                                       for name, score in scores.items()}})
    print("clean-vs-kind ROC-AUC of the alignment cosine (higher = the kind ranks below clean rows):")
    print(pd.DataFrame(table).to_string(index=False))


if __name__ == "__main__":
    main()
