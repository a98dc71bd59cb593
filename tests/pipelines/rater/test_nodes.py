import io

import numpy as np
import pandas as pd
import torch
from kedro.io import Version
from PIL import Image

from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.models.proxy import prior_input
from alchemist_kedro.models.rater import rater_from_artifact, score_with_rater
from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs, train_rater
from tests.conf_values import base_params

torch.set_num_threads(1)
TOKENS, TOKEN_DIM = 4, 32


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buf, format="PNG")
    return buf.getvalue()


def _tables(n_pool=24, n_val=8, n_test=4):
    rng = np.random.default_rng(0)
    rows, feats = [], []
    for i, split in enumerate(["pool"] * n_pool + ["val"] * n_val + ["test"] * n_test):
        uid = f"u{i:03d}"
        rows.append({"uid": uid, "caption": "c", "image": _png((i * 7 % 255, 40, 200)), "split": split,
                     "defect": "noise" if i % 5 == 0 else None})
        if i != 3:  # one pool sample has no features yet
            feats.append({"uid": uid, "image_emb": rng.normal(size=12).astype(np.float32),
                          "text_emb": rng.normal(size=6).astype(np.float32),
                          "text_tokens": rng.normal(size=TOKENS * TOKEN_DIM).astype(np.float32),
                          "text_mask": np.array([1, 1, 0, 0], np.int8),
                          "patch_emb": rng.normal(size=2 * 128).astype(np.float32), "fingerprint": "fp"})
    samples, features = pd.DataFrame(rows), pd.DataFrame(feats)
    # PartitionedDataset hands nodes {partition: load callable}; two shards each.
    return ({"a": lambda: samples.iloc[:20], "b": lambda: samples.iloc[20:]},
            {"a": lambda: features.iloc[:10], "b": lambda: features.iloc[10:]})


def _params(tmp_path):
    return base_params(
        "rater",
        threads=1,
        checkpoint_dir=str(tmp_path / "ckpt"),
        proxy={"resolution": 16, "block_out_channels": [16, 32], "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
               "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 8,
               "cross_attention_dim": TOKEN_DIM, "space": "pixels"},
        # The pixel proxy: the rater reads the embeddings themselves (the prior's inputs need proxy.space=embedding).
        model={"hidden_dim": 8, "group_hidden_dim": 4, "use_group": True, "alignment_feature": False,
               "proxy_features": False, "embedding_inputs": True},
        training={"warmup_steps": 2, "meta_steps": 3, "batch_size": 8, "val_batch_size": 4, "checkpoint_every": 2,
                  "trace_every": 2, "probe_size": 3, "ul_start": 0.5},
    )


def test_embedding_proxy_trains_on_the_cached_image_embeddings_without_decoding(tmp_path):
    samples, features = _tables()
    params = _params(tmp_path)
    params["proxy"]["space"] = "embedding"
    params["model"].update(proxy_features=True, embedding_inputs=False)  # the shipped rater: the prior's inputs
    params["proxy"]["patch_cells"] = False
    out = build_rater_inputs(samples, features, params)
    assert out.pool.images.shape == (23, 12) and out.val.images.shape == (8, 12)
    frame = pd.concat([f() for f in features.values()]).set_index("uid")
    np.testing.assert_array_equal(out.pool.images[0].numpy(), frame.loc[out.pool.uids[0], "image_emb"])
    # The shipped default (proxy.patch_cells): the prior models [image_emb ; the 2 patch cells, each at 12 / 2 dims].
    with_cells = build_rater_inputs(samples, features, {**params, "proxy": {**params["proxy"], "patch_cells": True}})
    row = frame.loc[with_cells.pool.uids[0]]
    expected = prior_input(torch.tensor(row["image_emb"])[None], torch.tensor(row["patch_emb"])[None], 128)
    assert with_cells.pool.images.shape == (23, 12 + 2 * 6)
    torch.testing.assert_close(with_cells.pool.images[:1], expected)
    # The prior reads the caption as its sentence embedding (one token), the vector the rater's inputs read.
    assert out.pool.tokens.shape == (23, 1, 6) and bool(out.pool.mask.all())
    np.testing.assert_array_equal(out.pool.tokens[0, 0].numpy(), frame.loc[out.pool.uids[0], "text_emb"])
    params["proxy"]["patch_cells"] = True
    out = with_cells
    artifact, metrics, _, trace = train_rater(out, None, params)
    assert "diagnostics/theta_hat/caption_sensitivity" in metrics and len(trace) > 0
    rater = rater_from_artifact(artifact)
    assert rater.proxy is not None and rater.feature_mean.shape == (3,)  # L̂, the gain, the patch anomaly
    f = out.pool_features.numpy()
    np.testing.assert_array_equal(score_with_rater(rater, f), score_with_rater(rater_from_artifact(artifact), f))


