"""The clip / clip_text encoders through the real from_pretrained path, on a tiny random CLIP saved to a tmp dir."""

import numpy as np
import pytest
import torch

from alchemist_kedro.encoders import get_image_encoder, get_text_encoder
from tests.encoders.images import drawn_images
from tests.tiny_clip import save_tiny_clip

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), max_position_embeddings=32)


def test_clip_image_embeddings(tiny_clip):
    encoder = get_image_encoder("clip", path=str(tiny_clip), batch_size=3)
    images = drawn_images()
    embeddings = encoder.embed_images(images)
    assert encoder.dim == 16 and embeddings.shape == (4, 16) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(embeddings, encoder.embed_images(images))
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-3
    assert encoder.fingerprint.startswith("clip@")


def test_clip_text_embeddings_and_tokens(tiny_clip):
    encoder = get_text_encoder("clip_text", path=str(tiny_clip), batch_size=2)
    captions = ["a cat", "dog on a mat", "zebra " * 10]
    embeddings, states, mask = encoder.encode(captions, 8)
    assert embeddings.shape == (3, 16) and states.shape == (3, 8, 32) and mask.dtype == np.int8
    counts = [len(encoder._tokenizer(caption)["input_ids"]) for caption in captions]
    np.testing.assert_array_equal(mask.sum(1), np.minimum(counts, 8))
    assert (states[mask == 0] == 0).all()
    assert encoder.fingerprint.startswith("clip_text@")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model folder .*does not exist"):
        get_image_encoder("clip", path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="neither a local folder nor a hub id in the local cache"):
        get_text_encoder("clip_text", path="someone/not-downloaded-model")
    with pytest.raises(ValueError, match="set `path`"):
        get_image_encoder("clip")


def test_checkpoint_without_the_tower_is_refused(tiny_clip, tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    folder = tmp_path / "text_only"
    config = CLIPTextConfig(vocab_size=60, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                            num_attention_heads=4, max_position_embeddings=32, projection_dim=16)
    CLIPTextModelWithProjection(config).save_pretrained(folder)
    for name in ("preprocessor_config.json",):
        (folder / name).write_bytes((tiny_clip / name).read_bytes())
    with pytest.raises(ValueError, match="lacks .* weights of CLIPVisionModelWithProjection"):
        get_image_encoder("clip", path=str(folder))
