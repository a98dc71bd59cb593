"""The four source readers on small real files, and whole-source errors that name the file."""
import json

import pytest
from kedro.io import DatasetError

from alchemist_kedro.datasets.image_text_sources import RAW_COLUMNS, ImageTextSources
from tests.ingest.helpers import image_bytes, wds_sample, write_imagefolder, write_parquet, write_tar


def _load(**source):
    partitions = ImageTextSources(sources=[source]).load()
    frames = {pid: partition() for pid, partition in partitions.items()}
    for pid, frame in frames.items():
        assert list(frame.columns) == list(RAW_COLUMNS)
        assert partitions[pid].count_rows() == len(frame)  # the ledger's independent count agrees
    return frames


def test_webdataset_reader(tmp_path):
    png, jpg = image_bytes(fmt="PNG"), image_bytes(fmt="JPEG")
    members = {
        **wds_sample("k0", "a red square", png, defect="blur"),
        **wds_sample("k1", None, jpg, ext="jpg", caption="caption from json"),
        **wds_sample("k2", "no image here", None),
    }
    # Members of one key need not be adjacent.
    members = dict(sorted(members.items(), key=lambda item: item[0].split(".")[1]))
    write_tar(tmp_path / "shards" / "00007.tar", members)
    frames = _load(name="web", format="webdataset", path=str(tmp_path / "shards"), split="pool")
    frame = frames["web__00007"].set_index("uid")
    assert list(frame.index) == ["k1", "k0", "k2"]  # order of each key's first member
    assert frame.loc["k0", "caption_bytes"] == b"a red square" and frame.loc["k0", "image_bytes"] == png
    assert frame.loc["k0", "defect"] == "blur" and frame.loc["k0", "split"] == "pool"
    assert frame.loc["k1", "caption_bytes"] == b"caption from json" and frame.loc["k1", "image_bytes"] == jpg
    assert frame.loc["k1", "location"].endswith("00007.tar#k1.jpg")
    assert frame.loc["k2", "raw_error"] == "missing_image" and frame.loc["k0", "raw_error"] is None


def test_laion_parquet_reader_chunks_row_groups(tmp_path):
    images = [image_bytes(), None, image_bytes(), image_bytes(), image_bytes()]
    write_parquet(
        tmp_path / "part-0.parquet",
        {"jpg": images, "TEXT": ["a", "b", "c", "d", "e"], "key": ["u0", "u1", "u2", "u3", "u4"]},
        row_group_size=2,
    )
    write_parquet(tmp_path / "part-1.parquet", {"jpg": [image_bytes()], "TEXT": ["f"]})
    frames = _load(name="laion", format="laion_parquet", path=str(tmp_path / "*.parquet"), split="pool",
                   rows_per_partition=2)
    assert sorted(frames) == ["laion__part-0_part00000", "laion__part-0_part00001", "laion__part-0_part00002",
                              "laion__part-1"]
    middle = frames["laion__part-0_part00001"]
    assert middle["uid"].tolist() == ["u2", "u3"] and middle["caption_bytes"].tolist() == [b"c", b"d"]
    assert middle["location"].iloc[0].endswith("part-0.parquet#row=2")
    first = frames["laion__part-0_part00000"]
    assert first["raw_error"].tolist() == [None, "missing_image"]
    assert frames["laion__part-1"]["uid"].tolist() == ["part-1:0"]  # no key/uid column


def test_datacomp_reader_joins_by_uid(tmp_path):
    write_parquet(tmp_path / "metadata" / "0.parquet",
                  {"uid": ["a1", "a2", "a3", "a1"], "text": ["first a1", "an a2", "a3 has no image", "again a1"]})
    write_tar(tmp_path / "shards" / "00000000.tar", {
        **wds_sample("000000000", None, image_bytes(), uid="a1"),
        **wds_sample("000000001", None, image_bytes(), uid="a2"),
        **wds_sample("000000002", None, image_bytes(), uid="zz"),
    })
    frames = _load(name="dc", format="datacomp", path=str(tmp_path / "metadata"),
                   shards=str(tmp_path / "shards"), split="pool")
    shard = frames["dc__00000000"].set_index("uid")
    assert shard.loc["a1", "caption_bytes"] == b"first a1" and shard.loc["a2", "caption_bytes"] == b"an a2"
    assert shard.loc["zz", "raw_error"] == "empty_caption"  # image without metadata
    rest = frames["dc__metadata_without_image"]
    assert rest["uid"].tolist() == ["a3", "a1"]
    assert rest["raw_error"].tolist() == ["missing_image", None]  # the repeated a1 is left to duplicate_uid