def test_build_inputs_joins_by_uid_decodes_and_drops_test(tmp_path):
    samples, features = _tables()
    out = build_rater_inputs(samples, features, _params(tmp_path))
    assert len(out.pool.uids) == 23 and len(out.val.uids) == 8 and out.missing_features == 1
    assert "u003" not in out.pool.uids and not any(int(u[1:]) >= 32 for u in out.pool.uids + out.val.uids)
    assert out.pool.images.shape == (23, 3, 16, 16)
    # u000 was filled with RGB (0, 40, 200) → [-1, 1] scale.
    np.testing.assert_allclose(out.pool.images[0, :, 0, 0].numpy(), np.array([0, 40, 200]) / 127.5 - 1, atol=1e-6)
    assert out.pool.tokens.shape == (23, TOKENS, TOKEN_DIM) and out.pool_features.shape == (23, 18 + 2 * 128)


def test_train_node_outputs_and_model_round_trip(tmp_path):
    samples, features = _tables()
    inputs = build_rater_inputs(samples, features, _params(tmp_path))
    artifact, metrics, table, trace = train_rater(inputs, None, _params(tmp_path))
    assert {"meta/val_loss", "meta/batch_weight", "warmup/loss"} <= set(metrics)  # the catalog adds "rater."
    assert [p["step"] for p in metrics["meta/val_loss"]] == [2, 3, 4]
    assert set(table.columns) == {"metric", "step", "value"} and len(table) == sum(map(len, metrics.values()))
    assert list(trace.columns) == ["step", "uid", "loss", "grad_norm"] and (trace["grad_norm"] > 0).all()
    assert any((tmp_path / "ckpt").rglob("state.json"))

    ds = TorchSafetensorsDataset(filepath=str(tmp_path / "rater.safetensors"), version=Version(None, None))
    ds.save(artifact)
    loaded = rater_from_artifact(ds.load())
    f = inputs.pool_features.numpy()
    np.testing.assert_array_equal(score_with_rater(loaded, f), score_with_rater(rater_from_artifact(artifact), f))


def test_alignment_feature_travels_with_the_rater_artifact(tmp_path):
    """model.alignment_feature: the fitted projection's cosine is a rater input, and the saved rater carries the
    projection, so scoring a features table later needs nothing else."""
    from alchemist_kedro.evaluation.downstream import fit_alignment_on_val

    samples, features = _tables()
    params = _params(tmp_path)
    params["model"]["alignment_feature"] = True
    index = {k: (lambda load=load: load()[["uid", "split"]]) for k, load in samples.items()}
    alignment = fit_alignment_on_val(index, features, base_params("evaluate", alignment={"epochs": 3, "batch_size": 8}))
    inputs = build_rater_inputs(samples, features, params)
    artifact, *_ = train_rater(inputs, alignment, params)
    rater = rater_from_artifact(artifact)
    assert rater.alignment is not None and rater.feature_mean.shape == (18 + 1 + 1,)
    f = inputs.pool_features
    cosine = rater.inputs(f)[:, 18]  # after image_emb ⊕ text_emb; the patch anomaly comes last
    from alchemist_kedro.models.alignment import alignment_from_artifact

    expected = alignment_from_artifact(alignment)(f[:, :12], f[:, 12:18])
    torch.testing.assert_close(cosine, expected)
    np.testing.assert_array_equal(score_with_rater(rater, f.numpy()), score_with_rater(rater_from_artifact(artifact),
                                                                                          f.numpy()))


