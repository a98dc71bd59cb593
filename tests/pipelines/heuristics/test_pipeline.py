"""The heuristics pipeline on tiny real partitioned parquet, through the project's own catalog entries."""
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner

from alchemist_kedro.pipelines.heuristics import create_pipeline
from alchemist_kedro.pipelines.heuristics import nodes as heuristic_nodes
from alchemist_kedro.schemas import SCORE_SCHEMA
from alchemist_kedro.scorers import build_score_table
from tests.conf_values import base_params

ROOT = Path(__file__).resolve().parents[3]


def png(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return encoded.tobytes()


def sample_shard(shard: str, count: int, seed: int, broken: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        # Random blocks, blurred by a random amount: a spread of sharpness.
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = cv2.resize(blocks, (64, 64), interpolation=cv2.INTER_NEAREST)
        image = cv2.GaussianBlur(image, (0, 0), 0.3 + 2.0 * rng.random())
        data = b"\x89PNG broken" if i == broken else png(image)
        rows.append({"uid": f"{shard}-{i:03d}", "caption": f"caption {i}", "image": data, "width": 64, "height": 64,
                     # some val rows: the alignment model (fitted in this pipeline) trains on them
                     "sha256": hashlib.sha256(data).hexdigest(), "source": "test", "split": "val" if i % 3 == 0 else "pool",
                     "location": f"{shard}.tar",
                     "shard": shard, "defect": None, "duplicate_group": None})
    return pd.DataFrame(rows)


def shard_features(table: pd.DataFrame) -> pd.DataFrame:
    """Stand-in cached features (FEATURE_SCHEMA's uid, image_emb, text_emb): text = a noisy copy of the image's."""
    rng = np.random.default_rng(len(table))
    image = rng.normal(size=(len(table), 6)).astype(np.float32)
    text = (image[:, :4] + 0.1 * rng.normal(size=(len(table), 4))).astype(np.float32)
    return pd.DataFrame({"uid": table["uid"], "image_emb": list(image), "text_emb": list(text)})


def write_samples(folder: Path, shards: dict[str, pd.DataFrame]) -> None:
    """Sample shards under `folder` (data/03_primary/samples) and their features under data/04_feature/features."""
    feature_folder = folder.parents[1] / "04_feature/features"
    for path in (folder, feature_folder):
        path.mkdir(parents=True, exist_ok=True)
    for shard, table in shards.items():
        table.to_parquet(folder / f"{shard}.parquet", index=False)
        shard_features(table).to_parquet(feature_folder / f"{shard}.parquet", index=False)


def project_catalog(data: Path) -> DataCatalog:
    """conf/base/catalog_heuristics.yml (+ `samples` as ingest defines it) with data/ moved to `data` and MLflow
    artifact wrappers replaced by the datasets they wrap (no MLflow run in a unit test)."""
    text = "".join((ROOT / f"conf/base/catalog_{name}.yml").read_text()
                   for name in ("heuristics", "ingest", "features", "evaluate", "select"))
    config = yaml.safe_load(text.replace("data/", f"{data}/"))
    config = {name: entry for name, entry in config.items()
              if name.startswith(("heuristic", "other_score", "{scorer}"))
              or name in ("samples", "features", "alignment_model", "select_samples_index")}
    for name, entry in config.items():
        if entry["type"].endswith("MlflowArtifactDataset"):
            config[name] = entry["dataset"]
    return DataCatalog.from_config(config)


def run(data: Path, params: dict) -> DataCatalog:
    catalog = project_catalog(data)
    catalog["params:heuristics"] = params
    catalog["params:evaluate"] = {"alignment": {"epochs": 5, "batch_size": 8}, "seed": 0}  # a quick fit
    SequentialRunner().run(create_pipeline(), catalog)
    return catalog


@pytest.fixture
def params() -> dict:
    config = base_params("heuristics")
    config["short_side"] = 64  # native size: keeps the test fast
    config["scorers"] = ["clarity", "frequency", "edge_density", "nsfw"]  # nsfw is off by default; test it here
    return config


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, tuple[str, ...]]]:
    seen = []
    real = heuristic_nodes.score_table_shard

    def spy(table, scorers, batch_size, shard="<in memory>"):
        seen.append((shard, tuple(scorer.name for scorer in scorers)))
        return real(table, scorers, batch_size, shard)

    monkeypatch.setattr(heuristic_nodes, "score_table_shard", spy)
    return seen


