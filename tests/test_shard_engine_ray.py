"""executor: ray — a real local Ray (2 CPUs) gives the same tables as the local engine, stage by stage."""
import os

import numpy as np
import pandas as pd
import pytest

ray = pytest.importorskip("ray", reason="the ray extra (ray[data]==2.60.0) is part of `make test`")

from alchemist_kedro.datasets.image_text_sources import ImageTextSources  # noqa: E402
from alchemist_kedro.pipelines.features.nodes import compute_features  # noqa: E402
from alchemist_kedro.pipelines.heuristics.nodes import score_shards  # noqa: E402
from alchemist_kedro.pipelines.ingest.nodes import normalise_pairs  # noqa: E402
from alchemist_kedro.shard_engine import LocalEngine, Plan, RayEngine, ShardTask, engine_for  # noqa: E402
from tests.conf_values import base_params  # noqa: E402
from tests.ingest.helpers import image_bytes, wds_sample, write_tar  # noqa: E402
from tests.pipelines.features.test_features import samples_shard  # noqa: E402
from tests.pipelines.heuristics.test_pipeline import sample_shard  # noqa: E402

RAY = {"executor": "ray", "ray": {"address": None, "num_cpus": 2, "task_cpus": 1}}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    os.environ.setdefault("RAY_worker_niceness", "0")  # as RayEngine does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _frames(partitions: dict) -> dict[str, pd.DataFrame]:
    return {name: load() for name, load in sorted(partitions.items())}


def _assert_same(local: dict, remote: dict) -> None:
    assert sorted(local) == sorted(remote)
    for name in local:
        pd.testing.assert_frame_equal(local[name].reset_index(drop=True), remote[name].reset_index(drop=True))


def _who(task: ShardTask) -> pd.DataFrame:
    return pd.DataFrame({"shard": [task.shard], "pid": [os.getpid()]})


def test_ray_engine_runs_tasks_on_workers_in_a_bounded_window_and_any_fetch_order():
    plan = Plan(tuple(ShardTask(f"s{i}", ("p",), ()) for i in range(6)), (), ())
    results = RayEngine(max_in_flight=2).run(plan, _who)
    assert list(results) == [f"s{i}" for i in range(6)]
    late = results["s4"]()  # asked out of order: submitted up to it, then fetched
    frames = [results[f"s{i}"]() for i in (0, 1, 2, 3, 5)] + [late]
    assert sorted(f["shard"].iloc[0] for f in frames) == [f"s{i}" for i in range(6)]
    assert os.getpid() not in {int(f["pid"].iloc[0]) for f in frames}  # computed by Ray workers, not here
    assert RayEngine().run(Plan((), (), ()), _who) == {}


def test_engine_for_reads_conf_and_refuses_unknown_values():
    assert isinstance(engine_for({"executor": "local"}), LocalEngine)
    assert isinstance(engine_for(RAY), RayEngine)
    with pytest.raises(ValueError, match="local or ray"):
        engine_for({"executor": "dask"})
    with pytest.raises(ValueError, match="unknown ray settings"):
        engine_for({"executor": "ray", "ray": {"workers": 4}})


def test_ingest_on_ray_equals_local_duplicates_and_quarantine_included(tmp_path):
    write_tar(tmp_path / "pool" / "00000.tar", {
        **wds_sample("a", "a red image", image_bytes((40, 30))),
        **wds_sample("b", "broken bytes", b"\x00not an image" * 10),
    })
    write_tar(tmp_path / "pool" / "00001.tar", {
        **wds_sample("a", "the same uid again", image_bytes((50, 40), colour=(0, 0, 200))),
        **wds_sample("c", "a green one", image_bytes((60, 44), colour=(0, 200, 0))),
    })
    sources = ImageTextSources(sources=[{"name": "web", "format": "webdataset", "path": str(tmp_path / "pool"),
                                         "split": "pool"}])
    params = {**base_params("ingest"), "executor": "local"}
    local = _frames(normalise_pairs(sources.load(), params))
    remote = _frames(normalise_pairs(sources.load(), {**params, **RAY}))
    _assert_same(local, remote)
    reasons = pd.concat(remote.values())["quarantine_reason"].dropna().tolist()
    assert reasons.count("duplicate_uid") == 1 and reasons.count("decode_error") == 1


def test_heuristics_on_ray_equal_local():
    shards = {f"shard-{i}": sample_shard(f"shard-{i}", 10, seed=i, broken=3 if i == 1 else None) for i in range(3)}
    samples = {name: (lambda t=table: t) for name, table in shards.items()}
    uids = {name: (lambda t=table: t[["uid", "sha256", "caption"]]) for name, table in shards.items()}
    params = base_params("heuristics", short_side=64, threads=1, scorers=["clarity", "edge_density", "nsfw"])
    local, versions = score_shards(samples, uids, {}, {**params, "executor": "local"})
    remote, remote_versions = score_shards(samples, uids, {}, {**params, **RAY})
    assert versions == remote_versions
    _assert_same(_frames(local), _frames(remote))


def test_features_on_ray_equal_local_onnx_and_minilm_rebuilt_on_the_workers():
    samples = {"shard-a": lambda: samples_shard("a", [0, 1]), "shard-b": lambda: samples_shard("b", [2, 3])}
    params = base_params("features")
    params["image_encoder"]["threads"] = 1
    local, _, _ = compute_features(samples, {}, {**params, "executor": "local"})
    remote, _, _ = compute_features(samples, {}, {**params, **RAY})
    local, remote = _frames(local), _frames(remote)
    assert sorted(local) == sorted(remote)
    for name in local:
        a, b = local[name], remote[name]
        assert a["uid"].tolist() == b["uid"].tolist() and a["fingerprint"].equals(b["fingerprint"])
        for column in ("image_emb", "text_emb", "text_tokens"):
            np.testing.assert_allclose(np.stack(a[column]), np.stack(b[column]), rtol=0, atol=1e-5)
