"""mAP@k on hand-made rankings, the baselines' orders, and the distilled attributor's learning-to-rank training."""
import numpy as np
import pytest
import torch

from alchemist_kedro.attribution.ranking import (
    AttributorTraining,
    attributor_loss,
    attributor_orders,
    average_precision,
    baseline_orders,
    embed_training_set,
    ground_truth_order,
    mean_average_precision,
    ranks_of,
    train_attributor,
)
from alchemist_kedro.models.attributor import AttributorMLP, attributor_from_artifact, attributor_to_artifact
from tests.conf_values import base_params

torch.set_num_threads(1)


def test_average_precision_by_hand():
    # relevant {3, 0} found at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    assert average_precision(np.array([3, 1, 0, 2]), np.array([0, 3])) == pytest.approx(5 / 6)
    assert average_precision(np.array([1, 2, 0, 3]), np.array([0, 3])) == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert average_precision(np.array([0, 3, 1, 2]), np.array([0, 3])) == 1.0
    assert np.isnan(average_precision(np.array([0, 1]), np.array([], dtype=int)))


def test_map_at_k_against_the_ground_truth_influence():
    influence = np.array([[0.5, 0.1, 0.3, 0.9],     # top-1 {3}, top-2 {3, 0}; positives ("all"): every pair
                          [-0.2, 0.4, 0.8, -0.1]])  # top-1 {2}, top-2 {2, 1}; positives ("all") {1, 2}
    orders = np.array([[3, 1, 0, 2],   # k=1: 1; k=2: (1 + 2/3) / 2
                       [1, 0, 3, 2]])  # k=1: 1/4; k=2: (1 + 2/4) / 2
    assert mean_average_precision(orders, influence, 1) == pytest.approx((1 + 1 / 4) / 2)
    assert mean_average_precision(orders, influence, 2) == pytest.approx(((1 + 2 / 3) / 2 + (1 + 2 / 4) / 2) / 2)
    assert mean_average_precision(orders, influence, "all") == pytest.approx((1 + (1 + 2 / 4) / 2) / 2)
    assert mean_average_precision(ground_truth_order(influence), influence, 2) == 1.0
    with pytest.raises(ValueError):
        mean_average_precision(orders[:, :3], influence, 2)


def test_random_order_scores_about_k_over_n_and_cosine_baselines_find_the_copy():
    rng = np.random.default_rng(0)
    n, q = 400, 30
    train_image, train_text = rng.normal(size=(n, 16)), rng.normal(size=(n, 8))
    pick = rng.choice(n, q, replace=False)
    orders = baseline_orders(train_image[pick] + 0.01, train_text[pick], train_image, train_text, seed=0)
    influence = rng.normal(size=(q, n))
    assert mean_average_precision(orders["random"], influence, 40) == pytest.approx(40 / n, abs=0.04)
    for name in ("image_cosine", "text_cosine", "concat_cosine"):
        assert (orders[name][:, 0] == pick).all(), name  # each query's own pair is its nearest neighbour


def fixture_problem(seed=0, n=300, queries=24):
    """Influence = similarity in a hidden projection of the image features that raw cosine does not see."""
    rng = np.random.default_rng(seed)
    image, text = rng.normal(size=(n, 20)).astype(np.float32), rng.normal(size=(n, 6)).astype(np.float32)
    hidden = rng.normal(size=(20, 3)).astype(np.float32)
    pick = rng.choice(n, queries, replace=False)
    q_image = image[pick] + 0.3 * rng.normal(size=(queries, 20)).astype(np.float32)
    q_text = text[pick]
    influence = (q_image @ hidden) @ (image @ hidden).T
    return q_image, q_text, image, text, influence


def test_training_lowers_the_ranking_loss_and_beats_random_on_held_out_queries():
    q_image, q_text, image, text, influence = fixture_problem()
    conf = base_params("attribute.attributor")
    training = AttributorTraining(**{**conf["training"], "epochs": 80})
    model, history = train_attributor(q_image[:16], q_text[:16], image, text, influence[:16], [64], 32,
                                      conf["input_norm"], conf["dropout"], training)
    untrained = AttributorMLP(model.config).eval()
    tensors = [torch.as_tensor(a) for a in (q_image[:16], q_text[:16], image, text)]
    with torch.no_grad():
        before = float(attributor_loss(untrained, *tensors, ranks_of(influence[:16]), training))
        after = float(attributor_loss(model, *tensors, ranks_of(influence[:16]), training))
    assert history[-1] < history[0] and after < before - 0.3, (before, after)

    # Held-out queries, through the saved artifact: retrieval by the precomputed training embeddings.
    reloaded = attributor_from_artifact(attributor_to_artifact(model))
    index = embed_training_set(reloaded, image, text)
    orders, scores, seconds = attributor_orders(reloaded, q_image[16:], q_text[16:], index)
    assert orders.shape == (8, len(image)) and seconds > 0
    assert (np.diff(np.take_along_axis(scores, orders, 1), axis=1) <= 1e-6).all()
    random = baseline_orders(q_image[16:], q_text[16:], image, text, seed=0)["random"]
    assert mean_average_precision(orders, influence[16:], 10) > 3 * mean_average_precision(random, influence[16:], 10)


def test_the_residual_attributor_starts_at_the_concatenated_feature_cosine_and_learns_from_there():
    from alchemist_kedro.models.attributor import AttributorConfig

    q_image, q_text, image, text, influence = fixture_problem(seed=1)
    model = AttributorMLP(AttributorConfig(image_dim=20, text_dim=6, hidden_sizes=(32,), residual=True)).eval()
    orders, _, _ = attributor_orders(model, q_image, q_text, embed_training_set(model, image, text))
    np.testing.assert_array_equal(orders, baseline_orders(q_image, q_text, image, text, seed=0)["concat_cosine"])
    training = AttributorTraining(**{**base_params("attribute.attributor.training"), "epochs": 60})
    trained, history = train_attributor(q_image[:16], q_text[:16], image, text, influence[:16], [32], 1, True, 0.0,
                                        training, residual=True)
    assert trained.config.out_dim == 26 and history[-1] < history[0] - 0.3
    held, _, _ = attributor_orders(trained, q_image[16:], q_text[16:], embed_training_set(trained, image, text))
    concat = baseline_orders(q_image[16:], q_text[16:], image, text, seed=0)["concat_cosine"]
    assert mean_average_precision(held, influence[16:], 10) > mean_average_precision(concat, influence[16:], 10)
