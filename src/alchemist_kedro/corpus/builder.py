"""What every embedded corpus shares: splitting by item, seeded defect rows, webdataset shards and the manifest.

A source module (``emoji.py``, ``openclipart.py``) only finds its clean items (``CleanSample``: 64-px PNG, caption,
subcategory) and an identity (package name/version, settings) and calls ``build_webdataset``, which writes

    out/wds/{pool,val,test}/00000.tar ...   (shard_size samples per shard)
    out/wds/manifest.json

Each sample is ``{key}.png`` (``{key}.jpg`` for ``jpeg_artefacts``), ``{key}.txt`` (caption) and ``{key}.json``
(key, caption, url, status, sha256, width, height, split, the source's item-id field and three evaluation-only
fields: ``defect`` (kind or null), ``duplicate_group`` (``dup-<item id>`` on an exact/near duplicate AND on the clean
row it copies, else null) and ``visually_busy`` (a clean row a busyness statistic would call noisy)). Keys are
9-digit strings, unique across splits: val first, then test, then the shuffled pool, so val/test keys do not move
when the defect settings change. Shards are byte-identical for the same inputs and settings (tar mtime 0).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from alchemist_kedro.corpus.defects import (
    DEFAULT_DEFECT_WEIGHTS,
    DEFECT_KINDS,
    DEFECT_MAKERS,
    DEFECT_SIDES,
    DUPLICATE_KINDS,
    CleanSample,
)

logger = logging.getLogger(__name__)

SPLITS = ("pool", "val", "test")
# Random stream ids past the per-defect-kind ones (which use the kind's index).
SHUFFLE_STREAM = 1000
DEFAULT_DEFECT_SHARE = 0.5


@dataclass(frozen=True)
class CorpusSettings:
    seed: int = 0
    # Defect rows added to the pool, as a fraction of the clean pool size.
    defect_share: float = DEFAULT_DEFECT_SHARE
    # Relative share of each defect kind among the defect rows; 0 switches a kind off (missing kinds count as 0).
    defect_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_DEFECT_WEIGHTS))
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    shard_size: int = 500
    # Clean pool rows at or above this quantile of the busyness statistic (or of a flag subcategory) are marked
    # visually_busy: clean rows an image statistic would call noisy.
    busy_quantile: float = 0.9

    def __post_init__(self) -> None:
        unknown = set(self.defect_weights) - set(DEFECT_KINDS)
        if unknown:
            raise ValueError(f"unknown defect kinds {sorted(unknown)}; known: {list(DEFECT_KINDS)}")
        if any(weight < 0 for weight in self.defect_weights.values()):
            raise ValueError("defect weights must be >= 0")
        if self.defect_share < 0:
            raise ValueError("defect_share must be >= 0")
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ValueError("val_fraction + test_fraction must be in [0, 1)")
        if self.shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        if not 0 <= self.busy_quantile <= 1:
            raise ValueError("busy_quantile must be in [0, 1]")

    def as_dict(self) -> dict:
        settings = asdict(self)
        settings["defect_weights"] = {kind: float(self.defect_weights.get(kind, 0.0)) for kind in DEFECT_KINDS}
        return settings


@dataclass(frozen=True)
class CorpusRow:
    split: str
    item_id: str
    caption: str
    image_bytes: bytes
    extension: str
    defect: str | None
    duplicate_group: str | None = None
    visually_busy: bool = False


# --------------------------------------------------------------------------------------------------- split


def split_of(item_id: str, val_fraction: float, test_fraction: float) -> str:
    # A hash of the item id, not the seed: an item's split never changes between runs.
    digest = hashlib.sha256(item_id.upper().encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < 1 - val_fraction - test_fraction:
        return "pool"
    if position < 1 - test_fraction:
        return "val"
    return "test"


def split_samples(samples: Sequence[CleanSample], settings: CorpusSettings) -> dict[str, list[CleanSample]]:
    by_split: dict[str, list[CleanSample]] = {split: [] for split in SPLITS}
    for sample in samples:
        by_split[split_of(sample.item_id, settings.val_fraction, settings.test_fraction)].append(sample)
    return by_split


# --------------------------------------------------------------------------------------------------- defects


def defect_counts(n_clean: int, settings: CorpusSettings) -> dict[str, int]:
    """Split round(defect_share * n_clean) over the kinds by weight (largest remainder, ties by kind order)."""
    weights = settings.as_dict()["defect_weights"]
    total_weight = sum(weights.values())
    total = round(settings.defect_share * n_clean) if total_weight > 0 else 0
    if total == 0:
        return {kind: 0 for kind in DEFECT_KINDS}
    exact = {kind: total * weights[kind] / total_weight for kind in DEFECT_KINDS}
    counts = {kind: int(np.floor(value)) for kind, value in exact.items()}
    by_remainder = sorted(DEFECT_KINDS, key=lambda kind: (-(exact[kind] - counts[kind]), DEFECT_KINDS.index(kind)))
    for kind in by_remainder[: total - sum(counts.values())]:
        counts[kind] += 1
    return counts


def duplicate_group_id(item_id: str) -> str:
    return f"dup-{item_id}"


def make_defect_rows(pool: Sequence[CleanSample], counts: Mapping[str, int], seed: int) -> list[CorpusRow]:
    rows = []
    for kind_index, kind in enumerate(DEFECT_KINDS):
        # One random stream per kind: changing one kind's count leaves the other kinds' rows unchanged.
        rng = np.random.default_rng([seed, kind_index])
        maker = DEFECT_MAKERS[kind]
        for _ in range(counts.get(kind, 0)):
            source = pool[int(rng.integers(len(pool)))]
            defect = maker(source, pool, rng)
            group = duplicate_group_id(source.item_id) if kind in DUPLICATE_KINDS else None
            rows.append(
                CorpusRow("pool", source.item_id, defect.caption, defect.image_bytes, defect.extension, kind, group)
            )
    return rows


# --------------------------------------------------------------------------------------------------- busy slice


def busyness(image: Image.Image) -> float:
    """Mean absolute luma gradient (0-255 scale) over white: high for detailed drawings, flags and patterns."""
    luma = np.asarray(image.convert("L"), dtype=np.float64)
    return float((np.abs(np.diff(luma, axis=0)).mean() + np.abs(np.diff(luma, axis=1)).mean()) / 2)


def busy_items(samples: Sequence[CleanSample], quantile: float) -> set[str]:
    """Items in a flag subcategory or at/above ``quantile`` of the pool's busyness: clean, but noisy to a statistic."""
    if not samples:
        return set()
    scores = np.array([busyness(sample.on_white) for sample in samples])
    threshold = np.quantile(scores, quantile)
    return {
        sample.item_id
        for sample, score in zip(samples, scores)
        if score >= threshold or "flag" in sample.subcategory.lower()
    }


