from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from alchemist_kedro.corpus import openclipart
from alchemist_kedro.corpus.builder import CorpusSettings
from alchemist_kedro.corpus.openclipart import build_corpus, caption_for, candidate_items

from .conftest import draw_fake_emoji
from .test_emoji import read_all

FOLDERS = ("animals/birds", "food/fruit", "shapes/stars", "signs_and_symbols/flags/europe", "computer/icons/flat-theme/action")


def big_drawing(index: int) -> bytes:
    """A larger-than-64 px, non-square drawing (as openclipart's are), palette mode for some."""
    rng = np.random.default_rng(1000 + index)
    width, height = int(rng.integers(120, 400)), int(rng.integers(120, 400))
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        box = sorted(rng.integers(0, width, 2).tolist()) , sorted(rng.integers(0, height, 2).tolist())
        colour = tuple(int(v) for v in rng.integers(0, 256, 3)) + (255,)
        draw.rectangle((box[0][0], box[1][0], box[0][1] + 2, box[1][1] + 2), fill=colour, outline=(0, 0, 0, 255))
    if index % 3 == 0:
        image = image.convert("RGB").convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openclipart") / "png"
    for index in range(60):
        folder = root / FOLDERS[index % len(FOLDERS)]
        folder.mkdir(parents=True, exist_ok=True)
        data = big_drawing(index) if index % 2 else draw_fake_emoji(index)
        (folder / f"thing_{index}_architetto_fra_01.png").write_bytes(data)
    (root / "animals/birds/broken_01.png").write_bytes(b"not a png")
    (root / "animals/birds/copy_of_thing.png").write_bytes((root / FOLDERS[0] / "thing_0_architetto_fra_01.png").read_bytes())
    blank = io.BytesIO()
    Image.new("RGBA", (200, 200), (255, 255, 255, 0)).save(blank, format="PNG")
    (root / "food/fruit/invisible.png").write_bytes(blank.getvalue())
    return root


@pytest.fixture(scope="module")
def corpus(fake_root, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("openclipart_out")
    manifest = build_corpus(fake_root, out_dir, CorpusSettings(shard_size=16), max_per_folder=None)
    return out_dir / "wds", manifest, read_all(out_dir / "wds")


def test_captions_are_words_from_the_name_and_folder_without_author_or_version():
    assert caption_for("animals/armadillo_architetto_fra_01") == "a clip art drawing of armadillo, animals"
    assert caption_for("food/fruit/candied_apples_ganson") == "a clip art drawing of candied apples, food fruit"
    assert caption_for("signs_and_symbols/map_symbols/aiga_mail1") == "a clip art drawing of mail, signs symbols map"
    assert caption_for("unsorted/orme_sulla_neve_architet_01") == "a clip art drawing of orme sulla neve"
    assert caption_for("people/smilies/smiley005") == "a clip art drawing of smiley, people smilies"
    assert caption_for("computer/icons/70a002") == "a clip art drawing of computer"


def test_corpus_has_the_emoji_layout_item_splits_and_skips_bad_files(corpus, fake_root):
    wds_dir, manifest, samples = corpus
    assert manifest["skipped"] == {"undecodable": 1, "pixel_copy": 1, "blank": 1}
    assert sum(manifest["items"].values()) == 60
    items = {split: {s["meta"]["item_id"] for s in rows} for split, rows in samples.items()}
    assert not items["pool"] & items["val"] and not items["pool"] & items["test"] and items["val"] | items["test"]
    assert all(s["meta"]["defect"] is None for split in ("val", "test") for s in samples[split])
    for split_samples in samples.values():
        for sample in split_samples:
            assert (sample["meta"]["width"], sample["meta"]["height"]) == (64, 64)
            assert Image.open(io.BytesIO(sample["image"])).size == (64, 64)
    clean = [s for s in samples["pool"] if s["meta"]["defect"] is None]
    assert len(clean) == manifest["pool_clean"] == len(items["pool"])
    tally = Counter(s["meta"]["defect"] for s in samples["pool"] if s["meta"]["defect"])
    assert sum(tally.values()) == round(0.5 * len(clean)) == manifest["defect_rows"]
    groups = {s["meta"]["duplicate_group"] for s in samples["pool"] if s["meta"]["duplicate_group"]}
    assert len(groups) == manifest["duplicate_groups"] > 0
    # Flags (the folder) are in the visually busy slice.
    flags = {s["meta"]["item_id"] for s in clean if "/flags/" in s["meta"]["item_id"]}
    assert flags and flags <= {s["meta"]["item_id"] for s in clean if s["meta"]["visually_busy"]}
    assert json.loads((wds_dir / "manifest.json").read_text())["counts"] == manifest["counts"]


def test_caps_are_stable_and_a_second_build_is_a_no_op(fake_root, tmp_path):
    per_folder = candidate_items(fake_root, max_per_folder=3)
    assert Counter(item.rsplit("/", 1)[0] for item in per_folder).most_common(1)[0][1] == 3
    first = build_corpus(fake_root, tmp_path, CorpusSettings(), max_items=20, max_per_folder=None)
    assert sum(first["items"].values()) == 20
    shard = tmp_path / "wds" / "pool" / "00000.tar"
    before = shard.read_bytes()
    (tmp_path / "wds" / "pool" / "sentinel").write_text("left alone by a no-op")
    assert build_corpus(fake_root, tmp_path, CorpusSettings(), max_items=20, max_per_folder=None) == first
    assert (tmp_path / "wds" / "pool" / "sentinel").exists()
    # A bigger subset keeps the smaller one's items (salted-hash order), so growing it does not reshuffle items.
    bigger = build_corpus(fake_root, tmp_path / "big", CorpusSettings(), max_items=30, max_per_folder=None)
    small_items = {s["meta"]["item_id"] for rows in read_all(tmp_path / "wds").values() for s in rows}
    big_items = {s["meta"]["item_id"] for rows in read_all(tmp_path / "big" / "wds").values() for s in rows}
    assert small_items < big_items and sum(bigger["items"].values()) == 30
    build_corpus(fake_root, tmp_path / "again", CorpusSettings(), max_items=20, max_per_folder=None)
    assert (tmp_path / "again" / "wds" / "pool" / "00000.tar").read_bytes() == before


def test_missing_package_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install openclipart-png"):
        build_corpus(tmp_path / "absent", tmp_path / "out")


def test_cli_shape_matches_the_emoji_builder(fake_root, tmp_path):
    manifest = openclipart.main(["--out", str(tmp_path), "--root", str(fake_root), "--max-items", "12",
                                 "--defect-weight", "noise=0", "--defect-share", "0.25"])
    assert sum(manifest["items"].values()) == 12 and manifest["defects"]["noise"] == 0
    assert (tmp_path / "wds" / "manifest.json").is_file()
