"""Webdataset tar shards of a subset, in img2dataset's layout ({key}.png, {key}.txt, {key}.json per sample)."""
from __future__ import annotations

import io
import json
import tarfile

import pandas as pd


def img2dataset_tar(rows: pd.DataFrame, shard_index: int) -> bytes:
    """One tar shard from rows with uid, caption, image (PNG bytes), width, height.

    Keys follow img2dataset: 5-digit shard id + 4-digit row index; the json carries uid and caption so DataComp
    style tooling (which joins on uid) can read the shards back.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, row in enumerate(rows.itertuples(index=False)):
            key = f"{shard_index:05d}{i:04d}"
            meta = {"key": key, "uid": row.uid, "caption": row.caption, "status": "success",
                    "width": int(row.width), "height": int(row.height)}
            for suffix, payload in (
                ("png", bytes(row.image)),
                ("txt", str(row.caption).encode("utf-8")),
                ("json", json.dumps(meta).encode("utf-8")),
            ):
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()
