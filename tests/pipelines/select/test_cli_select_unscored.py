"""A real `kedro run --pipelines select` (CLI, project conf) on a heuristic table whose scorer could not score some rows
(their images do not decode): the run finishes, those rows rank last, are never selected and say so in the ledger."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from alchemist_kedro.pipelines.heuristics.nodes import score_table_shard
from alchemist_kedro.schemas import QUARANTINE_SCHEMA, SAMPLE_SCHEMA
from alchemist_kedro.scorers import build_score_table, get_scorer
from tests.pipelines.heuristics.test_pipeline import sample_shard

REPO = Path(__file__).resolve().parents[3]
CONF_FILES = ("catalog.yml", "mlflow.yml", "parameters.yml", "globals.yml", "catalog_ingest.yml", "catalog_select.yml",
              "parameters_select.yml")
# Everything of the select pipeline but the rater's own nodes (no rater in this project).
NODES = ("select_build_sample_index", "select_pool_scores", "select_deduplicate", "select_from_scores", "select_build_ledger",
         "select_write_uid_list", "select_log_metrics", "select_plot_score_histogram", "select_plot_contact_sheets")
BROKEN = {"shard-0": (2, 5), "shard-1": (4,)}


def _project(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    project = tmp_path / "project"
    (project / "conf" / "base").mkdir(parents=True)
    (project / "conf" / "local").mkdir()
    for name in CONF_FILES:
        shutil.copy(REPO / "conf" / "base" / name, project / "conf" / "base" / name)
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    data = project / "data"
    (data / "03_primary" / "samples").mkdir(parents=True)
    (data / "07_model_output" / "scores").mkdir(parents=True)
    clarity = get_scorer("clarity", short_side=64)
    raw = []
    for seed, (shard, broken) in enumerate(BROKEN.items()):
        table = sample_shard(shard, 12, seed=seed)
        table.loc[list(broken), "image"] = b"\x89PNG broken"
        table.to_parquet(data / "03_primary" / "samples" / f"{shard}.parquet", schema=SAMPLE_SCHEMA, index=False)
        raw.append(score_table_shard(table, [clarity], 4, shard))
    raw = pd.concat(raw, ignore_index=True)
    scores = build_score_table(raw["uid"], raw["clarity"], "clarity", clarity.version, higher_is_better=True)
    scores.to_parquet(data / "07_model_output" / "scores" / "clarity.parquet", index=False)
    scores.to_parquet(data / "07_model_output" / "rater_scores.parquet", index=False)  # what select waits for
    pd.DataFrame({c: pd.Series(dtype="string") for c in QUARANTINE_SCHEMA.names}).to_parquet(
        data / "03_primary" / "quarantine.parquet", index=False)
    return project, scores


def test_kedro_run_select_on_a_table_with_unscored_rows(tmp_path):
    project, scores = _project(tmp_path)
    unscored = set(scores.loc[scores["score"].isna(), "uid"])
    assert len(unscored) == 3  # the scorer said so: NaN for the three undecodable images
    env = {**os.environ, "ALCHEMIST_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).parent / "kedro"
    result = subprocess.run(
        [str(kedro), "run", "--pipelines", "select", "--nodes", ",".join(NODES),
         "--params", "select.scorer=clarity,select.strategy=topk,select.ratio=0.75"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    selection = project / "data" / "07_model_output" / "selection"
    manifest = pd.read_parquet(next((selection / "selection_manifest.parquet").glob("*/selection_manifest.parquet")))
    pool = manifest["uid"].tolist()
    assert manifest["scorer"].eq("clarity").all()
    in_pool = unscored & set(pool)
    k = int(np.floor(0.75 * len(pool) + 0.5))
    assert len(pool) - len(in_pool) - 1 == k  # all but one scored pool row: topk must reach past none of the NaN
    picked = set(manifest.loc[manifest["selected"], "uid"])
    assert len(picked) == k and not picked & unscored
    assert in_pool and manifest.sort_values("percentile")["uid"].tail(len(in_pool)).isin(in_pool).all()

    ledger = pd.read_parquet(next((selection / "ledger.parquet").glob("*/ledger.parquet")))
    assert set(ledger.loc[ledger["uid"].isin(in_pool), "status"]) == {"not_selected"}
    uids = np.load(next((selection / "selected_uids.npy").glob("*/selected_uids.npy")), allow_pickle=False)
    assert set(uids.tolist()) == picked
    # The tail band of the contact sheet holds the undecodable images: drawn as placeholders, not a crash.
    assert (project / "data" / "08_reporting" / "selection_contact_sheets.png").stat().st_size > 1000
