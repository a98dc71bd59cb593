import numpy as np
import torch
from diffusers import AutoencoderKL

from tests.conf_values import base_params
import pytest

from alchemist_kedro.models.proxy import (
    EmbeddingProxy,
    ProxyT2I,
    build_proxy,
    load_vae,
    per_sample_loss,
    stable_seed,
    training_loss,
)
from alchemist_kedro.models.rater import Rater, RaterConfig, rater_from_artifact, rater_to_artifact, score_with_rater
from tests.training.synthetic import make_data, tiny_proxy_config

torch.set_num_threads(1)


def _batch(n=6):
    data, _ = make_data(n_pool=n, n_val=2, seed=3)
    return data["pool_images"], data["pool_tokens"], data["pool_mask"], data["pool_uids"]


def test_crn_loss_is_identical_across_evaluations_and_batches_and_random_draws_vary():
    torch.manual_seed(0)
    proxy = ProxyT2I(tiny_proxy_config())
    x, tok, mask, uids = _batch()
    with torch.no_grad():
        a = per_sample_loss(proxy, x, tok, mask, uids, num_timesteps=4)
        b = per_sample_loss(proxy, x, tok, mask, uids, num_timesteps=4)
        # A sample's CRN loss does not depend on its batch-mates or position.
        sub = per_sample_loss(proxy, x[[3, 1]], tok[[3, 1]], mask[[3, 1]], [uids[3], uids[1]], num_timesteps=4)
        g = torch.Generator().manual_seed(0)
        r1 = per_sample_loss(proxy, x, tok, mask, uids, num_timesteps=4, crn=False, generator=g)
        r2 = per_sample_loss(proxy, x, tok, mask, uids, num_timesteps=4, crn=False, generator=g)
    assert torch.equal(a, b)
    assert torch.allclose(sub, a[[3, 1]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(r1, r2)


def test_stable_seed_is_fixed_across_processes():
    # A literal: Python's salted hash() would change it per process.
    assert stable_seed(0, "pool-00001", 2) == 5561450696737696303
    assert stable_seed(0, "pool-00001", 2) != stable_seed(0, "pool-00001", 3)


def test_caption_dropout_changes_the_training_loss():
    torch.manual_seed(0)
    proxy = ProxyT2I(tiny_proxy_config())
    x, tok, mask, _ = _batch()
    with torch.no_grad():
        kept = training_loss(proxy, x, tok, mask, torch.Generator().manual_seed(5), caption_dropout=0.0)
        dropped = training_loss(proxy, x, tok, mask, torch.Generator().manual_seed(5), caption_dropout=1.0)
        null = training_loss(proxy, x, tok * 0, mask * 0, torch.Generator().manual_seed(5), caption_dropout=0.0)
    assert not torch.allclose(kept, dropped)
    assert torch.allclose(dropped, null)


def test_latent_proxy_loads_a_local_autoencoder(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    vae.save_pretrained(tmp_path / "vae")
    proxy = ProxyT2I(tiny_proxy_config(vae_path=str(tmp_path / "vae"), block_out_channels=(8, 16)))
    assert proxy.unet.config.in_channels == 4 and proxy.unet.config.sample_size == 8
    assert not any(k.startswith("_vae") or "vae" in k for k in proxy.state_dict())
    x, tok, mask, uids = _batch()
    loss = per_sample_loss(proxy, x, tok, mask, uids, num_timesteps=2)
    loss.sum().backward()
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    assert all(p.grad is None for p in load_vae(tmp_path / "vae").parameters())


def _embedding_batch(n=32, dim=24, seed=0):
    """Image embeddings that share a large common component (as a pretrained encoder's do) plus a small part that
    the caption predicts: tokens carry the embedding's projection."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim) * 5
    specific = rng.normal(size=(n, dim)).astype(np.float32)
    images = torch.tensor(common + 0.3 * specific, dtype=torch.float32)
    tokens = torch.zeros(n, 4, 32)
    tokens[:, 0, :dim] = torch.tensor(specific)
    mask = torch.tensor([[1, 0, 0, 0]] * n)
    return images, tokens, mask, [f"e{i}" for i in range(n)]


def test_embedding_proxy_standardises_with_pool_statistics_and_checks_its_input():
    images, tokens, mask, uids = _embedding_batch()
    mask[:3] = 0  # three null captions: left out of the caption statistics, and 0 after standardising
    proxy = build_proxy(tiny_proxy_config(space="embedding", prior_hidden_dim=32, prior_blocks=1), images,
                        tokens=tokens, mask=mask)
    assert isinstance(proxy, EmbeddingProxy)
    z = proxy.encode(images)
    torch.testing.assert_close(z.mean(0), torch.zeros(24), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(24), atol=1e-3, rtol=0)
    caption = proxy.caption(tokens, mask)
    torch.testing.assert_close(caption[3:, :24].mean(0), torch.zeros(24), atol=1e-4, rtol=0)
    torch.testing.assert_close(caption[3:, :24].std(0), torch.ones(24), atol=1e-3, rtol=0)
    assert caption[:3].abs().max() == 0
    # The statistics travel with the network's state dict (checkpoints save `network`).
    assert {"data_mean", "data_std", "caption_mean", "caption_std"} <= set(proxy.network.state_dict())
    with pytest.raises(ValueError, match="caption tokens"):
        build_proxy(tiny_proxy_config(space="embedding"), images)
    with pytest.raises(ValueError, match="image embeddings"):
        proxy.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="image embeddings"):
        build_proxy(tiny_proxy_config(space="embedding"), torch.zeros(2, 3, 16, 16), tokens=tokens, mask=mask)
    with pytest.raises(ValueError, match="vae_path"):
        tiny_proxy_config(space="embedding", vae_path="/models/vae")
    with pytest.raises(ValueError, match="pixels or embedding"):
        tiny_proxy_config(space="latent")


def test_trained_embedding_prior_reads_the_caption():
    """What issue 12 measured the UNet proxy lacks: after training, another row's caption costs loss."""
    from alchemist_kedro.training.diagnostics import caption_sensitivity

    images, tokens, mask, uids = _embedding_batch(n=64)
    torch.manual_seed(0)
    proxy = build_proxy(tiny_proxy_config(space="embedding", prior_hidden_dim=64, prior_blocks=2), images,
                        tokens=tokens, mask=mask)
    before = caption_sensitivity(proxy, images, tokens, mask, uids, num_timesteps=4, noise_seed=0)
    optimiser = torch.optim.AdamW(proxy.parameters(), lr=1e-3)
    for step in range(300):
        loss = training_loss(proxy, images, tokens, mask, torch.Generator().manual_seed(step)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = caption_sensitivity(proxy, images, tokens, mask, uids, num_timesteps=4, noise_seed=0)
    assert after["caption_sensitivity"] > 0.2, (before, after)
    assert after["loss_own"] < before["loss_own"]


def test_rater_weights_single_softmax_times_batch_weight():
    torch.manual_seed(0)
    rater = Rater(RaterConfig(**base_params("rater.model", patch_inputs=False, alignment_feature=False, proxy_features=False, embedding_inputs=True, interaction_rank=0, text_dim=0, feature_dim=10, hidden_dim=8, group_hidden_dim=4, use_group=True)))
    f = torch.randn(5, 10)
    logits, w_inst, w_b, w = rater(f)
    assert torch.allclose(w_inst, torch.softmax(logits, 0))
    assert torch.allclose(w.sum(), w_b) and 0 < float(w_b) < 1
    no_group = Rater(RaterConfig(**base_params("rater.model", patch_inputs=False, alignment_feature=False, proxy_features=False, embedding_inputs=True, interaction_rank=0, text_dim=0, feature_dim=10, hidden_dim=8, group_hidden_dim=4, use_group=False)))
    assert float(no_group(f)[2]) == 1.0


def test_scores_are_batch_independent():
    torch.manual_seed(0)
    rater = Rater(RaterConfig(**base_params("rater.model", patch_inputs=False, alignment_feature=False, proxy_features=False, embedding_inputs=True, interaction_rank=0, text_dim=0, feature_dim=10, hidden_dim=8, group_hidden_dim=4, use_group=True)))
    f = torch.randn(50, 10) * 3 + 1
    rater.set_standardisation(f)
    full = score_with_rater(rater, f.numpy())
    chunked = score_with_rater(rater, f.numpy(), batch_size=7)
    np.testing.assert_allclose(full, chunked, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(score_with_rater(rater, f[:3].numpy()), full[:3], rtol=1e-6, atol=1e-6)


def _reference_rater(k=1, max_rows=64):
    return Rater(RaterConfig(**base_params(
        "rater.model", patch_inputs=False, alignment_feature=False, proxy_features=False, embedding_inputs=False, interaction_rank=0,
        reference_inputs=True, reference_k=k, reference_max_rows=max_rows, text_dim=4, feature_dim=10, hidden_dim=8,
        group_hidden_dim=4, use_group=True)))


def test_reference_inputs_measure_caption_typicality_and_agreement_with_the_val_pairs():
    rng = np.random.default_rng(0)
    val = torch.tensor(rng.normal(size=(8, 10)), dtype=torch.float32)
    val[:, 6] += 4.0  # the val captions share a direction, as clean captions of one kind of data do
    rater = _reference_rater(k=1)
    rater.attach_reference(val)
    assert int(rater.reference_rows) == 8
    # A pair that is a val pair (up to scale): its caption is typical (cos 1 to the nearest val caption) and agrees
    # with the caption of its nearest val image (itself).
    same = val[:3] * 2.0
    np.testing.assert_allclose(rater.reference_values(same[:, :6], same[:, 6:]).numpy(), 1.0, atol=1e-6)
    # The same image with another val image's caption: still a typical caption, but not this image's.
    swapped = torch.cat([val[:3, :6], val[[5, 6, 7], 6:]], dim=1)
    values = rater.reference_values(swapped[:, :6], swapped[:, 6:]).numpy()
    np.testing.assert_allclose(values[:, 0], 1.0, atol=1e-6)
    assert (values[:, 1] < 0.999).all()
    # A caption pointing away from every val caption is atypical.
    odd = torch.cat([val[:1, :6], torch.tensor([[-1.0, 0.0, 0.0, 0.0]])], dim=1)
    assert float(rater.reference_values(odd[:, :6], odd[:, 6:])[0, 0]) < 0.5
    # The inputs are exactly these two values (embedding_inputs=false), and they travel with the weights.
    assert rater.inputs(same).shape == (3, 2)
    loaded = rater_from_artifact(rater_to_artifact(rater))
    np.testing.assert_allclose(loaded.inputs(swapped).numpy(), rater.inputs(swapped).numpy())


def test_reference_inputs_keep_at_most_max_rows_and_refuse_an_empty_reference():
    rater = _reference_rater(k=2, max_rows=5)
    with pytest.raises(ValueError, match="attach_reference"):
        rater.reference_values(torch.zeros(1, 6), torch.ones(1, 4))
    rater.attach_reference(torch.randn(20, 10))
    assert int(rater.reference_rows) == 5 and rater.reference_text.shape == (5, 4)
    with pytest.raises(ValueError, match="at least reference_k"):
        _reference_rater(k=3).attach_reference(torch.randn(2, 10))


def _patch_rater(bank=64, cells=3, cell_dim=4, **model):
    return Rater(RaterConfig(**base_params(
        "rater.model", **{"alignment_feature": False, "proxy_features": False, "embedding_inputs": False,
                          "interaction_rank": 0, "reference_inputs": False, "patch_inputs": True,
                          "patch_cell_dim": cell_dim, "patch_bank_size": bank, "text_dim": 4,
                          "feature_dim": 10 + cells * cell_dim, "patch_dim": cells * cell_dim, "hidden_dim": 8,
                          "group_hidden_dim": 4, "use_group": True, **model})))


def test_patch_inputs_score_the_worst_cell_against_the_clean_val_patches():
    rng = np.random.default_rng(0)
    base = torch.tensor(rng.normal(size=(8, 10)), dtype=torch.float32)
    clean_cells = torch.tensor([1.0, 0.2, 0.0, 0.0]) + 0.05 * torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0))
    val = torch.cat([base, clean_cells.reshape(8, -1)], dim=1)
    rater = _patch_rater()
    rater.attach_patch_bank(val)
    assert int(rater.patch_bank_rows) == 24  # 8 images × 3 cells, under the bank size
    like_val = val[:2].clone()
    one_odd_cell = val[:2].clone()
    one_odd_cell[:, 10 + 4:10 + 8] = torch.tensor([0.0, 0.0, 1.0, 0.0])  # the middle cell shows something else
    anomaly_like, anomaly_odd = rater.patch_values(like_val)[:, 0], rater.patch_values(one_odd_cell)[:, 0]
    assert (anomaly_like < 1e-5).all() and (anomaly_odd > 0.5).all(), (anomaly_like, anomaly_odd)
    # The input is this one value (nothing else configured), the patches never reach the MLP themselves, and the bank
    # travels with the weights.
    assert rater.inputs(one_odd_cell).shape == (2, 1)
    loaded = rater_from_artifact(rater_to_artifact(rater))
    np.testing.assert_allclose(loaded.inputs(one_odd_cell).numpy(), rater.inputs(one_odd_cell).numpy())


def test_global_anomaly_inputs_read_a_whole_image_shift_that_no_single_cell_shows():
    """Every cell moved a little (a degradation of the whole image) raises the mean-cell input more than the worst-cell
    one; an image unlike every val image raises the image-level input; the banks travel with the weights."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(8, 10, generator=gen)
    clean_cells = torch.tensor([1.0, 0.2, 0.0, 0.0]) + 0.05 * torch.randn(8, 3, 4, generator=gen)
    val = torch.cat([base, clean_cells.reshape(8, -1)], dim=1)
    rater = _patch_rater(global_anomaly_inputs=True)
    rater.attach_patch_bank(val)
    assert int(rater.image_bank_rows) == 8
    like_val = val[:2].clone()
    all_cells_shifted = val[:2].clone()
    all_cells_shifted[:, 10:] = (clean_cells[:2] + torch.tensor([0.0, 0.0, 0.45, 0.0])).reshape(2, -1)
    one_odd_cell = val[:2].clone()
    one_odd_cell[:, 10 + 4:10 + 8] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    other_image = val[:2].clone()
    other_image[:, :6] = -base[:2, :6]  # image_emb is the first 6 of the 10 base features (text_dim 4)
    like, shifted, odd, image = (rater.patch_values(x) for x in (like_val, all_cells_shifted, one_odd_cell, other_image))
    assert like.shape == (2, 3) and (like.abs() < 1e-5).all(), like
    # the whole-image shift: the mean near the worst (every cell alike); one odd cell of three: mean = worst / 3
    assert (shifted[:, 0] > 0.02).all() and (shifted[:, 1] > 0.7 * shifted[:, 0]).all(), shifted
    torch.testing.assert_close(odd[:, 1], odd[:, 0] / 3, rtol=1e-3, atol=1e-3)
    assert (image[:, 2] > 0.3).all() and (image[:, :2].abs() < 1e-5).all(), image
    assert rater.inputs(one_odd_cell).shape == (2, 3)
    loaded = rater_from_artifact(rater_to_artifact(rater))
    np.testing.assert_allclose(loaded.inputs(other_image).numpy(), rater.inputs(other_image).numpy())
    with pytest.raises(ValueError, match="set patch_inputs true"):
        _patch_rater(global_anomaly_inputs=True, patch_inputs=False)


def test_patch_inputs_keep_at_most_the_bank_size_and_refuse_features_without_patches():
    rater = _patch_rater(bank=5)
    with pytest.raises(ValueError, match="attach_patch_bank"):
        rater.patch_values(torch.randn(1, 22))
    rater.attach_patch_bank(torch.randn(20, 22))
    assert int(rater.patch_bank_rows) == 5
    with pytest.raises(ValueError, match="patch_grid > 0"):
        _patch_rater(cells=0)


def test_prior_input_gives_the_image_and_the_patch_cells_equal_width_and_norm():
    """proxy.patch_cells: [unit image_emb ; cells] with the cells at image width / cells (projected when wider), so
    each part is half the prior's standardised loss; a projected cell keeps its cosines to other cells roughly."""
    from alchemist_kedro.models.proxy import prior_input

    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.normal(size=(6, 64)).astype(np.float32))
    patches = torch.from_numpy(rng.normal(size=(6, 4 * 128)).astype(np.float32))
    x = prior_input(image, patches, 128)
    assert x.shape == (6, 64 + 4 * 16)
    torch.testing.assert_close(x[:, :64].norm(dim=1), torch.ones(6))
    torch.testing.assert_close(x[:, 64:].norm(dim=1), torch.ones(6))
    cells = torch.nn.functional.normalize(patches.reshape(-1, 128), dim=1)
    mixed = cells.clone()
    mixed[1] = torch.nn.functional.normalize(cells[0] + 0.3 * cells[1], dim=0)  # cell 1 close to cell 0
    projected = prior_input(image[:6], mixed.reshape(6, -1), 128)[:, 64:].reshape(-1, 16)
    projected = torch.nn.functional.normalize(projected, dim=1)
    assert float(projected[0] @ projected[1]) > 0.75 and abs(float(projected[0] @ projected[2])) < 0.6
    wide = prior_input(torch.randn(6, 1024), patches, 128)  # 1024 / 4 cells >= 128: the cells as they are
    torch.testing.assert_close(wide[:, 1024:].reshape(6, 4, 128) * 2, torch.nn.functional.normalize(
        patches.reshape(6, 4, 128), dim=-1))


def test_two_sided_rater_scores_a_pair_by_its_weaker_side():
    """The instance logit is the soft minimum of an image-side MLP (patch anomaly) and a caption-side one (reference
    values): a very low side pulls the pair down whatever the other side says; both train with the rater step."""
    torch.manual_seed(0)
    rater = _patch_rater(two_sided=True, reference_inputs=True, reference_k=1)
    val = torch.randn(8, 22, generator=torch.Generator().manual_seed(1))
    rater.attach_reference(val), rater.attach_patch_bank(val)
    assert rater.image_columns == [2] and rater.caption_columns == [0, 1]  # inputs(): reference ×2, then patch
    assert rater.instance_mlp[0].in_features == 1 and rater.caption_mlp[0].in_features == 2
    f = rater.standardise(val)
    sides = rater.side_logits(f)
    logits = rater._logits(f)
    torch.testing.assert_close(logits, -torch.logsumexp(-sides, dim=-1))
    assert (logits <= sides.min(-1).values + 1e-6).all()
    with torch.no_grad():
        rater.caption_mlp[-1].bias.fill_(-20.0)  # a caption side far below: the pair follows it
    assert (rater._logits(f) < -19.0).all()
    with pytest.raises(ValueError, match="two_sided needs an image-side input"):
        _patch_rater(two_sided=True, patch_inputs=False, reference_inputs=True)
    with pytest.raises(ValueError, match="softmin or product"):
        _patch_rater(two_sided=True, two_sided_combine="max")
    loaded = rater_from_artifact(rater_to_artifact(rater))
    np.testing.assert_allclose(loaded.instance_logits(val).detach().numpy(), rater.instance_logits(val).detach().numpy())


def test_two_sided_product_scores_log_both_sides_good_and_feeds_each_side_its_own_gradient():
    """two_sided_combine product: log σ(a_image) + log σ(a_caption). Unlike the soft minimum, a side that sits far
    below the other on every row still leaves the other side its full gradient (no starvation)."""
    torch.manual_seed(0)
    val = torch.randn(8, 22, generator=torch.Generator().manual_seed(1))
    raters = {}
    for combine in ("softmin", "product"):
        torch.manual_seed(0)
        rater = _patch_rater(two_sided=True, two_sided_combine=combine, reference_inputs=True, reference_k=1)
        rater.attach_reference(val), rater.attach_patch_bank(val)
        with torch.no_grad():
            rater.instance_mlp[-1].bias.fill_(-20.0)  # the image side far below the caption side on every row
        raters[combine] = rater
    f = raters["product"].standardise(val)
    sides = raters["product"].side_logits(f)
    torch.testing.assert_close(raters["product"]._logits(f), torch.nn.functional.logsigmoid(sides).sum(-1))
    grads = {}
    for combine, rater in raters.items():
        rater.zero_grad()
        rater._logits(rater.standardise(val)).sum().backward()
        grads[combine] = rater.caption_mlp[-1].bias.grad.abs().item()
    assert grads["softmin"] < 1e-6 < 0.1 < grads["product"], grads
