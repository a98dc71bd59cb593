"""A scale corpus for benchmarks and tests: N real image-caption pairs as img2dataset webdataset shards, fast.

Every row is one of the embedded corpus's emoji (the npm package `make corpus` fetched), resampled: a random crop
(60-100% of the side), a colour shift (hue rotation through a random channel mix plus brightness), a random flip, and
a caption from templates around the emoji's own name. So the rows are real images with real captions but all
different (distinct sha256), in the layout the ingest pipeline reads (`{key}.png`, `{key}.txt`, `{key}.json`).

    python -m alchemist_kedro.corpus.scale --rows 100000 --out data/01_raw/scale [--shard-size 5000] [--workers 2]

Pool only by default; `--val` / `--test` add that many rows to those splits (the rater needs a clean val split).
Seeded: the same arguments give the same images and captions.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from alchemist_kedro.corpus.emoji import caption_for, fetch_package, load_emoji

logger = logging.getLogger(__name__)

TEMPLATES = ("{name}", "an emoji of {article} {name}", "a picture of {article} {name}", "{name}, cropped",
             "a close-up of {article} {name}", "{article} {name} in different colours", "icon: {name}",
             "a small drawing of {article} {name} on a white background")


def _name(entry: dict) -> str:
    caption = caption_for(entry)
    return caption.split(" of ", 1)[1].split(" ", 1)[1] if " of " in caption else caption


def variant(base: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """One resampled image: crop, colour mix, brightness, flip; `size` px square."""
    rgba = base.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba).convert("RGB")
    side = image.size[0]
    crop = int(side * rng.uniform(0.6, 1.0))
    x, y = rng.integers(0, side - crop + 1, size=2)
    image = image.crop((int(x), int(y), int(x) + crop, int(y) + crop)).resize((size, size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)
    mix = np.eye(3) * (1 - rng.uniform(0, 0.6)) + rng.uniform(0, 0.6) * np.roll(np.eye(3), int(rng.integers(1, 3)), 1)
    pixels = np.clip(pixels @ mix.T * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return Image.fromarray(np.ascontiguousarray(pixels))


def _write_shard(job: tuple) -> tuple[str, int]:
    import webdataset as wds

    path, first_key, count, split, seed, size, items = job
    rng = np.random.default_rng([seed, first_key])
    bases = [(entry, Image.open(io.BytesIO(png))) for entry, png in items]
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for offset in range(count):
            entry, base = bases[int(rng.integers(len(bases)))]
            image = variant(base, rng, size)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=1)
            png = buffer.getvalue()
            name = _name(entry)
            caption = TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(
                name=name, article="an" if name[:1] in "aeiou" else "a")
            key = f"{first_key + offset:09d}"
            meta = {"key": key, "caption": caption, "url": None, "status": "success", "width": size, "height": size,
                    "sha256": hashlib.sha256(png).hexdigest(), "emoji": entry["unified"], "split": split}
            writer.write({"__key__": key, "png": png, "txt": caption.encode(), "json": json.dumps(meta).encode()})
    return str(path), count


def build_scale_corpus(out: str | Path, rows: int, *, val: int = 0, test: int = 0, shard_size: int = 5000,
                       size: int = 64, seed: int = 0, workers: int = 2, package_dir: str | Path | None = None) -> dict:
    """Write `rows` pool rows (+ val / test) under out/<split>/NNNNN.tar; returns the manifest (also manifest.json)."""
    if rows < 1 or shard_size < 1:
        raise ValueError(f"rows and shard_size must be >= 1, got {rows}, {shard_size}")
    out = Path(out)
    package = Path(package_dir) if package_dir else fetch_package(Path("data/01_raw/emoji"))
    items = load_emoji(package)
    if not items:
        raise ValueError(f"no emoji images under {package}")
    jobs, key = [], 0
    for split, count in (("pool", rows), ("val", val), ("test", test)):
        for index, start in enumerate(range(0, count, shard_size)):
            (out / split).mkdir(parents=True, exist_ok=True)
            n = min(shard_size, count - start)
            jobs.append((out / split / f"{index:05d}.tar", key, n, split, seed, size, items))
            key += n
    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        written = list(pool.map(_write_shard, jobs))
    seconds = time.perf_counter() - began
    manifest = {"rows": {"pool": rows, "val": val, "test": test}, "shards": len(written), "size": size, "seed": seed,
                "seconds": round(seconds, 2), "rows_per_second": round((rows + val + test) / max(seconds, 1e-9), 1)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    logger.info("scale corpus: %d rows in %d shards under %s (%.0f rows/s)", rows + val + test, len(written), out,
                manifest["rows_per_second"])
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="pool rows")
    parser.add_argument("--out", required=True)
    parser.add_argument("--val", type=int, default=0)
    parser.add_argument("--test", type=int, default=0)
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64, help="image side in px")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--package-dir", default=None, help="an unpacked emoji-datasource-google package")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_scale_corpus(args.out, args.rows, val=args.val, test=args.test, shard_size=args.shard_size,
                                  size=args.size, seed=args.seed, workers=args.workers, package_dir=args.package_dir)
    print(json.dumps(manifest))
    return manifest


if __name__ == "__main__":
    main()
