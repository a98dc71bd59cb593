"""CLIP-score and Inception FID load only from local files: tiny random weights written to a temp folder."""
from fractions import Fraction

import numpy as np
import pytest
import torch

from alchemist_kedro.evaluation.published import clip_score, clip_score_metric, inception_fid, inception_fid_metric
from tests.evaluation.images import coloured_shapes, pixel_noise
from tests.tiny_clip import save_tiny_clip

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_clip_score_loads_the_local_folder(tiny_clip):
    from safetensors.torch import load_file

    metric = clip_score_metric(tiny_clip)
    saved = load_file(str(tiny_clip / "model.safetensors"))
    name = next(k for k in saved if k.endswith("visual_projection.weight"))
    torch.testing.assert_close(metric.model.clip.state_dict()[name], saved[name])  # the saved weights, not a fresh init

    images = coloured_shapes(3) + [coloured_shapes(1, size=40)[0]]  # mixed sizes: the processor resizes
    captions = ["a red disc", "a blue square", "a green thing", "a big shape"]
    score = clip_score(images, captions, tiny_clip, batch_size=3)
    assert np.isfinite(score) and 0.0 <= score <= 100.0
    assert clip_score(images, captions, tiny_clip, batch_size=4) == pytest.approx(score, rel=1e-5)


def test_clip_score_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_score(coloured_shapes(1), ["a"], tmp_path / "no_such_clip")


def test_clip_score_folder_without_weights_is_refused(tmp_path):
    from transformers import CLIPConfig

    CLIPConfig().save_pretrained(tmp_path)  # a config but no weights
    with pytest.raises(OSError):
        clip_score_metric(tmp_path)


def test_inception_fid_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Inception weights file not found"):
        inception_fid(coloured_shapes(2), coloured_shapes(2), tmp_path / "pt_inception.pth")


def test_inception_fid_without_torch_fidelity_names_the_package(tmp_path):
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        weights = tmp_path / "pt_inception.pth"
        torch.save({"x": torch.zeros(1)}, weights)
        with pytest.raises(ModuleNotFoundError, match="torch-fidelity"):
            inception_fid_metric(weights)
    else:
        pytest.skip("torch-fidelity is installed; test_inception_fid_from_local_random_weights covers it")


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A state dict of torch-fidelity's Inception-v3 with random weights (its real layout, no download)."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    patch = pytest.MonkeyPatch()
    # Build the module without the state-dict load its constructor insists on (a download when no path is given).
    patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: None)
    patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
    torch.manual_seed(0)
    try:
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    finally:
        patch.undo()
    path = tmp_path_factory.mktemp("inception") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return path


def test_inception_fid_from_local_random_weights(random_inception_weights):
    saved = torch.load(random_inception_weights, weights_only=True)
    loaded = inception_fid_metric(random_inception_weights).inception.state_dict()
    torch.testing.assert_close(loaded["Conv2d_1a_3x3.conv.weight"], saved["Conv2d_1a_3x3.conv.weight"])
    shapes = coloured_shapes(4)
    value = inception_fid(shapes, pixel_noise(4), random_inception_weights, batch_size=2)
    assert np.isfinite(value) and value >= 0


def test_inception_weights_that_need_full_unpickling_are_refused(tmp_path):
    pytest.importorskip("torch_fidelity")
    path = tmp_path / "evil.pth"
    torch.save({"payload": Fraction(1, 3)}, path)  # an arbitrary object: only full unpickling could load it
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        inception_fid_metric(path)


def test_no_pipeline_imports_the_published_metrics():
    # They are for users with local weights; building every pipeline must not import them (nor their dependencies).
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys; import alchemist_kedro.pipelines as p\n"
            "for m in pkgutil.iter_modules(p.__path__):\n"
            "    if m.ispkg: importlib.import_module(f'alchemist_kedro.pipelines.{m.name}').create_pipeline()\n"
            "print('alchemist_kedro.evaluation.published' in sys.modules, 'alchemist_kedro.evaluation.metrics' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
