"""diffusion_quality (Yandex's Algorithm 1): recorded cross-attention shapes, the separation count and its top-K pick,
the fit table round trip, the score-table contract; on a tiny random SD folder and the project's T2I model."""
import itertools
import json

import cv2
import numpy as np
import pyarrow as pa
import pytest
import torch

from alchemist_kedro.schemas import SCORE_SCHEMA
from alchemist_kedro.scorers import ScoreBatch, build_score_table, get_scorer
from alchemist_kedro.scorers.degradations import DEGRADATIONS, degrade, degraded_group
from alchemist_kedro.scorers.diffusion_quality import (
    load_fit_table,
    save_fit_table,
    select_pairs,
    separation_scores,
)
from tests.conf_values import base_params

torch.set_num_threads(1)
WORDS = ("high", "quality", "aesthetic", "detailed", ",")
LATENT, LAYERS_PER_BLOCK = 8, 1


def write_clip_tokenizer_files(folder):
    """A CLIP BPE vocab + merges that spell the prompt's words as single tokens (a real tokenizer, tiny vocab)."""
    letters = sorted(set("".join(WORDS)) | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in letters + [c + "</w>" for c in letters]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append(f"{parts[0]} {parts[1]}")
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    return len(vocab)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sd")
    for part in ("unet", "text_encoder", "tokenizer", "vae", "scheduler"):
        (root / part).mkdir()
    vocab_size = write_clip_tokenizer_files(root / "tokenizer")
    CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                  model_max_length=16).save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    UNet2DConditionModel(
        sample_size=LATENT, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=LAYERS_PER_BLOCK,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(8, 16), latent_channels=4, norm_num_groups=8,
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  sample_size=2 * LATENT).save_pretrained(root / "vae")
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def sd_scorer(sd_folder):
    return get_scorer("diffusion_quality", source="sd_folder", path=str(sd_folder), timestep=300, k=3, batch_size=4)


