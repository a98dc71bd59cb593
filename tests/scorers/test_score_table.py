"""build_score_table: orientation, ranks, percentiles, uid tie-breaks, NaN last, no dropped rows."""
import numpy as np
import pyarrow as pa
import pytest

from alchemist_kedro.schemas import SCORE_SCHEMA
from alchemist_kedro.scorers import ScoreBatch, Scorer, build_score_table, get_scorer, register_scorer


def by_uid(table):
    return table.set_index("uid")


def test_higher_is_better_ranks_and_percentiles():
    table = build_score_table(["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.3], "s", "s-1", higher_is_better=True)
    assert pa.Schema.from_pandas(table, preserve_index=False).remove_metadata().equals(SCORE_SCHEMA)
    rows = by_uid(table)
    assert rows["rank"].to_dict() == {"b": 0, "c": 1, "d": 2, "a": 3}
    assert rows["percentile"].to_dict() == pytest.approx({"b": 0.125, "c": 0.375, "d": 0.625, "a": 0.875})
    assert (rows["score"] == rows["raw_score"]).all()
    assert set(table["scorer"]) == {"s"} and set(table["scorer_version"]) == {"s-1"}


def test_lower_is_better_is_negated_so_the_smallest_raw_ranks_first():
    rows = by_uid(build_score_table(["a", "b", "c"], [0.9, 0.0, 0.2], "nsfw", "v", higher_is_better=False))
    assert rows["rank"].to_dict() == {"b": 0, "c": 1, "a": 2}
    assert rows["score"].to_dict() == {"a": -0.9, "b": 0.0, "c": -0.2}
    assert rows["raw_score"].to_dict() == {"a": 0.9, "b": 0.0, "c": 0.2}


def test_ties_are_broken_by_uid_whatever_the_input_order():
    table = build_score_table(["z", "m", "a", "q"], [1.0, 1.0, 1.0, 2.0], "s", "v", True)
    assert by_uid(table)["rank"].to_dict() == {"q": 0, "a": 1, "m": 2, "z": 3}


def test_nan_rows_are_kept_and_ranked_last_in_uid_order(caplog):
    uids = ["e", "d", "c", "b", "a"]
    table = build_score_table(uids, [np.nan, 0.5, np.nan, 0.7, 0.1], "s", "v", higher_is_better=False)
    assert sorted(table["uid"]) == sorted(uids)  # nothing dropped
    assert by_uid(table)["rank"].to_dict() == {"a": 0, "d": 1, "b": 2, "c": 3, "e": 4}
    assert by_uid(table)["score"].isna().to_dict() == {"a": False, "b": False, "c": True, "d": False, "e": True}
    assert "2 of 5 rows have no score" in caplog.text


def test_bad_tables_raise():
    with pytest.raises(ValueError, match="duplicate uids"):
        build_score_table(["a", "a"], [1.0, 2.0], "s", "v", True)
    with pytest.raises(ValueError, match="uids but raw scores"):
        build_score_table(["a", "b"], [1.0], "s", "v", True)
    with pytest.raises(ValueError, match="infinite"):
        build_score_table(["a", "b"], [1.0, np.inf], "s", "v", True)


def test_a_new_scorer_is_one_registered_class():
    @register_scorer
    class CaptionLength(Scorer):
        name = "test_caption_length"
        higher_is_better = True
        needs = frozenset({"caption"})

        def __init__(self, unit: int = 1) -> None:
            super().__init__(unit=unit)

        def score_batch(self, batch: ScoreBatch) -> np.ndarray:
            return np.array([len(c or "") / self.params["unit"] for c in batch.captions], dtype=np.float64)

    scorer = get_scorer("test_caption_length", unit=2)
    assert scorer.score_batch(ScoreBatch(uids=["a", "b"], captions=["abcd", None])).tolist() == [2.0, 0.0]
    assert scorer.version != get_scorer("test_caption_length").version
    with pytest.raises(ValueError, match="already registered"):

        @register_scorer
        class Impostor(CaptionLength):
            pass
