"""Select's view of an average of several raters' scores (issue 12: is the seed-to-seed spread noise an ensemble
removes?). Each input is a parquet of uid + score written by `rater_signals.py --save-scores`; each score is turned
into its within-pool percentile before averaging, so raters whose logits differ in scale count alike.

    .venv/bin/python benchmarks/rater_ensemble.py [--env openclipart] s0.parquet s1.parquet s2.parquet
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

import rater_signals as rs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scores", nargs="+")
    ap.add_argument("--data", default=str(rs.ROOT / "data"))
    ap.add_argument("--env", default=None)
    args = ap.parse_args()
    rs.ENV = args.env
    tables = [pd.read_parquet(p).set_index("uid")["score"] for p in args.scores]
    uids = list(tables[0].index)
    ranks = {p: t.loc[uids].rank(pct=True).to_numpy() for p, t in zip(args.scores, tables)}
    scores = {**ranks, "mean": np.mean(list(ranks.values()), axis=0)}
    near = rs.conf_parameters(args.env)["select"]["dedup"]["near_threshold"]
    rs.selection_report(rs.Path(args.data), uids, scores, near)


if __name__ == "__main__":
    main()