def test_imagefolder_reader(tmp_path):
    root = write_imagefolder(
        tmp_path / "folder",
        [{"file_name": "a.png", "text": "an a"}, {"file_name": "gone.png", "text": "missing"}],
        {"a.png": image_bytes()},
    )
    frames = _load(name="folder", format="imagefolder", path=str(root), split="val")
    frame = frames["folder__root"]
    assert frame["uid"].tolist() == ["a.png", "gone.png"]
    assert frame["caption_bytes"].tolist() == [b"an a", b"missing"]
    assert frame["raw_error"].tolist() == [None, "missing_image"]
    assert frame["location"].iloc[1].endswith("metadata.jsonl:2")


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(DatasetError, match=r"source 'web'.*no webdataset shards.*nowhere"):
        ImageTextSources(sources=[{"name": "web", "format": "webdataset", "path": str(tmp_path / "nowhere"),
                                   "split": "pool"}]).load()


def test_corrupt_tar_names_the_file(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(DatasetError, match=r"00000\.tar: unreadable tar"):
        ImageTextSources(sources=[{"name": "web", "format": "webdataset", "path": str(tmp_path),
                                   "split": "pool"}]).load()


def test_parquet_without_caption_column_names_the_file(tmp_path):
    write_parquet(tmp_path / "bad.parquet", {"jpg": [image_bytes()], "url": ["http://x"]})
    with pytest.raises(DatasetError, match=r"bad\.parquet: missing caption column.*'caption', 'TEXT'"):
        ImageTextSources(sources=[{"name": "laion", "format": "laion_parquet", "path": str(tmp_path),
                                   "split": "pool"}]).load()


def test_datacomp_metadata_without_uid_names_the_file(tmp_path):
    write_parquet(tmp_path / "meta" / "m.parquet", {"text": ["x"]})
    write_tar(tmp_path / "shards" / "0.tar", wds_sample("0", "x", image_bytes(), uid="x"))
    with pytest.raises(DatasetError, match=r"m\.parquet: missing uid column 'uid'"):
        ImageTextSources(sources=[{"name": "dc", "format": "datacomp", "path": str(tmp_path / "meta"),
                                   "shards": str(tmp_path / "shards"), "split": "pool"}]).load()


def test_imagefolder_bad_metadata_line_names_file_and_line(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    (root / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "caption": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"metadata\.jsonl:1: missing caption column 'text'"):
        ImageTextSources(sources=[{"name": "f", "format": "imagefolder", "path": str(root), "split": "val"}]).load()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"name": "x", "format": "tfrecord", "path": ".", "split": "pool"}, "unknown format 'tfrecord'"),
        ({"name": "x", "format": "webdataset", "path": ".", "split": "train"}, "split must be one of"),
        ({"name": "x", "format": "webdataset", "path": ".", "split": "pool", "colour": 1}, "unknown option"),
        ({"name": "x", "format": "datacomp", "path": ".", "split": "pool"}, "needs `shards`"),
    ],
)
def test_bad_source_config(source, message):
    with pytest.raises(DatasetError, match=message):
        ImageTextSources(sources=[source])


def test_read_only():
    dataset = ImageTextSources(sources=[{"name": "x", "format": "webdataset", "path": ".", "split": "pool"}])
    with pytest.raises(DatasetError, match="read-only"):
        dataset.save({})


def test_imagefolder_file_outside_the_source_is_quarantined_and_never_read(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "secret.png").write_bytes(image_bytes(colour=(1, 2, 3)))
    root = tmp_path / "downloads" / "folder"
    write_imagefolder(root, [
        {"file_name": "ok.png", "text": "inside"},
        {"file_name": "../../elsewhere/secret.png", "text": "dot-dot"},
        {"file_name": str(elsewhere / "secret.png"), "text": "absolute"},
        {"file_name": "link.png", "text": "symlink out"},
        {"file_name": "sub/../ok.png", "text": "dot-dot that stays inside"},
    ], {"ok.png": image_bytes()})
    (root / "link.png").symlink_to(elsewhere / "secret.png")
    frame = _load(name="f", format="imagefolder", path=str(root), split="val")["f__root"]
    assert frame["raw_error"].tolist() == [None, "outside_source", "outside_source", "outside_source", None]
    outside = frame[frame["raw_error"] == "outside_source"]
    assert outside["image_bytes"].isna().all()  # never read
    assert outside["raw_detail"].str.contains("outside the source folder").all()


