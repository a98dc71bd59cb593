"""Tables that say what a selection kept (for the notebook and reports; evaluation only: `defect` is never scored)."""
from __future__ import annotations

import pandas as pd


def defect_keep_shares(manifest: pd.DataFrame, sample_index: pd.DataFrame,
                       selections: dict[str, pd.Series] | None = None) -> pd.DataFrame:
    """One row per defect kind ("none" = clean) of the scored pool: its count and the share of it each selection
    keeps. `selections`: {label: boolean mask aligned with manifest rows}; default {"selected": manifest's}.

    A uniform random selection keeps every kind at about the overall ratio; a useful one keeps defects less.
    """
    selections = selections or {"selected": manifest["selected"]}
    kinds = manifest[["uid"]].merge(sample_index[["uid", "defect"]], on="uid", how="left", validate="one_to_one")
    frame = pd.DataFrame({"defect": kinds["defect"].fillna("none").astype(str).to_numpy()})
    for label, mask in selections.items():
        frame[label] = pd.Series(mask).astype(bool).to_numpy()
    table = frame.groupby("defect").agg(pool=("defect", "size"), **{
        f"kept_{label}": (label, "mean") for label in selections})
    total = pd.DataFrame({"pool": [len(frame)], **{f"kept_{label}": [frame[label].mean()] for label in selections}},
                         index=pd.Index(["all"], name="defect"))
    return pd.concat([table.sort_values("pool", ascending=False), total])
