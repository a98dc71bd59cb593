import io

import matplotlib.pyplot as plt
import numpy as np
import torch
from kedro.io import Version
from kedro_datasets.matplotlib import MatplotlibDataset
from PIL import Image

from alchemist_kedro.datasets.torch_safetensors import TorchSafetensorsDataset
from alchemist_kedro.models.t2i import t2i_from_artifact
from alchemist_kedro.pipelines.train_t2i.nodes import build_t2i_inputs, train_t2i_model
from tests.pipelines.train_t2i.tables import manifest, t2i_params, tables

torch.set_num_threads(1)


def test_inputs_are_the_selected_pool_rows_and_test_grid(tmp_path):
    samples, features = tables()
    inputs = build_t2i_inputs(manifest(selected_every=2), samples, features, t2i_params(tmp_path))
    train = inputs["train"]
    assert train["uids"] == [f"u{i:03d}" for i in range(0, 32, 2)] and inputs["selected"] == 16
    assert train["images"].shape == (16, 3, 16, 16) and train["tokens"].shape == (16, 4, 32)
    assert train["mask"].tolist()[0] == [1, 1, 1, 0]
    # Grid = 4 test uids evenly spaced over the 8 test rows (u044..u051), never pool rows; tensors follow the uids.
    assert inputs["grid"]["uids"] == ["u044", "u046", "u049", "u051"]
    assert inputs["grid"]["images"].shape[0] == len(inputs["grid"]["captions"]) == len(inputs["grid"]["text_emb"]) == 4


def test_half_selection_trains_half_the_steps_and_writes_outputs(tmp_path):
    samples, features = tables()
    params = t2i_params(tmp_path, epochs=2)
    steps = {}
    for every in (1, 2):
        inputs = build_t2i_inputs(manifest(selected_every=every), samples, features, params)
        artifact, metrics, summary, figure = train_t2i_model(inputs, params)
        steps[every] = summary["steps"]
        assert len(metrics["train/loss"]) == summary["steps"]
        assert metrics["train_seconds"][0]["value"] > 0
        plt.close(figure) if every == 1 else None
    assert steps == {1: 8, 2: 4}  # 32 rows → 4 batches of 8 per epoch; 16 rows → 2; 2 epochs each

    # The grid PNG is a real, non-empty image; the model round-trips through its catalog dataset.
    path = tmp_path / "grid.png"
    MatplotlibDataset(filepath=str(path)).save(figure)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and np.asarray(image.convert("L")).std() > 0
    ds = TorchSafetensorsDataset(filepath=str(tmp_path / "t2i.safetensors"), version=Version(None, None))
    ds.save(artifact)
    model = t2i_from_artifact(ds.load())
    assert model.config.block_out_channels == (16, 32) and model.config.guidance_scale == 2.0
    assert any((tmp_path / "t2i_ckpt").rglob("state.json"))
