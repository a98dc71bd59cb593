"""select pipeline nodes on a small real sample table (3 parquet shards of PNGs), score table and quarantine."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from alchemist_kedro.pipelines.select import nodes
from alchemist_kedro.schemas import QUARANTINE_SCHEMA, SAMPLE_SCHEMA
from alchemist_kedro.datasets.selection import NpyDataset, ScoreTableDataset, TarShardsDataset

PARAMS = {
    "scorer": "rater",
    "strategy": "shift_gsample",
    "ratio": 0.5,
    "count": None,
    "seed": 0,
    "allow_fewer": False,
    "strategies": {"shift_gsample": {"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}, "topk": {}},
    "write_shards": True,
    "histogram_bins": 20,
    "contact_sheet": {"bands": [[0.0, 0.05], [0.45, 0.55], [0.95, 1.0]], "per_band": 4, "caption_chars": 40},
}


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    partitions = {}
    uid = 0
    for shard in range(3):
        rows = []
        for i in range(40):
            split = "val" if shard == 2 and i < 10 else "pool"
            rows.append({"uid": f"{uid:032x}", "caption": f"caption {uid}", "image": png(uid), "width": 16,
                         "height": 16, "sha256": "0" * 64, "source": "toy", "split": split,
                         "location": f"shard{shard}.tar/{i}", "shard": f"{shard:05d}",
                         "defect": "blur" if uid % 4 == 0 else None, "duplicate_group": None})
            uid += 1
        path = root / f"{shard:05d}.parquet"
        pd.DataFrame(rows).to_parquet(path, schema=SAMPLE_SCHEMA, index=False)
        partitions[f"{shard:05d}"] = path

    def loaders(columns):
        return {k: (lambda p=p: pd.read_parquet(p, columns=columns)) for k, p in partitions.items()}

    index = nodes.build_sample_index(loaders(["uid", "source", "location", "split", "defect"]))
    pool = index[index["split"] == "pool"]
    scores = pd.DataFrame({"uid": pool["uid"], "score": np.random.default_rng(1).standard_normal(len(pool))})
    scores.loc[scores.index[:6], "score"] = 0.25  # ties, broken by uid
    quarantine = pd.DataFrame(
        {"uid": ["bad1", f"{0:032x}"], "source": ["toy", "toy"], "location": ["shard0.tar/x", "shard0.tar/y"],
         "shard": ["00000", "00000"], "reason": ["decode_error", "duplicate_uid"], "detail": ["", ""]}
    ).astype({c: "string" for c in QUARANTINE_SCHEMA.names})
    return {"index": index, "scores": scores, "quarantine": quarantine,
            "images": loaders(["uid", "caption", "image", "width", "height"])}


@pytest.fixture(scope="module")
def manifest(corpus):
    return nodes.select_from_scores(corpus["scores"], PARAMS)


def test_manifest_has_k_selected_and_contract_columns(manifest, corpus):
    n = len(corpus["scores"])
    assert list(manifest.columns[:7]) == ["uid", "score", "percentile", "selected", "strategy", "params", "seed"]
    assert len(manifest) == n and manifest["selected"].sum() == round(0.5 * n)
    assert (manifest.loc[manifest["selected"], "percentile"] >= 0.2).all()
    assert manifest["params"].iloc[0] == '{"drop_top": 0.2, "mu": 0.6, "sigma": 0.2}'


def test_params_switch_strategy_and_ratio(corpus):
    switched = nodes.select_from_scores(corpus["scores"], {**PARAMS, "strategy": "topk", "ratio": 0.3})
    n = len(corpus["scores"])
    k = int(np.floor(0.3 * n + 0.5))
    assert switched["selected"].sum() == k
    assert set(switched.loc[switched["selected"], "uid"]) == set(switched.nsmallest(k, "percentile")["uid"])


def test_ledger_has_every_input_row_once_with_status(manifest, corpus):
    ledger = nodes.build_ledger(manifest, corpus["index"], corpus["quarantine"])
    assert len(ledger) == len(corpus["index"]) + len(corpus["quarantine"])
    samples = ledger[ledger["status"] != "quarantined"]
    assert samples["uid"].is_unique and set(samples["uid"]) == set(corpus["index"]["uid"])
    assert set(samples.loc[samples["status"] == "selected", "uid"]) == set(manifest.loc[manifest["selected"], "uid"])
    unscored = samples[~samples["uid"].isin(manifest["uid"])]
    assert len(unscored) == 10 and (unscored["status"] == "not_selected").all()
    assert unscored["reason"].str.contains("val").all()
    quarantined = ledger[ledger["status"] == "quarantined"]
    assert quarantined["reason"].tolist() == ["decode_error", "duplicate_uid"]


def test_ledger_refuses_stale_scores(manifest, corpus):
    stale = pd.concat([manifest, manifest.head(1).assign(uid="not-a-sample")], ignore_index=True)
    with pytest.raises(ValueError, match="stale"):
        nodes.build_ledger(stale, corpus["index"], corpus["quarantine"])


def test_selected_uids_sorted_fixed_width_and_equal_to_manifest(manifest, tmp_path):
    uids = nodes.selected_uid_list(manifest)
    dataset = NpyDataset(str(tmp_path / "selected_uids.npy"))
    dataset.save(uids)
    loaded = np.load(tmp_path / "selected_uids.npy", allow_pickle=False)
    assert loaded.dtype == np.dtype("<U32")
    assert (loaded[:-1] < loaded[1:]).all()
    assert set(loaded) == set(manifest.loc[manifest["selected"], "uid"])


def test_metrics_report_sizes_and_defect_shares(manifest, corpus):
    metrics = nodes.selection_metrics(manifest, corpus["index"])
    assert metrics["select.k"]["value"] == manifest["selected"].sum()
    assert metrics["select.ratio"]["value"] == pytest.approx(manifest["selected"].mean())
    picked = manifest.loc[manifest["selected"], "percentile"]
    assert metrics["select.picked_percentile_mean"]["value"] == pytest.approx(picked.mean())
    blur_pool = manifest["uid"].map(lambda u: int(u, 16) % 4 == 0).mean()
    assert metrics["select.defect_share.pool.blur"]["value"] == pytest.approx(blur_pool)
    assert "select.defect_share.selected.blur" in metrics


def test_plots_are_non_empty_pngs(manifest, corpus, tmp_path):
    for name, fig in {
        "hist": nodes.plot_score_histogram(manifest, PARAMS),
        "sheet": nodes.plot_contact_sheets(manifest, corpus["index"], corpus["images"], PARAMS),
    }.items():
        path = tmp_path / f"{name}.png"
        fig.savefig(path)
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        assert np.asarray(Image.open(path)).std() > 0  # not a blank canvas


def test_contact_sheet_loads_only_partitions_with_shown_samples(manifest, corpus):
    loaded = []
    spy = {k: (lambda k=k, f=f: loaded.append(k) or f()) for k, f in corpus["images"].items()}
    nodes.plot_contact_sheets(manifest, corpus["index"], spy, {**PARAMS, "contact_sheet": {"bands": [[0, 0.01]],
                                                                                            "per_band": 1,
                                                                                            "caption_chars": 40}})
    assert len(loaded) == 1


def test_shards_hold_the_selected_subset_in_img2dataset_layout(manifest, corpus, tmp_path):
    shards = nodes.selected_shards(manifest, corpus["index"], corpus["images"], PARAMS)
    TarShardsDataset(str(tmp_path / "shards")).save(shards)
    seen = set()
    for path in sorted((tmp_path / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
            keys = {n.split(".")[0] for n in names}
            assert {f"{k}.{s}" for k in keys for s in ("png", "txt", "json")} == set(names)
            for n in names:
                if n.endswith(".json"):
                    seen.add(__import__("json").loads(tar.extractfile(n).read())["uid"])
    assert seen == set(manifest.loc[manifest["selected"], "uid"])
    assert nodes.selected_shards(manifest, corpus["index"], corpus["images"], {**PARAMS, "write_shards": False}) == {}


def test_score_table_dataset_picks_scorer_file(tmp_path):
    (tmp_path / "scores").mkdir()
    pd.DataFrame({"uid": ["a"], "score": [1.0]}).to_parquet(tmp_path / "scores" / "clarity.parquet")
    pd.DataFrame({"uid": ["b"], "score": [2.0]}).to_parquet(tmp_path / "rater.parquet")
    kwargs = {"rater_filepath": str(tmp_path / "rater.parquet"), "scores_dir": str(tmp_path / "scores")}
    assert ScoreTableDataset("clarity", **kwargs).load()["uid"].tolist() == ["a"]
    assert ScoreTableDataset("rater", **kwargs).load()["uid"].tolist() == ["b"]
