"""Rows/s and peak RSS per shard stage at growing N, and the Ray executor against the local one (issue 15).

For each N it builds (once, cached under --work) a scale corpus (corpus/scale.py: resampled emoji as img2dataset
webdataset shards), then runs every stage in its own fresh process, so each peak RSS is that stage's alone:

  ingest      normalise_pairs + the sample table, saved through PartitionedDataset (decode, resize, PNG)
  heuristics  score_shards (clarity, frequency, edge_density) over the sample shards, saved
  features    the real encoders (Open-NSFW ONNX + MiniLM) — only up to --features-max rows (they run ~20 rows/s)
  rater       score_shards_with_rater over feature shards (for N above --features-max: synthetic embeddings of
              the right widths; the rater's cost does not depend on their values), saved
  select      rank_rater_scores + the configured strategy + the uid list (Arrow strings)

then prints a table and the ratios asked for: peak RSS at the largest N over the middle one per stage, and Ray
(2 workers) over local rows/s for ingest and heuristics on the same rows.

    .venv/bin/python benchmarks/scale.py [--rows 2000 20000 100000] [--ray-rows 20000] [--shard-size 5000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "heuristics", "features", "rater", "select")


def _params() -> dict:
    from kedro.config import OmegaConfigLoader

    from alchemist_kedro.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)
    return loader["parameters"]


def _partitioned(path: Path, **dataset):
    from kedro_datasets.partitions import PartitionedDataset

    return PartitionedDataset(path=str(path), dataset={"type": "pandas.ParquetDataset", **dataset},
                              filename_suffix=".parquet", overwrite=True)


def _executor(params: dict, executor: str, workers: int) -> dict:
    return {**params, "executor": executor, "ray": {"address": None, "num_cpus": workers, "task_cpus": 1,
                                                    "task_gpus": 0, "max_in_flight": None}}


def run_stage(stage: str, corpus: Path, work: Path, executor: str, workers: int, threads: int) -> dict:
    """One stage in this process → {rows, seconds}. Inputs come from the previous stages' outputs under `work`."""
    import numpy as np
    import pandas as pd
    import torch

    from alchemist_kedro.datasets.image_text_sources import ImageTextSources
    from alchemist_kedro.pipelines.features.nodes import compute_features
    from alchemist_kedro.pipelines.heuristics.nodes import score_shards
    from alchemist_kedro.pipelines.ingest.nodes import build_sample_table, normalise_pairs
    from alchemist_kedro.pipelines.select.nodes import rank_rater_scores, score_shards_with_rater, selected_uid_list
    from alchemist_kedro.selection.manifest import select_from_scores

    torch.set_num_threads(threads)
    params = _params()
    rater = _rater_artifact() if stage in ("rater", "select") else None
    if executor == "ray":  # a running cluster with warm workers, as a user's would be: startup is not the stage's
        import ray

        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        # Each worker also imports the stage's modules (cv2, torch, pandas, the pipeline's nodes) before the timing:
        # a worker pays that once in its life, ~14 s when two start together here, which over 21 shards would be
        # most of the stage; over a user's thousands of shards it is nothing.
        def warm(module=f"alchemist_kedro.pipelines.{stage}.nodes"):
            import importlib

            import cv2  # noqa: F401
            import torch  # noqa: F401

            importlib.import_module(module)
            time.sleep(0.5)  # both tasks at once, so each lands on its own worker

        ray.get([ray.remote(num_cpus=1)(warm).remote() for _ in range(workers)])
    began = time.perf_counter()  # imports and model loading excluded: the stage's own work
    if stage == "ingest":
        sources = ImageTextSources(sources=[{"name": f"scale_{s}", "format": "webdataset", "path": str(corpus / s),
                                             "split": s} for s in ("pool", "val") if (corpus / s).is_dir()])
        ingested = _partitioned(work / "ingested", save_args={"index": False})
        ingested.save(normalise_pairs(sources.load(), _executor(params["ingest"], executor, workers)))
        samples = _partitioned(work / "samples", save_args={"index": False})
        samples.save(build_sample_table(ingested.load()))
        rows = sum(len(load()) for load in _partitioned(work / "samples", load_args={"columns": ["uid"]}).load().values())
    elif stage == "heuristics":
        heuristics = {**params["heuristics"], "scorers": ["clarity", "frequency", "edge_density"], "threads": threads}
        samples = _partitioned(work / "samples").load()
        uids = _partitioned(work / "samples", load_args={"columns": ["uid", "sha256", "caption"]}).load()
        scores, _ = score_shards(samples, uids, {}, _executor(heuristics, executor, workers))
        _partitioned(work / f"heuristics_{executor}", save_args={"index": False}).save(scores)
        rows = sum(len(load()) for load in uids.values())
    elif stage == "features":
        features = {**params["features"]}
        features["image_encoder"] = {**features["image_encoder"], "threads": threads}
        samples = _partitioned(work / "samples").load()
        out, _, _ = compute_features(samples, {}, _executor(features, executor, workers))
        _partitioned(work / "features", save_args={"index": False}).save(out)
        rows = sum(len(load()) for load in _partitioned(work / "features", load_args={"columns": ["uid"]}).load().values())
    elif stage == "rater":
        features = _partitioned(work / "features").load()
        scoring = _executor(params["select"]["rater_scoring"], executor, workers)
        raw = score_shards_with_rater(rater, features, {}, scoring)
        _partitioned(work / "rater_raw", save_args={"index": False}).save(raw)
        rows = sum(len(load()) for load in _partitioned(work / "rater_raw", load_args={"columns": ["uid"]}).load().values())
    elif stage == "select":
        raw = _partitioned(work / "rater_raw").load()
        features = _partitioned(work / "features", load_args={"columns": ["uid"]}).load()
        table = rank_rater_scores(raw, features, rater)
        select = {**params["select"], "seed": 0, "allow_fewer": False, "count": None}
        manifest = select_from_scores(table, select, scorer="rater")
        uids = selected_uid_list(manifest)
        np.save(work / "selected_uids.npy", uids)
        rows = len(manifest)
    else:
        raise ValueError(f"unknown stage {stage!r}")
    seconds = time.perf_counter() - began
    del pd
    return {"rows": int(rows), "seconds": seconds}


