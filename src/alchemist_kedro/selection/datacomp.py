"""DataComp subset files: the sorted selected uids, readable (``<U..``) and in DataComp's own ``(u8, u8)`` layout."""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np

# DataComp's resharder.py: `u16 = np.dtype("u8,u8")`; load_subset asserts `subset.dtype == u16`.
DATACOMP_UID_DTYPE = np.dtype("u8,u8")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")


def uid_subset_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted uids as a fixed-width unicode array (``<U{longest}``), savable without pickling.

    The readable list: any uid works, np.load(allow_pickle=False) opens it (an object array of str would need
    pickling). Sorted so it diffs and merges well and np.searchsorted answers membership.
    """
    values = [str(u) for u in uids]
    width = max((len(u) for u in values), default=1)
    return np.sort(np.asarray(values, dtype=f"<U{width}"))


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
