"""A second embedded image source: Debian's ``openclipart-png`` drawings as img2dataset-style webdataset shards.

Built with the same defect generator, splitter and writer as the emoji corpus (``builder.py``), so a result can be
checked on images that are not emoji. Setup step, not a Kedro node, and not part of the default ``make run``::

    apt-get install openclipart-png          # ~130 MB, public domain (Open Clip Art Library 0.18)
    python -m alchemist_kedro.corpus.openclipart --out data/01_raw/openclipart [--max-items N] [--force]

- Items: every ``*.png`` under ``--root`` (default ``/usr/share/openclipart/png``), id = the path below the root
  without ``.png``. Some folders are near-copies of one drawing (1378 parametric stars, 600 toolbar actions), so at
  most ``--max-per-folder`` (default 60) items are taken per folder, then at most ``--max-items`` overall, both by a
  salted hash of the id (stable, and independent of the split hash). Images are fitted into 64×64 RGBA (aspect kept,
  centred on transparency); undecodable files and exact pixel copies of an earlier item are skipped and counted.
- Captions come from the file name and folder: ``armadillo_architetto_fra_01.png`` under ``animals`` →
  "a clip art drawing of armadillo, animals" (version suffixes, digits and the most frequent author names,
  which the archive appends to file names, are removed).
- Splits by item (hash of the id, 80/10/10; val/test clean), same defects, same layout, json item field ``item_id``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from alchemist_kedro.corpus.builder import (
    CorpusSettings,
    add_settings_arguments,
    build_webdataset,
    existing_manifest,
    settings_from_arguments,
    split_samples,
)
from alchemist_kedro.corpus.defects import IMAGE_SIZE, CleanSample, encode_png, flatten_on_white

logger = logging.getLogger(__name__)

PACKAGE_NAME = "openclipart-png"
DEFAULT_ROOT = Path("/usr/share/openclipart/png")
FORMAT_VERSION = 1
ITEM_FIELD = "item_id"
DEFAULT_MAX_PER_FOLDER = 60
SUBSET_SALT = "openclipart-subset"

# Names the archive appends to file names ("<title>_<author>", truncated): cut from the first of them on.
AUTHOR_TOKENS = frozenset(
    """architetto francesco rosso benji juliane krug nicu buculei jarno vasamaa jon gerald victor balin linda kim
    yves guillou luiz sergio araujo jean dan frederic matthew jonathan michael matt dave susan jakob anthony stefan
    nicolas mauro olivo charles patricia brice boye petri cedric leif marcelo staudt shandy peterm mimooh mateya
    snuatautisticido jonadab nurbldoff todd ashton romus frouke kurt cagle rory mccann ralf felipe maciel joel
    montes lumen alex kuehne orlando karam anita phillips gerhards moser liekens bertle fidi pena meza fudriot
    rollandin costea gumnut alcalde cheng chaosi guziec structor structorr nathan christoph eitel
    tunniclif zazou ganson""".split()
)
# Tokens that name the source, not the picture.
SOURCE_TOKENS = frozenset({"aiga", "md", "png", "svg", "icon", "icons", "clipart", "openclipart"})
FOLDER_NOISE = frozenset({"icons", "theme", "flat", "lemon", "etiquette", "unsorted", "special", "misc", "and"})


def words_of(text: str) -> list[str]:
    return [token for token in re.split(r"[^a-z]+", text.lower()) if token]


def caption_for(relative_path: str) -> str:
    """'animals/armadillo_architetto_fra_01' → 'a clip art drawing of armadillo, animals'."""
    parts = relative_path.split("/")
    stem, folders = parts[-1], parts[:-1]
    # Version suffixes (_01, _07b, a trailing _) mark names the archive truncated; digits glued to words go too.
    truncated = re.search(r"_\d*[a-z]?$", stem) is not None
    stem = re.sub(r"_\d*[a-z]?$", "", stem)
    tokens = [token for token in re.split(r"[_\-\s.]+", stem.lower()) if token]
    tokens = [re.sub(r"\d+$", "", token) for token in tokens]
    tokens = [token for token in tokens if token.isalpha() and token not in SOURCE_TOKENS]
    for position, token in enumerate(tokens):
        if position >= 1 and token in AUTHOR_TOKENS:
            tokens = tokens[:position]
            break
    # A truncated author name often survives as a short tail ("..._ro_01", "..._architet_01").
    while truncated and len(tokens) > 1 and (
        (len(tokens[-1]) <= 2 and tokens[-1] not in {"of", "on", "in", "up", "tv", "cd"})
        or (len(tokens[-1]) >= 3 and any(author.startswith(tokens[-1]) for author in AUTHOR_TOKENS))
    ):
        tokens.pop()
    if len(tokens) == 1 and tokens[0] in AUTHOR_TOKENS:
        tokens = []
    folder_words = [
        " ".join(word for word in words_of(folder) if word not in FOLDER_NOISE) for folder in folders
    ]
    folder_words = [words for words in folder_words if words]
    name = " ".join(tokens) or " ".join(folder_words[-1:]) or "an unnamed picture"
    context = " ".join(word for word in dict.fromkeys(" ".join(folder_words[-2:]).split()) if word not in name.split())
    return f"a clip art drawing of {name}" + (f", {context}" if context else "")


def subset_rank(item_id: str) -> bytes:
    return hashlib.sha256(f"{SUBSET_SALT}:{item_id}".encode("utf-8")).digest()


def candidate_items(root: Path, max_per_folder: int | None) -> list[str]:
    """Item ids (relative paths without .png) in subset order: per-folder cap first, then salted-hash order."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"openclipart images not found under {root}. Install them with `apt-get install {PACKAGE_NAME}` "
            f"(Debian/Ubuntu, ~130 MB, public domain) or pass --root to a folder of PNG drawings."
        )
    by_folder: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.png")):
        if not path.is_file():
            continue
        item_id = path.relative_to(root).with_suffix("").as_posix()
        by_folder.setdefault(path.parent.relative_to(root).as_posix(), []).append(item_id)
    if not by_folder:
        raise FileNotFoundError(f"no *.png files under {root}")
    chosen = []
    for items in by_folder.values():
        items = sorted(items, key=subset_rank)
        chosen += items if max_per_folder is None else items[:max_per_folder]
    return sorted(chosen, key=subset_rank)


