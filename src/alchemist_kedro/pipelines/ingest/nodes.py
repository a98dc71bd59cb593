"""Ingestion nodes: raw pairs -> normalised rows (each a sample or quarantined) -> ledger + samples.

Ingest order: partitions sorted by id (``{source}__{shard}``), rows in file order. That is the
order kedro-datasets' PartitionedDataset saves lazy partitions in (``sorted(data.items())``), so
the "first" of two rows sharing a uid is the one in the lower-sorting partition, whatever order
the sources have in conf.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from alchemist_kedro.ingest.normalise import NormaliseSettings, Quarantined, decode_caption, normalise_image
from alchemist_kedro.schemas import QUARANTINE_REASONS, QUARANTINE_SCHEMA, SAMPLE_SCHEMA
from alchemist_kedro.shard_engine import LocalEngine, Plan, ShardTask, engine_for

logger = logging.getLogger(__name__)

# 02_intermediate/ingested_pairs: every raw row, as a sample (reason null) or quarantined.
INGESTED_SCHEMA = SAMPLE_SCHEMA.append(pa.field("quarantine_reason", pa.string())).append(
    pa.field("quarantine_detail", pa.string())
)
# What build_ledger reads back (ingested_pairs@index load_args.columns): no image bytes.
INDEX_COLUMNS = ("uid", "source", "split", "location", "shard", "quarantine_reason", "quarantine_detail")


def _arrow_frame(rows: list[dict[str, Any]] | pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Rows -> DataFrame whose columns carry the schema's exact arrow types into parquet."""
    if isinstance(rows, pd.DataFrame):
        table = pa.Table.from_pandas(rows[schema.names], schema=schema, preserve_index=False)
    else:
        table = pa.Table.from_pylist(rows, schema=schema)
    return table.to_pandas(types_mapper=pd.ArrowDtype)


class _UidLedger:
    """uids seen so far in ingest order, shared by the lazy partition callables.

    If a partition is normalised before an earlier one (not the case with PartitionedDataset's
    sorted save, but possible for a different caller), the earlier partitions' uids are read
    first, so the answer never depends on call order.

    A source whose rows so far are mostly repeats of ANOTHER source's uids stops the run: that is two
    outputs numbering keys the same way (img2dataset restarts at 000000000), not duplicates, and
    quarantining a whole dataset as duplicate_uid would silently drop it from training.
    """

    def __init__(self, order: list[str], raw_pairs: dict[str, Callable[[], pd.DataFrame]]):
        self._order = order
        self._raw_pairs = raw_pairs
        self._first_source: dict[str, str] = {}  # uid -> the source it was first seen in
        self._duplicates: dict[str, list[bool]] = {}
        self._rows_by_source: Counter[str] = Counter()
        self._repeats: dict[str, Counter[str]] = {}  # source -> {earlier source: its rows repeating that one's uids}
        self._lock = threading.Lock()

    def duplicates(self, partition: str, uids: list[str]) -> list[bool]:
        with self._lock:
            if partition not in self._duplicates:
                for earlier in self._order[: self._order.index(partition)]:
                    if earlier not in self._duplicates:
                        logger.warning("ingest: reading uids of %s out of order to check duplicates", earlier)
                        self._register(earlier, self._raw_pairs[earlier]()["uid"].tolist())
                self._register(partition, uids)
            return self._duplicates[partition]

    def _register(self, partition: str, uids: list[str]) -> None:
        source = partition.split("__", 1)[0]
        repeats = self._repeats.setdefault(source, Counter())
        mask = []
        for uid in uids:
            first = self._first_source.get(uid)
            mask.append(first is not None)
            if first is None:
                self._first_source[uid] = source
            elif first != source:
                repeats[first] += 1
        self._duplicates[partition] = mask
        self._rows_by_source[source] += len(uids)
        if repeats:
            other, count = repeats.most_common(1)[0]
            rows = self._rows_by_source[source]
            if 2 * count > rows:
                raise ValueError(
                    f"ingest: {count} of the {rows} rows read so far from source '{source}' repeat uids of source "
                    f"'{other}': the two sources number their keys the same way (img2dataset restarts at "
                    f"000000000 in every run), and without a namespace all of them would be quarantined as "
                    f"duplicate_uid. Give one source a `uid_prefix` in the raw_pairs catalog entry, e.g. "
                    f"`- {{name: {source}, ..., uid_prefix: \"{source}/\"}}` (keep DataComp sources unprefixed: "
                    f"their uids are global)."
                )


