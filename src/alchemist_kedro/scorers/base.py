"""The one interface every scorer implements (heuristics, aesthetic, nsfw, the rater's scoring, ...).

A scorer turns a batch of samples into one float per sample. What it reads is declared in `needs`; which way is
better is declared in `higher_is_better`; `version` changes whenever its settings or weights change, so stored
scores can be reused exactly when they would come out the same. A new scorer is one file with a
`@register_scorer` class plus one import line in `scorers/__init__.py`.
"""
from __future__ import annotations

import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from alchemist_kedro.hashing import file_sha256, json_digest, tensors_digest
from alchemist_kedro.registry import Registry
from alchemist_kedro.schemas import SCORE_SCHEMA

logger = logging.getLogger(__name__)

# What a scorer may ask for in `needs`.
BATCH_INPUTS = frozenset({"image", "caption", "features"})


@dataclass
class ScoreBatch:
    """Rows handed to `Scorer.score_batch`, aligned by position.

    `images` are decoded RGB uint8 arrays of shape (H, W, 3): decoded once per shard and shared by every image
    scorer. Derived views (e.g. the resized grayscale the three image statistics share) are memoised in `cache`
    through `cached`, so they too are computed once per batch.
    """

    uids: list[str]
    images: list[np.ndarray] | None = None
    captions: list[str | None] | None = None
    # (N, F) float32 cached encoder features (image_emb ⊕ text_emb), for scorers that read features, not pixels.
    features: np.ndarray | None = None
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("images", "captions", "features"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.uids):
                raise ValueError(f"ScoreBatch.{name} has {len(values)} rows but uids has {len(self.uids)}")

    def __len__(self) -> int:
        return len(self.uids)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]