# --------------------------------------------------------------------------------------------------- write


def write_shards(
    rows: Sequence[CorpusRow], first_key: int, split_dir: Path, shard_size: int, item_field: str
) -> list[str]:
    # Imported here: webdataset pulls in torch (~3 s), which the no-op path of a repeated `make run` never needs.
    import webdataset as wds

    split_dir.mkdir(parents=True, exist_ok=True)
    shard_names = []
    for shard_index, start in enumerate(range(0, len(rows), shard_size)):
        shard_name = f"{shard_index:05d}.tar"
        # mtime pinned so that the same settings give byte-identical tar files.
        with wds.TarWriter(str(split_dir / shard_name), encoder=False, mtime=0) as writer:
            for offset, row in enumerate(rows[start : start + shard_size]):
                key = f"{first_key + start + offset:09d}"
                width, height = Image.open(io.BytesIO(row.image_bytes)).size
                metadata = {
                    "key": key,
                    "caption": row.caption,
                    "url": None,
                    "status": "success",
                    "sha256": hashlib.sha256(row.image_bytes).hexdigest(),
                    "width": width,
                    "height": height,
                    "defect": row.defect,
                    "duplicate_group": row.duplicate_group,
                    "visually_busy": row.visually_busy,
                    item_field: row.item_id,
                    "split": row.split,
                }
                writer.write(
                    {
                        "__key__": key,
                        row.extension: row.image_bytes,
                        "txt": row.caption.encode("utf-8"),
                        "json": json.dumps(metadata, sort_keys=True).encode("utf-8"),
                    }
                )
        shard_names.append(shard_name)
    return shard_names


def existing_manifest(wds_dir: Path, expected: Mapping) -> dict | None:
    """The manifest in ``wds_dir`` when it matches ``expected`` key by key and all its shards exist, else None."""
    manifest_path = wds_dir / "manifest.json"
    if not manifest_path.is_file():
        return None
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if any(manifest.get(field_name) != value for field_name, value in expected.items()):
        return None
    for split, shard_names in manifest.get("shards", {}).items():
        if not all((wds_dir / split / name).is_file() for name in shard_names):
            return None
    return manifest