def test_scores_ranks_globally_resumes_and_rescores_on_change(tmp_path, params, calls):
    data = tmp_path / "data"
    shards = {"shard-0": sample_shard("shard-0", 7, seed=0, broken=3), "shard-1": sample_shard("shard-1", 5, seed=1)}
    write_samples(data / "03_primary/samples", shards)
    params["batch_size"] = 4  # several batches per shard

    catalog = run(data, params)
    assert sorted(calls) == [("shard-0", ("clarity", "frequency", "edge_density", "nsfw")),
                             ("shard-1", ("clarity", "frequency", "edge_density", "nsfw"))]
    raw = pd.concat([pd.read_parquet(data / f"07_model_output/heuristic_raw_scores/{s}.parquet") for s in shards])
    assert raw["decode_error"].notna().tolist() == [i == 3 for i in range(7)] + [False] * 5

    for name, higher_is_better in [("clarity", True), ("frequency", True), ("edge_density", True), ("nsfw", False)]:
        table = catalog.load(f"{name}_scores")  # the "{scorer}_scores" factory, as select / compare read it
        assert pa.Schema.from_pandas(table, preserve_index=False).remove_metadata().names == SCORE_SCHEMA.names
        assert len(table) == 12 and sorted(table["rank"]) == list(range(12))  # one ranking over both shards
        expected = build_score_table(raw["uid"], raw[name], name, table["scorer_version"].iloc[0], higher_is_better)
        pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False)
        assert table.set_index("uid").loc["shard-0-003", "rank"] == 11  # undecodable image: NaN, last, kept
    assert (data / "08_reporting/heuristics/histograms/nsfw.png").stat().st_size > 0
    spearman = pd.read_csv(data / "08_reporting/heuristics/spearman.csv")
    assert spearman["scorer"].tolist() == ["clarity", "frequency", "edge_density", "nsfw"]

    # Rerun unchanged: nothing scored, partitions untouched; a rater table now joins the correlation.
    raw_files = sorted((data / "07_model_output/heuristic_raw_scores").glob("*.parquet"))
    stamps = [path.stat().st_mtime_ns for path in raw_files]
    rater = build_score_table(raw["uid"], np.arange(12.0), "rater", "r-1", True)
    rater.to_parquet(data / "07_model_output/rater_scores.parquet", index=False)
    # So does a table another pipeline wrote to the scores folder (the diffusion_quality pipeline's).
    params["correlation"]["include"] = ["rater", "diffusion_quality"]
    quality = build_score_table(raw["uid"], -np.arange(12.0), "diffusion_quality", "dq-1", True)
    quality.to_parquet(data / "07_model_output/scores/diffusion_quality.parquet", index=False)
    calls.clear()
    run(data, params)
    assert calls == []
    assert [path.stat().st_mtime_ns for path in raw_files] == stamps
    spearman = pd.read_csv(data / "08_reporting/heuristics/spearman.csv").set_index("scorer")
    assert {"rater", "diffusion_quality"} <= set(spearman.index)
    assert spearman.loc["rater", "diffusion_quality"] == pytest.approx(-1.0)  # reversed orders of the same uids

    # A changed setting rescored only the scorer it belongs to; a re-ingested shard is rescored whole.
    params["scorer_params"]["frequency"]["cutoff"] = 0.3
    write_samples(data / "03_primary/samples", {"shard-1": sample_shard("shard-1", 4, seed=2)})
    calls.clear()
    catalog = run(data, params)
    assert sorted(calls) == [("shard-0", ("frequency",)), ("shard-1", ("clarity", "frequency", "edge_density", "nsfw"))]
    kept = pd.read_parquet(data / "07_model_output/heuristic_raw_scores/shard-0.parquet")
    np.testing.assert_array_equal(kept["clarity"], raw["clarity"].iloc[:7])
    frequency = catalog.load("frequency_scores")
    assert len(frequency) == 11 and frequency["scorer_version"].nunique() == 1
    assert frequency["scorer_version"].iloc[0] != expected_version(raw, "frequency")

    # Same uids, other images (a corpus rebuilt under the same names): rescored whole, not served stale.
    before = pd.read_parquet(data / "07_model_output/heuristic_raw_scores/shard-1.parquet")
    write_samples(data / "03_primary/samples", {"shard-1": sample_shard("shard-1", 4, seed=3)})
    calls.clear()
    run(data, params)
    assert calls == [("shard-1", ("clarity", "frequency", "edge_density", "nsfw"))]
    after = pd.read_parquet(data / "07_model_output/heuristic_raw_scores/shard-1.parquet")
    assert after["uid"].tolist() == before["uid"].tolist() and not np.allclose(after["clarity"], before["clarity"])


