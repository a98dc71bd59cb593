"""DataComp-style subset file: the sorted selected uids as a .npy array."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def uid_subset_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted uids as a fixed-width unicode array (``<U{longest}``), savable without pickling.

    DataComp's ``--subset_file`` is a .npy of uids; its uids are 32-hex strings, which DataComp's own tooling
    stores as ``<U32`` (or packs into two uint64 halves). A fixed-width ``<U..`` keeps np.load(allow_pickle=False)
    working; an object array of str would need pickling. Sorting makes the file diff- and merge-friendly and lets
    consumers use np.searchsorted for membership.
    """
    values = [str(u) for u in uids]
    width = max((len(u) for u in values), default=1)
    return np.sort(np.asarray(values, dtype=f"<U{width}"))
