"""Where a stage's models run: `device: auto | cpu | cuda | cuda:N` and `precision: fp32 | bf16 | fp16` (issue 15).

One resolver for every stage that runs a model (encoders, rater training and scoring, train_t2i, evaluate, the
diffusion-based scorers), so "auto" means the same everywhere and each stage logs one line saying where it ran. A CUDA
request on a machine without CUDA falls back to the CPU with a warning, not a crash: the same conf runs on a laptop and
on a GPU box. Random draws stay on CPU generators (models/proxy.py `generator_for`) and move to the device afterwards,
so the common random numbers are the same draws on every device and a CPU run is bit-for-bit what it was before.
"""
from __future__ import annotations

import contextlib
import logging
import re

logger = logging.getLogger(__name__)

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def resolve_device(spec: str | None = "auto", *, stage: str = ""):
    """The torch device for `spec`, with one log line naming it (and why, when it is not what was asked)."""
    import torch

    spec = "auto" if spec is None else str(spec).strip().lower()
    if not _SPEC.match(spec):
        raise ValueError(f"{stage or 'device'}: device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    label = f"{stage}: " if stage else ""
    if spec == "cpu":
        logger.info("%sdevice cpu", label)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if spec == "auto":
            logger.info("%sdevice cpu (auto: no CUDA device visible to torch)", label)
        else:
            logger.warning("%sdevice %s requested but torch sees no CUDA device: running on cpu", label, spec)
        return torch.device("cpu")
    device = torch.device("cuda" if spec == "auto" else spec)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ValueError(f"{label}device {spec} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    device = torch.device("cuda", index)
    logger.info("%sdevice %s (%s)", label, device, torch.cuda.get_device_name(index))
    return device


def autocast(device, precision: str | None = "fp32"):
    """torch.autocast for bf16/fp16 on CUDA; a no-op context on CPU or for fp32 (CPU results must not change)."""
    import torch

    precision = precision or "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if PRECISIONS[precision] is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, PRECISIONS[precision]))


def onnx_providers(spec: str | None = "auto", *, stage: str = "") -> list:
    """onnxruntime execution providers for `spec`: CUDA first when the installed onnxruntime has it (the optional
    `gpu` extra, onnxruntime-gpu) and a CUDA device was asked for or `auto`; else the CPU. One log line says which."""
    import onnxruntime as ort

    spec = "auto" if spec is None else str(spec).strip().lower()
    if not _SPEC.match(spec):
        raise ValueError(f"{stage or 'device'}: device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    label = f"{stage}: " if stage else ""
    available = ort.get_available_providers()
    if spec != "cpu" and "CUDAExecutionProvider" in available:
        index = int(spec.split(":")[1]) if ":" in spec else 0
        logger.info("%sonnxruntime provider CUDAExecutionProvider (device %d)", label, index)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if spec.startswith("cuda"):
        logger.warning("%sdevice %s requested but onnxruntime has no CUDAExecutionProvider (install the `gpu` extra, "
                       "onnxruntime-gpu): running on CPUExecutionProvider", label, spec)
    else:
        logger.info("%sonnxruntime provider CPUExecutionProvider", label)
    return ["CPUExecutionProvider"]


def module_device(module):
    """The device of a module's first parameter (CPU for a module without any)."""
    import torch

    return next(iter(module.parameters()), torch.empty(0)).device
