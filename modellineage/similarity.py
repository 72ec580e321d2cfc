"""Weight similarity of two models, canonical tensor by canonical tensor, streamed in float64.

For every canonical tensor of the target whose counterpart in the reference has the same shape,
three figures are computed with :class:`modellineage.metrics.PairAccumulator` (see there for why
the centred figure is the one to judge by):

- raw cosine (the design's statistic, kept in the evidence),
- centred cosine (Pearson correlation of the elements; the statistic verdicts use),
- relative L2 distance ``||target - reference|| / ||reference||``.

One pair is in memory at a time, and of it only one block of rows per side: each canonical tensor
is read as rows of its source tensor (``TensorRef.selections`` become explicit row and column
indices, so a fused ``qkv_proj`` or a stacked expert tensor is read only where the part lies).

Which target tensor is paired with which reference tensor is the caller's choice, given as maps:
by default the same canonical key; a ``layer_map`` (from layer correspondence, see
:mod:`modellineage.alignment`) and an ``expert_map`` (optimal expert assignment) re-route layer and
expert indices, and ``row_alignments`` pair embedding / lm_head rows of different vocabularies.

With ``fraction`` set, a seeded random subset of rows is read per tensor (the same positions on
both sides) and every figure carries a bootstrap 95 % interval (:mod:`modellineage.sampling`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pathlib import Path

import numpy as np

from .errors import IncompatibleShapes
from .metrics import PairAccumulator, Similarity
from .naming import TensorRef, role_category
from .sampling import (
    BOOTSTRAP_METHOD,
    EXACT_METHOD,
    Interval,
    RowStats,
    choose_rows,
    percentile_interval,
    poisson_weights,
    replicate_figures,
    row_stats,
)
from .tensors import TensorInfo, TensorStore

__all__ = [
    "RowPlan",
    "PairSimilarity",
    "GroupSummary",
    "WeightComparison",
    "row_plan",
    "read_canonical_rows",
    "compare_pair",
    "compare_weights",
    "summarise",
    "remap_key",
]

FIGURES = ("cosine", "centred_cosine", "rel_l2")
_DEFAULT_CHUNK = 32 << 20


# ----------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class RowPlan:
    """How to read one canonical tensor: rows and columns of its source's 2-D view ``(rows, cols)``.

    The canonical tensor *before* its optional transpose is ``source2d[rows][:, cols]``.
    """

    source: str
    rows: np.ndarray
    cols: np.ndarray | None
    source_cols: int
    transpose: bool

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the 2-D canonical view read (pre-transpose)."""
        return (int(self.rows.size), self.source_cols if self.cols is None else int(self.cols.size))


def _axis_indices(length: int, sel) -> np.ndarray:
    if sel is None:
        return np.arange(length, dtype=np.int64)
    return np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in sel.ranges]) if sel.ranges \
        else np.zeros(0, dtype=np.int64)


def row_plan(ref: TensorRef, info: TensorInfo) -> RowPlan:
    """Translate a canonical reference into row and column indices of its source tensor.

    Args:
        ref: the canonical tensor (whole or a part of a fused tensor).
        info: the source tensor's header entry.

    Returns:
        A :class:`RowPlan`; rows are in canonical order (selections concatenate in order).
    """
    shape = tuple(info.shape)
    by_axis = {s.axis: s for s in ref.selections}
    if len(shape) <= 1:
        cols = _axis_indices(shape[0], by_axis[0]) if shape and 0 in by_axis else None
        return RowPlan(ref.source, np.zeros(1, dtype=np.int64), cols, info.cols, ref.transpose)
    lead = shape[:-1]
    per_axis = [_axis_indices(n, by_axis.get(axis)) for axis, n in enumerate(lead)]
    if all(axis not in by_axis for axis in range(len(lead))):
        rows = np.arange(int(np.prod(lead, dtype=np.int64)), dtype=np.int64)
    else:
        grids = np.meshgrid(*per_axis, indexing="ij")
        rows = np.ravel_multi_index([g.ravel() for g in grids], lead).astype(np.int64)
    last = len(shape) - 1
    cols = _axis_indices(shape[-1], by_axis[last]) if last in by_axis else None
    return RowPlan(ref.source, rows, cols, info.cols, ref.transpose)