def expected_version(raw: pd.DataFrame, name: str) -> str:
    return raw[f"{name}_version"].iloc[0]


def test_missing_columns_and_empty_config_fail_clearly(params):
    with pytest.raises(ValueError, match="lacks columns \\['image'\\]"):
        heuristic_nodes.score_table_shard(pd.DataFrame({"uid": ["a"]}), heuristic_nodes.build_scorers(
            {**params, "scorers": ["clarity"]}), 4, "shard-x")
    with pytest.raises(ValueError, match="heuristics.scorers is empty"):
        heuristic_nodes.build_scorers({**params, "scorers": []})


def test_alignment_scorer_branch_scores_features_and_switches_off(tmp_path, params, calls):
    from alchemist_kedro.models.alignment import alignment_from_artifact, alignment_scores
    from alchemist_kedro.scorers import get_scorer

    data = tmp_path / "data"
    shards = {"shard-0": sample_shard("shard-0", 7, seed=0), "shard-1": sample_shard("shard-1", 5, seed=1)}
    write_samples(data / "03_primary/samples", shards)
    params["scorers"] = ["clarity", "alignment_minilm_onsfw"]

    catalog = run(data, params)
    assert sorted(calls) == [("shard-0", ("clarity",)), ("shard-1", ("clarity",))]  # no pixels for alignment
    artifact = catalog.load("alignment_model")  # fitted by this pipeline, at evaluate's catalog path
    assert (data / "06_models/alignment.safetensors").is_file()
    table = catalog.load("alignment_minilm_onsfw_scores")  # the "{scorer}_scores" factory, as select reads it
    assert pa.Schema.from_pandas(table, preserve_index=False).remove_metadata().names == SCORE_SCHEMA.names
    features = pd.concat([shard_features(shards[s]) for s in sorted(shards)], ignore_index=True)
    raw = alignment_scores(alignment_from_artifact(artifact), np.stack(features["image_emb"]),
                           np.stack(features["text_emb"]))
    version = get_scorer("alignment_minilm_onsfw", artifact=artifact).version
    expected = build_score_table(features["uid"], raw, "alignment_minilm_onsfw", version, True)
    pd.testing.assert_frame_equal(table.reset_index(drop=True), expected, check_dtype=False, atol=1e-6)
    assert (data / "08_reporting/heuristics/histograms/alignment_minilm_onsfw.png").stat().st_size > 0
    spearman = pd.read_csv(data / "08_reporting/heuristics/spearman.csv")
    assert spearman["scorer"].tolist() == ["clarity", "alignment_minilm_onsfw"]

    # Switched off: the default-style run still works, and the old table is left exactly as it was.
    path = data / "07_model_output/scores/alignment_minilm_onsfw.parquet"
    stamp = path.stat().st_mtime_ns
    params["scorers"] = ["clarity"]
    run(data, params)
    assert path.stat().st_mtime_ns == stamp
    assert pd.read_csv(data / "08_reporting/heuristics/spearman.csv")["scorer"].tolist() == ["clarity"]

    # Feature scorers alone would leave the image branch with nothing to write: refused with the reason.
    with pytest.raises(ValueError, match="only feature scorers"):
        heuristic_nodes.score_shards({}, {}, {}, {**params, "scorers": ["alignment_minilm_onsfw"]})
    with pytest.raises(ValueError, match="rater is scored by the select pipeline"):
        heuristic_nodes.score_feature_scorers({}, artifact, {**params, "scorers": ["clarity", "rater"]})


def test_heuristics_and_evaluate_share_the_one_alignment_fitting_node():
    from kedro.framework.project import configure_project

    from alchemist_kedro.pipeline_registry import register_pipelines
    from alchemist_kedro.pipelines.evaluate import create_pipeline as evaluate_pipeline

    configure_project("alchemist_kedro")

    combined = create_pipeline() + evaluate_pipeline()  # would raise if two different nodes wrote alignment_model
    assert [node.name for node in combined.nodes if "alignment_model" in node.outputs] == ["fit_alignment_model"]
    default = register_pipelines()["__default__"]  # heuristics without evaluate: the model is fitted there
    assert [node.name for node in default.nodes if "alignment_model" in node.outputs] == ["fit_alignment_model"]
