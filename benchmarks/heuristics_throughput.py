"""Images/s of decode-only vs decode + the image statistics (clarity, frequency, edge_density), same files, one run.

Goal (issue 5): the statistics add <= 30% to decode time. Two workloads:
  * 64-px PNGs (our normalised samples), statistics at short side 256 (the default: a 4x upscale);
  * 512-px JPEGs (what a web-scale corpus holds), statistics at short side 256 (a 2x downscale).
Also times `nsfw` (Open-NSFW ONNX) on the 64-px PNGs, the slow scorer, to size a full default run.

    .venv/bin/python benchmarks/heuristics_throughput.py [--png-images 2500] [--jpeg-images 300] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from alchemist_kedro.scorers import ScoreBatch, get_scorer
from alchemist_kedro.scorers.decode import decode_images, grayscale_batch, grayscale8_batch


def synthetic_photo(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth gradients, a few shapes, texture and noise: compresses and decodes like a photo, not like noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.stack([np.sin(6 * x * rng.random() + 3 * y), np.cos(5 * y * rng.random()), x * y], axis=-1)
    image = (image - image.min()) / (np.ptp(image) + 1e-9) * 200
    for _ in range(6):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(image, centre, int(rng.integers(size // 20, size // 4)), colour, -1)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode(images: list[np.ndarray], extension: str, params: list[int]) -> list[bytes]:
    return [cv2.imencode(extension, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)[1].tobytes() for image in images]


def best_of(repeats: int, function) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def run_workload(label: str, encoded: list[bytes], short_side: int, batch_size: int, repeats: int) -> None:
    scorers = [get_scorer(name, short_side=short_side) for name in ("clarity", "frequency", "edge_density")]

    def decode_only() -> None:
        for start in range(0, len(encoded), batch_size):
            decode_images(encoded[start : start + batch_size])

    stage_seconds = {"grayscale+resize": 0.0, **{scorer.name: 0.0 for scorer in scorers}}

    def decode_and_score() -> None:
        for start in range(0, len(encoded), batch_size):
            images, _ = decode_images(encoded[start : start + batch_size])
            batch = ScoreBatch(uids=[str(i) for i in range(len(images))], images=images)
            tick = time.perf_counter()
            grayscale_batch(batch, short_side, "bilinear")
            grayscale8_batch(batch, short_side, "bilinear")
            stage_seconds["grayscale+resize"] += time.perf_counter() - tick
            for scorer in scorers:
                tick = time.perf_counter()
                scorer.score_batch(batch)
                stage_seconds[scorer.name] += time.perf_counter() - tick

    decode_seconds = best_of(repeats, decode_only)
    for key in stage_seconds:
        stage_seconds[key] = 0.0
    full_seconds = best_of(1, decode_and_score)  # one pass: the stage split is from this same pass
    count = len(encoded)
    added = full_seconds - decode_seconds
    print(f"\n== {label}: {count} images, statistics at short side {short_side}, batch {batch_size}")
    print(f"  decode only              {count / decode_seconds:9.0f} img/s  ({decode_seconds:6.2f} s)")
    print(f"  decode + 3 statistics    {count / full_seconds:9.0f} img/s  ({full_seconds:6.2f} s)")
    print(f"  statistics add           {added / decode_seconds:9.0%} of decode time (goal <= 30%)")
    for stage, seconds in stage_seconds.items():
        print(f"    {stage:22s} {1e3 * seconds / count:7.3f} ms/img  ({seconds / decode_seconds:5.0%} of decode)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--png-images", type=int, default=2500)
    parser.add_argument("--jpeg-images", type=int, default=300)
    parser.add_argument("--nsfw-images", type=int, default=256, help="0 to skip the nsfw timing")
    parser.add_argument("--short-side", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="decode-only timing: best of this many")
    args = parser.parse_args()

    cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    print(f"OpenCV {cv2.__version__}, {args.threads} threads")
    small = [synthetic_photo(rng, 64) for _ in range(args.png_images)]
    pngs = encode(small, ".png", [])
    run_workload("64-px PNG (normalised samples)", pngs, args.short_side, args.batch_size, args.repeats)
    jpegs = encode([synthetic_photo(rng, 512) for _ in range(args.jpeg_images)], ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    print(f"\n(512-px JPEGs: mean {np.mean([len(b) for b in jpegs]) / 1024:.0f} KiB)")
    run_workload("512-px JPEG (web-scale corpus)", jpegs, args.short_side, args.batch_size, args.repeats)
    # The same JPEGs scored at short side 512 (no resize), for comparison.
    run_workload("512-px JPEG, statistics at native 512", jpegs, 512, args.batch_size, 1)

    if args.nsfw_images:
        nsfw = get_scorer("nsfw", threads=args.threads)
        images, _ = decode_images(pngs[: args.nsfw_images])
        batch = ScoreBatch(uids=[str(i) for i in range(len(images))], images=images)
        nsfw.score_batch(ScoreBatch(uids=["warm"], images=images[:1]))
        seconds = best_of(1, lambda: nsfw.score_batch(batch))
        rate = len(images) / seconds
        print(f"\n== nsfw (Open-NSFW ONNX, 224 px input) on {len(images)} decoded 64-px images")
        print(f"  {rate:9.1f} img/s -> {args.png_images / rate:6.1f} s for {args.png_images} images")


if __name__ == "__main__":
    main()
