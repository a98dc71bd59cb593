"""What a user finds in MLflow after `kedro run --pipelines rater,select` (a real CLI run into a temp sqlite store):
a model-training experiment, a run named after what ran, the manifest as its dataset input, the rater as a pyfunc
model that scores exactly as the select pipeline did."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.scorers.rater import RaterScorer
from alchemist_kedro.tracking import runs


@pytest.fixture(scope="module")
def recorded(selection_project):
    client = mlflow.MlflowClient(tracking_uri=selection_project["tracking_uri"])
    experiment = client.get_experiment_by_name("alchemist_kedro")
    (run,) = client.search_runs([experiment.experiment_id])
    return {**selection_project, "client": client, "experiment": experiment, "run": run}


def _latest(folder: Path, name: str) -> Path:
    return sorted(folder.glob(f"*/{name}"))[-1]  # Kedro-versioned: <name>/<timestamp>/<name>


def test_experiment_is_a_model_training_experiment(recorded):
    assert recorded["experiment"].tags[runs.EXPERIMENT_KIND_TAG] == runs.MODEL_TRAINING_KIND == \
        "custom_model_development"


def test_run_name_and_tags_say_what_ran(recorded):
    run = recorded["run"]
    name = run.info.run_name
    assert set(name.split(" · ")[0].split("+")) == {"rater", "select"}
    assert "select rater topk ratio 0.5" in name and "rater eq6" in name
    assert {k: run.data.tags[k] for k in ("strategy", "scorer", "ratio")} == {
        "strategy": "topk", "scorer": "rater", "ratio": "0.500"}


def test_selection_manifest_is_the_runs_dataset_input_with_its_digest(recorded):
    manifest_file = _latest(recorded["project"] / "data/07_model_output/selection/selection_manifest.parquet",
                            "selection_manifest.parquet")
    manifest = pd.read_parquet(manifest_file)
    (logged,) = recorded["run"].inputs.dataset_inputs
    assert logged.dataset.name == "selection_manifest"
    assert logged.dataset.digest == mlflow.data.from_pandas(manifest).digest
    assert str(manifest_file) in logged.dataset.source
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "selection"
    assert f'"num_rows": {len(manifest)}' in logged.dataset.profile


def test_pyfunc_rater_scores_features_exactly_as_the_select_pipeline(recorded):
    project, client = recorded["project"], recorded["client"]
    (output,) = recorded["run"].outputs.model_outputs
    mlflow.set_tracking_uri(recorded["tracking_uri"])
    try:
        model = mlflow.pyfunc.load_model(f"models:/{output.model_id}")
        logged = client.get_logged_model(output.model_id)
    finally:
        mlflow.set_tracking_uri(None)
    # The shipped rater reads the patch descriptors too (rater.model.patch_inputs).
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image_emb", "text_emb", "patch_emb"]
    assert model.metadata.get_output_schema().input_names() == ["score"]

    # Shard by shard, as select scores: a row's logit is batch-independent only up to float32 rounding (BLAS
    # blocks a 66-row matmul differently from a 33-row one), and "exactly" means bit for bit here.
    select_scores = pd.read_parquet(project / "data/07_model_output/rater_scores.parquet").set_index("uid")
    shards = sorted((project / "data/04_feature/features").glob("*.parquet"))
    assert len(shards) == 2
    for shard in shards:
        features = pd.read_parquet(shard)
        scored = model.predict(features[["image_emb", "text_emb", "patch_emb"]])
        np.testing.assert_array_equal(scored["score"].to_numpy(), select_scores.loc[features["uid"], "raw_score"])

    artifact = TorchSafetensorsDataset(filepath=str(project / "data/06_models/rater.safetensors")).load()
    scorer = RaterScorer(artifact)
    assert logged.tags["rater.weights_sha256"] == scorer.weights_digest()
    assert logged.tags["rater.scorer_version"] == scorer.version == select_scores["scorer_version"].iloc[0]
    files = {Path(a.path).name for a in client.list_logged_model_artifacts(output.model_id)}
    assert "MLmodel" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    nested = {Path(a.path).name for a in client.list_logged_model_artifacts(output.model_id, "artifacts")}
    assert nested == {"rater.safetensors"}
    with pytest.raises(Exception, match="image_emb"):
        model.predict(features[["image_emb", "text_emb"]].assign(image_emb=lambda f: f["image_emb"].map(lambda v: v[:3])))


def test_datacomp_subset_file_of_the_run_holds_the_selected_uids(recorded):
    project = recorded["project"]
    subset = np.load(project / "data/07_model_output/selection/datacomp_subset/selected_uids.npy", mmap_mode="r")
    assert subset.dtype == np.dtype("u8,u8")
    manifest = pd.read_parquet(_latest(project / "data/07_model_output/selection/selection_manifest.parquet",
                                       "selection_manifest.parquet"))
    assert {f"{hi:016x}{lo:016x}" for hi, lo in subset.tolist()} == set(manifest.loc[manifest["selected"], "uid"])


def test_experiment_kind_set_only_when_the_experiment_has_none(tmp_path):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    plain = client.create_experiment("plain", artifact_location=str(tmp_path / "a"))
    chosen = client.create_experiment("chosen", artifact_location=str(tmp_path / "b"),
                                      tags={runs.EXPERIMENT_KIND_TAG: "genai_development"})
    assert runs.mark_model_training(client, plain) and not runs.mark_model_training(client, chosen)
    assert client.get_experiment(plain).tags[runs.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert client.get_experiment(chosen).tags[runs.EXPERIMENT_KIND_TAG] == "genai_development"
