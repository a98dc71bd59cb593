"""The features node on tiny real partitions, saved and read back through the catalog entries of
conf/base/catalog_features.yml (paths moved to a tmp dir), with the real default encoders."""
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from kedro.io import DataCatalog

from alchemist_kedro.pipelines.features.nodes import compute_features
from alchemist_kedro.schemas import FEATURE_SCHEMA
from tests.encoders.images import drawn_images, png_bytes
from tests.conf_values import base_params

pytest.importorskip("onnx", reason="open_nsfw needs the onnx package (onnx==1.23.2)")
torch.set_num_threads(2)

ROOT = Path(__file__).resolve().parents[3]
PARAMS = base_params("features")
CAPTIONS = ["a red circle", "a blue square", "a colour gradient", "green stripes"]


def samples_shard(shard: str, indices: list[int], image_of=None) -> pd.DataFrame:
    """uids `<shard>-<i>`; image_of(i) picks which drawn image row i gets (default: its own)."""
    images = drawn_images()
    pngs = [png_bytes(images[image_of(i) if image_of else i]) for i in indices]
    return pd.DataFrame(
        {
            "uid": [f"{shard}-{i}" for i in indices],
            "caption": [CAPTIONS[i] for i in indices],
            "image": pngs,
            "sha256": [hashlib.sha256(png).hexdigest() for png in pngs],
            "width": 64, "height": 64, "source": "test", "split": "pool",
            "location": "mem", "shard": shard, "defect": None,
        }
    )


@pytest.fixture
def catalog(tmp_path):
    config = yaml.safe_load((ROOT / "conf/base/catalog_features.yml").read_text())
    entries = {name: config[name] for name in ("features", "features_cache")}
    for entry in entries.values():
        entry["path"] = str(tmp_path / "features")
    entries["samples"] = {
        "type": "partitions.PartitionedDataset", "path": str(tmp_path / "samples"), "filename_suffix": ".parquet",
        "dataset": {"type": "pandas.ParquetDataset"},
    }
    catalog = DataCatalog.from_config(entries)
    catalog.save("samples", {"shard-a": samples_shard("a", [0, 1, 2]), "shard-b": samples_shard("b", [3, 1])})
    return catalog


def run(catalog, params):
    features, metrics, report = compute_features(catalog.load("samples"), catalog.load("features_cache"), params)
    catalog.save("features", features)
    return features, metrics, report


def test_features_schema_rows_and_cache(catalog, tmp_path):
    features, metrics, report = run(catalog, PARAMS)
    assert sorted(features) == ["shard-a", "shard-b"] and metrics["features.shards_computed"]["value"] == 2
    assert metrics["features.rows_computed"]["value"] == 5

    for shard, uids in (("shard-a", ["a-0", "a-1", "a-2"]), ("shard-b", ["b-3", "b-1"])):
        stored = pq.read_table(tmp_path / "features" / f"{shard}.parquet")
        assert stored.schema.remove_metadata().equals(FEATURE_SCHEMA)
        table = stored.to_pandas()
        assert table["uid"].tolist() == uids
        assert {len(v) for v in table["image_emb"]} == {1024} and {len(v) for v in table["text_emb"]} == {384}
        assert {len(v) for v in table["text_tokens"]} == {16 * 384} and {len(v) for v in table["text_mask"]} == {16}
        assert table["fingerprint"].nunique() == 1 and table["fingerprint"].iloc[0] == report["fingerprint"]
    loaded = catalog.load("features")["shard-a"]()
    assert loaded["image_emb"].iloc[0].dtype == np.float32  # what a consumer gets back through the catalog
    # The same image (index 1) in two shards gets the same features.
    a, b = (catalog.load("features")[s]() for s in ("shard-a", "shard-b"))
    np.testing.assert_allclose(a["image_emb"].iloc[1], b["image_emb"].iloc[1], rtol=1e-5, atol=1e-5)
    assert report["fingerprint"].count("|") == 2 and report["fingerprint"].startswith("open_nsfw@")

    # Second run: nothing to compute, files untouched.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()}
    features, metrics, _ = run(catalog, PARAMS)
    assert features == {} and metrics["features.shards_reused"]["value"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "features").iterdir()} == before

    # One shard's uids change: only that shard is recomputed, the other one is kept on disk.
    catalog.save("samples", {"shard-b": samples_shard("b", [3, 1, 0])})
    features, metrics, _ = run(catalog, PARAMS)
    assert sorted(features) == ["shard-b"] and metrics["features.shards_reused"]["value"] == 1
    assert sorted(catalog.load("features")) == ["shard-a", "shard-b"]
    assert catalog.load("features")["shard-b"]()["uid"].tolist() == ["b-3", "b-1", "b-0"]

    # A setting that changes the output (max_tokens) recomputes everything, with a new fingerprint.
    params = {**PARAMS, "text_encoder": {**PARAMS["text_encoder"], "max_tokens": 8}}
    features, metrics, new_report = run(catalog, params)
    assert sorted(features) == ["shard-a", "shard-b"] and new_report["fingerprint"] != report["fingerprint"]
    assert {len(v) for v in catalog.load("features")["shard-a"]()["text_mask"]} == {8}


