"""Ingest throughput vs Pillow decode-only, on the same files in one run.

Builds a webdataset tar of N 512-px JPEGs and N 64-px PNGs (textured, so they compress like photos),
then times over the tar's images: (a) Pillow decode only (open + load), (b) the ingest
normalisation (decode + EXIF + convert + resize + centre crop + PNG encode), (c) the same with
JPEG draft decoding off. Usage: .venv/bin/python benchmarks/ingest_throughput.py [--count 200]
"""
from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from alchemist_kedro.ingest.normalise import NormaliseSettings, normalise_image


def _photo_like(rng: np.random.Generator, side: int) -> Image.Image:
    base = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(base).resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-20, 20, size=smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8))


def build_tar(path: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for index in range(count):
            for side, fmt, ext in ((512, "JPEG", "jpg"), (64, "PNG", "png")):
                buffer = io.BytesIO()
                _photo_like(rng, side).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
                info = tarfile.TarInfo(f"{ext}{index:06d}.{ext}")
                info.size = buffer.tell()
                tar.addfile(info, io.BytesIO(buffer.getvalue()))


def read_images(path: Path) -> dict[str, list[bytes]]:
    images: dict[str, list[bytes]] = {"jpg": [], "png": []}
    with tarfile.open(path) as tar:
        for member in tar:
            images[member.name.rsplit(".", 1)[1]].append(tar.extractfile(member).read())
    return images


def decode_only(data: bytes) -> None:
    with Image.open(io.BytesIO(data)) as image:
        image.load()


def rate(function, items: list[bytes], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for data in items:
            function(data)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200, help="images of each kind")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tar_path = Path(folder) / "00000.tar"
        build_tar(tar_path, args.count)
        images = read_images(tar_path)
    settings = NormaliseSettings(resolution=64)
    no_draft = NormaliseSettings(resolution=64, jpeg_draft=False)
    print(f"{'images':<22}{'decode-only img/s':>18}{'ingest img/s':>14}{'ratio':>8}{'ingest, no draft':>18}")
    for kind, label in (("jpg", "512-px JPEG q90"), ("png", "64-px PNG")):
        items = images[kind]
        decode = rate(decode_only, items, args.repeats)
        ingest = rate(lambda d: normalise_image(d, settings), items, args.repeats)
        full = rate(lambda d: normalise_image(d, no_draft), items, args.repeats)
        print(f"{label + f' x{len(items)}':<22}{decode:>18.0f}{ingest:>14.0f}{ingest / decode:>8.2f}{full:>18.0f}")


if __name__ == "__main__":
    main()
