"""Atomic writes and leftover-skipping cache views on real parquet / safetensors files."""
import logging
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from kedro.io import DatasetError

from alchemist_kedro.atomic_io import KILL_ENV, parquet_problem
from alchemist_kedro.datasets.atomic import AtomicParquetDataset, CacheIncrementalDataset, CachePartitionedDataset
from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset

FRAME = pd.DataFrame({"uid": [f"u{i}" for i in range(200)], "score": [float(i) for i in range(200)]})


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "scores.parquet"
    dataset = AtomicParquetDataset(filepath=str(target), save_args={"index": False})
    dataset.save(FRAME)
    before = target.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save(FRAME.head(3))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.parquet"]


def test_sigkill_at_the_write_leaves_old_content_then_a_rerun_replaces_it(tmp_path):
    target = tmp_path / "part.parquet"
    AtomicParquetDataset(filepath=str(target)).save(FRAME.head(5))
    code = (f"import pandas as pd; from alchemist_kedro.datasets.atomic import AtomicParquetDataset as D; "
            f"D(filepath={str(target)!r}).save(pd.DataFrame({{'uid': ['new'] * 100000}}))")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, KILL_ENV: "part.parquet:1"})
    assert killed.returncode == -9  # the process really died by SIGKILL, at the fault point
    assert pd.read_parquet(target)["uid"].tolist() == FRAME.head(5)["uid"].tolist()  # old file intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # its complete temp file is left
    AtomicParquetDataset(filepath=str(target)).save(FRAME.head(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part.parquet"]  # the stale temp is cleaned up


def test_parquet_problem_detects_truncation_and_garbage(tmp_path):
    good = tmp_path / "good.parquet"
    FRAME.to_parquet(good)
    assert parquet_problem(good) is None
    for keep in (0.0, 0.1, 0.5, 0.99):
        cut = tmp_path / f"cut{keep}.parquet"
        cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * keep)])
        assert parquet_problem(cut) is not None, keep
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + b"\xff" * 100 + b"PAR1")
    assert "footer length" in parquet_problem(garbage)


@pytest.mark.parametrize("kind", ["partitioned", "incremental"])
def test_cache_views_skip_incomplete_leftovers_with_a_logged_path(tmp_path, caplog, kind):
    folder = tmp_path / "cache"
    folder.mkdir()
    for name in ("a", "b", "c"):
        FRAME.to_parquet(folder / f"{name}.parquet", index=False)
    _truncate(folder / "b.parquet", 0.3)
    (folder / ".c.parquet.tmp-123").write_bytes(b"half")  # a killed atomic write: never listed
    cls = CachePartitionedDataset if kind == "partitioned" else CacheIncrementalDataset
    view = cls(path=str(folder), dataset={"type": "pandas.ParquetDataset"}, filename_suffix=".parquet")
    with caplog.at_level(logging.WARNING):
        loaded = view.load()
    assert sorted(loaded) == ["a", "c"]
    frame = loaded["a"]() if kind == "partitioned" else loaded["a"]
    assert len(frame) == 200
    assert any(str(folder / "b.parquet") in r.getMessage() and "recomputed" in r.getMessage() for r in caplog.records)


def test_cache_view_of_only_leftovers_is_empty(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "x.parquet").write_bytes(b"PAR1 cut")
    view = CachePartitionedDataset(path=str(folder), dataset="pandas.ParquetDataset", filename_suffix=".parquet")
    assert view.load() == {}


def test_safetensors_save_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    dataset = TorchSafetensorsDataset(filepath=str(target))
    dataset.save({"state_dict": {"w": torch.ones(3)}, "config": {"a": 1}})
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(DatasetError, match="killed"):
        dataset.save({"state_dict": {"w": torch.zeros(3)}, "config": {"a": 2}})
    loaded = TorchSafetensorsDataset(filepath=str(target)).load()
    assert loaded["config"] == {"a": 1} and loaded["state_dict"]["w"].tolist() == [1.0, 1.0, 1.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