def _lazy_corpus(n_shards, rows_per_shard=400, n_val=20, dim=256):
    """{shard: loader} for samples and features, each frame built only when called (as PartitionedDataset does)."""
    def samples(s):
        def load():
            uids = [f"s{s:03d}_{i:04d}" for i in range(rows_per_shard)]
            split = ["val" if (s == 0 and i < n_val) else "pool" for i in range(rows_per_shard)]
            return pd.DataFrame({"uid": uids, "caption": "c", "image": b"", "split": split})
        return load

    def features(s):
        def load():
            rng = np.random.default_rng(s)
            return pd.DataFrame({"uid": [f"s{s:03d}_{i:04d}" for i in range(rows_per_shard)],
                                 "image_emb": list(rng.normal(size=(rows_per_shard, dim)).astype(np.float32)),
                                 "text_emb": list(rng.normal(size=(rows_per_shard, 64)).astype(np.float32))})
        return load

    return ({f"{s:03d}": samples(s) for s in range(n_shards)}, {f"{s:03d}": features(s) for s in range(n_shards)})


def _embedding_params(tmp_path, pool_sample):
    params = _params(tmp_path)
    params["proxy"]["space"] = "embedding"
    params["pool_sample"] = pool_sample
    params["model"]["patch_inputs"] = False  # these corpora carry no patch_emb
    params["proxy"]["patch_cells"] = False
    return params


def test_pool_sample_is_a_fixed_uniform_sample_whatever_the_sharding(tmp_path):
    samples, features = _lazy_corpus(6)
    out = build_rater_inputs(samples, features, _embedding_params(tmp_path, 300))
    assert len(out.pool) == 300 and len(out.val) == 20  # val is never sampled
    all_pool = pd.Series([f"s{s:03d}_{i:04d}" for s in range(6) for i in range(400) if not (s == 0 and i < 20)])
    from alchemist_kedro.tables import sample_key

    expected = set(all_pool[np.argsort(sample_key(all_pool, 0))[:300]])
    assert set(out.pool.uids) == expected
    # The same rows when the corpus arrives as one shard, and a different sample for another seed.
    one = {"all": lambda: pd.concat([load() for load in samples.values()], ignore_index=True)}
    assert set(build_rater_inputs(one, features, _embedding_params(tmp_path, 300)).pool.uids) == expected
    params = _embedding_params(tmp_path, 300)
    params["training"]["seed"] = 1
    assert set(build_rater_inputs(samples, features, params).pool.uids) != expected
    # Sampled pools hit every shard (uniform), and null keeps the whole pool.
    assert len({uid[:4] for uid in out.pool.uids}) == 6
    assert len(build_rater_inputs(samples, features, _embedding_params(tmp_path, None)).pool) == len(all_pool)


def test_rater_inputs_memory_does_not_grow_with_the_pool_beyond_the_sample(tmp_path):
    import gc
    import tracemalloc

    def peak(n_shards, pool_sample):
        samples, features = _lazy_corpus(n_shards)
        gc.collect()
        tracemalloc.start()
        out = build_rater_inputs(samples, features, _embedding_params(tmp_path, pool_sample))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del out
        return top

    small, large = peak(4, 300), peak(16, 300)
    assert large < 1.5 * small, f"peak {large / 1e6:.1f} MB at 16 shards vs {small / 1e6:.1f} MB at 4 (sample 300)"
    # Without the bound the same corpus grows with the pool: the measurement can tell.
    assert peak(16, None) > 2.5 * peak(4, None)
