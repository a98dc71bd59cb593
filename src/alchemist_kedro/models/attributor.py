"""FastGDA's distilled attributor (Wang et al., NeurIPS 2025): one MLP that maps a pair's cached features (image ⊕
text) to a unit vector, so that the cosine between a query's vector and a training pair's vector orders training
pairs like the slow unlearning ground truth. Queries and training pairs go through the same network (both are an
image with its caption), as in the seed's `--hidden_sizes / --input_norm / --dropout / --out_feat_dim` model.

Retrieval is a matrix product of unit vectors (training vectors embedded once); faiss only pays off far beyond the
sizes this project trains downstream models on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttributorConfig:
    image_dim: int  # set from the data (Open-NSFW: 1024)
    text_dim: int  # set from the data (MiniLM: 384)
    hidden_sizes: tuple[int, ...] = (768, 768, 768)  # the seed's default
    out_dim: int = 768
    input_norm: bool = True  # LayerNorm on the input, as the seed's --input_norm
    dropout: float = 0.1
    # Residual: output = unit(g_image · image ⊕ g_text · text + MLP(input)), the MLP's last layer starting at zero and
    # the two gains at 1, so training starts at the concatenated-feature cosine and learns corrections to it (and how
    # much each side counts): a prior for the few queries a CPU run can afford. The output then has the input's
    # width and out_dim is unused.
    residual: bool = False

    def __post_init__(self):
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        if self.residual:
            self.out_dim = self.image_dim + self.text_dim
        if self.image_dim < 1 or self.text_dim < 1 or self.out_dim < 1 or not 0 <= self.dropout < 1:
            raise ValueError(f"bad attributor config {self}")


def pair_features(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Each side L2-normalised before the concatenation, so neither dominates by its scale (Open-NSFW features have
    norms in the tens, MiniLM's are unit)."""
    return torch.cat([F.normalize(image.float(), dim=-1), F.normalize(text.float(), dim=-1)], dim=-1)


class AttributorMLP(nn.Module):
    def __init__(self, config: AttributorConfig):
        super().__init__()
        self.config = config
        width = config.image_dim + config.text_dim
        layers: list[nn.Module] = [nn.LayerNorm(width)] if config.input_norm else []
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, config.out_dim))
        self.net = nn.Sequential(*layers)
        if config.residual:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
            self.side_gains = nn.Parameter(torch.ones(2))

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(N, image_dim), (N, text_dim) → (N, out_dim), unit norm."""
        x = pair_features(image, text)
        out = self.net(x)
        if self.config.residual:
            gains = torch.repeat_interleave(self.side_gains, torch.tensor([self.config.image_dim, self.config.text_dim]))
            out = out + gains * x
        return F.normalize(out, dim=-1)


def attributor_to_artifact(model: AttributorMLP) -> dict:
    """What TorchSafetensorsDataset stores: weights + JSON config."""
    config = asdict(model.config)
    config["hidden_sizes"] = list(config["hidden_sizes"])
    return {"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "config": config}


def attributor_from_artifact(artifact: dict) -> AttributorMLP:
    known = {f.name for f in fields(AttributorConfig)}
    unknown = set(artifact["config"]) - known
    if unknown:
        raise ValueError(f"unknown AttributorConfig keys {sorted(unknown)}")
    model = AttributorMLP(AttributorConfig(**artifact["config"]))
    model.load_state_dict(artifact["state_dict"], strict=True)
    return model.eval()
