"""Fault injection through the real CLI: SIGKILL `kedro run` inside each resumable stage, run again, and compare
every output's content hash with an uninterrupted run of the same tiny project. Then plant truncated leftovers (a
non-atomic writer killed mid-write) in every partitioned output and check they are logged and recomputed.

The kill comes from atomic_io's test-only fault point: ALCHEMIST_TEST_KILL_AT="<path substring>:<n>" makes the
process SIGKILL itself at its n-th atomic write to a matching path, after the temporary file is complete and before
the rename. One faulted project walks the stages in execution order (each rerun resumes the stage the previous
run was killed in and is killed in the next one); the baseline runs alongside it in a second project.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from alchemist_kedro.atomic_io import KILL_ENV
from tests.encoders.images import drawn_images, png_bytes
from tests.ingest.helpers import wds_sample, write_tar
from tests.conf_values import base_params

pytest.importorskip("onnx", reason="features' open_nsfw needs the onnx package")

REPO = Path(__file__).resolve().parents[1]
KEDRO = Path(sys.executable).parent / "kedro"
ROWS = {"pool": (2, 12), "val": (1, 8), "test": (1, 8)}  # split: (tars, rows per tar)
BAD_ROWS = 1  # one undecodable image in the pool, so the ledger has a quarantine row to account for
N_ROWS = sum(t * n for t, n in ROWS.values()) + BAD_ROWS
COLOURS = ["red", "blue", "rainbow", "green"]
PIPELINES = "__default__,train_t2i"

# (stage, kill spec) in the order the stages run (Kedro's order is deterministic; heuristics' shard scoring runs
# before the rater trains): the n-th write under that path kills the run. n=2 leaves one unit (partition,
# checkpoint) done, so the rerun resumes the stage mid-way.
KILLS = [
    ("ingest", "02_intermediate/ingested_pairs:2"),
    ("features", "04_feature/features:2"),
    ("heuristics", "heuristic_raw_scores:2"),
    ("rater training", "rater_checkpoints:2"),
    ("rater scoring", "rater_raw_scores:2"),
    ("train_t2i", "t2i_checkpoints:2"),
]
PARTITIONED = ["02_intermediate/ingested_pairs", "03_primary/samples", "04_feature/features",
               "07_model_output/heuristic_raw_scores", "07_model_output/rater_raw_scores"]

TINY = {
    "features": {"image_encoder": {"batch_size": 8, "threads": 1}, "text_encoder": {"batch_size": 16}, "chunk_size": 8},
    "rater": {
        "threads": 1,
        "proxy": {"resolution": 16, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8},
        "model": {"hidden_dim": 8, "group_hidden_dim": 4},
        "training": {"warmup_steps": 3, "meta_steps": 3, "batch_size": 8, "val_batch_size": 4, "checkpoint_every": 2,
                     "trace_every": 2, "probe_size": 4},
    },
    "heuristics": {"threads": 1, "batch_size": 8},
    "evaluate": {"threads": 1, "alignment": {"epochs": 3, "batch_size": 8}},
    "select": {"rater_scoring": {"batch_size": 8}},
    "train_t2i": {
        "threads": 1,
        "model": {"resolution": 16, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                  "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8, "attention_heads": 2,
                  "sample_steps": 2},
        "training": {"epochs": 2, "batch_size": 4, "checkpoint_every": 1, "lr_warmup_steps": 1},
        "grid": {"count": 2, "columns": 2},
    },
}


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _project(root: Path) -> Path:
    project = root / "project"
    shutil.copytree(REPO / "conf" / "base", project / "conf" / "base")
    (project / "conf" / "local").mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    images = [png_bytes(image) for image in drawn_images()]
    uid = 0
    for split, (tars, rows) in ROWS.items():
        for tar in range(tars):
            members = {}
            for _ in range(rows):
                kind = uid % 4
                members.update(wds_sample(f"{split}{uid:04d}", f"a {COLOURS[kind]} picture number {uid}", images[kind]))
                uid += 1
            if split == "pool" and tar == 0:
                members.update(wds_sample("pool_broken", "not an image", b"\x00broken" * 20))
            write_tar(project / "raw" / split / f"{tar:05d}.tar", members)
    params = {}
    for name, override in TINY.items():
        base = base_params(name)
        params[name] = _merge(base, override)
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(params))
    (project / "conf" / "local" / "catalog.yml").write_text(
        "raw_pairs:\n  type: alchemist_kedro.datasets.image_text_sources.ImageTextSources\n  sources:\n"
        + "".join(f"    - {{name: tiny_{s}, format: webdataset, path: raw/{s}, split: {s}}}\n" for s in ROWS)
    )
    return project


def _start(project: Path, kill: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "ALCHEMIST_MLFLOW_URI": f"sqlite:///{project.parent / 'mlflow.db'}",
           "KEDRO_DISABLE_TELEMETRY": "true", "COLUMNS": "400", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop(KILL_ENV, None)
    if kill:
        env[KILL_ENV] = kill
    return subprocess.Popen([str(KEDRO), "run", "--pipelines", PIPELINES], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def _table_hash(path: Path) -> str:
    table = pq.read_table(path).replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def _latest(folder: Path, name: str) -> Path:
    return sorted(folder.glob(f"*/{name}"))[-1]  # Kedro versions are sortable timestamps


def _hashes(project: Path) -> dict[str, str]:
    data = project / "data"
    tables = [p for folder in PARTITIONED for p in sorted((data / folder).glob("*.parquet"))]
    tables += sorted((data / "07_model_output" / "scores").glob("*.parquet"))
    tables += [data / "03_primary/quarantine.parquet", data / "07_model_output/rater_scores.parquet"]
    hashes = {str(p.relative_to(data)): _table_hash(p) for p in tables}
    selection = data / "07_model_output/selection"
    for name in ("selection_manifest.parquet", "ledger.parquet"):
        hashes[f"selection/{name}"] = _table_hash(_latest(selection / name, name))
    for model in ("rater", "t2i"):
        path = data / "06_models" / f"{model}.safetensors"
        hashes[f"06_models/{model}.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return hashes


def _assert_every_row_accounted_for(project: Path) -> None:
    data = project / "data"
    report = json.loads(_latest(data / "08_reporting/ingest_report.json", "ingest_report.json").read_text())
    assert report["rows_in"] == N_ROWS == report["samples"] + report["quarantined"]
    assert report["quarantined"] == BAD_ROWS
    ledger = pq.read_table(_latest(data / "07_model_output/selection/ledger.parquet", "ledger.parquet"))
    assert ledger.num_rows == N_ROWS and len(set(ledger.column("uid").to_pylist())) == N_ROWS


def test_kill_at_any_stage_then_rerun_gives_the_uninterrupted_outputs(tmp_path):
    baseline_project = _project(tmp_path / "baseline")
    faulted = _project(tmp_path / "faulted")
    baseline = _start(baseline_project)  # alongside the faulted sequence: the two share nothing on disk

    log = []
    for stage, kill in KILLS:
        code, output = _finish(_start(faulted, kill))
        log.append(f"{stage}: killed at {kill} -> rc {code}")
        assert code == -9, f"{stage}: the run was not killed at {kill} (rc {code}):\n{output[-3000:]}"

    code, output = _finish(baseline)
    assert code == 0, output[-4000:]
    expected = _hashes(baseline_project)
    _assert_every_row_accounted_for(baseline_project)

    # Before the resuming run, a truncated leftover (what a non-atomic writer killed mid-write leaves) in every
    # partitioned output: its first partition cut to a third. The caches must log it and recompute it; ingest
    # rewrites its own outputs whole (overwrite: true).
    truncated = []
    for folder in PARTITIONED:
        first = sorted((faulted / "data" / folder).glob("*.parquet"))[0]
        first.write_bytes(first.read_bytes()[: first.stat().st_size // 3])
        truncated.append(first)
    code, output = _finish(_start(faulted))
    assert code == 0, "\n".join(log) + output[-4000:]
    logged = [line for line in output.splitlines() if "treated as missing" in line]
    for path in truncated[2:]:  # features, heuristic raw scores, rater raw scores: read back as caches
        assert any(path.name in line and path.parent.name in line for line in logged), (path, logged)
    assert _hashes(faulted) == expected
    _assert_every_row_accounted_for(faulted)
    print("\n".join(log), json.dumps(expected, indent=1), sep="\n")  # the note's figures (pytest -s)
