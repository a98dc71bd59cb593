from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from alchemist_kedro.selection.dedup import connected_components, dedup, near_duplicate_edges, pair_features


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def exact_table() -> pd.DataFrame:
    # a, b, c: one image and caption (b in other case/spacing); d: same image, other caption; e, f: singletons.
    return pd.DataFrame(
        {
            "uid": ["a", "b", "c", "d", "e", "f"],
            "sha256": [sha("x"), sha("x"), sha("x"), sha("x"), sha("y"), sha("z")],
            "caption": ["a red apple", "A  red apple ", "a red apple", "a green pear", "a cat", "a red apple"],
            "score": [0.1, 0.9, 0.5, 0.7, 0.3, 0.2],
        }
    )


def test_exact_groups_need_same_image_and_normalised_caption(exact_table):
    result = dedup(exact_table, near_threshold=None).set_index("uid")
    assert result.loc[["a", "b", "c"], "dedup_group"].tolist() == ["a", "a", "a"]
    assert (result.loc[["a", "b", "c"], "group_size"] == 3).all()
    assert result.loc[["a", "b", "c"], "duplicate_kind"].tolist() == ["exact"] * 3
    # Best score kept: b (0.9), not the first row a.
    assert result.loc[["a", "b", "c"], "is_kept"].tolist() == [False, True, False]
    # Same image with another caption, other image with the same caption, and a loner: all singletons, all kept.
    singles = result.loc[["d", "e", "f"]]
    assert singles["dedup_group"].isna().all() and (singles["group_size"] == 1).all() and singles["is_kept"].all()
    assert singles["duplicate_kind"].isna().all()


def test_exact_image_only_mode_ignores_the_caption(exact_table):
    result = dedup(exact_table, exact="image", near_threshold=None).set_index("uid")
    assert result.loc[["a", "b", "c", "d"], "dedup_group"].tolist() == ["a"] * 4
    assert result.loc[["a", "b", "c", "d"], "is_kept"].tolist() == [False, True, False, False]
    assert result.loc[["e", "f"], "is_kept"].all()


def test_exact_dedup_hashes_image_bytes_when_there_is_no_sha256_column():
    table = pd.DataFrame({"uid": [1, 2, 3], "image": [b"png1", b"png1", b"png2"], "caption": ["c"] * 3,
                          "score": [0.0, 0.0, 1.0]})
    result = dedup(table, near_threshold=None)
    # Equal scores: the tie goes to the smaller uid.
    assert result["is_kept"].tolist() == [True, False, True]
    assert result["dedup_group"].tolist()[:2] == ["1", "1"]