def real_images(n, size=24, seed=0):
    """Smooth gradients with a few shapes: real structure that the degradations visibly damage."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = np.mgrid[0:size, 0:size] / size
        base = np.stack([x, y, 1 - x * y], -1) * rng.uniform(120, 255, 3)
        image = np.ascontiguousarray(base.astype(np.uint8))
        for _ in range(3):
            centre = tuple(int(v) for v in rng.integers(4, size - 4, 2))
            cv2.circle(image, centre, int(rng.integers(2, 6)), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        out.append(image)
    return out


def test_recorded_maps_have_the_shapes_the_layers_imply(sd_scorer, sd_folder):
    from diffusers import UNet2DConditionModel

    estimator = sd_scorer.estimator
    unet_config = UNet2DConditionModel.load_config(str(sd_folder), subfolder="unet")
    blocks = len(unet_config["block_out_channels"])

    def side(name):  # down block i at LATENT / 2^i, the mid block at the bottom, up block j at LATENT / 2^(blocks-1-j)
        kind, index = name.split(".")[:2]
        level = {"down_blocks": lambda: int(index), "mid_block": lambda: blocks - 1,
                 "up_blocks": lambda: blocks - 1 - int(index)}[kind]()
        return LATENT // 2**level

    # layers_per_block per down block, 1 in the mid block, layers_per_block + 1 per up block.
    assert len(estimator.layers) == blocks * LAYERS_PER_BLOCK + 1 + blocks * (LAYERS_PER_BLOCK + 1) == 7
    assert all(name.endswith("attn2") for name in estimator.layers)
    assert sorted({side(name) for name in estimator.layers}) == [LATENT // 2, LATENT]
    # The prompt's tokens, BOS / EOS / padding left out: "high quality, aesthetic, detailed".
    assert estimator.tokens == ["high</w>", "quality</w>", ",</w>", "aesthetic</w>", ",</w>", "detailed</w>"]
    maps = estimator.maps(real_images(3))
    assert list(maps) == estimator.layers
    assert [maps[name].shape for name in maps] == [(3, side(name), side(name), 6) for name in maps]
    for name in maps:  # softmax probabilities over 16 key positions, of which 6 are kept
        assert (maps[name] >= 0).all() and (maps[name].sum(-1) <= 1 + 1e-5).all() and maps[name].sum() > 0
    norms = estimator.norms(real_images(3))
    assert norms.shape == (3, 7, 6)
    layer, token = 5, 2
    expected = maps[estimator.layers[layer]][1, :, :, token].pow(2).sum().sqrt().item()
    assert norms[1, layer, token] == pytest.approx(expected, rel=1e-5)


def test_the_recorder_leaves_the_unet_output_unchanged(sd_scorer, sd_folder):
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet", local_files_only=True).eval()
    recorded = sd_scorer.estimator.unet
    assert any(type(p).__name__ == "CrossAttentionRecorder" for p in recorded.attn_processors.values())
    x = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    states = sd_scorer.estimator.prompt.states.expand(2, -1, -1)
    with torch.no_grad():
        ours = recorded(x, torch.tensor([300, 300]), encoder_hidden_states=states).sample
        theirs = plain(x, torch.tensor([300, 300]), encoder_hidden_states=states).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_separation_count_is_algorithm_1s_pair_count():
    rng = np.random.default_rng(0)
    n_hq = np.round(rng.normal(size=(5, 3, 2)), 1)  # rounded: ties happen, and count for neither side
    n_lq = np.round(rng.normal(size=(4, 3, 2)), 1)
    brute = np.zeros((3, 2), dtype=np.int64)
    for l, m in itertools.product(range(3), range(2)):
        brute[l, m] = sum(int(h > q) for h in n_hq[:, l, m] for q in n_lq[:, l, m])
    assert (separation_scores(n_hq, n_lq) == brute).all()


def test_selection_picks_the_planted_layer_token_pairs():
    rng = np.random.default_rng(1)
    n_hq, n_lq = rng.normal(size=(10, 5, 4)), rng.normal(size=(12, 5, 4))
    n_hq[:, 3, 2] += 10.0  # separates every pair
    n_hq[:, 1, 0] += 1.0  # separates most pairs
    n_lq[:, 4, 1] += 10.0  # separates, but LQ > HQ: Algorithm 1 counts HQ > LQ only
    layers, tokens = [f"layer{i}" for i in range(5)], ["a", "b", "c", "d"]
    table = select_pairs(n_hq, n_lq, 2, layers, tokens)
    assert table[["layer_name", "token"]].values.tolist() == [["layer3", "c"], ["layer1", "a"]]
    assert table["separation"].iloc[0] == 120 and table["separation_rate"].iloc[0] == 1.0
    assert table["separation"].iloc[1] < 120
    last = select_pairs(n_hq, n_lq, 20, layers, tokens).iloc[-1]
    assert (last["layer_name"], last["token"], last["separation"]) == ("layer4", "b", 0)
    with pytest.raises(ValueError, match="k must be"):
        select_pairs(n_hq, n_lq, 21, layers, tokens)


def test_degradations_damage_the_image_and_cycle_through_the_kinds():
    image = real_images(1, size=64)[0]
    sharpness = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var()
    for kind in DEGRADATIONS:
        out = degrade(image, kind, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - image).mean() > 1.0, kind
    blurred = degrade(image, "blur", np.random.default_rng(0))
    assert cv2.Laplacian(cv2.cvtColor(blurred, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var() < sharpness
    group, kinds = degraded_group(real_images(6), seed=0)
    assert kinds == list(DEGRADATIONS) + list(DEGRADATIONS[:2]) and len(group) == 6
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(image, "sepia", np.random.default_rng(0))


def test_fit_scores_and_table_contract_end_to_end(sd_scorer, sd_folder, tmp_path):
    scorer = get_scorer("diffusion_quality", source="sd_folder", path=str(sd_folder), timestep=300, k=3, batch_size=4)
    hq = real_images(6, seed=2)
    with pytest.raises(ValueError, match="no fit"):
        scorer.score_batch(ScoreBatch(uids=["a"], images=hq[:1]))
    unfitted_version = scorer.version
    lq, _ = degraded_group(hq, seed=0)
    fit = scorer.fit(hq)  # LQ by default = the same degradations
    assert scorer.version != unfitted_version
    n_hq, n_lq = scorer.estimator.norms(hq), scorer.estimator.norms(lq)
    counts = separation_scores(n_hq, n_lq)
    assert len(fit) == 3 and (fit["pairs"] == 36).all()
    assert fit["separation"].tolist() == sorted(counts.ravel().tolist(), reverse=True)[:3]
    assert [counts[r.layer, r.token_index] for r in fit.itertuples()] == fit["separation"].tolist()

    test_images = real_images(5, seed=3)
    uids = [f"u{i}" for i in range(5)]
    raw = scorer.score_batch(ScoreBatch(uids=uids, images=test_images))
    norms = scorer.estimator.norms(test_images)
    np.testing.assert_allclose(raw, norms[:, fit["layer"], fit["token_index"]].sum(1), rtol=1e-6, atol=1e-6)

    # The fit table round-trips through parquet and CSV; a scorer built from it scores the same, same version.
    for name in ("fit.parquet", "fit.csv"):
        loaded = load_fit_table(save_fit_table(fit, tmp_path / name))
        again = get_scorer("diffusion_quality", source="sd_folder", path=str(sd_folder), timestep=300, k=3,
                           batch_size=2, fit=loaded)
        assert again.version == scorer.version
        np.testing.assert_allclose(again.score_batch(ScoreBatch(uids=uids, images=test_images)), raw, rtol=1e-6, atol=1e-6)
    other_t = get_scorer("diffusion_quality", source="sd_folder", path=str(sd_folder), timestep=600, k=3, fit=fit)
    assert other_t.version != scorer.version
    with pytest.raises(ValueError, match="not this prompt's"):
        get_scorer("diffusion_quality", source="sd_folder", path=str(sd_folder), keywords=["aesthetic"], fit=fit)

    table = build_score_table(uids, raw, scorer.name, scorer.version, scorer.higher_is_better)
    assert pa.Schema.from_pandas(table, preserve_index=False).remove_metadata().equals(SCORE_SCHEMA)
    assert table.set_index("uid")["raw_score"].to_dict() == pytest.approx(dict(zip(uids, raw)))
    assert table["uid"].iloc[0] == uids[int(np.argmax(raw))]  # higher = better: the largest sum ranks first


def test_the_project_t2i_model_is_a_source_with_minilm_prompt_tokens():
    from alchemist_kedro.models.t2i import T2IConfig, T2IModel, t2i_to_artifact

    config = T2IConfig(**base_params(
        "train_t2i.model", resolution=16, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, cross_attention_dim=384, attention_heads=2, sample_steps=4))
    torch.manual_seed(0)
    artifact = t2i_to_artifact(T2IModel(config))
    scorer = get_scorer("diffusion_quality", source="t2i", artifact=artifact, timestep=200, k=2, max_tokens=16)
    estimator = scorer.estimator
    # Down block 1 (1 layer) at 8 px, mid at 8 px, up block 0 (2 layers) at 8 px: the 16 px image downsampled once.
    assert len(estimator.layers) == 4
    assert estimator.tokens == ["high", "quality", ",", "aesthetic", ",", "detailed"]
    maps = estimator.maps(real_images(2, size=20))
    assert {tuple(m.shape) for m in maps.values()} == {(2, 8, 8, 6)}
    fit = scorer.fit(real_images(4, seed=4))
    raw = scorer.score_batch(ScoreBatch(uids=["a", "b"], images=real_images(2, seed=5)))
    assert len(fit) == 2 and np.isfinite(raw).all() and (raw > 0).all()
    # The version follows the weights.
    artifact["state_dict"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in artifact["state_dict"].items()}
    other = get_scorer("diffusion_quality", source="t2i", artifact=artifact, timestep=200, k=2, fit=fit)
    assert other.version != scorer.version
