"""Which target layer corresponds to which reference layer, which expert to which expert.

Derivatives do not always keep layer indices: depth up-scaling stacks duplicated layers (SOLAR-10.7B
from Mistral-7B), pruning drops layers, expert slots get reordered. All correspondences here are
found from the tensor signatures' sample grids (:mod:`modellineage.weights.signatures`): ``z`` vectors of
the same fixed element positions in every tensor of one shape, centred and scaled, so the mean of
``z_t * z_r`` is the Pearson correlation of the sampled elements (≈ the centred cosine; its noise
for unrelated tensors is about ``1 / sqrt(elements)``).

- **Layer correspondence**: a target layer × reference layer matrix, each cell the mean sample
  correlation over the non-expert roles both layers hold with equal shapes (attention, dense MLP,
  norms, shared experts; routed experts and routers are left out because their slots may be
  permuted). Each target layer is matched to the reference layer it is most similar to, if that
  cell reaches ``min_match`` (:func:`many_to_one_alignment`): a reference layer may be matched
  several times (depth up-scaling stacks copies: SOLAR-10.7B is layers 0..23 then 8..31 of
  Mistral-7B, so layers 8..23 appear twice) and target layers without such a cell stay unmatched
  (new or re-initialised layers). No order is imposed: a monotone alignment
  (:func:`monotone_alignment`, kept for comparison) can place only one of the two copies of a
  repeated block. The cells are sample correlations, whose noise for unrelated tensors is about
  ``1 / sqrt(elements)`` (≤ 0.03 at 2,048 sampled elements, averaged over a layer's roles), far
  below ``min_match``: the freedom to pick any column costs no false matches at that bound.
- **Expert matching**: per matched layer, the routed experts' mean sample correlation (over their
  roles) forms a matrix; ``scipy.optimize.linear_sum_assignment`` finds the assignment of maximal
  total similarity.
- **Upcycling**: where the reference layer is dense and the target layer has experts of the dense
  MLP's shape, every expert is compared with that MLP.
- **PCA**: per-layer feature vectors (the concatenated ``z`` of the roles every layer of both models
  holds) projected to two dimensions.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from modellineage.weights.signatures import TensorSignature, correlation
from modellineage.weights.similarity import DENSE_ROLE_OF_EXPERT

__all__ = [
    "LayerCorrespondence",
    "ExpertMatching",
    "Upcycling",
    "LayerProjection",
    "layer_similarity",
    "monotone_alignment",
    "many_to_one_alignment",
    "correspond_layers",
    "match_experts",
    "detect_upcycling",
    "project_layers",
]

_SKIP_CATEGORIES = frozenset({"routed_expert", "router"})


def _by_layer(sigs: Mapping[str, TensorSignature]) -> dict[int, dict[str, TensorSignature]]:
    """layer -> (role.kind -> signature) of the non-expert, non-router tensors."""
    out: dict[int, dict[str, TensorSignature]] = defaultdict(dict)
    for key, sig in sigs.items():
        if sig.layer is None or sig.expert is not None or sig.category in _SKIP_CATEGORIES:
            continue
        out[sig.layer][key.split(".", 2)[2]] = sig
    return dict(sorted(out.items()))


def layer_similarity(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature]
                     ) -> tuple[list[int], list[int], np.ndarray]:
    """Target layers, reference layers and the matrix of mean sample correlations (NaN: nothing comparable)."""
    t, r = _by_layer(target), _by_layer(reference)
    t_layers, r_layers = list(t), list(r)
    matrix = np.full((len(t_layers), len(r_layers)), np.nan)
    for i, tl in enumerate(t_layers):
        for j, rl in enumerate(r_layers):
            matrix[i, j] = _mean_corr(t[tl], r[rl])
    return t_layers, r_layers, matrix


def monotone_alignment(matrix: np.ndarray, min_match: float) -> list[tuple[int, int]]:
    """Best monotone partial alignment of rows (target layers) to columns (reference layers).

    Each row is matched to at most one column; matched columns are non-decreasing down the rows
    (a column may take several rows: duplicated layers). Maximises the sum of matched cells; a cell
    below ``min_match`` (or NaN) cannot be matched. Ties go to the earlier column.

    Returns:
        ``(row, column)`` pairs in row order.
    """
    n, m = matrix.shape
    gain = np.where(np.isfinite(matrix) & (matrix >= min_match), matrix, -np.inf)
    # best[i][j]: best total over rows < i with every matched column <= j
    best = np.zeros((n + 1, m + 1))
    choice = np.zeros((n + 1, m + 1), dtype=np.int8)  # 0: row i-1 unmatched, 1: matched to j-1, 2: from column j-1
    for i in range(1, n + 1):
        for j in range(0, m + 1):
            cands = [(best[i - 1, j], 0)]
            if j >= 1:
                cands.append((best[i, j - 1], 2))
                if gain[i - 1, j - 1] > -np.inf:
                    cands.append((best[i - 1, j] + gain[i - 1, j - 1], 1))
            value, how = max(cands, key=lambda c: (c[0], -c[1]))
            best[i, j], choice[i, j] = value, how
    path, i, j = [], n, m
    while i > 0:
        how = choice[i, j]
        if how == 2:
            j -= 1
        elif how == 1:
            path.append((i - 1, j - 1))
            i -= 1
        else:
            i -= 1
    return path[::-1]


def many_to_one_alignment(matrix: np.ndarray, min_match: float) -> list[tuple[int, int]]:
    """Each row (target layer) matched to its most similar column (reference layer), if that cell reaches
    ``min_match`` (NaN cells never match). Columns may repeat (duplicated layers) and rows may stay
    unmatched; ties go to the earlier column. Maximises the summed similarity of matched cells over all
    many-to-one maps.

    Returns:
        ``(row, column)`` pairs in row order.
    """
    path = []
    for i, row in enumerate(matrix):
        ok = np.isfinite(row) & (row >= min_match)
        if ok.any():
            j = int(np.argmax(np.where(ok, row, -np.inf)))
            path.append((i, j))
    return path


@dataclass(frozen=True)
class LayerCorrespondence:
    """Layer × layer sample similarity, the many-to-one alignment and whether it beats index alignment."""

    target_layers: tuple[int, ...]
    reference_layers: tuple[int, ...]
    matrix: np.ndarray
    path: tuple[tuple[int, int], ...]
    """Matched (target layer, reference layer) pairs (layer indices, not positions)."""
    index_score: float
    """Summed matchable similarity of index-aligned layers (layer i with layer i)."""
    aligned_score: float
    min_match: float

    @property
    def is_identity(self) -> bool:
        return all(t == r for t, r in self.path) and len(self.path) == len(
            set(self.target_layers) & set(self.reference_layers))

    @property
    def beats_index(self) -> bool:
        """The alignment finds more matchable similarity than index alignment."""
        return not self.is_identity and self.aligned_score > self.index_score + 1e-12

    @property
    def layer_map(self) -> dict[int, int]:
        return dict(self.path)

    @property
    def repeated(self) -> dict[int, tuple[int, ...]]:
        """Reference layers matched by more than one target layer -> those target layers (depth up-scaling)."""
        by_ref: dict[int, list[int]] = defaultdict(list)
        for t, r in self.path:
            by_ref[r].append(t)
        return {r: tuple(ts) for r, ts in sorted(by_ref.items()) if len(ts) > 1}

    @property
    def unmatched_target(self) -> tuple[int, ...]:
        """Target layers with no reference layer reaching ``min_match``."""
        matched = {t for t, _ in self.path}
        return tuple(t for t in self.target_layers if t not in matched)

    @property
    def unmatched_reference(self) -> tuple[int, ...]:
        """Reference layers no target layer matched (pruned layers)."""
        matched = {r for _, r in self.path}
        return tuple(r for r in self.reference_layers if r not in matched)

    def describe(self) -> str:
        """``"reference layer 2 matched by target layers 2, 4; target layer 7 unmatched"`` (empty: nothing notable)."""
        parts = [f"reference layer {r} matched by target layers {', '.join(map(str, ts))}"
                 for r, ts in self.repeated.items()]
        if self.path and self.unmatched_target:
            parts.append(f"target layer{'s' if len(self.unmatched_target) > 1 else ''} "
                         f"{', '.join(map(str, self.unmatched_target))} unmatched")
        if self.path and self.unmatched_reference:
            parts.append(f"reference layer{'s' if len(self.unmatched_reference) > 1 else ''} "
                         f"{', '.join(map(str, self.unmatched_reference))} not matched")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {"target_layers": list(self.target_layers), "reference_layers": list(self.reference_layers),
                "matrix": [[None if not math.isfinite(x) else round(float(x), 6) for x in row] for row in self.matrix],
                "path": [list(p) for p in self.path], "index_score": self.index_score,
                "aligned_score": self.aligned_score, "min_match": self.min_match,
                "beats_index": self.beats_index,
                "repeated_reference_layers": {str(r): list(ts) for r, ts in self.repeated.items()},
                "unmatched_target_layers": list(self.unmatched_target),
                "unmatched_reference_layers": list(self.unmatched_reference)}


def correspond_layers(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature], *,
                      min_match: float) -> LayerCorrespondence:
    """Layer correspondence from signatures; ``min_match``: least similarity for a layer pair to count."""
    t_layers, r_layers, matrix = layer_similarity(target, reference)
    path = many_to_one_alignment(matrix, min_match) if matrix.size else []
    pos_r = {layer: j for j, layer in enumerate(r_layers)}

    def ok(x: float) -> bool:
        return math.isfinite(x) and x >= min_match

    index_score = sum(float(matrix[i, pos_r[t]]) for i, t in enumerate(t_layers)
                      if t in pos_r and ok(matrix[i, pos_r[t]]))
    aligned_score = sum(float(matrix[i, j]) for i, j in path)
    return LayerCorrespondence(tuple(t_layers), tuple(r_layers), matrix,
                               tuple((t_layers[i], r_layers[j]) for i, j in path), index_score, aligned_score,
                               min_match)


def _experts(sigs: Mapping[str, TensorSignature]) -> dict[int, dict[int, dict[str, TensorSignature]]]:
    out: dict[int, dict[int, dict[str, TensorSignature]]] = defaultdict(lambda: defaultdict(dict))
    for sig in sigs.values():
        if sig.expert is not None and sig.layer is not None:
            out[sig.layer][sig.expert][sig.key.split(".", 4)[4]] = sig
    return out


def _mean_corr(a: Mapping[str, TensorSignature], b: Mapping[str, TensorSignature]) -> float:
    vals = [correlation(s, b[k]) for k, s in a.items() if k in b and b[k].elements == s.elements
            and b[k].shape == s.shape]
    return float(np.mean(vals)) if vals else math.nan


@dataclass(frozen=True)
class ExpertMatching:
    """Optimal assignment of the target's routed experts of one layer to the reference's."""

    layer: int
    reference_layer: int
    assignment: tuple[tuple[int, int], ...]
    """(target expert, reference expert) pairs."""
    matched_similarity: tuple[float, ...]
    identity_similarity: float
    """Mean sample similarity of expert i with expert i (NaN when the counts differ)."""
    matrix: np.ndarray

    @property
    def permuted(self) -> int:
        return sum(t != r for t, r in self.assignment)

    def as_dict(self) -> dict:
        sims = [s for s in self.matched_similarity if math.isfinite(s)]
        return {"layer": self.layer, "reference_layer": self.reference_layer,
                "assignment": [list(a) for a in self.assignment], "permuted": self.permuted,
                "mean_matched_similarity": float(np.mean(sims)) if sims else None,
                "identity_similarity": self.identity_similarity,
                "matched_similarity": [round(s, 6) if math.isfinite(s) else None for s in self.matched_similarity]}


def match_experts(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature],
                  layer_map: Mapping[int, int] | None = None) -> tuple[ExpertMatching, ...]:
    """Per layer with routed experts on both sides, the assignment maximising total sample similarity."""
    from scipy.optimize import linear_sum_assignment

    te, re_ = _experts(target), _experts(reference)
    out = []
    for layer in sorted(te):
        rl = layer if layer_map is None else layer_map.get(layer)
        if rl is None or rl not in re_:
            continue
        t_ids, r_ids = sorted(te[layer]), sorted(re_[rl])
        mat = np.array([[_mean_corr(te[layer][a], re_[rl][b]) for b in r_ids] for a in t_ids])
        cost = np.where(np.isfinite(mat), -mat, 1e6)
        rows, cols = linear_sum_assignment(cost)
        pairs = tuple((t_ids[i], r_ids[j]) for i, j in zip(rows, cols))
        diag = [mat[i, r_ids.index(t)] for i, t in enumerate(t_ids) if t in r_ids]
        out.append(ExpertMatching(layer, rl, pairs, tuple(float(mat[i, j]) for i, j in zip(rows, cols)),
                                  float(np.nanmean(diag)) if diag and len(t_ids) == len(r_ids) else math.nan, mat))
    return tuple(out)


_DENSE_TO_EXPERT = {dense: expert for expert, dense in DENSE_ROLE_OF_EXPERT.items()}


@dataclass(frozen=True)
class Upcycling:
    """Target experts of one layer against the reference layer's dense MLP (sample similarity per expert)."""

    layer: int
    reference_layer: int
    experts: tuple[int, ...]
    similarity: tuple[float, ...]

    def as_dict(self) -> dict:
        return {"layer": self.layer, "reference_layer": self.reference_layer, "experts": list(self.experts),
                "similarity": [round(s, 6) if math.isfinite(s) else None for s in self.similarity]}