def _normalise_row(raw: dict[str, Any], is_duplicate: bool, settings: NormaliseSettings) -> dict[str, Any]:
    row = {
        "uid": raw["uid"],
        "source": raw["source"],
        "split": raw["split"],
        "location": raw["location"],
        "defect": None if pd.isna(raw["defect"]) else str(raw["defect"]),
        "duplicate_group": None if pd.isna(raw["duplicate_group"]) else str(raw["duplicate_group"]),
    }
    try:
        # Order matters only for which single reason a row gets: cheapest and most certain first.
        if isinstance(raw["raw_error"], str):
            raise Quarantined(raw["raw_error"], raw["raw_detail"] or "")
        if is_duplicate:
            raise Quarantined("duplicate_uid", f"uid '{raw['uid']}' already ingested earlier")
        caption = decode_caption(raw["caption_bytes"])
        image = normalise_image(raw["image_bytes"], settings)
    except Quarantined as quarantined:
        row.update(quarantine_reason=quarantined.reason, quarantine_detail=quarantined.detail)
        return row
    row.update(caption=caption, image=image.png, width=image.width, height=image.height, sha256=image.sha256)
    return row


def _normalise_partition(
    partition: str,
    load_raw: Callable[[], pd.DataFrame],
    settings: NormaliseSettings,
    ledger: _UidLedger,
    progress: tqdm,
) -> pd.DataFrame:
    raw = load_raw()
    duplicates = ledger.duplicates(partition, raw["uid"].tolist())
    rows = []
    for record, is_duplicate in zip(raw.to_dict("records"), duplicates, strict=True):
        row = _normalise_row(record, is_duplicate, settings)
        row["shard"] = partition
        rows.append(row)
    progress.set_postfix_str(partition, refresh=False)
    progress.update(1)
    if progress.n >= progress.total:
        progress.close()
    return _arrow_frame(rows, INGESTED_SCHEMA)


_SAMPLE_ONLY = ("caption", "image", "width", "height", "sha256")


def _normalise_unchecked(partition: str, load_raw: Callable[[], pd.DataFrame], settings: NormaliseSettings,
                         task: ShardTask | None = None) -> pd.DataFrame:
    """A worker's half of a partition (executor: ray): every row normalised as if no uid repeated, plus `_raw_error`
    (the reader already failed the row, a reason that comes before duplicate_uid)."""
    raw = load_raw()
    rows = []
    for record in raw.to_dict("records"):
        row = _normalise_row(record, False, settings)
        row["shard"] = partition
        rows.append(row)
    frame = _arrow_frame(rows, INGESTED_SCHEMA)
    frame["_raw_error"] = [isinstance(error, str) for error in raw["raw_error"]]
    return frame


def _apply_duplicates(partition: str, frame: pd.DataFrame, ledger: _UidLedger) -> pd.DataFrame:
    """The driver's half: the ledger (ingest order) marks repeated uids duplicate_uid, exactly as the local path."""
    duplicate = pd.Series(ledger.duplicates(partition, frame["uid"].astype(str).tolist()), index=frame.index)
    mark = duplicate & ~frame["_raw_error"].astype(bool)
    frame = frame.drop(columns="_raw_error")
    if mark.any():
        frame = frame.astype(object)
        frame.loc[mark, list(_SAMPLE_ONLY)] = None
        frame.loc[mark, "quarantine_reason"] = "duplicate_uid"
        frame.loc[mark, "quarantine_detail"] = [f"uid '{uid}' already ingested earlier" for uid in frame.loc[mark, "uid"]]
        frame = _arrow_frame(frame.where(frame.notna(), None), INGESTED_SCHEMA)
    return frame


def _normalise_with_engine(raw_pairs, order, settings, ledger, engine) -> dict[str, Callable[[], pd.DataFrame]]:
    plan = Plan(tuple(ShardTask(partition, ("ingest",), ()) for partition in order), (), ())
    computed = engine.run(plan, lambda task: _normalise_unchecked(task.shard, raw_pairs[task.shard], settings))

    def bind(partition: str) -> Callable[[], pd.DataFrame]:
        return lambda: _apply_duplicates(partition, computed[partition](), ledger)

    return {partition: bind(partition) for partition in order}


def normalise_pairs(raw_pairs: dict[str, Callable[[], pd.DataFrame]], params: dict[str, Any]) -> dict[str, Callable[[], pd.DataFrame]]:
    """Raw partitions (``raw_pairs``: ImageTextSources) -> lazy ``{partition: () -> DataFrame}``.

    Each DataFrame holds every raw row of its partition with INGESTED_SCHEMA's columns: a sample
    (image = PNG, RGB, ``resolution`` square; ``quarantine_reason`` null) or a quarantined row
    (``quarantine_reason`` from schemas.QUARANTINE_REASONS, ``quarantine_detail`` for people).
    ``params``: the ``ingest`` parameters (resolution, min_side, max_image_pixels, ...).
    """
    settings = NormaliseSettings.from_params(params)
    order = sorted(raw_pairs)
    ledger = _UidLedger(order, raw_pairs)
    engine = engine_for(params, "ingest")
    if not isinstance(engine, LocalEngine):
        # Decode / resize / re-encode on the workers; the uid ledger stays in the driver, in save order.
        return _normalise_with_engine(raw_pairs, order, settings, ledger, engine)
    progress = tqdm(total=len(order), desc="ingest: normalise", unit="shard", delay=1.0)
    return {
        partition: partial(_normalise_partition, partition, raw_pairs[partition], settings, ledger, progress)
        for partition in order
    }


