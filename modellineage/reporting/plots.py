"""Plots of the weight-similarity evidence (base64 PNG for the report). Renders records; measures nothing.

matplotlib is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from modellineage.reporting.report import png_base64, pyplot

_COLOURS = {"attention": "#0969da", "mlp": "#1a7f37", "norm": "#9a6700", "router": "#8250df",
            "routed_expert": "#cf222e", "shared_expert": "#bf3989", "embedding": "#57606a", "lm_head": "#24292f",
            "other": "#6e7781"}


def layer_profile(profile: Mapping[str, Sequence], *, title: str) -> str:
    """Similarity vs layer index, one colour per category: centred solid, raw dashed.

    Args:
        profile: category -> per-layer :class:`~modellineage.weights.similarity.GroupSummary` records.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    for cat, groups in profile.items():
        xs = [g.layer for g in groups]
        colour = _COLOURS.get(cat, "#6e7781")
        ax.plot(xs, [g.mean_centred for g in groups], "-o", ms=3, color=colour, label=f"{cat} (centred)")
        ax.plot(xs, [g.mean_cosine for g in groups], "--", color=colour, alpha=0.6, label=f"{cat} (raw)")
        lows = [g.centred_ci.low for g in groups]
        highs = [g.centred_ci.high for g in groups]
        if any(not g.centred_ci.exact for g in groups):
            ax.fill_between(xs, lows, highs, color=colour, alpha=0.15)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_ylabel("similarity to reference", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="lower left")
    return png_base64(fig)


def layer_heatmap(matrix: np.ndarray, target_layers: Sequence[int], reference_layers: Sequence[int],
                  path: Sequence[tuple[int, int]], *, title: str) -> str:
    """Layer × layer sample similarity with the chosen alignment marked: reference layers matched more than once
    (depth up-scaling) in orange, target layers left unmatched crossed at the left edge."""
    plt = pyplot()
    n, m = matrix.shape
    fig, ax = plt.subplots(figsize=(min(8.0, 1.5 + 0.18 * m), min(8.0, 1.2 + 0.18 * n)))
    im = ax.imshow(np.nan_to_num(matrix, nan=0.0), vmin=-0.2, vmax=1.0, cmap="viridis", aspect="auto")
    pos_t = {t: i for i, t in enumerate(target_layers)}
    pos_r = {r: j for j, r in enumerate(reference_layers)}
    if path:
        uses: dict[int, int] = {}
        for _, r in path:
            uses[r] = uses.get(r, 0) + 1
        once = [(t, r) for t, r in path if uses[r] == 1]
        many = [(t, r) for t, r in path if uses[r] > 1]
        if once:
            ax.plot([pos_r[r] for _, r in once], [pos_t[t] for t, _ in once], "r.", ms=6, label="alignment")
        if many:
            ax.plot([pos_r[r] for _, r in many], [pos_t[t] for t, _ in many], "o", color="#fb8500", ms=5,
                    label="reference layer matched more than once")
        matched = {t for t, _ in path}
        unmatched = [pos_t[t] for t in target_layers if t not in matched]
        if unmatched:
            ax.plot([-0.45] * len(unmatched), unmatched, "wx", ms=5, mew=1.5, label="target layer unmatched")
        ax.legend(fontsize=6, loc="upper right")
    ax.set_xlabel("reference layer", fontsize=8)
    ax.set_ylabel("target layer", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return png_base64(fig)


def layer_pca(projection, *, target: str, reference: str) -> str:
    """Both models' per-layer feature vectors in the plane of the first two principal components."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    for xy, layers, name, marker, colour in ((projection.reference_xy, projection.reference_layers, reference, "s",
                                              "#57606a"), (projection.target_xy, projection.target_layers, target,
                                                           "o", "#cf222e")):
        ax.plot(xy[:, 0], xy[:, 1], marker=marker, ls="-", lw=0.6, ms=5, color=colour, label=name, alpha=0.8)
        for (x, y), layer in zip(xy, layers):
            ax.annotate(str(layer), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    ex = projection.explained
    ax.set_xlabel(f"PC1 ({ex[0]:.0%})", fontsize=8)
    ax.set_ylabel(f"PC2 ({ex[1]:.0%})", fontsize=8)
    ax.set_title("Per-layer weights, PCA of both models", fontsize=9)
    ax.legend(fontsize=7)
    return png_base64(fig)
