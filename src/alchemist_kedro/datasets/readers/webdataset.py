"""webdataset / img2dataset tars: ``{key}.jpg|png|webp`` + ``{key}.txt`` + ``{key}.json`` per sample, one partition
per tar. The tar helpers and ``member_row`` are shared with the DataComp reader (its images live in such tars)."""
from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kedro.io import DatasetError
from webdataset.tariterators import base_plus_ext

from alchemist_kedro.datasets.readers.common import (
    IMAGE_EXTENSIONS,
    RawPartition,
    SourceConfig,
    build_row,
    partition_id,
    resolve_files,
)


def tar_groups(tar_path: Path, names_only: bool = False) -> Iterator[tuple[str, dict[str, bytes | None]]]:
    """Samples of a webdataset tar in member order: (key, {extension: bytes}).

    Keys follow webdataset's rule (everything before the first dot of the base name). Members of
    one key need not be adjacent: tars re-packed by hand often are not. ``names_only`` still reads
    the json members (they carry the uid).
    """
    groups: dict[str, dict[str, bytes | None]] = {}
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, extension = base_plus_ext(member.name)
                if key is None:
                    continue
                payload = None
                if not names_only or extension.lower() == "json":
                    handle = tar.extractfile(member)
                    payload = handle.read() if handle is not None else b""
                groups.setdefault(key, {})[extension.lower()] = payload
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DatasetError(f"{tar_path}: unreadable tar ({type(error).__name__}: {error})") from error
    yield from groups.items()


def check_tar(config: SourceConfig, tar_path: Path) -> None:
    try:
        with tarfile.open(tar_path, mode="r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DatasetError(
            f"source '{config.name}' ({config.format}): {tar_path}: unreadable tar ({type(error).__name__}: {error})"
        ) from error
    if first is None:
        raise DatasetError(f"source '{config.name}' ({config.format}): {tar_path}: empty tar (no members)")


def parse_json(payload: bytes | None) -> tuple[dict[str, Any], str | None]:
    if payload is None:
        return {}, None
    try:
        meta = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as error:
        return {}, f"json member is not valid JSON ({error})"
    if not isinstance(meta, dict):
        return {}, "json member is not a JSON object"
    return meta, None


def member_uid(meta: dict[str, Any], key: str, uid_key: str) -> str:
    return str(meta.get(uid_key) or key)


def member_row(
    config: SourceConfig,
    tar_path: Path,
    key: str,
    members: dict[str, bytes | None],
    uid_key: str,
    caption: Any,
    meta: dict[str, Any],
    json_error: str | None,
) -> dict[str, Any]:
    """One tar sample as a raw row; the caller has found the caption (txt/json, or the DataComp join)."""
    extension = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    raw_error = raw_detail = None
    if json_error:
        raw_error, raw_detail = "decode_error", json_error
    elif extension is None:
        raw_error, raw_detail = "missing_image", f"no image member ({'/'.join(IMAGE_EXTENSIONS)}) for key '{key}'"
    return build_row(
        config,
        uid=member_uid(meta, key, uid_key),
        caption=caption,
        image=members[extension] if extension else None,
        location=f"{tar_path}#{key}.{extension or 'json'}",
        meta=meta,
        raw_error=raw_error,
        raw_detail=raw_detail,
    )


def _rows(config: SourceConfig, tar_path: Path) -> list[dict[str, Any]]:
    uid_key = config.uid_column or "key"
    json_caption = config.caption_column or "caption"
    rows = []
    for key, members in tar_groups(tar_path):
        meta, json_error = parse_json(members.get("json"))
        caption = members["txt"] if "txt" in members else meta.get(json_caption)
        rows.append(member_row(config, tar_path, key, members, uid_key, caption, meta, json_error))
    return rows


def read_webdataset(config: SourceConfig) -> dict[str, RawPartition]:
    tars = resolve_files(config, config.path, (".tar", ".tar.gz", ".tgz"), "webdataset shards")
    for tar_path in tars:
        check_tar(config, tar_path)
    return {
        partition_id(config.name, tar_path.name.split(".")[0]): RawPartition(
            read=lambda p=tar_path: _rows(config, p),
            count=lambda p=tar_path: sum(1 for _ in tar_groups(p, names_only=True)),
        )
        for tar_path in tars
    }
