"""`kedro run --pipelines attribute` through the real CLI on a tiny project: a tiny trained-shape T2I artifact, a
selection manifest, real sample and feature shards; every table, figure and MLflow record it promises."""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from alchemist_kedro.attribution.ranking import mean_average_precision
from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.models.attributor import attributor_from_artifact
from alchemist_kedro.models.t2i import T2IConfig, T2IModel, t2i_to_artifact
from tests import tiny_project
from tests.conf_values import base_params

QUERIES, HELD_OUT, TOP_K = 4, 2, 8


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("attribute")
    project = tiny_project.build(root)
    config = T2IConfig(**base_params(
        "train_t2i.model", resolution=16, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8, attention_heads=2, cross_attention_dim=tiny_project.TOKEN_DIM, sample_steps=3))
    torch.manual_seed(0)
    TorchSafetensorsDataset(filepath=str(project / "data/06_models/t2i.safetensors")).save(
        t2i_to_artifact(T2IModel(config)))
    samples = pd.concat([pd.read_parquet(p) for p in sorted((project / "data/03_primary/samples").glob("*"))])
    pool = sorted(samples.loc[samples["split"] == "pool", "uid"])
    manifest = pd.DataFrame({"uid": pool, "selected": [i % 4 != 0 for i in range(len(pool))]})
    folder = project / "data/07_model_output/selection/selection_manifest.parquet/2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    manifest.to_parquet(folder / "selection_manifest.parquet", index=False)
    local = {"attribute": {
        "threads": 1, "image_encoder": {"threads": 1},
        "queries": {"count": QUERIES, "held_out": HELD_OUT},
        "unlearning": {"fisher_samples": 8, "query_timesteps": 2},
        "attributor": {"hidden_sizes": [16], "out_dim": 8, "training": {"epochs": 5}},
        "map_k": [TOP_K, "all"],
        "counterfactual": {"queries": 1, "k": 4, "epochs": 0.25, "attributions": ["distilled"]},
        "sheet": {"queries": 2, "top_k": 3},
    }, "train_t2i": {"training": {"batch_size": 8}}}
    (project / "conf" / "local" / "parameters_attribute.yml").write_text(yaml.safe_dump(local))
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    tiny_project.kedro_run(project, tracking_uri, "--pipelines", "attribute")
    return {"path": project, "tracking_uri": tracking_uri, "selected": manifest.loc[manifest["selected"], "uid"]}


def test_the_run_writes_rankings_map_table_counterfactual_and_sheet(run):
    path, selected = run["path"], set(run["selected"])
    queries = pd.read_parquet(path / "data/07_model_output/attribute/queries.parquet")
    assert len(queries) == QUERIES and (queries["split"] == "held_out").sum() == HELD_OUT
    assert queries["image"].map(len).gt(50).all()  # PNG bytes of each generation
    truth = pd.read_parquet(path / "data/07_model_output/attribute/ground_truth.parquet")
    # Every query ranks exactly the selection the model was trained on, best first.
    assert len(truth) == QUERIES * len(selected)
    for _, rows in truth.groupby("query_id"):
        assert set(rows["train_uid"]) == selected and rows["rank"].tolist() == list(range(len(selected)))
        assert rows["influence"].is_monotonic_decreasing
    rankings = pd.read_parquet(path / "data/07_model_output/attribute/distilled_rankings.parquet")
    assert len(rankings) == len(truth)

    # The mAP table is the library's mAP of the saved rankings on the held-out queries.
    table = pd.read_parquet(path / "data/08_reporting/attribute/map_table.parquet")
    assert set(table["method"]) == {"distilled", "image_cosine", "text_cosine", "concat_cosine", "random"}
    assert set(table["k"]) == {str(TOP_K), "all"} and (table["queries"] == HELD_OUT).all()
    held = queries.loc[queries["split"] == "held_out", "query_id"].tolist()
    uids = sorted(selected)
    influence = truth.pivot(index="query_id", columns="train_uid", values="influence").loc[held, uids].to_numpy()
    position = {u: i for i, u in enumerate(uids)}
    orders = np.stack([rankings[rankings["query_id"] == q].sort_values("rank")["train_uid"].map(position).to_numpy()
                       for q in held])
    distilled = table[(table["method"] == "distilled") & (table["k"] == str(TOP_K))]["map"].item()
    assert distilled == pytest.approx(mean_average_precision(orders, influence, TOP_K))

    counterfactual = pd.read_parquet(path / "data/08_reporting/attribute/counterfactual.parquet")
    assert counterfactual["removal"].tolist() == ["none", "distilled", "random"]
    assert counterfactual["train_pairs"].tolist() == [len(selected), len(selected) - 4, len(selected) - 4]
    assert counterfactual["query_id"].iloc[0] == held[0]
    report = json.loads((path / "data/08_reporting/attribute/report.json").read_text())
    assert report["train_pairs"] == len(selected) and report["timing"]["seconds_per_query.unlearning"] > 0
    assert (path / "data/08_reporting/attribute/sheets.png").stat().st_size > 5000
    artifact = TorchSafetensorsDataset(filepath=str(path / "data/06_models/attributor.safetensors")).load()
    assert attributor_from_artifact(artifact).config.hidden_sizes == (16,)


