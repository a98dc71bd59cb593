"""One real `kedro run --pipelines ingest` through the CLI, in a throwaway project directory."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pyarrow.parquet as pq

from tests.ingest.helpers import image_bytes, wds_sample, write_tar

REPO = Path(__file__).resolve().parents[2]
CONF_FILES = ("catalog.yml", "mlflow.yml", "parameters.yml", "globals.yml", "catalog_ingest.yml", "parameters_ingest.yml")


def test_kedro_run_ingest_cli(tmp_path):
    project = tmp_path / "project"
    (project / "conf" / "base").mkdir(parents=True)
    (project / "conf" / "local").mkdir()
    for name in CONF_FILES:
        if (REPO / "conf" / "base" / name).exists():
            shutil.copy(REPO / "conf" / "base" / name, project / "conf" / "base" / name)
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    (project / "src").mkdir()  # Kedro requires it; the package itself comes from the editable install
    # Relative paths on purpose: Kedro must resolve them against the project directory.
    write_tar(project / "raw" / "pool" / "00000.tar", {
        **wds_sample("p0", "a red square", image_bytes()),
        **wds_sample("p1", "a green square", image_bytes(colour=(0, 200, 0))),
        **wds_sample("p2", "not an image", b"\x00garbage" * 50),
    })
    write_tar(project / "raw" / "val" / "00000.tar", wds_sample("v0", "a blue square", image_bytes(colour=(0, 0, 200))))
    (project / "conf" / "local" / "catalog.yml").write_text(
        "raw_pairs:\n"
        "  type: alchemist_kedro.datasets.image_text_sources.ImageTextSources\n"
        "  sources:\n"
        "    - {name: tiny_pool, format: webdataset, path: raw/pool, split: pool}\n"
        "    - {name: tiny_val, format: webdataset, path: raw/val, split: val}\n"
    )
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "ALCHEMIST_MLFLOW_URI": tracking_uri, "KEDRO_DISABLE_TELEMETRY": "true"}
    kedro = Path(sys.executable).parent / "kedro"
    result = subprocess.run([str(kedro), "run", "--pipelines", "ingest"], cwd=project, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    samples = sorted((project / "data" / "03_primary" / "samples").glob("*.parquet"))
    assert [f.stem for f in samples] == ["tiny_pool__00000", "tiny_val__00000"]
    assert [pq.read_table(f).column("uid").to_pylist() for f in samples] == [["p0", "p1"], ["v0"]]
    quarantine = pq.read_table(project / "data" / "03_primary" / "quarantine.parquet").to_pylist()
    assert [(row["uid"], row["reason"]) for row in quarantine] == [("p2", "decode_error")]
    assert list((project / "data" / "08_reporting" / "ingest_report.json").glob("*/ingest_report.json"))

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["ingest.rows_in"] == 4 and metrics["ingest.samples"] == 3
    assert metrics["ingest.quarantined.decode_error"] == 1 and metrics["ingest.quarantined.too_small"] == 0
