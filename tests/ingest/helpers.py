"""Builders for small real image-text fixtures: images, webdataset tars, parquet, image folders."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


def image_bytes(size=(32, 24), colour=(200, 30, 30), fmt="PNG", mode="RGB", **save_args) -> bytes:
    rng = np.random.default_rng(sum(size))
    array = np.full((size[1], size[0], 3), colour, dtype=np.uint8)
    array[::2, ::3] = rng.integers(0, 255, size=array[::2, ::3].shape, dtype=np.uint8)  # texture, so JPEGs are not tiny
    image = Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar with the members in the given order (webdataset layout when named {key}.{ext})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def wds_sample(key: str, txt: bytes | str | None, image: bytes | None, ext="png", **json_fields) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    if image is not None:
        members[f"{key}.{ext}"] = image
    if txt is not None:
        members[f"{key}.txt"] = txt.encode() if isinstance(txt, str) else txt
    members[f"{key}.json"] = json.dumps({"key": key, "status": "success", **json_fields}).encode()
    return members


def write_parquet(path: Path, columns: dict[str, list], row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_imagefolder(root: Path, records: list[dict], images: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, payload in images.items():
        (root / name).write_bytes(payload)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root
