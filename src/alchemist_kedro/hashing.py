"""Every digest the project stores: files, settings, run fingerprints. One place, so two stages never hash the same
thing two ways (a scorer version and a checkpoint key must not disagree about what "the same settings" means)."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any


def json_digest(obj: Any, length: int = 16) -> str:
    """sha256 of a JSON-able object with sorted keys (non-JSON values through str()), first `length` hex digits."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


def run_fingerprint(config: Any, *uid_lists: Sequence[str], length: int = 16) -> str:
    """A training run's key: its config (JSON) and the uids it trains on, list by list, in order.

    Checkpoints live under this key, so a changed config or data set never resumes from a stale run.
    """
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(b"|".join("\n".join(uids).encode() for uids in uid_lists))
    return digest.hexdigest()[:length]


def row_digests(sha256: Iterable[Any], captions: Iterable[Any], length: int = 16) -> list[str]:
    """Per-row content digest of a sample: its image bytes' sha256 and its caption. Caches key on (uid, this), so a
    rebuilt corpus that reuses a uid for other content is recomputed instead of served stale features."""
    return [hashlib.sha256(f"{image}\x1f{caption}".encode()).hexdigest()[:length]
            for image, caption in zip(sha256, captions)]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, memoised by (path, size, mtime): weights are hashed once per process."""
    path = Path(path)
    stat = path.stat()
    return _file_sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: cache key only
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def files_digest(paths: Iterable[str | os.PathLike[str]]) -> str:
    """sha256[:16] over the named files' contents, in sorted-name order (one file: its own sha256[:16])."""
    files = sorted(Path(p) for p in paths)
    if not files:
        raise ValueError("files_digest needs at least one file")
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"weights file(s) not found: {missing}")
    if len(files) == 1:
        return file_sha256(files[0])[:16]
    combined = hashlib.sha256("".join(f"{p.name}:{file_sha256(p)}\n" for p in files).encode())
    return combined.hexdigest()[:16]


def tensors_digest(config: Any, state_dict: dict) -> str:
    """Hex sha256 of a model's config (JSON) and its tensors' bytes in key order: the identity of trained weights."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key, tensor in sorted(state_dict.items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed from strings/ints that is the same in every process (Python's hash() is salted)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
