"""The minilm text encoder on the real bundled all-MiniLM-L6-v2."""
import numpy as np
import pytest
import torch

from alchemist_kedro.encoders import MiniLMEncoder, get_text_encoder

torch.set_num_threads(2)

CAPTIONS = [
    "a red apple on a wooden table",
    "a green apple lying on a table",
    "a rocket launching into space at night",
    "smile",
    "an extremely long caption " + "with many many words " * 8,  # longer than max_tokens
]


@pytest.fixture(scope="module")
def encoder():
    return MiniLMEncoder(batch_size=2)  # batch 2 over 5 captions: exercises the batch loop and padding


@pytest.fixture(scope="module")
def encoded(encoder):
    return encoder.encode(CAPTIONS, 16)


def test_embedding_equals_sentence_transformers(encoder, encoded):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(encoder.path), device="cpu").encode(CAPTIONS, convert_to_numpy=True)
    embeddings = encoded[0]
    assert embeddings.shape == (5, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, reference, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_similar_captions_are_closer_than_unrelated(encoded):
    embeddings = encoded[0]
    apple_apple = embeddings[0] @ embeddings[1]
    apple_rocket = embeddings[0] @ embeddings[2]
    assert apple_apple > apple_rocket + 0.3


def test_token_states_and_mask_follow_the_tokenizer(encoder, encoded):
    _, states, mask = encoded
    assert states.shape == (5, 16, 384) and states.dtype == np.float32
    assert mask.shape == (5, 16) and mask.dtype == np.int8
    counts = [len(encoder._tokenizer(caption)["input_ids"]) for caption in CAPTIONS]
    np.testing.assert_array_equal(mask.sum(1), np.minimum(counts, 16))
    assert counts[-1] > 16  # the long caption really was truncated
    assert (states[mask == 0] == 0).all()  # padding is zeros
    assert (np.abs(states[mask == 1]).sum(-1) > 0).all()


def test_max_tokens_and_separate_calls_agree(encoder, encoded):
    states8, mask8 = encoder.token_states(CAPTIONS, 8)
    np.testing.assert_allclose(states8, encoded[1][:, :8], atol=1e-5)
    np.testing.assert_array_equal(mask8, encoded[2][:, :8])
    np.testing.assert_allclose(encoder.embed_texts(CAPTIONS[:2]), encoded[0][:2], atol=1e-5)


def test_bad_texts_are_named(encoder):
    with pytest.raises(ValueError, match=r"text 1: expected a string, got NoneType"):
        encoder.embed_texts(["fine", None])
    with pytest.raises(ValueError, match="single string"):
        encoder.embed_texts("not a list")


def test_fingerprint_and_registry(encoder):
    assert encoder.fingerprint.startswith("minilm@") and len(encoder.fingerprint) == len("minilm@") + 16
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        get_text_encoder("minilm", path="/nonexistent")
