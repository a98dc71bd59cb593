"""The ingest nodes through real kedro-datasets PartitionedDatasets: every quarantine reason, the
ledger's counts, and the sample table's exact schema."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from kedro_datasets.partitions import PartitionedDataset

from alchemist_kedro.datasets.image_text_sources import ImageTextSources
from alchemist_kedro.pipelines.ingest.nodes import (
    INDEX_COLUMNS,
    build_ledger,
    build_sample_table,
    normalise_pairs,
)
from alchemist_kedro.schemas import QUARANTINE_REASONS, QUARANTINE_SCHEMA, SAMPLE_SCHEMA
from tests.ingest.helpers import image_bytes, wds_sample, write_tar

PARAMS = {"resolution": 64, "min_side": 16, "max_image_pixels": 200_000}
EXPECTED_REASONS = {
    "b_truncated": "truncated",
    "b_random": "decode_error",
    "b_latin1": "non_utf8_caption",
    "b_blank": "empty_caption",
    "a_ok": "duplicate_uid",  # the copy in shard 00001; the first, in shard 00000, is kept
    "b_tiny": "too_small",
    "b_huge": "too_large",
    "b_noimage": "missing_image",
}


def _partitioned(path, **dataset):
    return PartitionedDataset(path=str(path), dataset={"type": "pandas.ParquetDataset", **dataset},
                              filename_suffix=".parquet", overwrite=True)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    jpeg = image_bytes((120, 90), fmt="JPEG", quality=95)
    write_tar(root / "pool" / "00000.tar", {
        **wds_sample("a_ok", "a clean red image", jpeg, ext="jpg", defect="blur"),
        **wds_sample("a_ok2", "another clean one", image_bytes((40, 30), colour=(0, 90, 0))),
    })
    write_tar(root / "pool" / "00001.tar", {
        **wds_sample("a_ok", "same uid again", image_bytes()),
        **wds_sample("b_truncated", "cut short", jpeg[: len(jpeg) // 2], ext="jpg"),
        **wds_sample("b_random", "noise bytes", np.random.default_rng(1).bytes(3000)),
        **wds_sample("b_latin1", "caf\xe9".encode("latin-1"), image_bytes()),
        **wds_sample("b_blank", " \n\t ", image_bytes()),
        **wds_sample("b_tiny", "eight pixels", image_bytes((8, 8))),
        **wds_sample("b_huge", "too many pixels", image_bytes((600, 400))),
        **wds_sample("b_noimage", "caption only", None),
    })
    write_tar(root / "val" / "00000.tar", wds_sample("v_ok", "a validation image", image_bytes()))
    sources = ImageTextSources(sources=[
        {"name": "web_val", "format": "webdataset", "path": str(root / "val"), "split": "val"},
        {"name": "web_pool", "format": "webdataset", "path": str(root / "pool"), "split": "pool"},
    ])
    ingested_full = _partitioned(root / "ingested", save_args={"index": False})
    ingested_full.save(normalise_pairs(sources.load(), PARAMS))
    index = _partitioned(root / "ingested", load_args={"columns": list(INDEX_COLUMNS)})
    quarantine, metrics, report = build_ledger(sources.load(), index.load())
    samples = _partitioned(root / "samples", save_args={"index": False})
    samples.save(build_sample_table(ingested_full.load()))
    return root, quarantine, metrics, report


def test_every_reason_lands_in_quarantine(ingested):
    _, quarantine, _, _ = ingested
    assert dict(zip(quarantine["uid"], quarantine["reason"], strict=True)) == EXPECTED_REASONS
    duplicate = quarantine[quarantine["reason"] == "duplicate_uid"].iloc[0]
    assert duplicate["shard"] == "web_pool__00001" and duplicate["location"].endswith("00001.tar#a_ok.png")
    assert quarantine["detail"].str.len().min() > 0
    assert list(quarantine.columns) == QUARANTINE_SCHEMA.names


def test_ledger_counts_every_reason_including_zeros(ingested):
    _, _, metrics, report = ingested
    assert metrics["rows_in"]["value"] == 11  # 2 + 8 pool rows, 1 val row
    assert metrics["samples"]["value"] == 3
    assert metrics["quarantined"]["value"] == len(EXPECTED_REASONS)
    assert {k for k in metrics if k.startswith("quarantined.")} == {
        f"quarantined.{reason}" for reason in QUARANTINE_REASONS
    }
    assert metrics["quarantined.unsupported_mode"]["value"] == 0
    assert metrics["quarantined.truncated"]["value"] == 1
    assert report["by_source"]["web_pool"]["rows_in"] == 10
    assert report["by_source"]["web_val"] == {
        "split": "val", "rows_in": 1, "samples": 1, "quarantined": 0,
        "by_reason": dict.fromkeys(QUARANTINE_REASONS, 0),
    }


def test_sample_table_has_exact_schema_and_normalised_images(ingested):
    root, _, _, _ = ingested
    files = sorted((root / "samples").glob("*.parquet"))
    assert [f.stem for f in files] == ["web_pool__00000", "web_pool__00001", "web_val__00000"]
    tables = [pq.read_table(f) for f in files]
    for table in tables:
        assert table.schema.remove_metadata() == SAMPLE_SCHEMA
    assert [t.num_rows for t in tables] == [2, 0, 1]
    first = tables[0].to_pylist()[0]
    assert (first["uid"], first["caption"], first["width"], first["height"], first["defect"]) == (
        "a_ok", "a clean red image", 120, 90, "blur")
    assert first["image"].startswith(b"\x89PNG") and first["split"] == "pool"


def test_ledger_refuses_when_rows_go_missing(ingested, tmp_path):
    root, _, _, _ = ingested
    sources = ImageTextSources(sources=[
        {"name": "web_pool", "format": "webdataset", "path": str(root / "pool"), "split": "pool"},
        {"name": "web_val", "format": "webdataset", "path": str(root / "val"), "split": "val"},
    ]).load()
    index = _partitioned(root / "ingested", load_args={"columns": list(INDEX_COLUMNS)}).load()
    dropped = {pid: (lambda load=load: load().iloc[1:]) for pid, load in index.items()}
    with pytest.raises(RuntimeError, match=r"rows in != samples \+ quarantined for web_pool__00000: 2 rows in, 1"):
        build_ledger(sources, dropped)
    with pytest.raises(RuntimeError, match="missing in output"):
        build_ledger(sources, {pid: load for pid, load in index.items() if pid != "web_val__00000"})


def test_duplicates_do_not_depend_on_call_order(ingested):
    root, _, _, _ = ingested
    sources = ImageTextSources(sources=[
        {"name": "web_pool", "format": "webdataset", "path": str(root / "pool"), "split": "pool"},
    ]).load()
    lazy = normalise_pairs(sources, PARAMS)
    later_first = lazy["web_pool__00001"]()  # before 00000: 00000's uids are read first anyway
    assert later_first.set_index("uid").loc["a_ok", "quarantine_reason"] == "duplicate_uid"
    assert lazy["web_pool__00000"]()["quarantine_reason"].isna().all()


def _two_runs_of_img2dataset(root, prefix=None):
    # Two img2dataset outputs: both number their keys from 000000000.
    for run, colour in (("run1", (200, 0, 0)), ("run2", (0, 0, 200))):
        write_tar(root / run / "00000.tar", {
            k: v for i in range(4) for k, v in wds_sample(f"{i:09d}", f"{run} image {i}", image_bytes(colour=colour)).items()
        })
    return ImageTextSources(sources=[
        {"name": "run1", "format": "webdataset", "path": str(root / "run1"), "split": "pool"},
        {"name": "run2", "format": "webdataset", "path": str(root / "run2"), "split": "pool",
         **({"uid_prefix": prefix} if prefix else {})},
    ]).load()


def test_a_source_mostly_repeating_another_sources_uids_stops_with_both_names(tmp_path):
    lazy = normalise_pairs(_two_runs_of_img2dataset(tmp_path), PARAMS)
    assert lazy["run1__00000"]()["quarantine_reason"].isna().all()
    with pytest.raises(ValueError, match=r"4 of the 4 rows .* source 'run2' repeat uids of source 'run1'.*uid_prefix"):
        lazy["run2__00000"]()


def test_uid_prefix_lets_both_sources_in(tmp_path):
    sources = _two_runs_of_img2dataset(tmp_path, prefix="run2/")
    ingested = _partitioned(tmp_path / "ingested", save_args={"index": False})
    ingested.save(normalise_pairs(sources, PARAMS))
    index = _partitioned(tmp_path / "ingested", load_args={"columns": list(INDEX_COLUMNS)})
    quarantine, metrics, _ = build_ledger(sources, index.load())
    assert len(quarantine) == 0 and metrics["samples"]["value"] == 8 == metrics["rows_in"]["value"]
    run2 = pq.read_table(tmp_path / "ingested" / "run2__00000.parquet").column("uid").to_pylist()
    assert run2 == [f"run2/{i:09d}" for i in range(4)]