def detect_upcycling(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature],
                     layer_map: Mapping[int, int] | None = None) -> tuple[Upcycling, ...]:
    """Each target expert against the reference's dense MLP of the corresponding layer (same shapes only)."""
    te = _experts(target)
    dense: dict[int, dict[str, TensorSignature]] = defaultdict(dict)
    for sig in reference.values():
        if sig.layer is not None and sig.expert is None and sig.role in _DENSE_TO_EXPERT:
            dense[sig.layer][f"{_DENSE_TO_EXPERT[sig.role]}.{sig.key.rsplit('.', 1)[1]}"] = sig
    out = []
    for layer in sorted(te):
        rl = layer if layer_map is None else layer_map.get(layer)
        if rl is None or rl not in dense:
            continue
        ids = sorted(te[layer])
        sims = tuple(_mean_corr(te[layer][e], dense[rl]) for e in ids)
        if any(math.isfinite(s) for s in sims):
            out.append(Upcycling(layer, rl, tuple(ids), sims))
    return tuple(out)


@dataclass(frozen=True)
class LayerProjection:
    """Per-layer feature vectors of both models projected to their first two principal components."""

    roles: tuple[str, ...]
    target_layers: tuple[int, ...]
    reference_layers: tuple[int, ...]
    target_xy: np.ndarray
    reference_xy: np.ndarray
    explained: tuple[float, float]

    def as_dict(self) -> dict:
        return {"roles": list(self.roles), "target_layers": list(self.target_layers),
                "reference_layers": list(self.reference_layers),
                "target_xy": np.round(self.target_xy, 6).tolist(), "reference_xy": np.round(self.reference_xy, 6).tolist(),
                "explained_variance": [round(x, 6) for x in self.explained]}