def build_ledger(
    raw_pairs: dict[str, Any], ingested_index: dict[str, Callable[[], pd.DataFrame]]
) -> tuple[pd.DataFrame, dict[str, dict[str, float]], dict[str, Any]]:
    """Check that every input row ended in exactly one place, and summarise.

    Inputs: ``raw_pairs`` (counted again without decoding: ``RawPartition.count_rows()``) and
    ``ingested_index`` (the ingested partitions, INDEX_COLUMNS only). Raises RuntimeError when a
    partition is missing or its row count differs from the input's.
    Returns (quarantine table with QUARANTINE_SCHEMA, MLflow metrics dict
    ``{"rows_in" | "samples" | "quarantined" | "quarantined.<reason>": {"value", "step"}}`` with
    every reason incl. zeros; the catalog's `prefix: ingest` makes them ingest.*, report dict).
    """
    missing = sorted(set(raw_pairs) - set(ingested_index))
    unexpected = sorted(set(ingested_index) - set(raw_pairs))
    if missing or unexpected:
        raise RuntimeError(
            f"ingest ledger: partitions differ between input and output; missing in output: {missing}, "
            f"not in input: {unexpected}"
        )
    by_source: dict[str, dict[str, Any]] = {}
    quarantine_parts = []
    mismatches = []
    for partition in tqdm(sorted(ingested_index), desc="ingest: ledger", unit="shard", delay=1.0):
        index = ingested_index[partition]()
        rows_in = raw_pairs[partition].count_rows()
        if rows_in != len(index):
            mismatches.append(f"{partition}: {rows_in} rows in, {len(index)} rows out")
        quarantined = index[index["quarantine_reason"].notna()]
        source = partition.split("__", 1)[0]
        totals = by_source.setdefault(
            source, {"split": None, "rows_in": 0, "samples": 0, "quarantined": 0, "by_reason": Counter()}
        )
        if len(index):
            totals["split"] = str(index["split"].iloc[0])
        totals["rows_in"] += rows_in
        totals["samples"] += len(index) - len(quarantined)
        totals["quarantined"] += len(quarantined)
        totals["by_reason"].update(quarantined["quarantine_reason"].astype(str).tolist())
        quarantine_parts.append(
            quarantined.rename(columns={"quarantine_reason": "reason", "quarantine_detail": "detail"})[
                QUARANTINE_SCHEMA.names
            ]
        )
    if mismatches:
        raise RuntimeError("ingest ledger: rows in != samples + quarantined for " + "; ".join(mismatches))

    reasons = list(QUARANTINE_REASONS) + sorted(
        {r for t in by_source.values() for r in t["by_reason"]} - set(QUARANTINE_REASONS)
    )
    by_reason = Counter()
    for totals in by_source.values():
        by_reason.update(totals["by_reason"])
        totals["by_reason"] = {reason: totals["by_reason"].get(reason, 0) for reason in reasons}
    summary = {
        "rows_in": sum(t["rows_in"] for t in by_source.values()),
        "samples": sum(t["samples"] for t in by_source.values()),
        "quarantined": sum(t["quarantined"] for t in by_source.values()),
    }
    metrics = {name: {"value": float(value), "step": 0} for name, value in summary.items()}
    metrics.update(
        {f"quarantined.{reason}": {"value": float(by_reason.get(reason, 0)), "step": 0} for reason in reasons}
    )
    report = {
        **summary,
        "partitions": len(ingested_index),
        "by_reason": {reason: by_reason.get(reason, 0) for reason in reasons},
        "by_source": by_source,
    }
    logger.info(
        "ingest ledger: %d rows in = %d samples + %d quarantined %s",
        summary["rows_in"],
        summary["samples"],
        summary["quarantined"],
        {reason: count for reason, count in by_reason.items() if count},
    )
    quarantine = pd.concat(quarantine_parts, ignore_index=True) if quarantine_parts else pd.DataFrame(columns=QUARANTINE_SCHEMA.names)
    return _arrow_frame(quarantine, QUARANTINE_SCHEMA), metrics, report


def _sample_partition(load_ingested: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    ingested = load_ingested()
    samples = ingested[ingested["quarantine_reason"].isna()].reset_index(drop=True)
    return _arrow_frame(samples, SAMPLE_SCHEMA)


def build_sample_table(ingested_pairs: dict[str, Callable[[], pd.DataFrame]]) -> dict[str, Callable[[], pd.DataFrame]]:
    """Ingested partitions -> lazy ``{partition: () -> DataFrame}`` of samples only, SAMPLE_SCHEMA columns."""
    return {partition: partial(_sample_partition, ingested_pairs[partition]) for partition in sorted(ingested_pairs)}
