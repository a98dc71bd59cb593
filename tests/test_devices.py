"""Device selection (devices.py): auto/cpu/cuda[:N], the CPU fallback with its log line, ONNX providers, autocast."""
import logging

import numpy as np
import pytest
import torch

from alchemist_kedro import devices
from alchemist_kedro.devices import autocast, module_device, onnx_providers, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_without_cuda_is_cpu_and_says_why(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="alchemist_kedro.devices"):
        assert resolve_device("auto", stage="rater") == torch.device("cpu")
    assert "rater: device cpu (auto: no CUDA device visible to torch)" in caplog.text


def test_cuda_request_without_cuda_falls_back_to_cpu_with_a_warning(no_cuda, caplog):
    with caplog.at_level(logging.INFO, logger="alchemist_kedro.devices"):
        assert resolve_device("cuda:1", stage="train_t2i") == torch.device("cpu")
    record = [r for r in caplog.records if "train_t2i" in r.getMessage()][0]
    assert record.levelno == logging.WARNING and "cuda:1 requested" in record.getMessage()


def test_cuda_index_beyond_the_devices_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:3", stage="evaluate")


@pytest.mark.parametrize("spec", ["gpu", "cuda0", "mps", "cuda:x"])
def test_unknown_device_strings_are_refused(spec):
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_onnx_providers_fall_back_to_cpu_and_take_cuda_when_installed(monkeypatch, caplog):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger="alchemist_kedro.devices"):
        assert onnx_providers("cuda", stage="features") == ["CPUExecutionProvider"]
        assert onnx_providers("auto", stage="features") == ["CPUExecutionProvider"]
    assert "no CUDAExecutionProvider" in caplog.text and "provider CPUExecutionProvider" in caplog.text
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers("cuda:1") == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert onnx_providers("cpu") == ["CPUExecutionProvider"]


def test_open_nsfw_asked_for_cuda_runs_on_the_cpu_provider_here():
    import onnxruntime as ort

    from alchemist_kedro.encoders.open_nsfw import OpenNSFWEncoder

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the CUDA provider would be taken")
    encoder = OpenNSFWEncoder(batch_size=2, threads=1, device="cuda")
    assert encoder._session.get_providers() == ["CPUExecutionProvider"]
    image = np.full((32, 32, 3), 128, np.uint8)
    np.testing.assert_array_equal(encoder.embed_images([image]),
                                  OpenNSFWEncoder(batch_size=2, threads=1, device="cpu").embed_images([image]))


def test_autocast_is_a_no_op_on_cpu_and_checks_its_argument():
    with autocast(torch.device("cpu"), "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="precision"):
        autocast(torch.device("cpu"), "int8")
    assert module_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert devices.module_device(torch.nn.Identity()) == torch.device("cpu")
