"""Rater scoring nodes of the select pipeline: per-shard raw scores with resume, then one global ranking."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from alchemist_kedro.models.rater import Rater, RaterConfig, rater_to_artifact, score_with_rater
from alchemist_kedro.pipelines.select import nodes
from alchemist_kedro.schemas import SCORE_SCHEMA
from alchemist_kedro.tables import feature_matrix
from tests.conf_values import base_params

IMAGE_DIM, TEXT_DIM = 6, 4


def make_artifact(seed: int) -> dict:
    torch.manual_seed(seed)
    return rater_to_artifact(Rater(RaterConfig(**base_params("rater.model", patch_inputs=False, alignment_feature=False, proxy_features=False, embedding_inputs=True, interaction_rank=0, text_dim=0, feature_dim=IMAGE_DIM + TEXT_DIM, hidden_dim=8, group_hidden_dim=4, use_group=True))))


def feature_shard(start: int, count: int) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "uid": [f"u{i:04d}" for i in range(start, start + count)],
            "image_emb": list(rng.normal(size=(count, IMAGE_DIM)).astype(np.float32)),
            "text_emb": list(rng.normal(size=(count, TEXT_DIM)).astype(np.float32)),
            "source_digest": [f"d{i:04d}" for i in range(start, start + count)],
        }
    )


class Loads:
    """Partition loaders that count how often each shard is read."""

    def __init__(self, frames: dict[str, pd.DataFrame]):
        self.frames, self.calls = frames, {k: 0 for k in frames}

    def partitions(self) -> dict:
        def loader(key):
            def load():
                self.calls[key] += 1
                return self.frames[key].copy()
            return load
        return {key: loader(key) for key in self.frames}


PARAMS = {"batch_size": 7, "group_batch_size": 5}


def run_scoring(artifact, features: dict, existing: dict) -> dict[str, pd.DataFrame]:
    lazy = nodes.score_shards_with_rater(artifact, features, existing, PARAMS)
    return {shard: load() for shard, load in lazy.items()}


def test_scores_are_instance_logits_ranked_over_the_whole_corpus():
    artifact = make_artifact(0)
    frames = {"a": feature_shard(0, 12), "b": feature_shard(12, 9)}
    raw = run_scoring(artifact, Loads(frames).partitions(), {})
    assert sorted(raw) == ["a", "b"]
    table = nodes.rank_rater_scores({k: (lambda v=v: v) for k, v in raw.items()}, frames, artifact)
    assert list(table.columns[: len(SCORE_SCHEMA.names)]) == SCORE_SCHEMA.names
    assert "batch_weight" in table.columns and table["batch_weight"].between(0, 1).all()
    everything = pd.concat(frames.values(), ignore_index=True)
    rater = Rater(RaterConfig(**artifact["config"]))
    rater.load_state_dict(artifact["state_dict"])
    expected = score_with_rater(rater, feature_matrix(everything))
    by_uid = dict(zip(everything["uid"], expected))
    np.testing.assert_allclose(table["raw_score"], [by_uid[u] for u in table["uid"]], rtol=1e-6, atol=1e-6)
    # Global ranks: 0..N-1 once each, best score first, across both shards.
    assert sorted(table["rank"]) == list(range(len(everything)))
    best = table.loc[table["rank"] == 0, "uid"].item()
    assert best == max(by_uid, key=by_uid.get)


def test_resume_skips_shards_scored_by_the_same_rater_and_rescoring_a_new_rater():
    artifact = make_artifact(0)
    frames = {"a": feature_shard(0, 12), "b": feature_shard(12, 9)}
    first = run_scoring(artifact, Loads(frames).partitions(), {})
    existing = dict(first)  # as IncrementalDataset loads them: frames, not loaders

    frames["c"] = feature_shard(21, 5)  # a new shard arrives
    again = run_scoring(artifact, Loads(frames).partitions(), existing)
    assert sorted(again) == ["c"]

    other = run_scoring(make_artifact(1), Loads(frames).partitions(), existing)
    assert sorted(other) == ["a", "b", "c"]
    assert other["a"]["scorer_version"].iloc[0] != first["a"]["scorer_version"].iloc[0]

    changed = dict(frames, a=feature_shard(100, 12))  # same shard name, other rows
    assert sorted(run_scoring(artifact, Loads(changed).partitions(), existing)) == ["a", "c"]

    # Same uids, other content (features of a rebuilt sample): the row keys differ, so shard b is rescored.
    rebuilt = dict(frames, b=feature_shard(12, 9).assign(source_digest=lambda f: f["source_digest"] + "-rebuilt"))
    assert sorted(run_scoring(artifact, Loads(rebuilt).partitions(), existing)) == ["b", "c"]


def test_ranking_refuses_scores_of_another_rater_or_a_missing_shard():
    frames = {"a": feature_shard(0, 6), "b": feature_shard(6, 6)}
    raw = run_scoring(make_artifact(0), Loads(frames).partitions(), {})
    loaders = {k: (lambda v=v: v) for k, v in raw.items()}
    with pytest.raises(ValueError, match="another rater version"):
        nodes.rank_rater_scores(loaders, frames, make_artifact(1))
    with pytest.raises(ValueError, match="missing"):
        nodes.rank_rater_scores({"a": loaders["a"]}, frames, make_artifact(0))


def test_selection_ranks_and_picks_within_the_pool_only():
    index = pd.DataFrame({"uid": ["p1", "p2", "p3", "v1", "t1"], "split": ["pool", "pool", "pool", "val", "test"]})
    scores = pd.DataFrame({"uid": ["v1", "p1", "t1", "p2", "p3"], "score": [9.0, 3.0, 8.0, 2.0, 1.0]})
    pool = nodes.pool_scores(scores, index)
    assert sorted(pool["uid"]) == ["p1", "p2", "p3"]
    manifest = nodes.select_from_scores(
        pool, base_params("select", strategy="topk", ratio=None, count=1, seed=0)
    )
    assert manifest.loc[manifest["selected"], "uid"].tolist() == ["p1"]
    assert manifest["percentile"].max() < 1.0 and len(manifest) == 3
    with pytest.raises(ValueError, match="pool"):
        nodes.pool_scores(scores[scores["uid"].isin(["v1", "t1"])], index)


def test_training_dynamics_plot_bands_the_probe_by_selection_percentile():
    trace = pd.DataFrame({"step": [0, 0, 10, 10], "uid": ["a", "b", "a", "b"], "loss": [1.0, 2.0, 0.5, 1.5],
                          "grad_norm": [0.1, 0.2, 0.05, 0.3]})
    manifest = pd.DataFrame({"uid": ["a", "b"], "percentile": [0.1, 0.9]})
    fig = nodes.plot_training_dynamics(trace, manifest)
    loss_axis = fig.axes[0]
    assert [line.get_label() for line in loss_axis.lines] == ["0%–20% (n=1)", "80%–100% (n=1)"]
    np.testing.assert_allclose(loss_axis.lines[1].get_ydata(), [2.0, 1.5])
    with pytest.raises(ValueError, match="trace"):
        nodes.plot_training_dynamics(trace.assign(uid="zz"), manifest)
