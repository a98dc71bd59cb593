"""The (u8, u8) subset file, read back exactly as DataComp's resharder.py reads its --subset-file."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from kedro_datasets.partitions import PartitionedDataset

from alchemist_kedro.pipelines.select import nodes

# mlfoundations/datacomp resharder.py (commit 4a8df19): `u16 = np.dtype("u8,u8")`, load_subset, and the lookup of
# each shard sample's json uid.
u16 = np.dtype("u8,u8")


def resharder_load_subset(subset_file):
    with open(subset_file, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            subset = np.load(subset_file, mmap_mode="r")
            assert subset.dtype == u16
        else:
            subset = np.memmap(subset_file, u16, mode="r+")
    return subset


def resharder_count(subset, key_str: str) -> int:
    key_u16 = np.array([divmod(int(key_str, 16), 2**64)], u16)[0]
    return int(np.searchsorted(subset, key_u16, "right") - np.searchsorted(subset, key_u16, "left"))


def _dataset(tmp_path) -> PartitionedDataset:
    return PartitionedDataset(path=str(tmp_path / "datacomp_subset"), filename_suffix=".npy", overwrite=True,
                              dataset={"type": "alchemist_kedro.datasets.selection.NpyDataset"})


def test_hex_uids_load_as_the_resharder_loads_them(tmp_path):
    rng = np.random.default_rng(0)
    # Random 128-bit uids, some with a high half above 2**63 and some with leading zeros.
    uids = [f"{int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2)):016x}{int(rng.integers(0, 2**63)):016x}"
            for _ in range(200)] + ["0" * 31 + "1", "f" * 32]
    manifest = pd.DataFrame({"uid": uids, "selected": [i % 3 != 0 for i in range(len(uids))]})
    _dataset(tmp_path).save(nodes.datacomp_subset_file(manifest))

    subset = resharder_load_subset(tmp_path / "datacomp_subset" / "selected_uids.npy")
    chosen = set(manifest.loc[manifest["selected"], "uid"])
    assert len(subset) == len(chosen)
    pairs = subset.tolist()
    assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs)  # sorted, as searchsorted needs
    for uid in uids:
        assert resharder_count(subset, uid) == (uid in chosen), uid
    # The readable list holds the same uids.
    readable = nodes.selected_uid_list(manifest)
    assert {f"{hi:016x}{lo:016x}" for hi, lo in subset.tolist()} == set(readable)


def test_non_hex_uids_skip_the_file_and_say_so(tmp_path, caplog):
    dataset = _dataset(tmp_path)
    dataset.save({"selected_uids": np.zeros(1, u16)})  # a stale file from an earlier run with hex uids
    manifest = pd.DataFrame({"uid": ["0" * 32, "emoji_pool:17"], "selected": [True, True]})
    with caplog.at_level(logging.INFO):
        out = nodes.datacomp_subset_file(manifest)
    assert out == {}
    assert "not 32-hex DataComp uids" in caplog.text and "emoji_pool:17" in caplog.text
    dataset.save(out)
    assert not (tmp_path / "datacomp_subset" / "selected_uids.npy").exists()
