import math

import numpy as np
import torch

from alchemist_kedro.models.alignment import alignment_from_artifact
from alchemist_kedro.pipelines.evaluate.nodes import build_test_set, evaluate_t2i, fit_alignment_on_val
from alchemist_kedro.tables import derangement
from alchemist_kedro.pipelines.train_t2i.nodes import build_t2i_inputs, train_t2i_model
from tests.conf_values import base_params
from tests.pipelines.train_t2i.tables import manifest, t2i_params, tables

torch.set_num_threads(1)


def test_alignment_is_fitted_on_val_only_and_separates_matching_pairs():
    samples, features = tables()
    index = {k: (lambda load=load: load()[["uid", "split"]]) for k, load in samples.items()}
    artifact = fit_alignment_on_val(index, features, base_params("evaluate", alignment={"epochs": 30, "batch_size": 8}))
    model = alignment_from_artifact(artifact)
    assert model.config.image_dim == 1024 and model.config.text_dim == 24
    feats = features["b"]()
    image = np.stack(feats["image_emb"].to_list()).astype(np.float32)
    text = np.stack(feats["text_emb"].to_list()).astype(np.float32)
    matched = model(torch.from_numpy(image), torch.from_numpy(text)).mean()
    mismatched = model(torch.from_numpy(image), torch.from_numpy(np.roll(text, 1, axis=0))).mean()
    assert matched > mismatched


def test_derangement_has_no_fixed_point():
    for n in (2, 5, 195):
        perm = derangement(n, 0)
        assert sorted(perm) == list(range(n)) and (perm != np.arange(n)).all()


def test_evaluate_on_tiny_model_gives_finite_metrics(tmp_path):
    samples, features = tables()
    params = t2i_params(tmp_path)
    artifact, *_ = train_t2i_model(build_t2i_inputs(manifest(), samples, features, params), params)
    index = {k: (lambda load=load: load()[["uid", "split"]]) for k, load in samples.items()}
    alignment = fit_alignment_on_val(index, features, base_params("evaluate", alignment={"epochs": 10, "batch_size": 8}))
    eval_params = base_params("evaluate", threads=1, max_test_samples=6, sample_steps=2, batch_size=4,
                              image_encoder={"name": "open_nsfw", "batch_size": 8, "threads": 1})
    test = build_test_set(samples, features, artifact, eval_params)
    assert test["uids"] == [f"u{i:03d}" for i in range(44, 50)] and test["images"].shape[-1] == 16
    history, report = evaluate_t2i(artifact, test, alignment, eval_params)
    metrics = report["metrics"]
    assert {"fd_onsfw", "alignment", "alignment_ceiling", "alignment_shuffled", "test_loss", "test_loss_low_t",
            "test_loss_mid_t", "test_loss_high_t", "test_caption_gain", "fwd"} <= set(metrics)
    assert metrics["test_loss"] > 0 and metrics["fwd"] >= 0
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["fd_onsfw"] >= 0
    assert metrics["num_test"] == 6 and history["fd_onsfw"][0]["value"] == metrics["fd_onsfw"]
