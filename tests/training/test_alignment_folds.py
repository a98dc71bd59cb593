"""rater.model.alignment_folds: the rater's alignment cosine cross-fitted on the pool, by caption."""
from dataclasses import asdict

import numpy as np
import pytest
import torch

from alchemist_kedro.models.alignment import AlignmentConfig, alignment_scores, fit_alignment
from alchemist_kedro.models.rater import Rater, RaterConfig, rater_from_artifact, rater_to_artifact
from alchemist_kedro.training.bilevel import RaterData, Split, fit_fold_alignments
from tests.conf_values import base_params

torch.set_num_threads(1)
IMAGE, TEXT = 40, 32


def _data(n_pool=160, n_val=40, seed=0):
    """Pool pairs with no relation between image and caption: whatever cosine a projection gives a pool row beyond
    what it gives a fresh random pair, it memorised from training on that row."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(n_pool, IMAGE + TEXT, generator=g)
    val = torch.randn(n_val, IMAGE + TEXT, generator=g)
    empty = Split(torch.zeros(n_pool, 1), torch.zeros(n_pool, 1, 1), torch.zeros(n_pool, 1), [str(i) for i in range(n_pool)])
    return RaterData(empty, empty, pool, text_dim=TEXT, val_features=val)


def _rater(folds: int) -> Rater:
    config = AlignmentConfig(image_dim=IMAGE, text_dim=TEXT, projection_dim=32, epochs=200, batch_size=64)
    return Rater(RaterConfig(**base_params(
        "rater.model", feature_dim=IMAGE + TEXT, text_dim=TEXT, hidden_dim=8, group_hidden_dim=4,
        alignment_feature=True, proxy_features=False, patch_inputs=False, reference_inputs=False,
        embedding_inputs=False, interaction_rank=0, ensemble=1, alignment_folds=folds,
        alignment_config=asdict(config))))


def test_each_pool_row_is_read_by_a_projection_that_never_saw_its_caption():
    data = _data()
    rater = _rater(2)
    fit_fold_alignments(rater, data, seed=0)
    pool = data.pool_features
    cross = rater.alignment_values(pool[:, :IMAGE], pool[:, IMAGE:]).numpy()
    fresh = torch.randn(160, IMAGE + TEXT, generator=torch.Generator().manual_seed(99))
    unseen = rater.alignment_values(fresh[:, :IMAGE], fresh[:, IMAGE:]).numpy()
    # The same recipe fitted on every pool row at once reads its own training rows.
    config = AlignmentConfig(image_dim=IMAGE, text_dim=TEXT, projection_dim=32, epochs=200, batch_size=64)
    in_sample = alignment_scores(fit_alignment(pool[:, :IMAGE].numpy(), pool[:, IMAGE:].numpy(), config),
                                 pool[:, :IMAGE].numpy(), pool[:, IMAGE:].numpy())
    message = f"mean cosine: cross-fitted {cross.mean():.3f}, fresh pairs {unseen.mean():.3f}, in-sample {in_sample.mean():.3f}"
    print(message)
    assert in_sample.mean() > unseen.mean() + 0.1, message  # the fixture does show memorisation
    assert abs(cross.mean() - unseen.mean()) < 0.05, message
    # Both parts are used, each by its own projection.
    parts = rater.alignment_parts(pool[:, IMAGE:]).numpy()
    assert 0.35 < parts.mean() < 0.65
    own = [m(pool[:, :IMAGE], pool[:, IMAGE:]).numpy() for m in (rater.alignment, rater.fold_alignments[0])]
    np.testing.assert_allclose(cross, np.where(parts == 0, own[0], own[1]), rtol=0, atol=1e-6)


def test_rows_that_share_a_caption_share_a_part_and_the_projections_travel_with_the_artifact():
    data = _data(n_pool=120)
    rater = _rater(2)
    fit_fold_alignments(rater, data, seed=0)
    text = data.pool_features[:5, IMAGE:]
    images = torch.randn(5, IMAGE, generator=torch.Generator().manual_seed(3))
    assert torch.equal(rater.alignment_parts(text), rater.alignment_parts(text.clone()))
    features = torch.cat([torch.cat([images, text], 1), data.pool_features[:5]])
    parts = rater.alignment_parts(features[:, IMAGE:])
    assert torch.equal(parts[:5], parts[5:])  # other images, the same captions
    loaded = rater_from_artifact(rater_to_artifact(rater))
    torch.testing.assert_close(loaded.inputs(features), rater.inputs(features))
    assert not torch.allclose(rater.alignment(features[:, :IMAGE], features[:, IMAGE:]),
                              rater.fold_alignments[0](features[:, :IMAGE], features[:, IMAGE:]))


def test_alignment_folds_needs_the_val_pairs_and_a_positive_count():
    data = _data(n_pool=40)
    with pytest.raises(ValueError, match="val_features"):
        fit_fold_alignments(_rater(2), RaterData(data.pool, data.val, data.pool_features, text_dim=TEXT), seed=0)
    with pytest.raises(ValueError, match="alignment_folds"):
        _rater(0)
