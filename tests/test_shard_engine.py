"""The shard engine's plan: what is reused, what is computed, what is stale; and that run computes lazily."""
import pandas as pd

from alchemist_kedro.hashing import row_digests
from alchemist_kedro.shard_engine import LocalEngine, Part, ShardTask, row_keys

PARTS = {"a": Part("a_version", "a-1", ("a",)), "b": Part("b_version", "b-1", ("b",))}
UIDS = {"s0": ["x", "y"], "s1": ["z"], "s2": ["w"]}


def digest(uid: str) -> str:
    return f"content-of-{uid}"


def stored(uids, **columns) -> pd.DataFrame:
    columns.setdefault("source_digest", [digest(uid) for uid in uids])
    return pd.DataFrame({"uid": uids, **columns})


def plan_with(existing, ordered_uids=True, uids=UIDS):
    reads = []

    def uids_of(shard):
        reads.append(shard)
        return None if uids.get(shard) is None else row_keys(stored(uids[shard]))

    return LocalEngine().plan(uids, existing, PARTS, uids_of, ordered_uids), reads


def test_plan_reuses_parts_with_current_fingerprint_and_uids_only():
    existing = {
        "s0": stored(["x", "y"], a=[1.0, 2.0], a_version="a-1", b=[0.0, 0.0], b_version="b-0"),  # b is old
        "s1": lambda: stored(["z"], a=[1.0], a_version="a-1", b=[1.0], b_version="b-1"),  # a loader, all current
        "gone": stored(["q"], a=[1.0], a_version="a-1"),
    }
    plan, reads = plan_with(existing)
    assert plan.tasks == (ShardTask("s0", ("b",), ("a",)), ShardTask("s2", ("a", "b"), ()))
    assert plan.reused == ("s1",) and plan.stale == ("gone",) and plan.total == 3
    assert reads == ["s0", "s1"]  # s2 has nothing stored: its uids are never read


def test_uids_fingerprints_and_columns_each_invalidate():
    current = dict(a=[1.0, 2.0], a_version="a-1", b=[3.0, 4.0], b_version="b-1")
    assert plan_with({"s0": stored(["x", "y"], **current)})[0].tasks[0].shard == "s1"  # s0 reused
    reordered = {"s0": stored(["y", "x"], **current)}
    assert plan_with(reordered)[0].tasks[0] == ShardTask("s0", ("a", "b"), ())  # order matters when asked
    assert "s0" in plan_with(reordered, ordered_uids=False)[0].reused  # ...and not otherwise
    assert plan_with({"s0": stored(["x"], a=[1.0], a_version="a-1")})[0].tasks[0].parts == ("a", "b")
    mixed = {"s0": stored(["x", "y"], a=[1.0, 2.0], a_version=["a-1", "a-0"], b=[1.0, 1.0], b_version="b-1")}
    assert plan_with(mixed)[0].tasks[0] == ShardTask("s0", ("a",), ("b",))  # one stale row is enough
    no_values = {"s0": stored(["x", "y"], a_version="a-1", b=[1.0, 1.0], b_version="b-1")}
    assert plan_with(no_values)[0].tasks[0] == ShardTask("s0", ("a",), ("b",))
    unknown = plan_with({"s0": stored(["x", "y"], **current)}, uids={"s0": None})[0]
    assert unknown.tasks == (ShardTask("s0", ("a", "b"), ()),)


def test_same_uids_with_other_content_or_no_digest_are_recomputed():
    current = dict(a=[1.0, 2.0], a_version="a-1", b=[3.0, 4.0], b_version="b-1")
    other = {"s0": stored(["x", "y"], **current, source_digest=[digest("x"), "an edited image"])}
    assert plan_with(other)[0].tasks[0] == ShardTask("s0", ("a", "b"), ())
    legacy = {"s0": pd.DataFrame({"uid": ["x", "y"], **current})}  # written before digests existed
    assert plan_with(legacy)[0].tasks[0] == ShardTask("s0", ("a", "b"), ())


def test_row_keys_of_a_samples_frame_follow_image_bytes_and_caption():
    samples = pd.DataFrame({"uid": ["x", "x", "x"], "sha256": ["aa", "ab", "aa"], "caption": ["c", "c", "d"]})
    keys = row_keys(samples)
    assert len(set(keys)) == 3  # another image or another caption under the same uid: another key
    assert keys[0] == row_keys(samples.assign(source_digest=row_digests(samples.sha256, samples.caption)))[0]


def test_run_binds_without_computing():
    plan, _ = plan_with({})
    done = []

    def compute(task):
        done.append(task.shard)
        return stored(UIDS[task.shard])

    partitions = LocalEngine().run(plan, compute)
    assert sorted(partitions) == ["s0", "s1", "s2"] and done == []
    assert partitions["s1"]()["uid"].tolist() == ["z"] and done == ["s1"]