def project_layers(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature]
                   ) -> LayerProjection | None:
    """PCA (SVD of the centred feature matrix) of the layers of both models; None without common roles."""
    t, r = _by_layer(target), _by_layer(reference)
    if not t or not r:
        return None
    common = None
    for layer in list(t.values()) + list(r.values()):
        names = {n: (s.shape, s.elements) for n, s in layer.items()}
        common = names if common is None else {n: v for n, v in common.items() if names.get(n) == v}
    roles = tuple(sorted(common or {}))
    if not roles:
        return None
    feats = np.array([np.concatenate([layer[n].z for n in roles]) for layer in list(t.values()) + list(r.values())],
                     dtype=np.float64)
    feats -= feats.mean(axis=0)
    if feats.shape[0] < 2:
        return None
    u, s, _ = np.linalg.svd(feats, full_matrices=False)
    k = min(2, s.size)
    xy = u[:, :k] * s[:k]
    if k < 2:
        xy = np.hstack([xy, np.zeros((xy.shape[0], 2 - k))])
    # a deterministic sign per component: the largest |coordinate| positive
    for c in range(2):
        if xy[np.argmax(np.abs(xy[:, c])), c] < 0:
            xy[:, c] *= -1
    total = float((s ** 2).sum()) or 1.0
    explained = tuple(float(s[c] ** 2 / total) if c < s.size else 0.0 for c in range(2))
    return LayerProjection(roles, tuple(t), tuple(r), xy[: len(t)], xy[len(t):], explained)
