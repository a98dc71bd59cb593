"""Every figure the project draws: selection (score histogram, contact sheets, training dynamics), heuristics
(raw-score histograms, Spearman matrix), the downstream sample grid and the compare summary. Nodes call these;
none draws a figure itself."""
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
            thumbnail = _thumbnail(sample["image"])
            if thumbnail is None:  # an unscored row's image may not decode: say so rather than stop the report
                ax.text(0.5, 0.5, "does not\ndecode", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.imshow(thumbnail)
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


def _thumbnail(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(bytes(data))) as image:
            return np.asarray(image.convert("RGB"))
    except Exception:  # noqa: BLE001 - any undecodable image gets the placeholder
        return None


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
    axes[1].set_ylabel("gradient norm (proxy output layer)")
    for ax in axes:
        ax.set_xlabel("proxy training step")
        ax.legend(title="score percentile (0 = best)", fontsize=7, title_fontsize=7)
    fig.suptitle(f"Training dynamics of the probe samples by rater score band ({joined['uid'].nunique()} samples)")
    fig.tight_layout()
    return fig


def sample_grid_figure(model, grid: dict, seed: int, columns: int = 4, caption_chars: int = 28) -> plt.Figure:
    """Generated image per fixed caption (top) over the real one (below), captions as titles."""
    import math

    from alchemist_kedro.models.proxy import generator_for
    from alchemist_kedro.models.t2i import to_uint8_images

    images = to_uint8_images(model.generate(grid["tokens"], grid["mask"], generator_for(seed, "t2i-grid")))
    real = to_uint8_images(grid["images"])
    n = len(images)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(2.0 * columns, 4.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        axes[2 * r, c].imshow(images[i], interpolation="nearest")
        axes[2 * r, c].set_title(grid["captions"][i][:caption_chars], fontsize=7)
        axes[2 * r + 1, c].imshow(real[i], interpolation="nearest")
        axes[2 * r + 1, c].set_title("real", fontsize=6, color="grey")
    fig.suptitle(f"generated (CFG {model.config.guidance_scale}, {model.config.sample_steps} DDIM steps) / real")
    fig.tight_layout()
    return fig


def compare_summary_plot(summary: pd.DataFrame):
    panels = [("test_loss", "test_loss (lower is better)"), ("fwd", "FWD (lower is better)"),
              ("fd_onsfw", "fd_onsfw (lower is better)"), ("test_caption_gain", "test_caption_gain (higher is better)"),
              ("alignment", "alignment (higher is better)"), ("train_seconds", "training time (s)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    x = np.arange(len(summary))
    for ax, (metric, title) in zip(axes, panels):
        err = np.nan_to_num(summary[f"{metric}_ci95"].to_numpy(dtype=float))
        ax.bar(x, summary[f"{metric}_mean"], yerr=err, capsize=4, color="tab:blue", alpha=0.8)
        if metric == "alignment":
            ax.axhline(summary["alignment_ceiling_mean"].mean(), color="grey", ls="--", label="real test pairs")
            ax.legend(fontsize=7)
        ax.set_xticks(x, summary["arm"], rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"mean ± 95% CI over seeds (n = {int(summary['n_seeds'].max())})", fontsize=9)
    fig.tight_layout()
    return fig


def compare_grid_figure(arm_results, order):
    """Row 0: the real test images of the fixed captions; then one row of seed-0 samples per arm."""
    grids = {r["rows"][0]["arm"]: r["grid"] for r in arm_results if r["rows"] and r["grid"]}
    arms = [a for a in order if a in grids]
    first = grids[arms[0]]
    rows = [("real", first.get("real") or [])] + [(arm, grids[arm]["images"]) for arm in arms]
    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.5 * columns, 1.5 * len(rows) + 0.9), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c], interpolation="nearest")
            if r == 0 and c < len(first["captions"]):
                # Emoji captions share their opening words ("an emoji of a ..."): show where they differ.
                ax.set_title(textwrap.fill(first["captions"][c].removeprefix("an emoji of ")[:40], 16), fontsize=6)
        axes[r, 0].text(-0.1, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle("real test images (top) and seed-0 samples for their captions, one row per arm", fontsize=9)
    return fig


def raw_score_histogram(raw: np.ndarray, name: str, higher_is_better: bool, version: str, bins: int):
    """One scorer's raw-score histogram (finite values; the NaN count in the title)."""
    from matplotlib.figure import Figure

    finite = raw[np.isfinite(raw)]
    # Figure, not pyplot: no global figure registry to leak into (nodes may run in threads).
    figure = Figure(figsize=(5, 3.5), dpi=100)
    axis = figure.subplots()
    axis.hist(finite, bins=bins, color="tab:blue")
    orientation = "higher = better" if higher_is_better else "lower = better"
    axis.set_title(f"{name} ({orientation}); n={len(finite)}, NaN={len(raw) - len(finite)}", fontsize=9)
    axis.set_xlabel(f"raw {name}  [{version}]", fontsize=8)
    axis.set_ylabel("samples")
    figure.tight_layout()
    return figure


def correlation_figure(matrix: pd.DataFrame):
    """A scorer × scorer Spearman matrix as an annotated heat map."""
    from matplotlib.figure import Figure

    names = list(matrix.columns)
    figure = Figure(figsize=(1.2 * len(names) + 2.5, 1.2 * len(names) + 1.5), dpi=100)
    axis = figure.subplots()
    image = axis.imshow(matrix.to_numpy(), vmin=-1, vmax=1, cmap="coolwarm")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            value = matrix.iat[i, j]
            axis.text(j, i, "nan" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_title("Spearman rho of scores (oriented: higher = better)", fontsize=9)
    figure.tight_layout()
    return figure


def separation_figure(fit: pd.DataFrame, title: str = ""):
    """diffusion_quality's chosen (layer, token) pairs: the share of (HQ, LQ) pairs each separates (0.5 = chance)."""
    from matplotlib.figure import Figure

    labels = [f"{layer} · {token}" for layer, token in zip(fit["layer_name"], fit["token"])]
    figure = Figure(figsize=(7, 0.35 * len(fit) + 1.4), dpi=100)
    axis = figure.subplots()
    positions = np.arange(len(fit))[::-1]  # rank 0 on top
    axis.barh(positions, fit["separation_rate"].to_numpy(dtype=float), color="tab:green")
    axis.axvline(0.5, color="0.4", linestyle="--", linewidth=1, label="chance")
    axis.set_yticks(positions, labels, fontsize=7)
    axis.set_xlim(0, 1)
    pairs = int(fit["pairs"].iloc[0]) if len(fit) else 0
    axis.set_xlabel(f"separation: share of the {pairs:,} (HQ, LQ) pairs with N_HQ > N_LQ", fontsize=8)
    axis.set_title(title or f"diffusion_quality: the {len(fit)} chosen (layer, token) pairs", fontsize=9)
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure


def attribution_sheet(sheets: list[dict], thumb_inches: float = 1.1, caption_chars: int = 40) -> plt.Figure:
    """Per query two rows: its generated image, then its top-k training pairs by the ground truth (unlearning) and by
    the distilled attributor, each thumbnail with its caption and ground-truth influence.

    `sheets`: [{caption, image (uint8 HxWx3), rows: [(label, [uint8 images], [captions], [influences])]}].
    """
    columns = 1 + max((len(images) for sheet in sheets for _, images, _, _ in sheet["rows"]), default=1)
    n_rows = sum(len(sheet["rows"]) for sheet in sheets) or 1
    fig, axes = plt.subplots(n_rows, columns, figsize=(columns * thumb_inches, n_rows * (thumb_inches + 0.75)),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.axis("off")
    r = 0
    for sheet in sheets:
        for j, (label, images, captions, influences) in enumerate(sheet["rows"]):
            if j == 0:
                ax = axes[r, 0]
                ax.axis("on")
                ax.imshow(sheet["image"], interpolation="nearest")
                ax.set_xlabel("\n".join(textwrap.wrap(textwrap.shorten(sheet["caption"], caption_chars,
                                                                         placeholder="…"), 18)[:3]), fontsize=6)
                ax.set_title("query", fontsize=7)
            for c, (image, caption, influence) in enumerate(zip(images, captions, influences), start=1):
                ax = axes[r, c]
                ax.axis("on")
                ax.imshow(image, interpolation="nearest")
                text = textwrap.shorten(str(caption), caption_chars, placeholder="…")
                ax.set_xlabel(f"Δloss {influence:.4f}\n" + "\n".join(textwrap.wrap(text, 18)[:2]), fontsize=5.5)
            axes[r, 1].set_title(label, loc="left", fontsize=7)
            r += 1
    fig.suptitle("Attribution: top training pairs per generated query (Δloss = ground-truth influence)", fontsize=8)
    fig.tight_layout()
    return fig
