"""The select pipeline's dedup step (one member per duplicate group selectable, the rest in the ledger as duplicates)
and its per-defect-kind report, on small real tables."""
import numpy as np
import pandas as pd

from alchemist_kedro.pipelines.select import nodes
from tests.conf_values import base_params


def _pool():
    rng = np.random.default_rng(0)
    n = 12
    uids = [f"u{i:02d}" for i in range(n)]
    image = rng.normal(size=(n, 8)).astype(np.float32)
    text = rng.normal(size=(n, 4)).astype(np.float32)
    sha = [f"h{i}" for i in range(n)]
    caption = [f"c{i}" for i in range(n)]
    # u01 is an exact copy of u00 (same bytes and caption); u03 a near copy of u02 (embeddings jittered).
    sha[1], caption[1] = sha[0], caption[0]
    image[1], text[1] = image[0], text[0]
    image[3], text[3] = image[2] + 0.01, text[2] + 0.01
    defect = [None] * n
    defect[1], defect[3] = "exact_duplicate", "near_duplicate"
    defect[5] = defect[6] = "noise"
    index = pd.DataFrame({"uid": uids, "source": "s", "location": "x", "split": "pool", "sha256": sha,
                          "caption": caption, "defect": defect,
                          "duplicate_group": ["g0", "g0", "g2", "g2"] + [None] * (n - 4)})
    scores = pd.DataFrame({"uid": uids, "score": np.linspace(1, 0, n), "scorer": "rater"})
    scores.loc[1, "score"] = 2.0  # the copy scores best: the copy, not the original, is the one kept
    scores.loc[[5, 6], "score"] = -1.0  # the rater puts the noise rows last
    embeddings = {"a": lambda: pd.DataFrame({"uid": uids, "image_emb": list(image), "text_emb": list(text)})}
    return index, scores, embeddings


def test_dedup_keeps_the_best_scored_member_and_the_ledger_names_the_kept_one():
    index, scores, embeddings = _pool()
    candidates, duplicates = nodes.deduplicate_pool(scores, index, embeddings, base_params("select.dedup", near_threshold=0.95))
    assert sorted(set(scores["uid"]) - set(candidates["uid"])) == ["u00", "u03"]
    kinds = duplicates.set_index("uid")["duplicate_kind"]
    assert kinds["u00"].startswith("exact") and kinds["u03"] == "near"
    manifest = nodes.select_from_scores(candidates, base_params("select", strategy="topk", ratio=1.0))
    ledger = nodes.build_ledger(manifest, index.assign(partition="a"), pd.DataFrame(
        columns=["uid", "source", "location", "reason"]), duplicates)
    row = ledger.set_index("uid").loc["u00"]
    assert row["status"] == "not_selected" and row["reason"].startswith("duplicate of u01")
    assert len(ledger) == len(index)  # every input row once


def test_dedup_off_keeps_every_row():
    index, scores, embeddings = _pool()
    candidates, duplicates = nodes.deduplicate_pool(scores, index, embeddings,
                                                    base_params("select.dedup", enabled=False))
    assert len(candidates) == len(scores) and duplicates["is_kept"].all()


def test_defect_report_rows_per_kind_for_the_selection_and_each_heuristic():
    index, scores, embeddings = _pool()
    candidates, duplicates = nodes.deduplicate_pool(scores, index, embeddings, base_params("select.dedup", near_threshold=0.95))
    manifest = nodes.select_from_scores(candidates, base_params("select", strategy="topk", ratio=0.5))
    # A heuristic that puts the noise rows first: its best strategy must not be topk.
    heuristic = scores[["uid"]].assign(score=np.where(index["defect"].eq("noise"), 5.0, np.arange(12) / 12))
    report, metrics = nodes.defect_kind_report(manifest, scores, index, {"clarity": lambda: heuristic}, {},
                                               base_params("select.defect_report"))
    ours = report[report["scorer"] == "rater"].set_index("kind")
    assert ours.loc["noise", "kept_share"] == 0.0 and ours.loc["noise", "roc_auc"] == 1.0
    theirs = report[report["scorer"] == "clarity"]
    assert set(theirs["strategy"]) != {"topk"} and theirs.set_index("kind").loc["noise", "kept_share"] == 0.0
    assert metrics["select.defects.selection.noise.kept_share"]["value"] == 0.0
    assert metrics["select.duplicates.groups_with_more_than_one_kept"]["value"] == 0.0


def test_defect_report_is_empty_without_defect_labels():
    index, scores, embeddings = _pool()
    index["defect"] = None
    manifest = nodes.select_from_scores(scores, base_params("select", strategy="topk", ratio=0.5))
    report, metrics = nodes.defect_kind_report(manifest, scores, index, {}, {}, base_params("select.defect_report"))
    assert report.empty and metrics == {}


def test_each_heuristic_goes_through_the_selection_s_dedup_groups_at_the_selection_s_count():
    index, scores, embeddings = _pool()
    candidates, duplicates = nodes.deduplicate_pool(scores, index, embeddings, base_params("select.dedup", near_threshold=0.95))
    manifest = nodes.select_from_scores(candidates, base_params("select", strategy="topk", ratio=0.5))
    # The heuristic ranks the exact pair (u00, u01) and the near pair (u02, u03) first: without dedup its top-k
    # keeps both members of each group; through the groups, one each, the better by its own score (u00, u03).
    heuristic = scores[["uid"]].assign(score=[10.0, 9.0, 8.0, 8.5] + list(np.arange(8) / 8))
    report, metrics = nodes.defect_kind_report(manifest, scores, index, {"clarity": lambda: heuristic}, {},
                                               base_params("select.defect_report", heuristics=["clarity"]),
                                               duplicates)
    theirs = report[report["scorer"] == "clarity"].set_index("kind")
    k = int(manifest["selected"].sum())
    assert round(theirs.loc["clean", "kept_share"] * theirs.loc["clean", "n"]
                 + theirs.loc["all_defects", "kept_share"] * theirs.loc["all_defects", "n"]) == k
    assert theirs.loc["exact_duplicate", "kept_share"] == 0.0  # u01 loses to u00 by clarity
    assert theirs.loc["near_duplicate", "kept_share"] == 1.0  # u03 beats u02: kept, but alone in its group
    assert theirs.loc["all_defects_by_group", "kept_share"] < theirs.loc["all_defects", "kept_share"]
    assert "select.defects.heuristic.clarity_topk.all_defects_by_group.kept_share" in metrics
