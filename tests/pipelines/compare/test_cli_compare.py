"""A tiny end-to-end `kedro run --pipelines compare` (2 arms, 1 seed, a few steps) through the real CLI."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from tests.conf_values import base_params
from tests.pipelines.train_t2i.tables import t2i_params, tables

REPO = Path(__file__).resolve().parents[3]
CONF_FILES = ("catalog.yml", "mlflow.yml", "parameters.yml", "globals.yml", "catalog_ingest.yml", "catalog_features.yml",
              "catalog_select.yml", "catalog_compare.yml")


def _project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "conf" / "base").mkdir(parents=True)
    (project / "conf" / "local").mkdir()
    for name in CONF_FILES:
        shutil.copy(REPO / "conf" / "base" / name, project / "conf" / "base" / name)
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()
    samples, features = tables()
    for folder, parts in (("03_primary/samples", samples), ("04_feature/features", features)):
        (project / "data" / folder).mkdir(parents=True)
        for name, load in parts.items():
            load().to_parquet(project / "data" / folder / f"shard_{name}.parquet", index=False)
    train = t2i_params(tmp_path)
    train["checkpoint_dir"] = "data/06_models/t2i_checkpoints"
    local = {
        "train_t2i": train,
        "evaluate": base_params("evaluate", threads=1, seed=0, max_test_samples=None, sample_steps=2,
                                guidance_scale=None, batch_size=8, encoder_batch_size=8,
                                image_encoder={"name": "open_nsfw", "batch_size": 8, "threads": 1},
                                alignment={"epochs": 5, "batch_size": 8}),
        "compare": {
            "preset": "tiny",
            "arms": {"full": {"scorer": "none", "strategy": "topk", "ratio": 1.0},
                     "random": {"scorer": "none", "strategy": "random", "ratio": 0.5}},
            "presets": {"tiny": {"arms": ["full", "random"], "seeds": [0], "train_t2i": {"training": {"epochs": 1}}}},
            "verdicts": base_params("compare.verdicts"),
        },
    }
    (project / "conf" / "local" / "parameters.yml").write_text(yaml.safe_dump(local))
    return project


def test_kedro_run_compare_cli(tmp_path):
    project = _project(tmp_path)
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "ALCHEMIST_MLFLOW_URI": tracking_uri, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).parent / "kedro"
    result = subprocess.run([str(kedro), "run", "--pipelines", "compare"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    reporting = project / "data" / "08_reporting"
    runs = pd.read_csv(reporting / "compare_runs.csv")
    assert sorted(runs["arm"]) == ["full", "random"]
    # Equal epochs: the 50% arm trains half the steps of the full arm (32 pool rows, batch 8, 1 epoch).
    assert dict(zip(runs["arm"], runs["steps"])) == {"full": 4, "random": 2}
    assert runs[["fd_onsfw", "alignment", "alignment_ceiling", "train_seconds", "test_loss", "test_loss_low_t",
                 "test_loss_mid_t", "test_loss_high_t", "test_caption_gain", "fwd"]].notna().all().all()
    assert (runs["test_loss"] > 0).all() and (runs["fwd"] > 0).all()
    summary = pd.read_csv(reporting / "compare_summary.csv")
    assert list(summary["arm"]) == ["full", "random"] and (summary["n_seeds"] == 1).all()
    for png in ("compare_summary.png", "compare_sample_grids.png"):
        assert (reporting / png).stat().st_size > 1000
    # Paired by seed: full against random (and back) per metric; one seed gives no interval, so nothing is shown.
    paired = pd.read_csv(reporting / "compare_paired.csv")
    full_vs_random = paired[(paired["arm"] == "full") & (paired["baseline"] == "random")].set_index("metric")
    assert {"test_loss", "fwd", "fd_onsfw", "test_caption_gain", "alignment"} <= set(full_vs_random.index)
    by_arm = runs.set_index("arm")
    assert full_vs_random.loc["test_loss", "mean_difference"] == pytest.approx(
        by_arm.loc["full", "test_loss"] - by_arm.loc["random", "test_loss"])
    assert (full_vs_random["n_seeds"] == 1).all() and (full_vs_random["arm_beats_baseline"] == "not shown").all()
    verdicts = (reporting / "compare_verdicts.md").read_text()
    assert verdicts.startswith("# Verdicts: compare preset `tiny`")
    assert "- Power check: Full beats Random-50%: **not shown** on test_loss" in verdicts  # 1 seed: no interval
    assert "## Power check: Full beats Random-50%" in verdicts
    assert "- Alchemist-50% beats Random-50%: **not run** (alchemist absent)" in verdicts
    assert "- Gsample beats Top-K: **not run** (gsample, topk absent)" in verdicts

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    all_runs = [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in all_runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted((r.data.tags["arm"], r.data.tags["seed"], r.data.tags["ratio"]) for r in children) == [
        ("full", "0", "1.000"), ("random", "0", "0.500")]
    assert all("fd_onsfw" in r.data.metrics for r in children)
    assert "compare.random.alignment_mean" in parents[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "compare")}
    assert {"compare/compare_summary.csv", "compare/compare_summary.png", "compare/compare_paired.csv",
            "compare/compare_verdicts.md"} <= artifacts
