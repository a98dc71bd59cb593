from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds

from alchemist_kedro.corpus import emoji
from alchemist_kedro.corpus.defects import CAPTION_KINDS, DEFECT_KINDS, DEFECT_SIDES, DUPLICATE_KINDS
from alchemist_kedro.corpus.emoji import CorpusSettings, build_corpus, caption_for, defect_counts, fetch_package

from .conftest import N_USABLE_EMOJI, SUBCATEGORIES


def read_split(wds_dir: Path, split: str) -> list[dict]:
    shards = sorted(str(path) for path in (wds_dir / split).glob("*.tar"))
    samples = []
    for sample in wds.WebDataset(shards, shardshuffle=False):
        image_extension = "jpg" if "jpg" in sample else "png"
        samples.append(
            {
                "key": sample["__key__"],
                "extension": image_extension,
                "image": sample[image_extension],
                "caption": sample["txt"].decode("utf-8"),
                "meta": json.loads(sample["json"]),
            }
        )
    return samples


def read_all(wds_dir: Path) -> dict[str, list[dict]]:
    return {split: read_split(wds_dir, split) for split in ("pool", "val", "test")}


@pytest.fixture(scope="module")
def default_corpus(fake_package, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("corpus_default")
    manifest = build_corpus(fake_package, out_dir, CorpusSettings(seed=0, shard_size=8))
    return out_dir / "wds", manifest, read_all(out_dir / "wds")


def test_layout_and_metadata_follow_img2dataset(default_corpus):
    wds_dir, manifest, samples = default_corpus
    assert (wds_dir / "manifest.json").is_file()
    for split, shard_names in manifest["shards"].items():
        assert shard_names == [f"{index:05d}.tar" for index in range(len(shard_names))]
        assert sorted(path.name for path in (wds_dir / split).glob("*.tar")) == shard_names
    all_keys = [sample["key"] for split_samples in samples.values() for sample in split_samples]
    assert len(all_keys) == len(set(all_keys))
    for split, split_samples in samples.items():
        assert len(split_samples) == manifest["counts"][split]
        for sample in split_samples:
            meta = sample["meta"]
            assert len(sample["key"]) == 9 and sample["key"].isdigit()
            assert meta["key"] == sample["key"] and meta["split"] == split
            assert meta["caption"] == sample["caption"] and meta["status"] == "success" and meta["url"] is None
            assert meta["sha256"] == hashlib.sha256(sample["image"]).hexdigest()
            assert (meta["width"], meta["height"]) == (64, 64)
            assert (sample["extension"] == "jpg") == (meta["defect"] == "jpeg_artefacts")
    for shard in wds_dir.glob("*/*.tar"):
        with tarfile.open(shard) as archive:
            assert {member.mtime for member in archive.getmembers()} == {0}
    # A pool shard holds at most shard_size rows, so the 8-row shards here prove chunking.
    assert len(manifest["shards"]["pool"]) == -(-manifest["counts"]["pool"] // 8)


def test_only_base_emoji_with_a_google_png_are_used(default_corpus, fake_package):
    _, manifest, samples = default_corpus
    assert sum(manifest["emoji"].values()) == N_USABLE_EMOJI
    clean_emoji = {s["meta"]["emoji_unified"] for split_samples in samples.values() for s in split_samples}
    entries = json.loads((fake_package / "emoji.json").read_text())
    assert clean_emoji == {entry["unified"] for entry in entries[:N_USABLE_EMOJI]}


def test_splits_are_disjoint_by_emoji_and_defects_come_from_pool_emoji(default_corpus):
    _, manifest, samples = default_corpus
    emoji_by_split = {split: {s["meta"]["emoji_unified"] for s in rows} for split, rows in samples.items()}
    assert emoji_by_split["val"] and emoji_by_split["test"]
    assert not emoji_by_split["pool"] & emoji_by_split["val"]
    assert not emoji_by_split["pool"] & emoji_by_split["test"]
    assert not emoji_by_split["val"] & emoji_by_split["test"]
    held_out_captions = {s["caption"] for split in ("val", "test") for s in samples[split]}
    assert not {s["caption"] for s in samples["pool"]} & held_out_captions
    clean_pool = [s for s in samples["pool"] if s["meta"]["defect"] is None]
    assert len(clean_pool) == len(emoji_by_split["pool"]) == manifest["pool_clean"]


def test_validation_and_test_stay_clean(default_corpus):
    _, _, samples = default_corpus
    assert all(s["meta"]["defect"] is None for split in ("val", "test") for s in samples[split])


def test_defect_counts_follow_the_default_share(default_corpus):
    _, manifest, samples = default_corpus
    tally = Counter(s["meta"]["defect"] for s in samples["pool"] if s["meta"]["defect"])
    n_clean = manifest["pool_clean"]
    assert sum(tally.values()) == round(0.5 * n_clean) == manifest["defect_rows"]
    assert dict(tally) == {kind: count for kind, count in manifest["defects"].items() if count}
    sides = Counter(DEFECT_SIDES[kind] for kind in tally.elements())
    assert manifest["defect_sides"] == {side: sides.get(side, 0) for side in ("image", "caption", "duplicate")}
    assert manifest["caption_side_share"] == round(sides["caption"] / sum(tally.values()), 4)


def test_defect_counts_follow_per_kind_weights(fake_package, tmp_path):
    weights = {kind: 0.0 for kind in DEFECT_KINDS} | {"noise": 3.0, "blur": 1.0}
    manifest = build_corpus(fake_package, tmp_path, CorpusSettings(defect_share=1.0, defect_weights=weights))
    pool = read_split(tmp_path / "wds", "pool")
    tally = Counter(s["meta"]["defect"] for s in pool if s["meta"]["defect"])
    n_clean = manifest["pool_clean"]
    assert dict(tally) == {"noise": round(0.75 * n_clean), "blur": n_clean - round(0.75 * n_clean)}
    assert len(pool) == 2 * n_clean


def test_defect_count_allocation_sums_to_the_share():
    counts = defect_counts(1516, CorpusSettings())
    assert sum(counts.values()) == round(0.5 * 1516)
    caption = sum(counts[kind] for kind in CAPTION_KINDS)
    assert abs(caption / sum(counts.values()) - 1 / 3) < 0.01
    assert max(counts.values()) - min(counts.values()) <= 4
    assert sum(defect_counts(100, CorpusSettings(defect_share=0.0)).values()) == 0


def test_duplicate_groups_join_each_copy_and_the_clean_row_it_copies(default_corpus):
    _, manifest, samples = default_corpus
    by_group: dict[str, list[dict]] = {}
    for sample in samples["pool"]:
        group = sample["meta"]["duplicate_group"]
        assert (group is not None) == (
            sample["meta"]["defect"] in DUPLICATE_KINDS or (sample["meta"]["defect"] is None and group is not None)
        )
        if group is not None:
            by_group.setdefault(group, []).append(sample)
    n_duplicates = sum(manifest["defects"][kind] for kind in DUPLICATE_KINDS)
    assert n_duplicates > 0 and len(by_group) == manifest["duplicate_groups"]
    assert sum(len(members) for members in by_group.values()) == manifest["duplicate_group_rows"]
    for group, members in by_group.items():
        clean = [m for m in members if m["meta"]["defect"] is None]
        assert len(clean) == 1 and len(members) >= 2
        assert group == f"dup-{clean[0]['meta']['emoji_unified']}"
        assert {m["meta"]["emoji_unified"] for m in members} == {clean[0]["meta"]["emoji_unified"]}
        for member in members:
            if member["meta"]["defect"] == "exact_duplicate":
                assert member["image"] == clean[0]["image"] and member["caption"] == clean[0]["caption"]
    # Other defects of a duplicated emoji (a blur of it, say) are not duplicates.
    assert all(s["meta"]["duplicate_group"] is None for split in ("val", "test") for s in samples[split])


def test_visually_busy_clean_rows_are_marked_and_counted(default_corpus):
    _, manifest, samples = default_corpus
    busy = [s for s in samples["pool"] if s["meta"]["visually_busy"]]
    assert all(s["meta"]["defect"] is None for s in busy)
    assert len(busy) == manifest["visually_busy_clean"] > 0
    # Every flag emoji is in the slice (the fake package puts one in five there), plus the busiest others.
    is_flag = lambda unified: (int(unified[2:], 16) - 0x600) % len(SUBCATEGORIES) == SUBCATEGORIES.index("country-flag")
    flags = {s["meta"]["emoji_unified"] for s in samples["pool"] if s["meta"]["defect"] is None
             and is_flag(s["meta"]["emoji_unified"])}
    assert flags <= {s["meta"]["emoji_unified"] for s in busy}
    assert len(busy) > len(flags)


def test_defect_settings_do_not_move_val_or_test(fake_package, default_corpus, tmp_path):
    _, _, samples = default_corpus
    weights = {kind: 0.0 for kind in DEFECT_KINDS} | {"keyword_spam": 1.0}
    build_corpus(fake_package, tmp_path, CorpusSettings(defect_share=0.2, defect_weights=weights, shard_size=8))
    other = read_all(tmp_path / "wds")
    for split in ("val", "test"):
        assert [(s["key"], s["image"], s["caption"]) for s in other[split]] == [
            (s["key"], s["image"], s["caption"]) for s in samples[split]
        ]


def test_defects_are_spread_over_pool_shards(default_corpus):
    _, _, samples = default_corpus
    positions = [index for index, s in enumerate(samples["pool"]) if s["meta"]["defect"]]
    # Unshuffled, all defect rows would sit after the clean ones, i.e. in the last positions.
    assert positions != list(range(len(samples["pool"]) - len(positions), len(samples["pool"])))
    assert [s["key"] for s in samples["pool"]] == sorted(s["key"] for s in samples["pool"])


def test_same_seed_gives_identical_bytes_and_another_seed_other_defects(fake_package, default_corpus, tmp_path):
    wds_dir, _, samples = default_corpus
    build_corpus(fake_package, tmp_path / "again", CorpusSettings(seed=0, shard_size=8))
    for shard in sorted(wds_dir.glob("*/*.tar")):
        assert (tmp_path / "again" / "wds" / shard.parent.name / shard.name).read_bytes() == shard.read_bytes()

    build_corpus(fake_package, tmp_path / "other", CorpusSettings(seed=1, shard_size=8))
    other = read_all(tmp_path / "other" / "wds")
    assert [s["image"] for s in other["val"]] == [s["image"] for s in samples["val"]]
    defect_rows = lambda rows: sorted((s["meta"]["defect"], s["meta"]["sha256"]) for s in rows if s["meta"]["defect"])
    assert defect_rows(other["pool"]) != defect_rows(samples["pool"])


def test_second_build_is_a_no_op_and_force_rebuilds(fake_package, tmp_path):
    settings = CorpusSettings(seed=3)
    first = build_corpus(fake_package, tmp_path, settings)
    shard = tmp_path / "wds" / "pool" / "00000.tar"
    shard.write_bytes(shard.read_bytes())  # same content, new mtime: tells us whether it was rewritten
    marker_mtime = shard.stat().st_mtime_ns
    (tmp_path / "wds" / "pool" / "sentinel").write_text("left alone by a no-op")

    assert build_corpus(fake_package, tmp_path, settings) == first
    assert (tmp_path / "wds" / "pool" / "sentinel").exists()
    assert shard.stat().st_mtime_ns == marker_mtime

    build_corpus(fake_package, tmp_path, CorpusSettings(seed=4))
    assert not (tmp_path / "wds" / "pool" / "sentinel").exists()

    (tmp_path / "wds" / "pool" / "sentinel").write_text("x")
    build_corpus(fake_package, tmp_path, CorpusSettings(seed=4), force=True)
    assert not (tmp_path / "wds" / "pool" / "sentinel").exists()


def test_captions_are_natural_text_from_the_name():
    grinning = {"name": "GRINNING FACE", "short_name": "grinning", "unified": "1F600"}
    assert caption_for(grinning) == "an emoji of a grinning face"
    assert caption_for({"name": "Andorra Flag", "unified": "1F1E6-1F1E9"}) == "an emoji of an andorra flag"
    assert caption_for({"name": "", "short_name": "thumbs_up", "unified": "1F44D"}) == "an emoji of a thumbs up"


def make_package_tarball(path: Path, extra_members: dict[str, bytes]) -> None:
    members = {
        "package/emoji.json": b"[]",
        "package/package.json": b'{"version": "16.0.0"}',
        "package/LICENSE": b"licence",
        "package/README.md": b"not needed",
        "package/img/google/64/1f600.png": b"png bytes",
        "package/img/google/32/1f600.png": b"wrong size",
        "package/img/apple/64/1f600.png": b"wrong vendor",
    } | extra_members
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


def test_fetch_extracts_only_the_needed_files_and_skips_when_done(tmp_path, monkeypatch):
    make_package_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz", {})
    package_dir = fetch_package(tmp_path)
    extracted = sorted(str(path.relative_to(package_dir)) for path in package_dir.rglob("*") if path.is_file())
    assert extracted == [".extracted", "LICENSE", "emoji.json", "img/google/64/1f600.png", "package.json"]

    # Already extracted: neither npm nor the tarball is touched again.
    (tmp_path / "emoji-datasource-google-16.0.0.tgz").unlink()
    monkeypatch.setattr(emoji.shutil, "which", lambda name: pytest.fail("npm should not be needed"))
    assert fetch_package(tmp_path) == package_dir


@pytest.mark.parametrize("unsafe_name", ["../evil.png", "/etc/evil.png", "package/img/google/64/../../../../evil.png"])
def test_fetch_refuses_unsafe_member_paths(tmp_path, unsafe_name):
    make_package_tarball(tmp_path / "emoji-datasource-google-16.0.0.tgz", {unsafe_name: b"x"})
    with pytest.raises(ValueError, match="unsafe"):
        fetch_package(tmp_path)
    assert not (tmp_path.parent / "evil.png").exists()


def test_fetch_without_npm_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm"):
        fetch_package(tmp_path)