def features_with_cosines(rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Six unit vectors: p~q at cosine 0.97, q~r at 0.96 (a chain), s~t at 0.90, u alone."""
    dim = 32
    basis = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    def near(base_axis, other_axis, cosine):
        return cosine * basis[base_axis] + np.sqrt(1 - cosine**2) * basis[other_axis]
    p = basis[0]
    q = near(0, 1, 0.97)
    # r: cosine 0.96 with q, built in q's plane with a fresh axis.
    r = 0.96 * q + np.sqrt(1 - 0.96**2) * basis[2]
    s, t = basis[5], near(5, 6, 0.90)
    u = basis[9]
    return np.stack([p, q, r, s, t, u]), {"pq": 0.97, "qr": 0.96, "st": 0.90}


def near_table() -> pd.DataFrame:
    return pd.DataFrame({"uid": list("pqrstu"), "score": [0.2, 0.1, 0.8, 0.5, 0.6, 0.0]})


def test_near_groups_form_at_the_threshold_and_not_below_it():
    features, cosines = features_with_cosines(np.random.default_rng(0))
    table = near_table()
    at_096 = dedup(table, features=features, exact=None, near_threshold=0.955).set_index("uid")
    assert at_096.loc[list("pqr"), "dedup_group"].tolist() == ["p"] * 3  # the chain p~q~r is one group
    assert at_096.loc[list("stu"), "dedup_group"].isna().all()
    assert at_096.loc[list("pqr"), "duplicate_kind"].tolist() == ["near"] * 3
    # Just above q~r (0.96): p~q (0.97) stays, r leaves; float32 rounding makes exactly 0.96 a coin toss.
    at_0965 = dedup(table, features=features, exact=None, near_threshold=0.965).set_index("uid")
    assert at_0965.loc[["p", "q"], "group_size"].tolist() == [2, 2] and at_0965.loc["r", "group_size"] == 1
    # Above every pair: nothing groups.
    at_098 = dedup(table, features=features, exact=None, near_threshold=0.98)
    assert at_098["dedup_group"].isna().all() and at_098["is_kept"].all()
    # Low enough for s~t as well.
    at_089 = dedup(table, features=features, exact=None, near_threshold=0.89).set_index("uid")
    assert at_089.loc[["s", "t"], "dedup_group"].tolist() == ["s", "s"]


def test_one_member_kept_per_group_the_best_scored():
    features, _ = features_with_cosines(np.random.default_rng(1))
    result = dedup(near_table(), features=features, exact=None, near_threshold=0.89).set_index("uid")
    kept_per_group = result.dropna(subset=["dedup_group"]).groupby("dedup_group")["is_kept"].sum()
    assert kept_per_group.tolist() == [1, 1]
    assert result.loc[list("pqr"), "is_kept"].tolist() == [False, False, True]  # r has 0.8
    assert result.loc[["s", "t"], "is_kept"].tolist() == [False, True]  # t has 0.6
    assert result.loc["u", "is_kept"]


def test_exact_and_near_edges_join_into_one_group():
    features, _ = features_with_cosines(np.random.default_rng(2))
    table = near_table().assign(sha256=[sha(v) for v in "pqrsuu"], caption="same")
    result = dedup(table, features=features, near_threshold=0.89).set_index("uid")
    # s~t near, t and u the same image: one group of three.
    assert result.loc[list("stu"), "dedup_group"].tolist() == ["s"] * 3
    assert result.loc[list("stu"), "duplicate_kind"].tolist() == ["exact+near"] * 3
    assert result.loc[list("stu"), "is_kept"].sum() == 1


def test_blocked_search_matches_a_full_matrix_and_finds_planted_pairs():
    rng = np.random.default_rng(3)
    features = rng.normal(size=(300, 16))
    features[250:260] = features[:10] + 0.01 * rng.normal(size=(10, 16))
    unit = pair_features(features)
    full = unit @ unit.T
    want = {(i, j) for i, j in zip(*np.nonzero(full >= 0.99)) if j > i}
    got = {tuple(edge) for edge in near_duplicate_edges(features, 0.99, block_size=37).tolist()}
    assert got == want and {(i, 250 + i) for i in range(10)} <= got


def test_pair_features_average_the_image_and_text_cosines():
    rng = np.random.default_rng(4)
    image, text = rng.normal(size=(2, 8)), rng.normal(size=(2, 5))
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)
    cosine = lambda m: float(unit(m)[0] @ unit(m)[1])
    joint = pair_features(image, text)
    assert joint[0] @ joint[1] == pytest.approx((cosine(image) + cosine(text)) / 2, abs=1e-6)


def test_connected_components_follow_long_chains():
    n = 50
    chain = np.stack([np.arange(n - 1)[::-1], np.arange(1, n)[::-1]], axis=1)
    assert (connected_components(n, chain) == 0).all()
    assert connected_components(3, np.empty((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def test_bad_input_is_refused_with_a_clear_error(exact_table):
    with pytest.raises(ValueError, match="unique"):
        dedup(pd.concat([exact_table, exact_table]), near_threshold=None)
    with pytest.raises(ValueError, match="features"):
        dedup(exact_table, near_threshold=0.9)
    with pytest.raises(ValueError, match="caption"):
        dedup(exact_table.drop(columns="caption"), near_threshold=None)
    with pytest.raises(ValueError, match="exact must be"):
        dedup(exact_table, exact="pixels", near_threshold=None)