class Scorer(ABC):
    """Base class of all scorers: settings in `__init__`, one float64 per row out of `score_batch`."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    needs: ClassVar[frozenset[str]]
    # Constructor arguments kept out of `version`: those that change speed, not values (threads, device, ...), and
    # weight paths whose files' contents `weights_digest` already covers (moving a file must not force a rescore).
    unversioned_params: ClassVar[frozenset[str]] = frozenset({"threads"})

    def __init__(self, **params: Any) -> None:
        self.params = params

    @property
    def version(self) -> str:
        """`<name>-<12 hex>`: a hash of the settings and of the weights' digest (if any)."""
        settings = {k: v for k, v in sorted(self.params.items()) if k not in self.unversioned_params}
        return f"{self.name}-{json_digest({'settings': settings, 'weights': self.weights_digest()}, 12)}"

    def weights_digest(self) -> str | None:
        """Digest of the weights this scorer runs, or None when it has none."""
        return None

    def check_batch(self, batch: ScoreBatch) -> None:
        if "image" in self.needs and batch.images is None:
            raise ValueError(f"scorer {self.name!r} needs images but the batch has none")
        if "caption" in self.needs and batch.captions is None:
            raise ValueError(f"scorer {self.name!r} needs captions but the batch has none")
        if "features" in self.needs and batch.features is None:
            raise ValueError(f"scorer {self.name!r} needs features but the batch has none")

    @abstractmethod
    def score_batch(self, batch: ScoreBatch) -> np.ndarray:
        """One float64 per row of `batch`, in the scorer's own orientation (see `higher_is_better`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.version})"


class ArtifactScorer(Scorer):
    """A scorer over cached features with a model trained by this project, handed over as the artifact its catalog
    dataset loads ({"state_dict", "config"}). Its version hashes that config and those tensors: the artifact is
    weights, not a setting; batch_size and threads change speed only."""

    needs = frozenset({"features"})
    unversioned_params = frozenset({"threads", "artifact", "batch_size"})

    def __init__(self, artifact: dict, batch_size: int = 4096, threads: int = 1) -> None:
        super().__init__(artifact=artifact, batch_size=batch_size, threads=threads)
        self.artifact = artifact
        self.batch_size = max(1, int(batch_size))

    def weights_digest(self) -> str:
        return tensors_digest(self.artifact["config"], self.artifact["state_dict"])


SCORERS: Registry[type[Scorer]] = Registry("scorer")


def register_scorer(cls: type[Scorer]) -> type[Scorer]:
    """Class decorator: make `cls` available to `get_scorer(cls.name)`."""
    for attribute in ("name", "higher_is_better", "needs"):
        if not hasattr(cls, attribute):
            raise TypeError(f"{cls.__name__} must define class attribute {attribute!r}")
    unknown = set(cls.needs) - BATCH_INPUTS
    if unknown:
        raise TypeError(f"{cls.__name__}.needs has unknown inputs {sorted(unknown)}; known: {sorted(BATCH_INPUTS)}")
    return SCORERS.add(cls.name, cls)


def available_scorers() -> list[str]:
    return SCORERS.names()


def scorer_class(name: str) -> type[Scorer]:
    return SCORERS.get(name)


def get_scorer(name: str, **params: Any) -> Scorer:
    """Build the registered scorer `name` with `params` (its constructor's keyword arguments)."""
    cls = scorer_class(name)
    accepted = accepted_params(cls)
    unknown = set(params) - accepted
    if unknown:
        raise TypeError(f"scorer {name!r} got unknown settings {sorted(unknown)}; it accepts {sorted(accepted)}")
    return cls(**params)


def accepted_params(cls: type[Scorer]) -> set[str]:
    signature = inspect.signature(cls.__init__)
    return {
        p.name
        for p in signature.parameters.values()
        if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def build_score_table(
    uids: Sequence[str],
    raw_scores: Sequence[float] | np.ndarray,
    scorer_name: str,
    scorer_version: str,
    higher_is_better: bool,
) -> pd.DataFrame:
    """A SCORE_SCHEMA table: `score` oriented higher = better, rank 0 = best, ties broken by uid.

    Rows whose raw score is NaN (the scorer could not score them, e.g. an image that did not decode) are kept, ranked
    after every scored row (in uid order among themselves), with NaN `score`; a warning says how many. No row is ever
    dropped. The selection strategies rank them the same way and never select them (selection/strategies.py).
    """
    uid_array = np.asarray(list(uids), dtype=object)
    raw = np.asarray(raw_scores, dtype=np.float64)
    if raw.shape != (len(uid_array),):
        raise ValueError(f"{scorer_name}: {len(uid_array)} uids but raw scores of shape {raw.shape}")
    if pd.isna(uid_array).any():
        raise ValueError(f"{scorer_name}: null uid in the score table")
    uid_series = pd.Series(uid_array, dtype="string")
    if uid_series.duplicated().any():
        duplicates = uid_series[uid_series.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{scorer_name}: duplicate uids (first: {duplicates}); ranks need unique uids")
    if np.isinf(raw).any():
        raise ValueError(f"{scorer_name}: infinite raw scores for {int(np.isinf(raw).sum())} rows")

    # 0.0 - raw rather than -raw: a raw 0 gives +0.0, not -0.0.
    score = raw if higher_is_better else 0.0 - raw
    missing = np.isnan(score)
    if missing.any():
        logger.warning(
            "%s: %d of %d rows have no score (NaN); they are kept and ranked last", scorer_name, missing.sum(), len(raw)
        )
    order_frame = pd.DataFrame(
        {"missing": missing, "neg_score": np.where(missing, 0.0, -score), "uid": uid_series}
    )
    order = order_frame.sort_values(["missing", "neg_score", "uid"], kind="mergesort").index.to_numpy()
    rank = np.empty(len(raw), dtype=np.int64)
    rank[order] = np.arange(len(raw), dtype=np.int64)

    table = pd.DataFrame(
        {
            "uid": uid_series.astype(object),
            "score": score,
            "raw_score": raw,
            "rank": rank,
            "percentile": (rank + 0.5) / max(len(raw), 1),
            # object columns: pyarrow maps them to `string` exactly as SCORE_SCHEMA says (pandas 3's str dtype
            # would become large_string).
            "scorer": pd.Series([scorer_name] * len(raw), dtype=object),
            "scorer_version": pd.Series([scorer_version] * len(raw), dtype=object),
        }
    )
    table = table.sort_values("rank", kind="mergesort").reset_index(drop=True)
    return table[[f.name for f in SCORE_SCHEMA]]