def _rater_artifact() -> dict:
    """The trained default rater when `make run` left one, else a fresh embeddings-in rater of the right widths."""
    from alchemist_kedro.models.rater import Rater, RaterConfig, rater_to_artifact

    path = ROOT / "data/06_models/rater.safetensors"
    if path.is_file():
        from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset

        return TorchSafetensorsDataset(filepath=str(path)).load()
    import torch

    torch.manual_seed(0)
    config = RaterConfig(feature_dim=1024 + 384, text_dim=384, hidden_dim=128, group_hidden_dim=32, use_group=True,
                         alignment_feature=False, interaction_rank=0, proxy_features=False,
                         proxy_feature_timesteps=4, embedding_inputs=True)
    return rater_to_artifact(Rater(config))


def synthetic_features(work: Path) -> None:
    """Feature shards for every sample shard: real uids / digests, random embeddings of the real widths."""
    import numpy as np
    import pandas as pd

    from alchemist_kedro.hashing import row_digests

    out = work / "features"
    out.mkdir(parents=True, exist_ok=True)
    for name, load in _partitioned(work / "samples", load_args={"columns": ["uid", "sha256", "caption"]}).load().items():
        frame = load()
        rng = np.random.default_rng(len(frame))
        image = rng.normal(size=(len(frame), 1024)).astype(np.float32)
        text = rng.normal(size=(len(frame), 384)).astype(np.float32)
        pd.DataFrame({"uid": frame["uid"].astype(str), "image_emb": list(image), "text_emb": list(text),
                      "source_digest": row_digests(frame["sha256"].astype(str), frame["caption"].astype(str))}
                     ).to_parquet(out / f"{name}.parquet", index=False)


def child(args) -> None:
    result = run_stage(args.stage, Path(args.corpus), Path(args.work), args.executor, args.workers, args.threads)
    # ru_maxrss is KiB on Linux; Ray workers are other processes, reported by the parent from ps.
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def spawn(stage: str, corpus: Path, work: Path, executor: str = "local", workers: int = 2, threads: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", "--stage", stage, "--corpus", str(corpus), "--work", str(work),
               "--executor", executor, "--workers", str(workers), "--threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "KEDRO_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{stage} ({executor}) failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[2000, 20000, 100000])
    parser.add_argument("--ray-rows", type=int, default=20000, help="N for Ray vs local (0 = skip)")
    parser.add_argument("--features-max", type=int, default=2000, help="largest N the real encoders run on")
    parser.add_argument("--shard-size", type=int, default=5000)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="the stages to run")
    parser.add_argument("--work", default="/tmp/alchemist_scale")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=STAGES)
    parser.add_argument("--corpus")
    parser.add_argument("--executor", default="local")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from alchemist_kedro.corpus.scale import build_scale_corpus

    root = Path(args.work)
    results: dict[int, dict[str, dict]] = {}
    for n in sorted(set(args.rows) | ({args.ray_rows} if args.ray_rows else set())):
        corpus, work = root / f"corpus_{n}", root / f"work_{n}"
        if not (corpus / "manifest.json").is_file():
            build_scale_corpus(corpus, n, val=max(1, n // 50), shard_size=args.shard_size,
                               package_dir=ROOT / "data/01_raw/emoji/package")
        wanted = set(args.stages)
        results[n] = {}
        for stage in ("ingest", "heuristics"):
            if stage in wanted or not (work / "samples").is_dir():
                results[n][stage] = spawn(stage, corpus, work)
        if n <= args.features_max and "features" in wanted:
            results[n]["features"] = spawn("features", corpus, work)
        elif not (work / "features").is_dir():
            synthetic_features(work)
        for stage in ("rater", "select"):
            if stage in wanted:
                results[n][stage] = spawn(stage, corpus, work)
        if n == args.ray_rows:
            for stage in [s for s in ("ingest", "heuristics") if s in wanted]:
                results[n][f"{stage}_ray"] = spawn(stage, corpus, work / "ray", executor="ray", workers=2) \
                    if stage == "ingest" else spawn(stage, corpus, work, executor="ray", workers=2)
        for stage, r in results[n].items():
            print(f"N={n:>7} {stage:<15} {r['rows'] / r['seconds']:>9.0f} rows/s  peak RSS {r['peak_rss_mb']:>7.0f} MB"
                  f"  ({r['seconds']:.1f} s)", flush=True)

    sizes = sorted(args.rows)
    if len(sizes) >= 2:
        big, mid = sizes[-1], sizes[-2]
        print(f"\npeak RSS at N={big} over N={mid} (goal <= 1.2):")
        for stage in STAGES:
            if stage in results.get(big, {}) and stage in results.get(mid, {}):
                print(f"  {stage:<11} {results[big][stage]['peak_rss_mb'] / results[mid][stage]['peak_rss_mb']:.2f}")
    if args.ray_rows:
        r = results[args.ray_rows]
        print(f"\nRay (2 workers) over local, rows/s at N={args.ray_rows} (goal >= 1.7; driver RSS only):")
        for stage in [s for s in ("ingest", "heuristics") if s + "_ray" in r and s in r]:
            print(f"  {stage:<11} {r[stage]['seconds'] / r[stage + '_ray']['seconds']:.2f}")
    print(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