def test_a_rebuilt_shard_with_the_same_uids_but_other_content_is_recomputed(catalog):
    """The cache keys on (uid, sha256 + caption): a corpus rebuilt under the same uids must not reuse old features."""
    run(catalog, PARAMS)
    old = catalog.load("features")["shard-a"]()
    # shard-a again, same uids, but row a-1 now holds image 3; shard-b unchanged.
    catalog.save("samples", {"shard-a": samples_shard("a", [0, 1, 2], image_of=lambda i: 3 if i == 1 else i)})
    features, metrics, _ = run(catalog, PARAMS)
    assert sorted(features) == ["shard-a"] and metrics["features.shards_reused"]["value"] == 1
    new = catalog.load("features")["shard-a"]()
    assert new["uid"].tolist() == old["uid"].tolist()
    assert not np.allclose(new["image_emb"].iloc[1], old["image_emb"].iloc[1], atol=1e-4)  # the new image's features
    np.testing.assert_allclose(new["image_emb"].iloc[0], old["image_emb"].iloc[0], rtol=1e-5, atol=1e-5)
    # A caption edited under the same uid recomputes too.
    edited = samples_shard("a", [0, 1, 2], image_of=lambda i: 3 if i == 1 else i)
    edited.loc[0, "caption"] = "a different caption"
    catalog.save("samples", {"shard-a": edited})
    features, _, _ = run(catalog, PARAMS)
    assert sorted(features) == ["shard-a"]


def test_stale_shards_are_reported(catalog, tmp_path):
    run(catalog, PARAMS)
    (tmp_path / "samples" / "shard-b.parquet").unlink()
    features, metrics, report = run(catalog, PARAMS)
    assert features == {} and report["stale_shards"] == ["shard-b"] and metrics["features.shards_stale"]["value"] == 1


def test_bad_samples_fail_before_encoding(catalog):
    broken = samples_shard("c", [0, 1])
    broken.loc[1, "image"] = b"not a png"
    catalog.save("samples", {"shard-c": broken})
    features, _, _ = compute_features(catalog.load("samples"), {}, PARAMS)
    with pytest.raises(ValueError, match="shard 'shard-c', uid 'c-1': image bytes do not decode"):
        features["shard-c"]()
    nulls = samples_shard("d", [0, 1])
    nulls.loc[0, "caption"] = None
    with pytest.raises(ValueError, match=r"null caption for uid\(s\) \['d-0'\]"):
        compute_features({"shard-d": lambda: nulls}, {}, PARAMS)
    with pytest.raises(ValueError, match="missing column"):
        compute_features({"shard-e": lambda: nulls.drop(columns=["image"])}, {}, PARAMS)
    with pytest.raises(ValueError, match="unknown image encoder"):
        compute_features({"shard-c": lambda: broken}, {}, {**PARAMS, "image_encoder": {"name": "resnet9000"}})


def test_empty_cache_folder_loads_as_empty(tmp_path):
    from alchemist_kedro.datasets.atomic import CachePartitionedDataset

    dataset = CachePartitionedDataset(path=str(tmp_path / "none"), dataset="pandas.ParquetDataset")
    assert dataset.load() == {}