def test_the_run_logs_metrics_and_artifacts_to_mlflow(run):
    client = mlflow.MlflowClient(tracking_uri=run["tracking_uri"])
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    table = pd.read_parquet(run["path"] / "data/08_reporting/attribute/map_table.parquet")
    for row in table.itertuples():
        assert metrics[f"attribute.map_{row.k}.{row.method}"] == pytest.approx(row.map)
    assert {"attribute.seconds_per_query.unlearning", "attribute.seconds_per_query.retrieval",
            "attribute.counterfactual.distilled.loss_rise", "attribute.counterfactual.random.loss_rise",
            "attribute.attributor/loss"} <= set(metrics)
    history = client.get_metric_history(runs[0].info.run_id, "attribute.attributor/loss")
    assert len(history) == 5
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "attribute")}
    assert {"attribute/ground_truth.parquet", "attribute/map_table.parquet", "attribute/sheets.png",
            "attribute/attributor.safetensors", "attribute/counterfactual.parquet",
            "attribute/report.json"} <= artifacts


def test_bad_settings_and_a_missing_model_stop_with_what_to_do(run):
    from alchemist_kedro.pipelines.attribute import nodes

    path = run["path"]
    samples = {p.stem: (lambda p=p: pd.read_parquet(p)) for p in (path / "data/03_primary/samples").glob("*")}
    features = {p.stem: (lambda p=p: pd.read_parquet(p)) for p in (path / "data/04_feature/features").glob("*")}
    manifest = pd.DataFrame({"uid": sorted(run["selected"]), "selected": True})
    artifact = TorchSafetensorsDataset(filepath=str(path / "data/06_models/t2i.safetensors")).load()
    params = base_params("attribute", queries={"count": QUERIES, "held_out": HELD_OUT})
    with pytest.raises(ValueError, match="train_t2i"):
        nodes.build_attribution_inputs(manifest, samples, features, None, params)
    with pytest.raises(ValueError, match="held_out"):
        nodes.build_attribution_inputs(manifest, samples, features, artifact,
                                       base_params("attribute", queries={"count": QUERIES, "held_out": QUERIES}))
    with pytest.raises(ValueError, match="test split has"):
        nodes.build_attribution_inputs(manifest, samples, features, artifact,
                                       base_params("attribute", queries={"count": 500, "held_out": 2}))
    inputs = nodes.build_attribution_inputs(manifest, samples, features, artifact, params)
    assert inputs["train"]["uids"] == sorted(run["selected"])
    assert sorted(inputs["queries"]["split"]) == ["held_out"] * HELD_OUT + ["train"] * (QUERIES - HELD_OUT)
