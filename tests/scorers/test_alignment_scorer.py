"""alignment_minilm_onsfw: the frozen alignment model's image-text cosine, read from cached feature rows."""
import numpy as np
import pytest
import torch

from alchemist_kedro.models.alignment import (
    AlignmentConfig,
    AlignmentModel,
    alignment_to_artifact,
    fit_alignment,
)
from alchemist_kedro.scorers import ScoreBatch, get_scorer, scorer_class

IMAGE_DIM, TEXT_DIM = 5, 3


def random_artifact(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = AlignmentModel(AlignmentConfig(image_dim=IMAGE_DIM, text_dim=TEXT_DIM, projection_dim=4))
    with torch.no_grad():  # non-trivial standardisation, so a scorer that skipped it would be caught
        model.image_mean.uniform_(-1, 1)
        model.image_std.uniform_(0.5, 2)
        model.text_mean.uniform_(-1, 1)
        model.text_std.uniform_(0.5, 2)
    return alignment_to_artifact(model)


def by_hand(artifact: dict, features: np.ndarray) -> np.ndarray:
    """Cosine of the two linear projections of the standardised halves of each row, in float64 numpy."""
    state = {k: v.double().numpy() for k, v in artifact["state_dict"].items()}
    image = (features[:, :IMAGE_DIM] - state["image_mean"]) / state["image_std"]
    text = (features[:, IMAGE_DIM:] - state["text_mean"]) / state["text_std"]
    u = image @ state["image_head.weight"].T + state["image_head.bias"]
    v = text @ state["text_head.weight"].T + state["text_head.bias"]
    return (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)


def test_scores_are_the_cosine_of_the_projections_of_image_emb_and_text_emb():
    artifact = random_artifact()
    features = np.random.default_rng(1).normal(size=(11, IMAGE_DIM + TEXT_DIM)).astype(np.float32)
    scorer = get_scorer("alignment_minilm_onsfw", artifact=artifact)
    scores = scorer.score_batch(ScoreBatch(uids=[str(i) for i in range(11)], features=features))
    assert scores.dtype == np.float64 and scores.shape == (11,)
    np.testing.assert_allclose(scores, by_hand(artifact, features.astype(np.float64)), atol=1e-5)
    # Chunking is speed only: same scores, same version.
    chunked = get_scorer("alignment_minilm_onsfw", artifact=artifact, batch_size=3)
    np.testing.assert_allclose(chunked.score_batch(ScoreBatch(uids=[str(i) for i in range(11)], features=features)),
                               scores, rtol=1e-6, atol=1e-6)  # float32 matmuls differ by batch shape
    assert chunked.version == scorer.version
    cls = scorer_class("alignment_minilm_onsfw")
    assert cls.higher_is_better and cls.needs == {"features"}


def test_version_follows_the_weights():
    artifact = random_artifact()
    version = get_scorer("alignment_minilm_onsfw", artifact=artifact).version
    assert version.startswith("alignment_minilm_onsfw-")
    same = {"state_dict": {k: v.clone() for k, v in artifact["state_dict"].items()}, "config": dict(artifact["config"])}
    assert get_scorer("alignment_minilm_onsfw", artifact=same).version == version  # content, not identity
    same["state_dict"]["text_head.bias"][0] += 1e-3
    assert get_scorer("alignment_minilm_onsfw", artifact=same).version != version


def test_wrong_feature_width_or_no_features_fail_clearly():
    scorer = get_scorer("alignment_minilm_onsfw", artifact=random_artifact())
    with pytest.raises(ValueError, match="5\\) ⊕ text_emb \\(3\\) = 8 columns"):
        scorer.score_batch(ScoreBatch(uids=["a"], features=np.zeros((1, 9), np.float32)))
    with pytest.raises(ValueError, match="needs features"):
        scorer.score_batch(ScoreBatch(uids=["a"], captions=["x"]))


def test_a_fitted_model_scores_true_pairs_above_swapped_captions():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(64, IMAGE_DIM)).astype(np.float32)
    # Captions follow images: text is a noisy copy of part of the image features.
    text = (image[:, :TEXT_DIM] + 0.05 * rng.normal(size=(64, TEXT_DIM))).astype(np.float32)
    artifact = alignment_to_artifact(fit_alignment(image, text, AlignmentConfig(epochs=100, batch_size=64, learning_rate=1e-2)))
    scorer = get_scorer("alignment_minilm_onsfw", artifact=artifact)
    true_pairs = scorer.score_batch(ScoreBatch(uids=list(map(str, range(64))), features=np.hstack([image, text])))
    swapped = scorer.score_batch(
        ScoreBatch(uids=list(map(str, range(64))), features=np.hstack([image, np.roll(text, 1, axis=0)]))
    )
    assert true_pairs.mean() > swapped.mean() + 0.3
