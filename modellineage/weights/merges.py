"""Merge decomposition: how much of each tensor of a target is explained by each of several candidate parents.

Merges (mergekit: linear, SLERP, TIES, DARE, task arithmetic) mix the weights of several parents, tensor by
tensor. Linear and SLERP merges are, per tensor, exactly a linear combination of the parents
(SLERP's coefficients ``sin((1-t)θ)/sin θ`` and ``sin(tθ)/sin θ`` depend on the tensor, not on the element);
task arithmetic is one of the parents *and* their base (``base + Σ λ_k (ft_k − base)``); TIES and DARE
sparsify the task vectors, which leaves a linear combination plus a residual. So per tensor:

1. **Rows.** The same seeded rows of the canonical 2-D view in the target and every parent holding that
   tensor with the target's shape (at most ``max_rows`` per tensor; every row when there are fewer).
2. **Centred.** Each side's sampled elements minus their mean (the centred statistics of
   :mod:`modellineage.weights.similarity`: norm gains around 1 and other shared offsets do not count).
3. **Mixing weights** ``w ≥ 0`` minimising ``||y − X w||`` (non-negative least squares, ``scipy.optimize.nnls``;
   the unconstrained least-squares weights are recorded too, e.g. the negative base weight of task arithmetic).
4. **Shares.** Parent ``k`` explains ``share_k = w_k (x_k · y) / (y · y)`` of the target's centred variance; the
   shares sum to ``R² = 1 − ||y − X w||² / ||y||²`` (the NNLS optimality conditions make ``X w`` orthogonal to
   the residual), and ``1 − R²`` is the residual: what no candidate explains (fine-tuning after the merge,
   TIES' trimmed elements, or a parent that is not among the candidates).

For unrelated tensors ``share_k`` is about the squared correlation, ~``1 / elements`` sampled plus what
independent training shares (≤ 0.03² for attention and MLP matrices of demo-like models), so a material share
is evidence that the parent's weights are in the target. Two parents that are themselves related (two
fine-tunes of one base) split their shares between them in a way the data cannot decide; their sum is
determined. Shares are summarised per layer and per category; token matrices (embedding, lm_head) and
norm gains are recorded and not part of the layer summaries judged: they share structure between independent
models trained on similar data (see thresholds.toml ``[weights].independent_max_embedding_centred``).

Streaming: one tensor of the target and its parents at a time, ``max_rows`` rows each, float64.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modellineage.reading.naming import role_category
from modellineage.weights.similarity import read_canonical_rows, row_plan

__all__ = ["JUDGED_CATEGORIES", "TensorMix", "MergeDecomposition", "decompose"]

#: Categories whose per-layer shares summarise a parent's contribution (matrices independent models do not share).
JUDGED_CATEGORIES = frozenset({"attention", "mlp", "routed_expert", "shared_expert"})


@dataclass(frozen=True)
class TensorMix:
    """One target tensor as a mixture of its candidate parents (``None``: that parent has no tensor of this shape)."""

    key: str
    category: str
    layer: int | None
    rows_read: int
    rows_total: int
    weights: tuple[float | None, ...]
    """Non-negative least-squares mixing weights, one per parent."""
    lstsq_weights: tuple[float | None, ...]
    """Unconstrained least-squares weights (task arithmetic gives its base a negative weight)."""
    shares: tuple[float | None, ...]
    """Share of the target's centred variance each parent explains (sums to ``explained``)."""
    explained: float
    """R² of the non-negative fit."""

    @property
    def residual(self) -> float:
        return 1.0 - self.explained

    def as_dict(self) -> dict:
        r = (lambda xs: [None if x is None else round(x, 6) for x in xs])
        return {"key": self.key, "category": self.category, "layer": self.layer, "rows_read": self.rows_read,
                "rows_total": self.rows_total, "weights": r(self.weights), "lstsq_weights": r(self.lstsq_weights),
                "shares": r(self.shares), "explained": round(self.explained, 6), "residual": round(self.residual, 6)}


