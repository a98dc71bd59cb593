"""Selection plots: score histogram with the selected region, and contact sheets per percentile band."""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402


def score_histogram(manifest: pd.DataFrame, bins: int = 100, title: str = "") -> plt.Figure:
    """Histogram of all scores (pool) with the selected rows' histogram overlaid on the same bins."""
    scores = manifest["score"].to_numpy(dtype=float)
    selected = manifest["selected"].to_numpy(dtype=bool)
    finite = np.isfinite(scores)
    edges = np.histogram_bin_edges(scores[finite], bins=bins) if finite.any() else bins
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.hist(scores[finite], bins=edges, color="0.75", label=f"pool (N={finite.sum():,})")
    ax.hist(scores[finite & selected], bins=edges, color="tab:orange", alpha=0.8,
            label=f"selected (k={int((finite & selected).sum()):,})")
    ax.set_xlabel("score (higher = better)")
    ax.set_ylabel("samples")
    ax.set_title(title or "Score distribution and selected region")
    ax.legend()
    fig.tight_layout()
    return fig


def contact_sheet(bands: list[tuple[str, pd.DataFrame]], thumb_inches: float = 1.4,
                  caption_chars: int = 60) -> plt.Figure:
    """One row of thumbnails per band (label, rows with image bytes, caption, percentile, selected)."""
    columns = max((len(rows) for _, rows in bands), default=1) or 1
    fig, axes = plt.subplots(len(bands), columns, figsize=(columns * thumb_inches, len(bands) * (thumb_inches + 0.9)),
                             squeeze=False)
    for row_axes, (label, rows) in zip(axes, bands):
        for j, ax in enumerate(row_axes):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(rows):
                ax.axis("off")
                continue
            sample = rows.iloc[j]
            ax.imshow(np.asarray(Image.open(io.BytesIO(bytes(sample["image"]))).convert("RGB")))
            caption = textwrap.shorten(str(sample["caption"]), caption_chars, placeholder="…")
            mark = "✓ " if bool(sample["selected"]) else ""
            ax.set_xlabel(f"{mark}p={sample['percentile']:.3f}\n" + "\n".join(textwrap.wrap(caption, 22)[:3]),
                          fontsize=6)
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:orange" if bool(sample["selected"]) else "0.6")
                spine.set_linewidth(2 if bool(sample["selected"]) else 0.5)
        row_axes[0].set_title(label, loc="left", fontsize=9)
    fig.suptitle("Samples per percentile band (0 = best; orange frame / ✓ = selected)", fontsize=9)
    fig.tight_layout()
    return fig
