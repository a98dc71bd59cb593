"""One shard engine: plan which shards to (re)compute from stored fingerprints and uids, compute them lazily, skip
the rest. Used by the features, heuristics and rater-scoring nodes; no Kedro here.

A node's output is one partition per input shard (same partition id). The stored partition says what produced it
through fingerprint columns: one per independently reusable *part* (the features shard has one, `fingerprint`; the
heuristics raw-score shard has one per scorer, `<scorer>_version`). A part is reused when every stored row carries its
current fingerprint, its data columns are there, and the stored uids are the input shard's (as a set, or in order when
the caller joins kept and new columns by position). Everything else is computed.

    engine = LocalEngine()
    plan = engine.plan(shards, existing, parts, uids_of, ordered_uids=False)
    partitions = engine.run(plan, compute)   # {shard: () -> DataFrame}, for PartitionedDataset's lazy save

`run` only binds: nothing is computed until the dataset calls a partition, so memory holds one shard at a time and
the partitions left out of the dict stay on disk (the output dataset has `overwrite: false`). A second executor (Ray)
is one more `ShardEngine` whose `run` submits the tasks and returns callables that fetch their results.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from alchemist_kedro.tables import load_partition

Partition = Callable[[], pd.DataFrame]


@dataclass(frozen=True)
class Part:
    """One reusable part of a shard's output: `fingerprint_column` must hold `fingerprint` on every stored row, and
    `columns` (the values it writes) must all be stored."""

    fingerprint_column: str
    fingerprint: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class ShardTask:
    """What to do for one shard: compute `parts`; `kept` are parts whose stored columns stay valid."""

    shard: str
    parts: tuple[str, ...]
    kept: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """`tasks`: the shards to compute, in shard order; `reused`: shards with nothing to compute; `stale`: stored
    partitions with no input shard any more (reported, never deleted)."""

    tasks: tuple[ShardTask, ...]
    reused: tuple[str, ...]
    stale: tuple[str, ...]

    @property
    def shards(self) -> list[str]:
        return [task.shard for task in self.tasks]

    @property
    def total(self) -> int:
        return len(self.tasks) + len(self.reused)


def current_parts(
    stored: pd.DataFrame | None,
    parts: Mapping[str, Part],
    uids: Callable[[], Sequence[str] | None],
    ordered_uids: bool,
) -> set[str]:
    """The parts of one stored partition that are still valid. `uids` is called only when some fingerprint matches
    (it may read the input shard)."""
    if stored is None or "uid" not in stored.columns:
        return set()
    matching = {
        name
        for name, part in parts.items()
        if part.fingerprint_column in stored.columns
        and all(column in stored.columns for column in part.columns)
        and bool((stored[part.fingerprint_column] == part.fingerprint).all())
    }
    if not matching:
        return set()
    expected = uids()
    if expected is None:
        return set()
    stored_uids = stored["uid"].astype(str).tolist()
    expected = [str(uid) for uid in expected]
    same = stored_uids == expected if ordered_uids else set(stored_uids) == set(expected)
    return matching if same else set()


class ShardEngine(ABC):
    """Plan (shared by every executor) and run (how the tasks execute)."""

    def plan(
        self,
        shards: Iterable[str],
        existing: Mapping[str, Any],
        parts: Mapping[str, Part],
        uids_of: Callable[[str], Sequence[str] | None],
        ordered_uids: bool,
    ) -> Plan:
        """Which parts of which shards to compute.

        shards: the input shard ids; existing: stored output partitions (loaders or frames) by shard id; parts: the
        output's reusable parts, in output order; uids_of(shard): the input shard's uids (None = unknown, nothing
        reusable), called only for shards whose stored fingerprints match.
        """
        shards = sorted(shards)
        tasks, reused = [], []
        for shard in shards:
            stored = load_partition(existing[shard]) if shard in existing else None
            kept = current_parts(stored, parts, lambda shard=shard: uids_of(shard), ordered_uids)
            todo = tuple(name for name in parts if name not in kept)
            if todo:
                tasks.append(ShardTask(shard, todo, tuple(name for name in parts if name in kept)))
            else:
                reused.append(shard)
        stale = tuple(sorted(set(existing) - set(shards)))
        return Plan(tuple(tasks), tuple(reused), stale)

    @abstractmethod
    def run(self, plan: Plan, compute: Callable[[ShardTask], pd.DataFrame]) -> dict[str, Partition]:
        """{shard: callable returning that shard's output frame} for every task of `plan`."""


class LocalEngine(ShardEngine):
    """In-process: each partition computes when the dataset saves it, one shard in memory at a time."""

    def run(self, plan: Plan, compute: Callable[[ShardTask], pd.DataFrame]) -> dict[str, Partition]:
        def bind(task: ShardTask) -> Partition:
            return lambda: compute(task)

        return {task.shard: bind(task) for task in plan.tasks}
