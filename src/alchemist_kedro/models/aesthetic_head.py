"""The LAION improved aesthetic predictor's head (github.com/christophschuhmann/improved-aesthetic-predictor).

An MLP 768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout 0.2, 0.2, 0.1 after the first three layers and no
nonlinearities, on the L2-normalised CLIP ViT-L/14 image embedding; scores are roughly 1-10. The module layout
(`layers` = Sequential of Linear/Dropout) reproduces the published state-dict keys of
`sac+logos+ava1-l14-linearMSE.pth`: layers.0, layers.2, layers.4, layers.6, layers.7 (weight, bias).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

PUBLISHED_HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


@dataclass
class AestheticHeadConfig:
    input_dim: int = 768  # CLIP ViT-L/14 projection dim
    hidden_dims: tuple[int, ...] = (1024, 128, 64, 16)
    dropouts: tuple[float, ...] = (0.2, 0.2, 0.1)


class AestheticHead(nn.Module):
    def __init__(self, config: AestheticHeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or AestheticHeadConfig()
        dims = (self.config.input_dim, *self.config.hidden_dims)
        modules: list[nn.Module] = []
        for index, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            modules.append(nn.Linear(fan_in, fan_out))
            if index < len(self.config.dropouts):
                modules.append(nn.Dropout(self.config.dropouts[index]))
        modules.append(nn.Linear(dims[-1], 1))
        self.layers = nn.Sequential(*modules)

    def forward(self, normalised_embedding: torch.Tensor) -> torch.Tensor:
        """(N, input_dim) L2-normalised image embeddings -> (N,) aesthetic scores."""
        return self.layers(normalised_embedding).squeeze(-1)


def load_head_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The head's weights from a .safetensors file or a .pth/.pt state dict (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"aesthetic head weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    elif path.suffix in (".pth", ".pt", ".bin"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"aesthetic head weights must be .safetensors or .pth/.pt, got {path.name}")
    if not isinstance(state, dict) or "layers.0.weight" not in state:
        keys = sorted(state)[:6] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: not an aesthetic-head state dict (expected layers.0.weight ...; found {keys})")
    return state


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """Build the head with the input dim the weights have (768 for the published ViT-L/14 head), in eval mode."""
    state = load_head_state_dict(path)
    head = AestheticHead(AestheticHeadConfig(input_dim=int(state["layers.0.weight"].shape[1])))
    head.load_state_dict(state, strict=True)
    return head.eval()