@dataclass(frozen=True)
class MergeDecomposition:
    """Every tensor of a target decomposed over the same candidate parents."""

    target: str
    parents: tuple[str, ...]
    tensors: tuple[TensorMix, ...]
    skipped: tuple[tuple[str, str], ...]
    max_rows: int
    seed: int

    def _mean(self, mixes: Sequence[TensorMix], index: int) -> float:
        vals = [m.shares[index] for m in mixes if m.shares[index] is not None]
        return float(np.mean(vals)) if vals else math.nan

    def by_layer(self) -> dict[int, dict[str, float]]:
        """Layer -> parent -> mean share over the layer's judged matrices (and ``"explained"``, ``"residual"``)."""
        groups: dict[int, list[TensorMix]] = defaultdict(list)
        for m in self.tensors:
            if m.layer is not None and m.category in JUDGED_CATEGORIES:
                groups[m.layer].append(m)
        out = {}
        for layer, mixes in sorted(groups.items()):
            row = {p: self._mean(mixes, i) for i, p in enumerate(self.parents)}
            row["explained"] = float(np.mean([m.explained for m in mixes]))
            row["residual"] = 1.0 - row["explained"]
            out[layer] = row
        return out

    def by_category(self) -> dict[str, dict[str, float]]:
        """Category -> parent -> mean share (every category, judged or not)."""
        groups: dict[str, list[TensorMix]] = defaultdict(list)
        for m in self.tensors:
            groups[m.category].append(m)
        out = {}
        for cat, mixes in groups.items():
            row = {p: self._mean(mixes, i) for i, p in enumerate(self.parents)}
            row["explained"] = float(np.mean([m.explained for m in mixes]))
            out[cat] = row
        return out

    def share(self, parent: str) -> float:
        """Mean share of ``parent`` over every judged matrix (NaN: none)."""
        i = self.parents.index(parent)
        return self._mean([m for m in self.tensors if m.category in JUDGED_CATEGORIES], i)

    def largest_layer_share(self, parent: str) -> tuple[int | None, float]:
        """(layer, share) of the layer where ``parent`` explains most (a partial merge shows there)."""
        best: tuple[int | None, float] = (None, math.nan)
        for layer, row in self.by_layer().items():
            v = row[parent]
            if math.isfinite(v) and (not math.isfinite(best[1]) or v > best[1]):
                best = (layer, v)
        return best

    def as_dict(self) -> dict:
        return {"target": self.target, "parents": list(self.parents), "max_rows": self.max_rows, "seed": self.seed,
                "share": {p: _round(self.share(p)) for p in self.parents},
                "largest_layer_share": {p: {"layer": self.largest_layer_share(p)[0],
                                            "share": _round(self.largest_layer_share(p)[1])} for p in self.parents},
                "by_layer": {str(k): {p: _round(v) for p, v in row.items()} for k, row in self.by_layer().items()},
                "by_category": {c: {p: _round(v) for p, v in row.items()} for c, row in self.by_category().items()},
                "judged_categories": sorted(JUDGED_CATEGORIES),
                "tensors": [m.as_dict() for m in self.tensors],
                "skipped": [{"key": k, "reason": r} for k, r in self.skipped]}


def _round(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 6)


def _centred(store, ref, rows: np.ndarray) -> np.ndarray:
    plan = row_plan(ref, store.info(ref.source))
    x = read_canonical_rows(store, plan, rows).reshape(-1)
    return x - x.mean()


def decompose(target, parents: Sequence, *, max_rows: int = 256, seed: int = 0) -> MergeDecomposition:
    """Decompose every float tensor of ``target`` over the same-named, same-shaped tensors of ``parents``.

    Args:
        target: a :class:`modellineage.reading.model.Model`.
        parents: candidate parents (models); each tensor uses the parents that hold it with the target's shape.
        max_rows: rows read per tensor and model (seeded; every row when the tensor has fewer).
        seed: seeds the rows (tensor ``i`` of the target's sorted keys uses ``[seed, i]``).
    """
    from scipy.optimize import nnls

    names = tuple(p.name for p in parents)
    mixes, skipped = [], []
    t_refs = target.name_map.refs
    for i, key in enumerate(sorted(t_refs)):
        ref = t_refs[key]
        if not target.store.info(ref.source).is_float:
            continue
        holders = [j for j, p in enumerate(parents) if key in p.name_map.refs
                   and tuple(p.name_map.refs[key].shape) == tuple(ref.shape)
                   and p.store.info(p.name_map.refs[key].source).is_float]
        if not holders:
            skipped.append((key, "no candidate parent holds a tensor of this name and shape"))
            continue
        n_rows = row_plan(ref, target.store.info(ref.source)).shape[0]
        rng = np.random.default_rng([seed, i])
        rows = np.sort(rng.choice(n_rows, size=max_rows, replace=False)) if n_rows > max_rows else np.arange(n_rows)
        y = _centred(target.store, ref, rows)
        yy = float(y @ y)
        if not yy > 0:
            skipped.append((key, "constant in the target (no centred variance to explain)"))
            continue
        x = np.stack([_centred(parents[j].store, parents[j].name_map.refs[key], rows) for j in holders], axis=1)
        w, _ = nnls(x, y)
        ls = np.linalg.lstsq(x, y, rcond=None)[0]
        resid = y - x @ w
        shares = w * (x.T @ y) / yy
        full_w, full_ls, full_s = [None] * len(parents), [None] * len(parents), [None] * len(parents)
        for k, j in enumerate(holders):
            full_w[j], full_ls[j], full_s[j] = float(w[k]), float(ls[k]), float(shares[k])
        mixes.append(TensorMix(key, role_category(ref.role), ref.layer, int(rows.size), int(n_rows), tuple(full_w),
                               tuple(full_ls), tuple(full_s), 1.0 - float(resid @ resid) / yy))
    return MergeDecomposition(target.name, names, tuple(mixes), tuple(skipped), int(max_rows), int(seed))
