"""One shard engine: plan which shards to (re)compute from stored fingerprints and uids, compute them lazily, skip
the rest. Used by the features, heuristics and rater-scoring nodes; no Kedro here.

A node's output is one partition per input shard (same partition id). The stored partition says what produced it
through fingerprint columns: one per independently reusable *part* (the features shard has one, `fingerprint`; the
heuristics raw-score shard has one per scorer, `<scorer>_version`). A part is reused when every stored row carries its
current fingerprint, its data columns are there, and the stored row keys are the input shard's (as a set, or in order
when the caller joins kept and new columns by position). A row key is (uid, content digest of the sample's image and
caption: `source_digest`), so a rebuilt corpus that reuses uids for other content is recomputed. Everything else is
computed.

    engine = LocalEngine()
    plan = engine.plan(shards, existing, parts, keys_of, ordered_uids=False)   # keys_of(shard) -> row_keys(...)
    partitions = engine.run(plan, compute)   # {shard: () -> DataFrame}, for PartitionedDataset's lazy save

`run` only binds: nothing is computed until the dataset calls a partition, so memory holds one shard at a time and
the partitions left out of the dict stay on disk (the output dataset has `overwrite: false`). `RayEngine` is the
second executor: its `run` submits one Ray task per shard (a bounded window ahead of the dataset's save order) and
returns callables that fetch their results, so the catalog still does all the I/O. `engine_for(params)` picks one
from conf (`executor: local | ray`, `ray: {address, num_cpus, task_cpus, task_gpus, max_in_flight}`).
"""
from __future__ import annotations

import logging
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from alchemist_kedro.hashing import row_digests
from alchemist_kedro.tables import load_partition

logger = logging.getLogger(__name__)
Partition = Callable[[], pd.DataFrame]
DIGEST_COLUMN = "source_digest"


def source_digests(frame: pd.DataFrame) -> list[str]:
    """Each row's content digest: its stored `source_digest`, else computed from sha256 + caption (a samples frame)."""
    if DIGEST_COLUMN in frame.columns:
        return frame[DIGEST_COLUMN].astype(str).tolist()
    if {"sha256", "caption"} <= set(frame.columns):
        return row_digests(frame["sha256"].astype(str), frame["caption"].astype(str))
    raise ValueError(f"row keys need a {DIGEST_COLUMN!r} column or the samples' sha256 and caption; got "
                     f"{sorted(frame.columns)}")


def row_keys(frame: pd.DataFrame) -> list[str]:
    """(uid, content digest) of every row, as strings: what a cached output must match to be reused."""
    return [f"{uid}\x1f{digest}" for uid, digest in zip(frame["uid"].astype(str), source_digests(frame))]


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
    keys: Callable[[], Sequence[str] | None],
    ordered_uids: bool,
) -> set[str]:
    """The parts of one stored partition that are still valid. `keys` (the input shard's `row_keys`) is called only
    when some fingerprint matches (it may read the input shard). A stored partition without content digests (written
    before they existed) is never reused."""
    if stored is None or "uid" not in stored.columns or DIGEST_COLUMN not in stored.columns:
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
    expected = keys()
    if expected is None:
        return set()
    stored_keys = row_keys(stored)
    expected = [str(key) for key in expected]
    same = stored_keys == expected if ordered_uids else set(stored_keys) == set(expected)
    return matching if same else set()


class ShardEngine(ABC):
    """Plan (shared by every executor) and run (how the tasks execute)."""

    def plan(
        self,
        shards: Iterable[str],
        existing: Mapping[str, Any],
        parts: Mapping[str, Part],
        keys_of: Callable[[str], Sequence[str] | None],
        ordered_uids: bool,
    ) -> Plan:
        """Which parts of which shards to compute.

        shards: the input shard ids; existing: stored output partitions (loaders or frames) by shard id; parts: the
        output's reusable parts, in output order; keys_of(shard): the input shard's `row_keys` (None = unknown, nothing
        reusable), called only for shards whose stored fingerprints match.
        """
        shards = sorted(shards)
        tasks, reused = [], []
        for shard in shards:
            stored = load_partition(existing[shard]) if shard in existing else None
            kept = current_parts(stored, parts, lambda shard=shard: keys_of(shard), ordered_uids)
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