def build_webdataset(
    samples_by_split: Mapping[str, Sequence[CleanSample]],
    out_dir: Path,
    identity: Mapping,
    settings: CorpusSettings,
    item_field: str,
    items_key: str = "items",
) -> dict:
    """Grow the pool with defects, write ``out_dir/wds`` (staged, then swapped in) and return the manifest.

    ``identity`` goes into the manifest verbatim (what ``existing_manifest`` compares); ``item_field`` names the
    json field holding the item id; ``items_key`` the manifest's per-split item count.
    """
    started = time.perf_counter()
    pool = list(samples_by_split["pool"])
    if not pool:
        raise ValueError("no pool items: nothing to build a corpus from")

    counts = defect_counts(len(pool), settings)
    logger.info("making %d defect rows over %d clean pool items: %s", sum(counts.values()), len(pool), counts)
    defect_rows = make_defect_rows(pool, counts, settings.seed)
    duplicated = {row.duplicate_group for row in defect_rows if row.duplicate_group is not None}
    busy = busy_items(pool, settings.busy_quantile)
    clean_rows = []
    for sample in pool:
        group = duplicate_group_id(sample.item_id)
        clean_rows.append(
            CorpusRow(
                "pool", sample.item_id, sample.caption, sample.png_bytes, "png", None,
                group if group in duplicated else None, sample.item_id in busy,
            )
        )
    pool_rows = clean_rows + defect_rows
    # Shuffled so every pool shard carries a similar mix of clean and defective rows.
    order = np.random.default_rng([settings.seed, SHUFFLE_STREAM]).permutation(len(pool_rows))

    def held_out(split: str) -> list[CorpusRow]:
        return [CorpusRow(split, s.item_id, s.caption, s.png_bytes, "png", None) for s in samples_by_split[split]]

    rows_by_split = {"val": held_out("val"), "test": held_out("test"), "pool": [pool_rows[i] for i in order]}

    # Built next to the old corpus and swapped in at the end, so an interrupted build never looks complete.
    wds_dir = out_dir / "wds"
    staging_dir = out_dir / "wds.partial"
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    shards: dict[str, list[str]] = {}
    next_key = 0
    for split in ("val", "test", "pool"):
        rows = rows_by_split[split]
        shards[split] = write_shards(rows, next_key, staging_dir / split, settings.shard_size, item_field)
        next_key += len(rows)
        logger.info("wrote %s: %d samples in %d shards", split, len(rows), len(shards[split]))

    defect_tally = Counter(row.defect for row in defect_rows)
    n_defects = len(defect_rows)
    side_tally = Counter(DEFECT_SIDES[row.defect] for row in defect_rows)
    manifest = {
        **identity,
        "counts": {split: len(rows_by_split[split]) for split in SPLITS},
        items_key: {split: len(samples_by_split[split]) for split in SPLITS},
        "pool_clean": len(pool),
        "defects": {kind: defect_tally.get(kind, 0) for kind in DEFECT_KINDS},
        "defect_rows": n_defects,
        "defect_sides": {side: side_tally.get(side, 0) for side in ("image", "caption", "duplicate")},
        "caption_side_share": round(side_tally.get("caption", 0) / n_defects, 4) if n_defects else 0.0,
        "duplicate_groups": len(duplicated),
        "duplicate_group_rows": sum(row.duplicate_group is not None for row in pool_rows),
        "visually_busy_clean": len(busy),
        "shards": {split: shards[split] for split in SPLITS},
        "reproducible": "shard files are byte-identical for the same inputs and settings (tar mtime 0)",
    }
    (staging_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if wds_dir.exists():
        shutil.rmtree(wds_dir)
    staging_dir.rename(wds_dir)
    logger.info(
        "corpus built in %.1f s: %s, defects %s, busy clean %d",
        time.perf_counter() - started,
        manifest["counts"],
        manifest["defects"],
        len(busy),
    )
    return manifest


# --------------------------------------------------------------------------------------------------- CLI


def parse_defect_weight(text: str) -> tuple[str, float]:
    kind, separator, weight = text.partition("=")
    if not separator or kind not in DEFECT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT with KIND in {list(DEFECT_KINDS)}, got {text!r}")
    return kind, float(weight)


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--defect-share", type=float, default=DEFAULT_DEFECT_SHARE, help="defect rows added per clean pool row"
    )
    parser.add_argument(
        "--defect-weight",
        type=parse_defect_weight,
        action="append",
        default=[],
        metavar="KIND=WEIGHT",
        help="relative share of one defect kind (default 1, caption-side kinds 13/12; 0 switches it off); repeatable",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the shards even if the manifest matches")


def settings_from_arguments(args: argparse.Namespace) -> CorpusSettings:
    weights = dict(DEFAULT_DEFECT_WEIGHTS) | dict(args.defect_weight)
    return CorpusSettings(seed=args.seed, defect_share=args.defect_share, defect_weights=weights)
