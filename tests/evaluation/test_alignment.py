"""The alignment projection on synthetic paired features whose pairing is known."""
import numpy as np
import pytest
import torch

from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.evaluation import alignment, alignment_with_ceiling
from alchemist_kedro.models.alignment import (
    AlignmentConfig,
    alignment_from_artifact,
    alignment_scores,
    fit_alignment,
    load_alignment,
    save_alignment,
)

torch.set_num_threads(2)

CONFIG = AlignmentConfig(projection_dim=16, epochs=25, batch_size=64, learning_rate=3e-3)


def paired_features(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative 'image features' and 'text embeddings' = a fixed random linear map of them plus noise."""
    rng = np.random.default_rng(seed)
    images = np.abs(rng.normal(size=(count, 48))).astype(np.float32) + 2.0  # ReLU-like, with a common offset
    mapping = np.random.default_rng(1234).normal(size=(48, 24)) / np.sqrt(48)
    texts = images @ mapping + 0.1 * rng.normal(size=(count, 24))
    return images, texts.astype(np.float32)


@pytest.fixture(scope="module")
def fitted():
    images, texts = paired_features(256, seed=0)
    return fit_alignment(images, texts, CONFIG, seed=7)


def test_shuffled_captions_lower_alignment(fitted):
    images, texts = paired_features(128, seed=1)  # held-out pairs from the same process
    shuffled = texts[np.random.default_rng(2).permutation(len(texts))]
    matched, mismatched = alignment(fitted, images, texts), alignment(fitted, images, shuffled)
    assert matched > 0.5
    assert mismatched < matched - 0.4


def test_ceiling_is_the_real_pairs_score(fitted):
    images, texts = paired_features(64, seed=3)
    unrelated = np.abs(np.random.default_rng(4).normal(size=images.shape)).astype(np.float32) + 2.0
    scores = alignment_with_ceiling(fitted, unrelated, images, texts)
    assert scores["alignment_ceiling"] == pytest.approx(alignment(fitted, images, texts))
    assert scores["alignment"] < scores["alignment_ceiling"] - 0.4


def test_fit_is_deterministic_for_a_seed():
    images, texts = paired_features(96, seed=5)
    config = AlignmentConfig(projection_dim=8, epochs=2, batch_size=32)
    first, second = fit_alignment(images, texts, config, seed=3), fit_alignment(images, texts, config, seed=3)
    other = fit_alignment(images, texts, config, seed=4)
    for name, tensor in first.state_dict().items():
        torch.testing.assert_close(tensor, second.state_dict()[name], rtol=0, atol=0)
    assert not torch.equal(first.image_head.weight, other.image_head.weight)


def test_fitted_model_is_frozen_and_sized_from_the_data(fitted):
    assert not any(p.requires_grad for p in fitted.parameters()) and not fitted.training
    assert (fitted.config.image_dim, fitted.config.text_dim) == (48, 24)
    scores = alignment_scores(fitted, *paired_features(5, seed=6))
    assert scores.shape == (5,) and scores.dtype == np.float32 and (np.abs(scores) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="feature dim 48"):
        alignment_scores(fitted, np.zeros((3, 40)), np.zeros((3, 24)))


def test_save_and_load_round_trip(fitted, tmp_path):
    images, texts = paired_features(16, seed=8)
    path = tmp_path / "alignment.safetensors"
    save_alignment(fitted, path)
    np.testing.assert_array_equal(alignment_scores(load_alignment(path), images, texts),
                                  alignment_scores(fitted, images, texts))
    # The project's catalog dataset reads the same file, so the pipeline can store the model in the catalog.
    from_catalog = alignment_from_artifact(TorchSafetensorsDataset(filepath=str(path)).load())
    np.testing.assert_array_equal(alignment_scores(from_catalog, images, texts), alignment_scores(fitted, images, texts))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_alignment(tmp_path / "missing.safetensors")


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="paired"):
        fit_alignment(np.ones((4, 3)), np.ones((5, 2)), CONFIG)