def test_imagefolder_malformed_lines_are_rows_with_their_line_number(tmp_path):
    root = tmp_path / "folder"
    good = [{"file_name": f"{i}.png", "text": f"image {i}", "defect": "blur" if i == 0 else None,
             "duplicate_group": "g1" if i < 2 else None} for i in range(4)]
    write_imagefolder(root, good, {f"{i}.png": image_bytes() for i in range(4)})
    with (root / "metadata.jsonl").open("a") as handle:
        handle.write('{"file_name": "x.png", "text": \n')  # JSON error, line 5
        handle.write('{"text": "no file name"}\n')  # missing field, line 6
        handle.write('{"file_name": "3.png", "text": 42}\n')  # wrong type, line 7
    frame = _load(name="f", format="imagefolder", path=str(root), split="pool")["f__root"]
    assert len(frame) == 7  # every line is a row: the ledger still counts in == out
    bad = frame[frame["raw_error"] == "bad_metadata"]
    assert bad["location"].str.rsplit(":", n=1).str[1].tolist() == ["5", "6", "7"]
    assert bad["raw_detail"].str.startswith(("line 5: not valid JSON", "line 6: missing 'file_name'",
                                             "line 7: caption column 'text' must be a string")).all()
    assert frame["uid"].is_unique
    assert frame["defect"].tolist()[:4] == ["blur", None, None, None]
    assert frame["duplicate_group"].tolist()[:4] == ["g1", "g1", None, None]


def test_imagefolder_mostly_malformed_is_one_source_error(tmp_path):
    root = tmp_path / "folder"
    root.mkdir()
    (root / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\nnot json\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"2 of 3 lines of .*metadata\.jsonl are malformed.*metadata\.jsonl:2: "
                                           r"not valid JSON"):
        ImageTextSources(sources=[{"name": "f", "format": "imagefolder", "path": str(root), "split": "val"}]).load()


def test_duplicate_group_and_defect_come_from_each_formats_row_metadata(tmp_path):
    write_tar(tmp_path / "wds" / "0.tar", {**wds_sample("k0", "x", image_bytes(), duplicate_group="d7", defect="blur"),
                                           **wds_sample("k1", "y", image_bytes())})
    wds = _load(name="w", format="webdataset", path=str(tmp_path / "wds"), split="pool")["w__0"]
    assert wds["duplicate_group"].tolist() == ["d7", None] and wds["defect"].tolist() == ["blur", None]
    write_parquet(tmp_path / "pq" / "a.parquet", {"jpg": [image_bytes()] * 2, "caption": ["a", "b"],
                                                  "duplicate_group": ["d1", None]})
    laion = _load(name="l", format="laion_parquet", path=str(tmp_path / "pq"), split="pool")["l__a"]
    assert laion["duplicate_group"].tolist() == ["d1", None] and laion["defect"].isna().all()
    write_parquet(tmp_path / "dc" / "m.parquet", {"uid": ["u0"], "text": ["t"]})
    write_tar(tmp_path / "dcs" / "0.tar", wds_sample("0", None, image_bytes(), uid="u0", duplicate_group="d2"))
    dc = _load(name="d", format="datacomp", path=str(tmp_path / "dc"), shards=str(tmp_path / "dcs"), split="pool")
    assert dc["d__0"]["duplicate_group"].tolist() == ["d2"]


def test_uid_prefix_namespaces_every_format(tmp_path):
    write_tar(tmp_path / "wds" / "0.tar", wds_sample("000000000", "x", image_bytes()))
    wds = _load(name="w", format="webdataset", path=str(tmp_path / "wds"), split="pool", uid_prefix="run2/")
    assert wds["w__0"]["uid"].tolist() == ["run2/000000000"]
    write_parquet(tmp_path / "dc" / "m.parquet", {"uid": ["u0", "u1"], "text": ["t", "no image"]})
    write_tar(tmp_path / "dcs" / "0.tar", wds_sample("0", None, image_bytes(), uid="u0"))
    dc = _load(name="d", format="datacomp", path=str(tmp_path / "dc"), shards=str(tmp_path / "dcs"), split="pool",
               uid_prefix="dc:")
    assert dc["d__0"]["uid"].tolist() == ["dc:u0"] and dc["d__0"]["caption_bytes"].tolist() == [b"t"]  # join intact
    assert dc["d__metadata_without_image"]["uid"].tolist() == ["dc:u1"]
