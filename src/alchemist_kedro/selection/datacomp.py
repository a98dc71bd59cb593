"""DataComp subset files: the sorted selected uids, readable (``<U..``) and in DataComp's own ``(u8, u8)`` layout."""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# DataComp's resharder.py: `u16 = np.dtype("u8,u8")`; load_subset asserts `subset.dtype == u16`.
DATACOMP_UID_DTYPE = np.dtype("u8,u8")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_CHUNK = 1 << 20  # uids converted to numpy per step


def uid_subset_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted uids as a fixed-width unicode array (``<U{longest}``), savable without pickling.

    The readable list: any uid works, np.load(allow_pickle=False) opens it (an object array of str would need
    pickling). Sorted so it diffs and merges well and np.searchsorted answers membership. Built from Arrow strings
    a chunk at a time, so 30M uids never exist as 30M Python objects (UTF-8 byte order = code-point order = numpy's).
    """
    values = _arrow_strings(uids)
    width = max(int(pc.max(pc.utf8_length(values)).as_py() or 0), 1) if len(values) else 1
    values = values.take(pc.sort_indices(values))
    out = np.empty(len(values), dtype=f"<U{width}")
    for start in range(0, len(values), _CHUNK):
        part = values.slice(start, _CHUNK)
        out[start : start + len(part)] = part.to_numpy(zero_copy_only=False)
    return out


def _arrow_strings(uids: Iterable[str]) -> pa.Array:
    """uids (a pandas Series / Arrow-backed array / list) as one Arrow string array."""
    if isinstance(uids, pd.Series):
        uids = uids.array
    if isinstance(uids, pd.api.extensions.ExtensionArray) and hasattr(uids, "__arrow_array__"):
        values = pa.array(uids)
    else:
        values = pa.array([str(u) for u in uids], type=pa.string())
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    return values.cast(pa.string())


def non_datacomp_uids(uids: Iterable[str]) -> list[str]:
    """The uids that are not DataComp's 32-hex-digit uids (empty when all are)."""
    return [str(u) for u in uids if not _HEX32.fullmatch(str(u))]


def datacomp_subset_array(uids: Iterable[str]) -> np.ndarray:
    """The ``(u8, u8)`` array DataComp's ``resharder.py --subset-file`` reads: each 32-hex uid as its high and low
    64-bit halves, sorted (the resharder finds each shard sample with np.searchsorted on it).

    Raises ValueError naming a uid that is not 32 hex digits.
    """
    values = [str(u) for u in uids]
    bad = non_datacomp_uids(values)
    if bad:
        raise ValueError(f"{len(bad)} uids are not DataComp 32-hex uids, e.g. {bad[:3]}")
    # Same split as the resharder's `divmod(int(uid, 16), 2**64)`.
    pairs = [divmod(int(u, 16), 1 << 64) for u in values]
    return np.sort(np.array(pairs, dtype=DATACOMP_UID_DTYPE))
