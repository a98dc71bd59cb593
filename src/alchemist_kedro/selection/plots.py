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


def training_dynamics_by_band(trace: pd.DataFrame, percentiles: pd.DataFrame,
                              edges: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> plt.Figure:
    """Paper Fig. 3 at our scale: mean per-sample loss and gradient norm over proxy training, per score band.

    `trace`: step, uid, loss, grad_norm (the rater pipeline's fixed probe); `percentiles`: uid, percentile (0 = best).
    """
    joined = trace.merge(percentiles[["uid", "percentile"]], on="uid", how="inner")
    labels = [f"{lo:.0%}–{hi:.0%}" for lo, hi in zip(edges[:-1], edges[1:])]
    joined["band"] = pd.cut(joined["percentile"], bins=list(edges), labels=labels, include_lowest=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(labels)))
    for band, color in zip(labels, colors):
        rows = joined[joined["band"] == band]
        if rows.empty:
            continue
        means = rows.groupby("step")[["loss", "grad_norm"]].mean()
        count = rows["uid"].nunique()
        axes[0].plot(means.index, means["loss"], marker="o", color=color, label=f"{band} (n={count})")
        axes[1].plot(means.index, means["grad_norm"], marker="o", color=color, label=f"{band} (n={count})")
    axes[0].set_ylabel("per-sample loss (K fixed timesteps)")
    axes[1].set_ylabel("gradient norm (UNet output layer)")
    for ax in axes:
        ax.set_xlabel("proxy training step")
        ax.legend(title="score percentile (0 = best)", fontsize=7, title_fontsize=7)
    fig.suptitle(f"Training dynamics of the probe samples by rater score band ({joined['uid'].nunique()} samples)")
    fig.tight_layout()
    return fig