# ------------------------------------------------------------------------------------------------------- Ray
_WORKER_CACHE: dict[str, Callable] = {}  # per worker process: a stage's compute, deserialised once, not per shard


def _run_on_worker(key: str, compute_ref: list, task: ShardTask) -> pd.DataFrame:
    import ray

    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()  # one stage at a time: drop the previous stage's models
        _WORKER_CACHE[key] = ray.get(compute_ref[0])
    return _WORKER_CACHE[key](task)


class RayEngine(ShardEngine):
    """One Ray task per shard. `address`: None starts (or reuses) a local Ray sized by `num_cpus`; "auto" or
    "ray://host:port" joins a running cluster. `task_cpus` / `task_gpus`: each task's resource request (a GPU stage
    asks for task_gpus=1 and Ray places it). At most `max_in_flight` shards (default: twice the cluster's CPUs over
    task_cpus) are submitted ahead of the one the dataset is saving, so the object store holds a bounded window, not
    the corpus. The stage's `compute` (its models, scorers, loaders) is serialised once per run and cached per
    worker process; its results are the local engine's, shard by shard."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, task_cpus: float = 1,
                 task_gpus: float = 0, max_in_flight: int | None = None):
        self.address, self.num_cpus = address, num_cpus
        self.task_cpus, self.task_gpus, self.max_in_flight = float(task_cpus), float(task_gpus), max_in_flight

    def _ray(self):
        try:
            import ray
        except ImportError as error:  # the optional extra
            raise ImportError("executor: ray needs Ray: pip install -e '.[ray]' (ray[data]==2.60.0)") from error
        if not ray.is_initialized():
            # Ray nices its workers by default; a shard stage is the job, not background work beside the driver.
            os.environ.setdefault("RAY_worker_niceness", "0")
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if self.address is None:
                kwargs["num_cpus"] = self.num_cpus
            ray.init(address=self.address, **kwargs)
            logger.info("ray: connected (%s), resources %s", self.address or "local", ray.cluster_resources())
        return ray

    def run(self, plan: Plan, compute: Callable[[ShardTask], pd.DataFrame]) -> dict[str, Partition]:
        if not plan.tasks:
            return {}
        ray = self._ray()
        window = self.max_in_flight or max(1, int(2 * ray.cluster_resources().get("CPU", 1) / max(self.task_cpus, 1e-9)))
        remote = ray.remote(num_cpus=self.task_cpus, num_gpus=self.task_gpus, max_retries=0)(_run_on_worker)
        key, compute_ref = uuid.uuid4().hex, [ray.put(compute)]  # wrapped in a list: Ray must not resolve it early
        tasks = list(plan.tasks)  # in shard order, the order PartitionedDataset saves them (sorted ids)
        refs: dict[str, Any] = {}
        submitted = 0

        def submit_until(done: Callable[[], bool]) -> None:
            nonlocal submitted
            while submitted < len(tasks) and not done():
                refs[tasks[submitted].shard] = remote.remote(key, compute_ref, tasks[submitted])
                submitted += 1

        def top_up() -> None:
            submit_until(lambda: len(refs) >= window)

        def bind(position: int, shard: str) -> Partition:
            def fetch() -> pd.DataFrame:
                submit_until(lambda: submitted > position)  # asked out of order: submit up to this one
                frame = ray.get(refs.pop(shard))
                top_up()
                return frame
            return fetch

        top_up()
        return {task.shard: bind(i, task.shard) for i, task in enumerate(tasks)}


def engine_for(params: Mapping[str, Any] | None, stage: str = "") -> ShardEngine:
    """The executor conf names: `executor: local` (default) or `ray` with `ray: {address, num_cpus, task_cpus,
    task_gpus, max_in_flight}` (every key optional)."""
    params = params or {}
    executor = str(params.get("executor") or "local")
    if executor == "local":
        return LocalEngine()
    if executor != "ray":
        raise ValueError(f"{stage or 'executor'}: executor must be local or ray, got {executor!r}")
    settings = dict(params.get("ray") or {})
    unknown = set(settings) - {"address", "num_cpus", "task_cpus", "task_gpus", "max_in_flight"}
    if unknown:
        raise ValueError(f"{stage or 'executor'}: unknown ray settings {sorted(unknown)}")
    return RayEngine(**settings)
