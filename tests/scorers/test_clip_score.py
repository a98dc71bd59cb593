"""clip_score on a tiny random CLIP saved to a temp folder: the real local loading path, checked against a by-hand
cosine of the transformers model's own projections."""
import numpy as np
import pytest
import torch

from alchemist_kedro.scorers import ScoreBatch, get_scorer
from tests.encoders.images import drawn_images
from tests.tiny_clip import save_tiny_clip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_clip_score_is_the_cosine_of_clips_own_projections(tiny_clip):
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    images = drawn_images()[:3]
    captions = ["a red ball", "blue sky", "cat"]
    scorer = get_scorer("clip_score", clip_model=str(tiny_clip), batch_size=2)
    scores = scorer.score_batch(ScoreBatch(uids=["a", "b", "c"], images=images, captions=captions))

    model = CLIPModel.from_pretrained(str(tiny_clip), local_files_only=True).eval()
    pixels = CLIPImageProcessor.from_pretrained(str(tiny_clip))(images=images, return_tensors="pt")["pixel_values"]
    tokens = CLIPTokenizer.from_pretrained(str(tiny_clip))(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        image_out = model.get_image_features(pixel_values=pixels)
        text_out = model.get_text_features(**tokens)
    # transformers 5 returns an output object here (its pooled projection), older versions a tensor.
    image_embeds = torch.nn.functional.normalize(getattr(image_out, "pooler_output", image_out), dim=-1)
    text_embeds = torch.nn.functional.normalize(getattr(text_out, "pooler_output", text_out), dim=-1)
    np.testing.assert_allclose(scores, (image_embeds * text_embeds).sum(-1).numpy(), rtol=1e-4, atol=1e-5)
    assert scorer.version.startswith("clip_score-")


def test_clip_score_without_weights_says_what_to_provide():
    with pytest.raises(ValueError, match="clip_model"):
        get_scorer("clip_score")
