"""GPU smoke test: features, a short rater training, scoring and selection on the embedded corpus, on the GPU and on
the CPU in the same run, printing rows/s per stage and the GPU/CPU ratio (issue 15).

Needs `make run` (or at least the ingest and features pipelines) to have written data/03_primary/samples and
data/04_feature/features, a CUDA build of torch, and for the ONNX image encoder on the GPU the `gpu` extra
(onnxruntime-gpu); without it the image encoder stays on the CPU and the line says so.

    .venv/bin/python benchmarks/gpu_smoke.py [--rows 512] [--steps 40] [--device cuda]

Exits with status 2 and a one-line reason when torch sees no CUDA device.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _params() -> dict:
    from kedro.config import OmegaConfigLoader

    from alchemist_kedro.settings import CONFIG_LOADER_ARGS

    return OmegaConfigLoader(conf_source=str(ROOT / "conf"), **CONFIG_LOADER_ARGS)["parameters"]


def _partitions(path: Path) -> dict:
    from kedro_datasets.partitions import PartitionedDataset

    if not path.is_dir():
        sys.exit(f"gpu_smoke: {path} is missing: run `make run` (or the ingest and features pipelines) first")
    return PartitionedDataset(path=str(path), dataset="pandas.ParquetDataset", filename_suffix=".parquet").load()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_on(device_name: str, samples: dict, features: dict, params: dict, rows: int, steps: int) -> dict:
    import dataclasses

    import pandas as pd
    import torch

    from alchemist_kedro.devices import resolve_device
    from alchemist_kedro.models.proxy import ProxyConfig
    from alchemist_kedro.models.rater import RaterConfig, rater_to_artifact
    from alchemist_kedro.pipelines.features.nodes import build_encoders, encode_shard, features_fingerprint
    from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs
    from alchemist_kedro.scorers import get_scorer
    from alchemist_kedro.scorers.base import ScoreBatch
    from alchemist_kedro.selection.manifest import select_from_scores
    from alchemist_kedro.tables import feature_matrix
    from alchemist_kedro.training.bilevel import BilevelConfig, train_rater_bilevel

    device = resolve_device(device_name, stage="gpu_smoke")
    out = {}
    # features: the real encoders on the first `rows` samples
    table = pd.concat([load() for _, load in sorted(samples.items())], ignore_index=True).head(rows)
    config = {**params["features"]}
    config["image_encoder"] = {**config["image_encoder"], "device": device_name}
    config["text_encoder"] = {**config["text_encoder"], "device": device_name}
    image_encoder, text_encoder, max_tokens = build_encoders(config)
    fingerprint = features_fingerprint(image_encoder, text_encoder, max_tokens)
    encode_shard("warm-up", table.head(8), image_encoder, text_encoder, max_tokens, fingerprint, 8)
    began = time.perf_counter()
    encode_shard("gpu_smoke", table, image_encoder, text_encoder, max_tokens, fingerprint, int(config["chunk_size"]))
    _sync(device)
    out["features"] = len(table) / (time.perf_counter() - began)

    # rater: the default configuration, `steps` warm-up + `steps` meta steps
    rater = params["rater"]
    data = build_rater_inputs(samples, features, rater)
    proxy_config = ProxyConfig(**rater["proxy"])
    model = {**rater["model"], "alignment_feature": False}
    rater_config = RaterConfig(feature_dim=int(data.pool_features.shape[1]), text_dim=data.text_dim,
                               alignment_config=None, proxy_config=dataclasses.asdict(proxy_config)
                               if model.get("proxy_features") else None, **model)
    bilevel = BilevelConfig(**{**rater["training"], "warmup_steps": steps, "meta_steps": steps})
    began = time.perf_counter()
    result = train_rater_bilevel(data, proxy_config, rater_config, bilevel, device=device)
    _sync(device)
    out["rater steps"] = 2 * steps / (time.perf_counter() - began)

    # scoring: every feature row, and the selection
    frame = pd.concat([load() for _, load in sorted(features.items())], ignore_index=True)
    matrix = feature_matrix(frame)
    scorer = get_scorer("rater", artifact=rater_to_artifact(result.rater), device=device_name)
    began = time.perf_counter()
    raw = scorer.score_batch(ScoreBatch(uids=frame["uid"].astype(str).tolist(), features=matrix))
    _sync(device)
    out["scoring"] = len(frame) / (time.perf_counter() - began)
    scores = pd.DataFrame({"uid": frame["uid"].astype(str), "score": raw})
    began = time.perf_counter()
    select_from_scores(scores, {**params["select"], "seed": 0}, scorer="rater")
    out["selection"] = len(frame) / (time.perf_counter() - began)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="samples the encoders run on")
    parser.add_argument("--steps", type=int, default=40, help="rater warm-up and meta steps (each)")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_smoke: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
              "nothing to compare. Install a CUDA build of torch on a GPU machine.", file=sys.stderr)
        sys.exit(2)
    params = _params()
    samples, features = _partitions(ROOT / "data/03_primary/samples"), _partitions(ROOT / "data/04_feature/features")
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
    gpu = run_on(args.device, samples, features, params, args.rows, args.steps)
    cpu = run_on("cpu", samples, features, params, args.rows, args.steps)
    print(f"{'stage':<12}{'cpu /s':>12}{'gpu /s':>12}{'gpu/cpu':>10}")
    for stage in gpu:
        print(f"{stage:<12}{cpu[stage]:>12.1f}{gpu[stage]:>12.1f}{gpu[stage] / cpu[stage]:>10.2f}")


if __name__ == "__main__":
    main()
