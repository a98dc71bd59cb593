"""aesthetic: tiny random CLIP + a head in the published state-dict layout, against a by-hand forward pass."""
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from alchemist_kedro.models.aesthetic_head import AestheticHead, AestheticHeadConfig, load_aesthetic_head
from alchemist_kedro.scorers import ScoreBatch, get_scorer
from alchemist_kedro.scorers.aesthetic import AestheticWeightsMissing

PUBLISHED_KEYS = {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    head = AestheticHead(AestheticHeadConfig(input_dim=16))
    state = {key: value.clone() for key, value in head.state_dict().items()}
    save_file(state, str(folder / "head.safetensors"))
    torch.save(state, folder / "head.pth")
    return folder, state


def test_head_has_the_published_layout():
    head = AestheticHead()
    assert set(head.state_dict()) == PUBLISHED_KEYS
    assert head.state_dict()["layers.0.weight"].shape == (1024, 768)
    assert head.state_dict()["layers.7.weight"].shape == (1, 16)


def test_scores_equal_a_by_hand_forward_pass(tiny_weights):
    from transformers import CLIPImageProcessorPil, CLIPVisionModelWithProjection

    folder, state = tiny_weights
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    scores = {}
    for weights in ("head.safetensors", "head.pth"):
        scorer = get_scorer("aesthetic", clip_model=str(folder), head_weights=str(folder / weights),
                            model_batch_size=2)
        scores[weights] = scorer.score_batch(ScoreBatch(uids=["a", "b", "c"], images=images))

    with torch.no_grad():
        pixels = CLIPImageProcessorPil.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
        embedding = CLIPVisionModelWithProjection.from_pretrained(folder).eval()(pixel_values=pixels).image_embeds
        x = embedding / embedding.norm(dim=-1, keepdim=True)
        for index in (0, 2, 4, 6, 7):  # linear layers only: dropout is off in eval, no nonlinearities
            x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    expected = x.squeeze(-1).double().numpy()
    assert scores["head.safetensors"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert scores["head.pth"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert scores["head.safetensors"].dtype == np.float64


def test_version_follows_the_weights_not_their_path(tiny_weights, tmp_path):
    import shutil

    folder, state = tiny_weights
    version = get_scorer("aesthetic", clip_model=str(folder), head_weights=str(folder / "head.pth")).version
    shutil.copy(folder / "head.pth", tmp_path / "moved.pth")
    assert get_scorer("aesthetic", clip_model=str(folder), head_weights=str(tmp_path / "moved.pth")).version == version
    torch.save({key: value + 1.0 for key, value in state.items()}, tmp_path / "other.pth")
    assert get_scorer("aesthetic", clip_model=str(folder), head_weights=str(tmp_path / "other.pth")).version != version


def test_missing_weights_stop_with_the_files_to_provide(tiny_weights, tmp_path):
    folder, _ = tiny_weights
    with pytest.raises(AestheticWeightsMissing, match="sac\\+logos\\+ava1-l14-linearMSE.pth"):
        get_scorer("aesthetic", clip_model=str(folder))
    with pytest.raises(AestheticWeightsMissing, match="clip_model is not set"):
        get_scorer("aesthetic", head_weights=str(folder / "head.pth"))
    with pytest.raises(AestheticWeightsMissing, match="cannot load CLIP"):
        get_scorer("aesthetic", clip_model=str(tmp_path / "no_clip_here"), head_weights=str(folder / "head.pth"))


def test_a_head_of_another_layout_is_refused(tmp_path):
    torch.save({"fc.weight": torch.zeros(1, 16)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not an aesthetic-head state dict"):
        load_aesthetic_head(tmp_path / "wrong.pth")
