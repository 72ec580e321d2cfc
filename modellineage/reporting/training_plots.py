"""Plots of the training evidence (base64 PNG for the report). Renders records; measures nothing.

matplotlib is imported inside the functions only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modellineage.reporting.report import png_base64, pyplot


def loss_curve(log, *, title: str) -> str:
    """Loss vs tokens (or steps when the log has no token column and no claimed batch × sequence), ln(V) marked.

    Args:
        log: a :class:`modellineage.training.logs.LogEvidence`.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    series = log.series
    tokens = series.get("tokens")
    per_step = log.claim.tokens_per_step
    if tokens and all(t is not None for t in tokens):
        xs, xlabel = tokens, "tokens (logged)"
    elif per_step:
        xs = [(s - log.first_step + 1) * per_step for s in series["step"]]
        xlabel = "tokens (steps × claimed batch × sequence)"
    else:
        xs, xlabel = series["step"], "step"
    ax.plot(xs, series["loss"], "-", color="#0969da", lw=1.2, label="training loss")
    if log.ln_vocab is not None:
        ax.axhline(log.ln_vocab, color="#cf222e", ls="--", lw=1,
                   label=f"ln(V) = ln({log.vocab_size:,}) = {log.ln_vocab:.2f}")
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("loss (nats)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return png_base64(fig)


def drift_profile(labels: Sequence[str], lines: dict[str, Sequence[float]], *, title: str) -> str:
    """Mean centred similarity along the chain, one line per series (to the previous checkpoint, to the first,
    to each reference, the target to the last)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.0))
    xs = list(range(len(labels)))
    for (name, values), colour in zip(lines.items(), ("#0969da", "#1a7f37", "#cf222e", "#8250df", "#9a6700",
                                                      "#57606a", "#bf3989")):
        ys = [math.nan if v is None else v for v in values]
        ax.plot(xs, ys, "-o", ms=3, color=colour, label=name)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0, fontsize=7)
    ax.set_ylim(-0.1, 1.05)
    ax.set_ylabel("mean centred similarity", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    return png_base64(fig)
