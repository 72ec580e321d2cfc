"""Plots of the weight-similarity evidence (base64 PNG for the report). Renders records; measures nothing.

matplotlib is imported inside the functions only.
"""

from __future__ import annotations

import math
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


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def layer_means(pairs: Sequence[Mapping]) -> dict[str, dict]:
    """Mean centred similarity per category and layer from evidence ``weight_similarity.pairs`` (plain data).

    Layerless categories (embedding, lm_head) come back under layer ``None``; undefined figures ("NaN") are
    left out, as in the library's group summaries.
    """
    sums: dict[str, dict] = {}
    for p in pairs:
        value = p.get("centred_cosine")
        if not _finite(value):
            continue
        layer = p.get("layer")
        layer = int(layer) if _finite(layer) else None
        cell = sums.setdefault(str(p.get("category", "other")), {}).setdefault(layer, [0.0, 0])
        cell[0] += value
        cell[1] += 1
    return {cat: {layer: s / n for layer, (s, n) in cells.items()} for cat, cells in sums.items()}


def reference_figure(pairs: Sequence[Mapping] | None, layer_pvalues: Sequence[tuple[int, float]] | None, *,
                     reference: str, target: str, band: float | None, alpha: float | None) -> str | None:
    """The one picture per reference: centred similarity by layer and category with the band independently
    trained models stay in shaded, and beside it the per-layer independence p-values (−log10 p against α).

    Args:
        pairs: evidence ``weight_similarity.pairs`` (category, layer, centred_cosine), or None.
        layer_pvalues: (layer, p) of the independence test, or None.
        band: upper edge of the from-scratch band (thresholds.toml [weights].independent_max_centred).
        alpha: the independence test's α (after Bonferroni), drawn as a line.

    Returns:
        base64 PNG, or None when there is nothing to draw.
    """
    means = layer_means(pairs or [])
    layered = {c: v for c, v in means.items() if any(k is not None for k in v)}
    pvals = [(int(layer), p) for layer, p in (layer_pvalues or []) if _finite(p) and _finite(layer)]
    if not means and not pvals:
        return None
    plt = pyplot()
    panels = (1 if means else 0) + (1 if pvals else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels if panels > 1 else 6.2, 2.9),
                             gridspec_kw={"width_ratios": [1.6, 1]} if panels == 2 else None, squeeze=False)
    axes = list(axes[0])
    if means:
        ax = axes.pop(0)
        layers = sorted({k for v in layered.values() for k in v if k is not None})
        first, last = (layers[0], layers[-1]) if layers else (0, 0)
        edges = {"embedding": first - 1, "lm_head": last + 1}  # layerless categories at the ends
        if band is not None:
            ax.axhspan(-1.0, band, color="#d0d7de", alpha=0.55, lw=0)
            ax.text(last + 1, band, f" independently trained\n models stay below {band:g}", fontsize=6.5,
                    va="top", ha="right", color="#57606a")
        for cat, cells in means.items():
            colour = _COLOURS.get(cat, "#6e7781")
            xs = sorted(k for k in cells if k is not None)
            if xs:
                ax.plot(xs, [cells[x] for x in xs], "-o", ms=3.5, lw=1.6, color=colour, label=cat)
            if None in cells and cat in edges:
                ax.plot([edges[cat]], [cells[None]], "D", ms=5, color=colour, label=cat)
        ticks = ([first - 1] if "embedding" in means else []) + layers + ([last + 1] if "lm_head" in means else [])
        ax.set_xticks(ticks)
        ax.set_xticklabels(["emb" if t == first - 1 and "embedding" in means else
                            "head" if t == last + 1 and "lm_head" in means else str(t) for t in ticks], fontsize=7)
        ax.set_ylim(-0.15, 1.05)
        ax.set_xlabel("layer (0 = nearest the input)", fontsize=8)
        ax.set_ylabel("centred similarity\n(Pearson r, 1 = same)", fontsize=8)
        ax.set_title(f"{target} vs {reference}: weights by layer", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5, ncol=3, loc="center left", frameon=False)
    if pvals:
        ax = axes.pop(0)
        xs = [layer for layer, _ in pvals]
        heights = [min(300.0, -math.log10(p)) if p > 0 else 300.0 for _, p in pvals]
        significant = [alpha is not None and p < alpha for _, p in pvals]
        ax.bar(xs, heights, color=["#cf222e" if s else "#8c959f" for s in significant], width=0.6)
        if alpha:
            ax.axhline(-math.log10(alpha), color="#24292f", ls="--", lw=1)
            ax.text(0.01, -math.log10(alpha), f"α = {alpha:g}", fontsize=6.5, va="bottom", ha="left",
                    transform=ax.get_yaxis_transform(), bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
        ax.set_xticks(xs)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("layer", fontsize=8)
        ax.set_ylabel("−log10 p (taller = stronger\nevidence of shared training)", fontsize=8)
        ax.set_title("Independence test per layer", fontsize=9)
    fig.tight_layout()
    return png_base64(fig)
