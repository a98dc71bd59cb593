"""Writes that a kill at any moment leaves either complete or absent: write a temporary file in the target's own
folder, then ``os.replace`` it over the target (atomic on POSIX within one filesystem).

Also the one test-only fault point: with ``ALCHEMIST_TEST_KILL_AT="<path substring>:<n>"`` set, the n-th atomic
write whose target contains the substring SIGKILLs this very process after the temporary file is complete and
before the rename -- the moment a plain write would leave a half file. Unset (every real run) it costs one getenv.
No Kedro import: the training loops use it for their checkpoints.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

KILL_ENV = "ALCHEMIST_TEST_KILL_AT"
TMP_MARK = ".tmp-"
_fault_hits = 0


def fault_point(target: str | os.PathLike[str]) -> None:
    """Test-only: SIGKILL this process at the configured write (see the module docstring)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    substring, _, count = spec.rpartition(":")
    if substring in str(target):
        global _fault_hits
        _fault_hits += 1
        if _fault_hits == int(count):
            os.kill(os.getpid(), signal.SIGKILL)


def temp_path(target: Path) -> Path:
    # A leading dot and a trailing pid: never matches a partition suffix such as ".parquet", never shared.
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}")


def remove_stale_temps(target: Path) -> None:
    """Temporary files a killed run left for this target (they are never read; this only frees the space)."""
    for stale in target.parent.glob(f".{target.name}{TMP_MARK}*"):
        stale.unlink(missing_ok=True)


def atomic_write(target: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """``write(handle)`` into a temporary file next to ``target``, then rename it over ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        fault_point(target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike[str], payload: bytes) -> None:
    atomic_write(target, lambda handle: handle.write(payload))


PARQUET_MAGIC = b"PAR1"


def parquet_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a file cannot be a complete parquet file (None if it looks complete), from its size, both magic numbers
    and the footer length only: a few bytes read, whatever the file's size. A write cut short (an older, non-atomic
    version killed mid-write) fails this."""
    try:
        size = os.path.getsize(path)
        if size < 12:
            return f"{size} bytes, too short for parquet"
        with open(path, "rb") as handle:
            head = handle.read(4)
            handle.seek(size - 8)
            tail = handle.read(8)
    except OSError as error:
        return f"unreadable ({error})"
    if head != PARQUET_MAGIC:
        return "no parquet magic at the start"
    if tail[4:] != PARQUET_MAGIC:
        return "no parquet magic at the end (truncated)"
    footer = int.from_bytes(tail[:4], "little")
    if footer + 12 > size:
        return f"footer length {footer} exceeds the file ({size} bytes)"
    return None