def to_thumbnail(data: bytes) -> bytes:
    """Fit into IMAGE_SIZE×IMAGE_SIZE RGBA, aspect kept, centred on transparency (as a 64-px emoji is)."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        rgba = image.convert("RGBA")
    rgba.thumbnail((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("RGBA", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0, 0))
    canvas.paste(rgba, ((IMAGE_SIZE - rgba.width) // 2, (IMAGE_SIZE - rgba.height) // 2))
    return encode_png(canvas)


def load_items(root: Path, max_items: int | None, max_per_folder: int | None) -> tuple[list[CleanSample], dict]:
    samples, seen, skipped = [], set(), {"undecodable": 0, "pixel_copy": 0, "blank": 0}
    for item_id in candidate_items(root, max_per_folder):
        if max_items is not None and len(samples) >= max_items:
            break
        try:
            png = to_thumbnail((root / f"{item_id}.png").read_bytes())
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
            logger.warning("skipping %s: %s", item_id, error)
            skipped["undecodable"] += 1
            continue
        if np.asarray(flatten_on_white(Image.open(io.BytesIO(png))), dtype=np.float64).std() < 2.0:
            skipped["blank"] += 1  # nothing visible over white at 64 px (transparent, or white on transparent)
            continue
        digest = hashlib.sha256(png).digest()
        if digest in seen:
            skipped["pixel_copy"] += 1  # the source's own copies would be unlabelled duplicates
            continue
        seen.add(digest)
        folder = item_id.rsplit("/", 1)[0] if "/" in item_id else ""
        samples.append(CleanSample(item_id, caption_for(item_id), folder, png, item_id.rsplit("/", 1)[-1]))
    return samples, skipped


def package_version() -> str | None:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", PACKAGE_NAME], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def file_list_sha256(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode("utf-8"))
    return digest.hexdigest()


def build_corpus(
    root: str | Path = DEFAULT_ROOT,
    out_dir: str | Path = "data/01_raw/openclipart",
    settings: CorpusSettings | None = None,
    max_items: int | None = None,
    max_per_folder: int | None = DEFAULT_MAX_PER_FOLDER,
    force: bool = False,
) -> dict:
    """Write ``out_dir/wds/{pool,val,test}/*.tar`` and ``manifest.json``; a no-op when the manifest matches."""
    settings = settings or CorpusSettings()
    root, out_dir = Path(root), Path(out_dir)
    if max_items is not None and max_items < 1:
        raise ValueError("max_items must be >= 1")
    if not root.is_dir():
        candidate_items(root, max_per_folder)  # raises the install hint
    identity = {
        "format_version": FORMAT_VERSION,
        "package": {"name": PACKAGE_NAME, "version": package_version(), "file_list_sha256": file_list_sha256(root)},
        "source": {"max_items": max_items, "max_per_folder": max_per_folder},
        "settings": settings.as_dict(),
    }
    if not force:
        manifest = existing_manifest(out_dir / "wds", identity)
        if manifest is not None:
            logger.info("openclipart corpus in %s already matches the settings; nothing to do", out_dir / "wds")
            return manifest
    samples, skipped = load_items(root, max_items, max_per_folder)
    logger.info("loaded %d openclipart items (skipped %s)", len(samples), skipped)
    manifest = build_webdataset(split_samples(samples, settings), out_dir, identity | {"skipped": skipped},
                                settings, ITEM_FIELD)
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Build the openclipart corpus shards (Debian openclipart-png).")
    parser.add_argument("--out", type=Path, default=Path("data/01_raw/openclipart"), help="target directory")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder of openclipart PNGs")
    parser.add_argument("--max-items", type=int, default=None, help="at most this many clean items (all splits)")
    parser.add_argument("--max-per-folder", type=int, default=DEFAULT_MAX_PER_FOLDER,
                        help="at most this many items per folder (0: no cap)")
    add_settings_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = build_corpus(
        args.root, args.out, settings_from_arguments(args), max_items=args.max_items,
        max_per_folder=args.max_per_folder or None, force=args.force,
    )
    logger.info("counts per split: %s", manifest["counts"])
    logger.info("defects in the pool: %s", manifest["defects"])
    return manifest


if __name__ == "__main__":
    main()