def read_canonical_rows(store: TensorStore, plan: RowPlan, positions: np.ndarray, *,
                        check_finite: bool = True) -> np.ndarray:
    """Rows ``positions`` of the canonical (pre-transpose) 2-D view, float64.

    Consecutive source rows are read with one ``read_row_range`` (no gather copy).

    Raises:
        NonFiniteWeights: with ``check_finite``, a value read is NaN or Inf (the message names the file
            and tensor).
    """
    rows = plan.rows[positions]
    if rows.size and int(rows[-1]) - int(rows[0]) == rows.size - 1 and np.all(np.diff(rows) == 1):
        block = store.read_row_range(plan.source, int(rows[0]), int(rows[-1]) + 1, check_finite=check_finite)
    else:
        block = store.read_rows(plan.source, rows, check_finite=check_finite)
    return block if plan.cols is None else block[:, plan.cols]


def _chunks(positions: np.ndarray, cols: int, chunk_bytes: int) -> Iterable[np.ndarray]:
    step = max(1, chunk_bytes // max(1, cols * 8))
    for start in range(0, positions.size, step):
        yield positions[start:start + step]


# ----------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PairSimilarity:
    """Raw cosine, centred cosine and relative L2 of one target tensor against one reference tensor."""

    key: str
    """Canonical key on the target side."""
    reference_key: str
    role: str
    layer: int | None
    reference_layer: int | None
    expert: int | None
    reference_expert: int | None
    shape: tuple[int, ...]
    target_tensor: str
    reference_tensor: str
    similarity: Similarity
    cosine_ci: Interval
    centred_ci: Interval
    rel_l2_ci: Interval
    rows_read: int
    rows_total: int
    bytes_read: int
    """Bytes read from disk for this pair, both sides."""
    row_alignment: str = "identity"
    """``identity`` (row i with row i) or a description of the explicit row pairs used."""
    replicates: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Bootstrap replicates of each figure (sampled pairs only; not written to the evidence)."""

    @property
    def category(self) -> str:
        return role_category(self.role)

    @property
    def exact(self) -> bool:
        return self.rows_read == self.rows_total

    def as_dict(self) -> dict:
        s = self.similarity
        return {
            "key": self.key, "reference_key": self.reference_key, "role": self.role, "category": self.category,
            "layer": self.layer, "reference_layer": self.reference_layer, "expert": self.expert,
            "reference_expert": self.reference_expert, "shape": list(self.shape),
            "target_tensor": self.target_tensor, "reference_tensor": self.reference_tensor,
            "cosine": s.cosine, "centred_cosine": s.centred_cosine, "rel_l2": s.rel_l2,
            "cosine_ci": [self.cosine_ci.low, self.cosine_ci.high],
            "centred_ci": [self.centred_ci.low, self.centred_ci.high],
            "rel_l2_ci": [self.rel_l2_ci.low, self.rel_l2_ci.high],
            "mean_target": s.mean_a, "mean_reference": s.mean_b, "std_target": s.std_a, "std_reference": s.std_b,
            "elements": s.n, "rows_read": self.rows_read, "rows_total": self.rows_total,
            "bytes_read": self.bytes_read, "row_alignment": self.row_alignment,
        }


def compare_pair(
    target: TensorStore,
    tref: TensorRef,
    reference: TensorStore,
    rref: TensorRef,
    *,
    fraction: float | None = None,
    rng: np.random.Generator | None = None,
    row_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    row_alignment: str = "identity",
    chunk_bytes: int = _DEFAULT_CHUNK,
) -> PairSimilarity:
    """Compare one target canonical tensor with one reference canonical tensor.

    Args:
        target, reference: the stores holding the source tensors.
        tref, rref: the canonical tensors (target, reference).
        fraction: share of rows to read (``None``: all); needs ``rng``.
        rng: seeded generator choosing sampled rows and bootstrap weights.
        row_pairs: explicit row alignment ``(target_rows, reference_rows)`` of the canonical 2-D
            views (e.g. embedding rows of shared tokens); ``None`` pairs row i with row i.
        row_alignment: a description of ``row_pairs`` for the evidence.
        chunk_bytes: float64 bytes per block of rows per side.

    Returns:
        A :class:`PairSimilarity`.

    Raises:
        IncompatibleShapes: the canonical shapes differ (or, with ``row_pairs``, the widths differ).
        NonFiniteWeights: NaN/Inf in either tensor.
    """
    if fraction is not None and rng is None:
        raise ValueError("sampling needs a seeded rng")
    tinfo, rinfo = target.info(tref.source), reference.info(rref.source)
    tplan, rplan = row_plan(tref, tinfo), row_plan(rref, rinfo)
    where = f"target {tref.key} ({tref.source} in {tinfo.file}) vs reference {rref.key} ({rref.source} in {rinfo.file})"
    if row_pairs is None:
        if tuple(tref.shape) != tuple(rref.shape):
            raise IncompatibleShapes(f"shapes differ: {where}: {tuple(tref.shape)} vs {tuple(rref.shape)}")
        t_rows = r_rows = np.arange(tplan.shape[0], dtype=np.int64)
    else:
        t_rows, r_rows = (np.asarray(x, dtype=np.int64).reshape(-1) for x in row_pairs)
        if t_rows.size != r_rows.size or tplan.shape[1] != rplan.shape[1] or tref.transpose or rref.transpose:
            raise IncompatibleShapes(f"row alignment needs equal widths and equal pair counts: {where}: "
                                     f"{tplan.shape} vs {rplan.shape}, {t_rows.size} vs {r_rows.size} rows")
        if t_rows.size == 0:
            raise IncompatibleShapes(f"row alignment pairs no rows: {where}")
    if tplan.transpose != rplan.transpose and row_pairs is None:
        return _compare_whole(target, tref, tplan, reference, rref, rplan, where)
    total = int(t_rows.size)
    picked = choose_rows(total, fraction, rng) if fraction is not None else np.arange(total, dtype=np.int64)
    cols = tplan.shape[1]
    # PairAccumulator refuses NaN/Inf itself; its labels name the files
    acc = PairAccumulator(label_a=f"target tensor {tref.source!r} in {tinfo.file}",
                          label_b=f"reference tensor {rref.source!r} in {rinfo.file}")
    sampled = picked.size < total
    parts: list[RowStats] = []
    for chunk in _chunks(picked, cols, chunk_bytes):
        a = read_canonical_rows(target, tplan, t_rows[chunk], check_finite=False)
        b = read_canonical_rows(reference, rplan, r_rows[chunk], check_finite=False)
        acc.update(a, b)
        if sampled:
            parts.append(row_stats(a, b))
    sim = acc.result()
    bytes_read = picked.size * (tinfo.cols * tinfo.itemsize + rinfo.cols * rinfo.itemsize)
    replicates = None
    if sampled:
        stats = RowStats.concat(parts)
        replicates = replicate_figures(stats, poisson_weights(picked.size, rng))
        cis = {f: percentile_interval(replicates[f], getattr(sim, f), method=BOOTSTRAP_METHOD) for f in FIGURES}
    else:
        cis = {f: Interval(getattr(sim, f), getattr(sim, f), True, EXACT_METHOD) for f in FIGURES}
    return PairSimilarity(
        key=tref.key, reference_key=rref.key, role=tref.role, layer=tref.layer, reference_layer=rref.layer,
        expert=tref.expert, reference_expert=rref.expert, shape=tuple(tref.shape), target_tensor=tref.source,
        reference_tensor=rref.source, similarity=sim, cosine_ci=cis["cosine"], centred_ci=cis["centred_cosine"],
        rel_l2_ci=cis["rel_l2"], rows_read=int(picked.size), rows_total=total, bytes_read=int(bytes_read),
        row_alignment=row_alignment, replicates=replicates,
    )


def _compare_whole(target, tref, tplan, reference, rref, rplan, where) -> PairSimilarity:
    """Pairs whose sides are stored transposed differently (GPT-2 Conv1D vs linear): read both whole."""
    all_t = np.arange(tplan.shape[0], dtype=np.int64)
    all_r = np.arange(rplan.shape[0], dtype=np.int64)
    a = read_canonical_rows(target, tplan, all_t)
    b = read_canonical_rows(reference, rplan, all_r)
    a = a.T if tplan.transpose else a
    b = b.T if rplan.transpose else b
    if a.shape != b.shape:
        raise IncompatibleShapes(f"shapes differ after transposition: {where}: {a.shape} vs {b.shape}")
    acc = PairAccumulator(label_a=f"target:{tref.source}", label_b=f"reference:{rref.source}")
    acc.update(a, b)
    sim = acc.result()
    cis = {f: Interval(getattr(sim, f), getattr(sim, f), True, EXACT_METHOD) for f in FIGURES}
    tinfo, rinfo = target.info(tref.source), reference.info(rref.source)
    return PairSimilarity(tref.key, rref.key, tref.role, tref.layer, rref.layer, tref.expert, rref.expert,
                          tuple(tref.shape), tref.source, rref.source, sim, cis["cosine"], cis["centred_cosine"],
                          cis["rel_l2"], tplan.shape[0], tplan.shape[0],
                          int(tplan.shape[0] * (tinfo.cols * tinfo.itemsize + rinfo.cols * rinfo.itemsize)))


# ----------------------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class GroupSummary:
    """Mean figures over a group of tensor pairs (a category, a role or a layer).

    Means are unweighted over tensors; NaN figures (a constant tensor has no centred cosine) are
    left out and counted in ``undefined``. Intervals combine the per-tensor bootstrap replicates
    (exact when every tensor was read whole).
    """

    group: str
    tensors: int
    undefined: int
    mean_cosine: float
    mean_centred: float
    mean_rel_l2: float
    min_centred: float
    max_centred: float
    centred_ci: Interval
    cosine_ci: Interval
    layer: int | None = None

    def as_dict(self) -> dict:
        return {"group": self.group, "layer": self.layer, "tensors": self.tensors, "undefined": self.undefined,
                "mean_cosine": self.mean_cosine, "mean_centred": self.mean_centred,
                "mean_rel_l2": self.mean_rel_l2, "min_centred": self.min_centred, "max_centred": self.max_centred,
                "centred_ci": [self.centred_ci.low, self.centred_ci.high],
                "cosine_ci": [self.cosine_ci.low, self.cosine_ci.high], "exact": self.centred_ci.exact}


def _nanmean(values) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def _mean_interval(pairs: list[PairSimilarity], figure: str, point: float) -> Interval:
    if all(p.replicates is None for p in pairs):
        return Interval(point, point, True, EXACT_METHOD)
    reps = []
    for p in pairs:
        value = getattr(p.similarity, figure)
        if not math.isfinite(value):
            continue
        reps.append(p.replicates[figure] if p.replicates is not None else None)
    width = max(len(r) for r in reps if r is not None)
    stacked = np.stack([np.full(width, getattr(p.similarity, figure)) if r is None else r
                        for p, r in zip([p for p in pairs if math.isfinite(getattr(p.similarity, figure))], reps)])
    with np.errstate(invalid="ignore"):
        means = np.nanmean(stacked, axis=0) if stacked.size else np.array([])
    return percentile_interval(means, point, method=BOOTSTRAP_METHOD)


def summarise(pairs: Iterable[PairSimilarity], by: Callable[[PairSimilarity], object]) -> tuple[GroupSummary, ...]:
    """Group summaries, in order of first appearance of each group.

    Args:
        pairs: compared pairs.
        by: the group of a pair (e.g. ``lambda p: p.category`` or ``lambda p: p.layer``);
            pairs whose group is ``None`` are left out.
    """
    groups: dict[object, list[PairSimilarity]] = defaultdict(list)
    for p in pairs:
        g = by(p)
        if g is not None:
            groups[g].append(p)
    out = []
    for g, members in groups.items():
        centred = [p.similarity.centred_cosine for p in members]
        finite = [c for c in centred if math.isfinite(c)]
        mean_centred = _nanmean(centred)
        mean_cosine = _nanmean(p.similarity.cosine for p in members)
        out.append(GroupSummary(
            group=f"layer {g}" if isinstance(g, int) else str(g),
            tensors=len(members), undefined=len(members) - len(finite),
            mean_cosine=mean_cosine, mean_centred=mean_centred,
            mean_rel_l2=_nanmean(p.similarity.rel_l2 for p in members),
            min_centred=min(finite) if finite else math.nan, max_centred=max(finite) if finite else math.nan,
            centred_ci=_mean_interval(members, "centred_cosine", mean_centred) if finite
            else Interval(math.nan, math.nan, True, EXACT_METHOD),
            cosine_ci=_mean_interval(members, "cosine", mean_cosine),
            layer=g if isinstance(g, int) else None,
        ))
    return tuple(out)


# ----------------------------------------------------------------------------------------- models
def remap_key(ref: TensorRef, layer_map: Mapping[int, int] | None, expert_map: Mapping[tuple[int, int], int] | None
              ) -> str | None:
    """The reference key paired with a target canonical tensor, or None when its layer has no partner."""
    layer, expert = ref.layer, ref.expert
    if layer is not None and layer_map is not None:
        if layer not in layer_map:
            return None
        new_layer = layer_map[layer]
    else:
        new_layer = layer
    new_expert = expert
    if expert is not None and expert_map is not None:
        new_expert = expert_map.get((layer, expert), expert)
    parts = []
    if new_layer is not None:
        parts.append(f"layers.{new_layer}")
    if new_expert is not None:
        parts.append(f"experts.{new_expert}")
    parts += [ref.role, ref.kind]
    return ".".join(parts)


@dataclass(frozen=True)
class SkippedPair:
    """A target tensor that was not compared, and why."""

    key: str
    reason: str

    def as_dict(self) -> dict:
        return {"key": self.key, "reason": self.reason}


@dataclass(frozen=True)
class WeightComparison:
    """Every compared tensor pair of a target and a reference, with summaries and provenance."""

    target: str
    reference: str
    pairs: tuple[PairSimilarity, ...]
    skipped: tuple[SkippedPair, ...]
    reference_only: tuple[str, ...]
    fraction: float | None
    seed: int
    layer_map: Mapping[int, int] | None
    expert_map: Mapping[tuple[int, int], int] | None
    target_files: tuple[str, ...]
    reference_files: tuple[str, ...]

    @property
    def bytes_read(self) -> int:
        return sum(p.bytes_read for p in self.pairs)

    @property
    def by_category(self) -> tuple[GroupSummary, ...]:
        return summarise(self.pairs, lambda p: p.category)

    @property
    def by_role(self) -> tuple[GroupSummary, ...]:
        return summarise(self.pairs, lambda p: p.role)

    @property
    def by_layer(self) -> tuple[GroupSummary, ...]:
        return tuple(sorted(summarise(self.pairs, lambda p: p.layer), key=lambda g: g.layer))

    def by_layer_and_category(self) -> dict[str, tuple[GroupSummary, ...]]:
        """Per category, its per-layer summaries (the layer profile)."""
        out: dict[str, tuple[GroupSummary, ...]] = {}
        for cat in dict.fromkeys(p.category for p in self.pairs if p.layer is not None):
            members = [p for p in self.pairs if p.category == cat]
            out[cat] = tuple(sorted(summarise(members, lambda p: p.layer), key=lambda g: g.layer))
        return out

    def as_dict(self) -> dict:
        return {
            "target": self.target, "reference": self.reference,
            "sample_fraction": self.fraction, "seed": self.seed,
            "compared": len(self.pairs), "bytes_read": self.bytes_read,
            "layer_map": None if self.layer_map is None else {str(k): v for k, v in sorted(self.layer_map.items())},
            "expert_map": None if self.expert_map is None else
            {f"{l}.{e}": v for (l, e), v in sorted(self.expert_map.items()) if e != v},
            "by_category": [g.as_dict() for g in self.by_category],
            "by_role": [g.as_dict() for g in self.by_role],
            "by_layer": [g.as_dict() for g in self.by_layer],
            "pairs": [p.as_dict() for p in self.pairs],
            "skipped": [s.as_dict() for s in self.skipped],
            "reference_only": list(self.reference_only),
            "target_files": list(self.target_files), "reference_files": list(self.reference_files),
        }


def compare_weights(
    target,
    reference,
    *,
    fraction: float | None = None,
    seed: int = 0,
    layer_map: Mapping[int, int] | None = None,
    expert_map: Mapping[tuple[int, int], int] | None = None,
    row_alignments: Mapping[str, tuple[np.ndarray, np.ndarray, str]] | None = None,
    keys: Iterable[str] | None = None,
    chunk_bytes: int = _DEFAULT_CHUNK,
) -> WeightComparison:
    """Compare every canonical target tensor with its reference counterpart, one pair at a time.

    Args:
        target, reference: :class:`modellineage.model.Model` handles (anything with ``name``,
            ``store`` and ``name_map``).
        fraction: share of rows per tensor to read (``None``: all rows, exact figures).
        seed: seeds row choice and bootstrap (one generator, tensors in canonical order).
        layer_map: target layer -> reference layer; layers not in it are not compared.
            ``None``: the same index.
        expert_map: (target layer, target expert) -> reference expert; missing entries keep the index.
        row_alignments: canonical key (``embed.weight``, ``lm_head.weight``) -> ``(target rows,
            reference rows, description)``: explicit row pairs for tensors whose rows are tokens.
        keys: restrict to these target keys (default: all).
        chunk_bytes: float64 bytes per block of rows per side.

    Returns:
        A :class:`WeightComparison`.

    Raises:
        IncompatibleShapes: no target tensor has a counterpart of the same shape (different widths);
            the message names both models' files and the first mismatches.
    """
    t_refs, r_refs = target.name_map.refs, reference.name_map.refs
    rng = np.random.default_rng(seed)
    wanted = set(keys) if keys is not None else None
    pairs: list[PairSimilarity] = []
    skipped: list[SkippedPair] = []
    used: set[str] = set()
    for key, tref in t_refs.items():
        if wanted is not None and key not in wanted:
            continue
        if not target.store.info(tref.source).is_float:
            skipped.append(SkippedPair(key, f"dtype {target.store.info(tref.source).dtype} is not decoded"))
            continue
        rkey = remap_key(tref, layer_map, expert_map)
        if rkey is None:
            skipped.append(SkippedPair(key, f"layer {tref.layer} has no corresponding reference layer"))
            continue
        rref = r_refs.get(rkey)
        if rref is None:
            skipped.append(SkippedPair(key, f"no {rkey} in the reference"))
            continue
        if not reference.store.info(rref.source).is_float:
            skipped.append(SkippedPair(key, f"reference dtype {reference.store.info(rref.source).dtype} is not decoded"))
            continue
        align = (row_alignments or {}).get(key)
        if align is None and tuple(tref.shape) != tuple(rref.shape):
            skipped.append(SkippedPair(key, f"shape {tuple(tref.shape)} vs reference {rkey} {tuple(rref.shape)}"))
            continue
        try:
            pairs.append(compare_pair(
                target.store, tref, reference.store, rref, fraction=fraction, rng=rng,
                row_pairs=None if align is None else (align[0], align[1]),
                row_alignment="identity" if align is None else align[2], chunk_bytes=chunk_bytes))
        except IncompatibleShapes as exc:
            skipped.append(SkippedPair(key, str(exc)))
            continue
        used.add(rkey)
    t_files = tuple(str(p) for p in target.store.files)  # full paths for messages
    r_files = tuple(str(p) for p in reference.store.files)
    if not pairs:
        detail = "; ".join(f"{s.key}: {s.reason}" for s in skipped[:3])
        raise IncompatibleShapes(
            f"no canonical tensor of {target.name} ({', '.join(t_files)}) has a counterpart of the same shape in "
            f"{reference.name} ({', '.join(r_files)}), so weights cannot be compared element by element "
            f"(different widths?): {detail}")
    reference_only = tuple(k for k in r_refs if k not in used)
    return WeightComparison(
        target=target.name, reference=reference.name, pairs=tuple(pairs), skipped=tuple(skipped),
        reference_only=reference_only, fraction=fraction, seed=seed,
        layer_map=None if layer_map is None else dict(layer_map),
        expert_map=None if expert_map is None else dict(expert_map),
        target_files=tuple(Path(f).name for f in t_files), reference_files=tuple(Path(f).name for f in r_files),
    )
