"""`kedro run --pipelines diffusion_quality` through the real CLI on a tiny project with a tiny random T2I artifact;
the nodes on their own for what the run cannot show (the groups it reads, the errors it gives)."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from alchemist_kedro import settings
from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.pipelines.diffusion_quality import nodes
from alchemist_kedro.schemas import SCORE_SCHEMA
from alchemist_kedro.scorers import ScoreBatch
from alchemist_kedro.scorers.decode import decode_images
from alchemist_kedro.scorers.degradations import degraded_group
from alchemist_kedro.scorers.diffusion_quality import separation_scores
from tests import tiny_project
from tests.conf_values import base_params

torch.set_num_threads(1)
MAX_ROWS = 8


def tiny_artifact() -> dict:
    from alchemist_kedro.models.t2i import T2IConfig, T2IModel, t2i_to_artifact

    # The shipped model's layout shrunk: cross-attention at the 8-px level, MiniLM's 384-d token states.
    config = T2IConfig(**base_params(
        "train_t2i.model", resolution=16, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, attention_heads=2))
    torch.manual_seed(0)
    return t2i_to_artifact(T2IModel(config))


def params(**overrides) -> dict:
    return base_params("diffusion_quality", **{"threads": 1, "batch_size": 16, "groups": {"max_rows": MAX_ROWS},
                                               **overrides})


def sample_partitions(project: Path) -> dict:
    return {p.stem: (lambda p=p: pd.read_parquet(p)) for p in sorted((project / "data/03_primary/samples").glob("*"))}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("dq")
    project = tiny_project.build(root)
    TorchSafetensorsDataset(filepath=str(project / "data/06_models/t2i.safetensors")).save(tiny_artifact())
    local = {"diffusion_quality": {"threads": 1, "batch_size": 16, "groups": {"max_rows": MAX_ROWS}}}
    (project / "conf" / "local" / "parameters_diffusion_quality.yml").write_text(yaml.safe_dump(local))
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    tiny_project.kedro_run(project, tracking_uri, "--pipelines", "diffusion_quality")
    return {"path": project, "tracking_uri": tracking_uri}


def test_kedro_run_writes_a_score_table_that_select_and_compare_read(project, monkeypatch):
    path = project["path"]
    samples = pd.concat([load() for load in sample_partitions(path).values()], ignore_index=True)
    table_path = path / "data/07_model_output/scores/diffusion_quality.parquet"
    assert pq.read_schema(table_path).remove_metadata().equals(SCORE_SCHEMA)
    table = pd.read_parquet(table_path)
    assert sorted(table["uid"]) == sorted(samples["uid"])  # every row: pool, val and test
    assert (table["scorer"] == "diffusion_quality").all() and table["score"].notna().all()
    assert table["rank"].tolist() == list(range(len(samples)))

    # The scores are the library scorer's, rebuilt from the fit table the run saved.
    fit = pd.read_parquet(path / "data/07_model_output/diffusion_quality_fit.parquet")
    conf = params()
    artifact = TorchSafetensorsDataset(filepath=str(path / "data/06_models/t2i.safetensors")).load()
    scorer = nodes.build_scorer(conf, artifact, base_params("features.text_encoder"), fit=fit)
    assert table["scorer_version"].iloc[0] == scorer.version
    head = samples.iloc[:5]
    expected = scorer.score_batch(ScoreBatch(uids=list(head["uid"]), images=decode_images(list(head["image"]))[0]))
    np.testing.assert_allclose(table.set_index("uid").loc[head["uid"], "raw_score"], expected, rtol=1e-5)
    # The fit: K pairs over MAX_ROWS val images against their degraded copies.
    assert len(fit) == conf["k"] and (fit["pairs"] == MAX_ROWS * MAX_ROWS).all()
    assert fit["separation"].is_monotonic_decreasing
    assert (path / "data/08_reporting/diffusion_quality/fit_pairs.png").stat().st_size > 1000
    summary = json.loads((path / "data/08_reporting/diffusion_quality/summary.json").read_text())
    assert summary["rows"] == len(samples) and summary["version"] == scorer.version

    # What select's defect report (heuristic_scores) and compare (compare_score_tables) load: the table is in both.
    args = {k: v for k, v in settings.CONFIG_LOADER_ARGS.items() if k != "default_run_env"}
    catalog_conf = OmegaConfigLoader(str(path / "conf"), env="local", **args)["catalog"]
    monkeypatch.chdir(path)  # relative data/ paths, as the CLI resolves them
    catalog = DataCatalog.from_config({k: catalog_conf[k] for k in ("heuristic_scores", "compare_score_tables")})
    assert "diffusion_quality" in catalog.load("heuristic_scores")
    assert catalog.load("compare_score_tables")["diffusion_quality"]["uid"].tolist() == table["uid"].tolist()
    arms = base_params("compare.arms")
    assert arms["diffusion_quality"]["scorer"] == arms["diffusion_quality_small"]["scorer"] == "diffusion_quality"

    client = mlflow.MlflowClient(tracking_uri=project["tracking_uri"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["diffusion_quality.fit.rank_0.separation_rate"] == pytest.approx(fit["separation_rate"].iloc[0])
    assert metrics["diffusion_quality.fit.hq_images"] == MAX_ROWS
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "diffusion_quality")}
    assert {"diffusion_quality/diffusion_quality_fit.parquet", "diffusion_quality/fit_pairs.png",
            "diffusion_quality/summary.json"} <= artifacts


def test_the_fit_reads_the_val_split_never_the_defect_column(project):
    path = project["path"]
    # No defect column at all: the fit still runs, on the val split.
    partitions = {name: (lambda load=load: load().drop(columns=["defect"]))
                  for name, load in sample_partitions(path).items()}
    artifact = tiny_artifact()
    text_encoder = base_params("features.text_encoder")
    fit, figure, metrics = nodes.fit_diffusion_quality(partitions, artifact, text_encoder, params())
    hq, uids = nodes.hq_images(partitions, params()["groups"], 0)
    samples = pd.concat([load() for load in partitions.values()]).set_index("uid")
    assert len(uids) == MAX_ROWS and (samples.loc[uids, "split"] == "val").all()
    # The separation counts are those of these HQ images against their degraded copies.
    scorer = nodes.build_scorer(params(), artifact, text_encoder)
    lq, _ = degraded_group(hq, tuple(params()["groups"]["degradations"]), seed=0)
    counts = separation_scores(scorer.estimator.norms(hq), scorer.estimator.norms(lq))
    assert fit["separation"].tolist() == [counts[r.layer, r.token_index] for r in fit.itertuples()]
    assert fit["separation"].tolist() == sorted(counts.ravel().tolist(), reverse=True)[: len(fit)]
    assert figure.axes and metrics["diffusion_quality.fit.hq_images"]["value"] == MAX_ROWS


def test_undecodable_rows_are_kept_with_no_score_and_bad_settings_say_what_to_do(project):
    path = project["path"]
    frame = pd.concat([load() for load in sample_partitions(path).values()], ignore_index=True)
    frame.loc[0, "image"] = b"not an image"
    partitions = {"all": lambda: frame}
    artifact, text_encoder = tiny_artifact(), base_params("features.text_encoder")
    fit = pd.read_parquet(path / "data/07_model_output/diffusion_quality_fit.parquet")
    scores, summary = nodes.score_diffusion_quality(partitions, artifact, text_encoder, fit, params())
    assert len(scores) == len(frame) and summary["decode_errors"] == 1
    broken = scores.set_index("uid").loc[frame.loc[0, "uid"]]
    assert np.isnan(broken["score"]) and broken["rank"] == len(frame) - 1
    assert pa.Schema.from_pandas(scores, preserve_index=False).remove_metadata().equals(SCORE_SCHEMA)

    with pytest.raises(ValueError, match="kedro run --pipelines train_t2i"):
        nodes.fit_diffusion_quality(partitions, None, text_encoder, params())
    with pytest.raises(ValueError, match="has no rows"):
        nodes.fit_diffusion_quality(partitions, artifact, text_encoder, params(groups={"hq_split": "holdout"}))
    with pytest.raises(ValueError, match="sd_folder needs `path`"):
        nodes.fit_diffusion_quality(partitions, None, text_encoder, params(source="sd_folder"))


def test_the_pipeline_is_registered_but_not_in_the_default_run():
    from kedro.framework.project import configure_project

    configure_project("alchemist_kedro")
    from alchemist_kedro.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    assert {n.name for n in pipelines["diffusion_quality"].nodes} == {"fit_diffusion_quality",
                                                                       "score_diffusion_quality"}
    assert not {n.name for n in pipelines["diffusion_quality"].nodes} & {n.name for n in pipelines["__default__"].nodes}
