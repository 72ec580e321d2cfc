"""Locality-sensitive signatures of tensors, to find a reference tensor wherever it moved.

A fine-tune keeps its tensors where they were; a copy can also move them (a layer duplicated by
depth up-scaling, experts reordered, a dense MLP copied into every expert slot). Comparing each
target tensor with *every* reference tensor of the same shape in full would read the models many
times over, so each tensor gets a small signature, read once:

1. **Sample grid.** A fixed grid of elements (rows and columns drawn by a generator seeded with
   ``(seed, rows, cols)``, so every tensor of one shape uses the same positions in both models):
   at most :data:`SAMPLE_ELEMENTS` elements, read with ``read_rows`` (a few rows per tensor).
   The grid is centred and scaled to unit variance: ``z``. A constant tensor (fresh norm gains)
   has no signature.
2. **SimHash** (Charikar 2002): :data:`SIMHASH_BITS` signs of Gaussian projections of ``z``. The
   share of differing bits (normalised **Hamming distance**) estimates ``arccos(ρ) / π`` for the
   Pearson correlation ``ρ`` of the sampled elements: 0 for a copy, ≈ 0.5 for unrelated tensors.
3. **MinHash** (Broder 1997) of the set of tokens ``(position, quantile bin of z)`` with 8
   equiprobable standard-normal bins: the share of equal minima (:data:`MINHASH_PERMUTATIONS`)
   estimates the **Jaccard** similarity of the two token sets: 1 for a copy, ≈ 1/15 for
   independent tensors (a position agrees by chance with probability 1/8).

The design we work from reads fine-tunes at Jaccard > 0.85 / Hamming < 2 % and from-scratch pairs
at Jaccard < 0.2 / Hamming > 20 %; the judging layer takes those bounds from thresholds.toml.
The centred ``z`` vectors are kept (float32) for layer correspondence, expert matching and PCA
(:mod:`modellineage.weights.alignment`).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from modellineage.reading.naming import TensorRef, role_category
from modellineage.reading.tensors import TensorStore
from modellineage.weights.similarity import read_canonical_rows, row_plan

__all__ = [
    "SAMPLE_ELEMENTS",
    "SIMHASH_BITS",
    "MINHASH_PERMUTATIONS",
    "TensorSignature",
    "SignatureMatch",
    "SignatureComparison",
    "tensor_signature",
    "model_signatures",
    "hamming",
    "jaccard",
    "compare_signatures",
]

SAMPLE_ELEMENTS = 2048
#: Rows a signature grid reads at least, whatever the width (a read budget may lower it).
GRID_MIN_ROWS = 16
SIMHASH_BITS = 128
MINHASH_PERMUTATIONS = 128
_BINS = 8
_EDGES = np.array([NormalDist().inv_cdf(i / _BINS) for i in range(1, _BINS)])
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class TensorSignature:
    """Signature of one canonical tensor (``z``: the centred, unit-variance sample grid)."""

    key: str
    role: str
    layer: int | None
    expert: int | None
    shape: tuple[int, ...]
    elements: int
    simhash: bytes
    minhash: np.ndarray = field(repr=False, compare=False)
    z: np.ndarray = field(repr=False, compare=False)

    @property
    def category(self) -> str:
        return role_category(self.role)

    def as_dict(self) -> dict:
        return {"key": self.key, "shape": list(self.shape), "elements": self.elements,
                "simhash": self.simhash.hex()}


@functools.lru_cache(maxsize=256)
def _grid(rows: int, cols: int, seed: int, min_rows: int = GRID_MIN_ROWS, elements: int = SAMPLE_ELEMENTS
          ) -> tuple[np.ndarray, np.ndarray]:
    """Sample rows and columns of a ``(rows, cols)`` canonical view: the same for every tensor of that shape
    (cached: a model has few shapes; the arrays are read-only). At least ``min_rows`` rows (a read budget
    lowers it: fewer rows, more columns of each, about the same number of elements)."""
    budgeted = (min_rows, elements) != (GRID_MIN_ROWS, SAMPLE_ELEMENTS)
    rng = np.random.default_rng([seed, rows, cols] + ([min_rows, elements] if budgeted else []))
    k_r = min(rows, max(min_rows, math.ceil(elements / max(cols, 1))))
    k_c = min(cols, max(1, elements // k_r))
    r = np.sort(rng.choice(rows, size=k_r, replace=False)) if k_r < rows else np.arange(rows)
    c = np.sort(rng.choice(cols, size=k_c, replace=False)) if k_c < cols else np.arange(cols)
    r, c = r.astype(np.int64), c.astype(np.int64)
    r.setflags(write=False)
    c.setflags(write=False)
    return r, c


@functools.lru_cache(maxsize=64)
def _projections(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 0x5157, n]).standard_normal((SIMHASH_BITS, n)).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hash_params(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0x4D48])
    a = rng.integers(1, 2**63, size=MINHASH_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=MINHASH_PERMUTATIONS, dtype=np.uint64)
    return a, b


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


#: Per (bin, permutation), how many of the lowest-hashed positions :func:`_minhash` looks through.
_MINHASH_HEAD = 64


@functools.lru_cache(maxsize=8)
def _minhash_heads(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """For a grid of ``n`` elements, per bin ``c`` and permutation ``j``: the :data:`_MINHASH_HEAD` positions
    whose token ``(position, c)`` hashes lowest under ``j``, in ascending order of hash, and those hashes.

    ``(bins, permutations, head)`` arrays (0.8 MB for 2048 elements), built once per grid size."""
    tokens = (np.arange(n, dtype=np.uint64)[:, None] * np.uint64(_BINS)
              + np.arange(_BINS, dtype=np.uint64)[None, :]).reshape(-1)
    a, b = _hash_params(seed)
    with np.errstate(over="ignore"):
        full = _mix(tokens[:, None] * a[None, :] + b[None, :]).reshape(n, _BINS, MINHASH_PERMUTATIONS)
    full = np.ascontiguousarray(full.transpose(1, 2, 0))  # (bins, permutations, positions)
    order = np.argsort(full, axis=2, kind="stable")[..., :_MINHASH_HEAD]
    values = np.take_along_axis(full, order, axis=2)
    order = order.astype(np.intp)
    order.setflags(write=False)
    values.setflags(write=False)
    return order, values


_BIN_IDS = np.arange(_BINS, dtype=np.int8)[:, None, None]


def _minhash(z: np.ndarray, seed: int) -> np.ndarray:
    """Per permutation, the least hash of the tokens ``(position, bin of z)``.

    The least over a bin's positions is the first of that bin's lowest-hashed positions (precomputed
    per grid size) whose element falls in the bin; a bin none of whose first :data:`_MINHASH_HEAD`
    positions holds an element of it (rare, about one permutation-bin in 8,000 for normal data) is
    hashed in full. The same values as hashing every token, read from a table of under 1 MB.
    """
    bins = np.searchsorted(_EDGES, z).astype(np.int8)
    order, values = _minhash_heads(z.size, seed)
    hit = np.take(bins, order) == _BIN_IDS  # (bins, permutations, head)
    first = hit.argmax(axis=2)[..., None]
    best = np.take_along_axis(values, first, axis=2)[..., 0]
    found = np.take_along_axis(hit, first, axis=2)[..., 0]
    if not found.all():
        a, b = _hash_params(seed)
        best[~found] = _MASK
        for c, perms in ((c, np.flatnonzero(~found[c])) for c in range(_BINS) if not found[c].all()):
            pos = np.flatnonzero(bins == c).astype(np.uint64)
            if pos.size:  # else the bin is empty: it holds no token
                with np.errstate(over="ignore"):
                    hashed = _mix((pos * np.uint64(_BINS) + np.uint64(c))[:, None] * a[None, perms] + b[None, perms])
                best[c, perms] = hashed.min(axis=0)
    return best.min(axis=0)


def _source_rows(store: TensorStore, ref: TensorRef, seed: int, min_rows: int = GRID_MIN_ROWS,
                 elements: int = SAMPLE_ELEMENTS):
    """The plan of a canonical float tensor, its grid (canonical rows, columns) and the source rows to read."""
    plan = row_plan(ref, store.info(ref.source))
    pre_rows, pre_cols = plan.shape
    if plan.transpose:  # choose positions on the canonical (out, in) view, read the stored (in, out) rows
        rows, cols = _grid(pre_cols, pre_rows, seed, min_rows, elements)
        return plan, rows, cols, plan.rows[cols]
    rows, cols = _grid(pre_rows, pre_cols, seed, min_rows, elements)
    return plan, rows, cols, plan.rows[rows]


def tensor_signature(store: TensorStore, ref: TensorRef, *, seed: int = 0) -> TensorSignature | None:
    """Signature of one canonical tensor, or None when it is constant or not a float tensor.

    Raises:
        NonFiniteWeights: NaN/Inf among the sampled elements.
    """
    if not store.info(ref.source).is_float:
        return None
    return _signature(store, ref, _source_rows(store, ref, seed), seed)


def _signature(store: TensorStore, ref: TensorRef, planned: tuple, seed: int) -> TensorSignature | None:
    """:func:`tensor_signature` from the grid :func:`_source_rows` chose."""
    plan, rows, cols, _ = planned
    if plan.transpose:  # the grid's columns are stored rows
        block = read_canonical_rows(store, plan, cols, check_finite=True)[:, rows].T
    else:
        block = read_canonical_rows(store, plan, rows, check_finite=True)[:, cols]
    x = block.ravel()
    std = float(x.std())
    if x.size < 2 or std == 0.0 or not math.isfinite(std):
        return None
    z = ((x - x.mean()) / std).astype(np.float32)
    bits = (_projections(z.size, seed) @ z) > 0
    return TensorSignature(ref.key, ref.role, ref.layer, ref.expert, tuple(ref.shape), int(z.size),
                           np.packbits(bits).tobytes(), _minhash(z, seed), z)


#: Tensors whose signature rows are announced to the kernel ahead of the one being read.
PREFETCH_TENSORS = 64


def model_signatures(model, *, seed: int = 0, keys: Iterable[str] | None = None,
                     min_rows: int = GRID_MIN_ROWS, elements: int = SAMPLE_ELEMENTS) -> dict[str, TensorSignature]:
    """Signatures of every canonical tensor of a model (constant tensors left out), in canonical order.

    The grid rows of the next :data:`PREFETCH_TENSORS` tensors are announced to the kernel
    (:meth:`TensorStore.prefetch_rows`), so the scattered row reads of a cold model are fetched
    together instead of one disk wait at a time.
    """
    wanted = set(keys) if keys is not None else None
    store = model.store
    todo = [(key, ref) for key, ref in model.name_map.refs.items()
            if (wanted is None or key in wanted) and store.info(ref.source).is_float]

    planned: dict[int, tuple] = {}  # grids of the announced tensors, each chosen once

    def announce(i: int) -> None:
        if i < len(todo):
            ref = todo[i][1]
            planned[i] = _source_rows(store, ref, seed, min_rows, elements)
            store.prefetch_rows(ref.source, planned[i][3])

    for i in range(min(PREFETCH_TENSORS, len(todo))):
        announce(i)
    out = {}
    for i, (key, ref) in enumerate(todo):
        announce(i + PREFETCH_TENSORS)
        sig = _signature(store, ref, planned.pop(i), seed)
        if sig is not None:
            out[key] = sig
    return out


def hamming(a: TensorSignature, b: TensorSignature) -> float:
    """Share of differing SimHash bits (0: same direction, ≈ 0.5: unrelated)."""
    x = np.unpackbits(np.frombuffer(a.simhash, dtype=np.uint8) ^ np.frombuffer(b.simhash, dtype=np.uint8))
    return float(x.sum()) / SIMHASH_BITS


def jaccard(a: TensorSignature, b: TensorSignature) -> float:
    """MinHash estimate of the Jaccard similarity of the two quantised token sets."""
    return float(np.mean(a.minhash == b.minhash))


def correlation(a: TensorSignature, b: TensorSignature) -> float:
    """Pearson correlation of the two sample grids (same shape required)."""
    return float(a.z.astype(np.float64) @ b.z.astype(np.float64)) / a.z.size


@dataclass(frozen=True)
class SignatureMatch:
    """A target tensor's signature against its same-key counterpart and against its best match anywhere."""

    key: str
    category: str
    same_key_hamming: float | None
    same_key_jaccard: float | None
    best_key: str
    best_hamming: float
    best_jaccard: float
    candidates: int

    @property
    def moved(self) -> bool:
        """The closest reference tensor sits under another key (and is closer than the same key)."""
        return self.best_key != self.key and (self.same_key_hamming is None or self.best_hamming < self.same_key_hamming)

    def as_dict(self) -> dict:
        return {"key": self.key, "category": self.category, "same_key_hamming": self.same_key_hamming,
                "same_key_jaccard": self.same_key_jaccard, "best_key": self.best_key,
                "best_hamming": self.best_hamming, "best_jaccard": self.best_jaccard,
                "candidates": self.candidates, "closest_elsewhere": self.moved}


@dataclass(frozen=True)
class SignatureComparison:
    """Every target signature against every reference signature of the same shape."""

    target: str
    reference: str
    seed: int
    matches: tuple[SignatureMatch, ...]
    unmatched_shapes: tuple[str, ...]
    """Target keys with no reference tensor of their shape."""

    def matching(self, max_hamming: float, min_jaccard: float) -> tuple[SignatureMatch, ...]:
        """Target tensors whose best match is within both bounds."""
        return tuple(m for m in self.matches if m.best_hamming <= max_hamming and m.best_jaccard >= min_jaccard)

    def by_category(self) -> dict[str, dict]:
        groups: dict[str, list[SignatureMatch]] = defaultdict(list)
        for m in self.matches:
            groups[m.category].append(m)
        out = {}
        for cat, ms in groups.items():
            same = [m for m in ms if m.same_key_hamming is not None]
            out[cat] = {
                "tensors": len(ms),
                "same_key_mean_hamming": float(np.mean([m.same_key_hamming for m in same])) if same else None,
                "same_key_mean_jaccard": float(np.mean([m.same_key_jaccard for m in same])) if same else None,
                "best_mean_hamming": float(np.mean([m.best_hamming for m in ms])),
                "best_mean_jaccard": float(np.mean([m.best_jaccard for m in ms])),
                "closest_elsewhere": sum(m.moved for m in ms),
            }
        return out

    def as_dict(self) -> dict:
        return {"target": self.target, "reference": self.reference, "seed": self.seed,
                "simhash_bits": SIMHASH_BITS, "minhash_permutations": MINHASH_PERMUTATIONS,
                "sample_elements": SAMPLE_ELEMENTS, "by_category": self.by_category(),
                "matches": [m.as_dict() for m in self.matches],
                "unmatched_shapes": list(self.unmatched_shapes)}


def compare_signatures(target: Mapping[str, TensorSignature], reference: Mapping[str, TensorSignature], *,
                       target_name: str = "target", reference_name: str = "reference",
                       seed: int = 0) -> SignatureComparison:
    """Best reference match (lowest Hamming, then canonical order) for every target signature.

    Hamming distances of all same-shape pairs come from one ±1 matrix product per shape.
    """
    by_shape: dict[tuple, list[TensorSignature]] = defaultdict(list)
    for sig in reference.values():
        by_shape[sig.shape].append(sig)
    signs = {shape: np.stack([np.unpackbits(np.frombuffer(s.simhash, dtype=np.uint8)) for s in sigs]
                             ).astype(np.float32) * 2 - 1 for shape, sigs in by_shape.items()}
    matches, unmatched = [], []
    for key, sig in target.items():
        cands = by_shape.get(sig.shape)
        if not cands:
            unmatched.append(key)
            continue
        mine = np.unpackbits(np.frombuffer(sig.simhash, dtype=np.uint8)).astype(np.float32) * 2 - 1
        dist = (SIMHASH_BITS - signs[sig.shape] @ mine) / (2 * SIMHASH_BITS)
        best = int(np.argmin(dist))
        same = reference.get(key)
        same_ok = same is not None and same.shape == sig.shape
        same_hamming = hamming(sig, same) if same_ok else None
        if same_ok and same_hamming <= float(dist[best]):
            best = next(i for i, c in enumerate(cands) if c.key == key)  # ties go to the same key
        matches.append(SignatureMatch(
            key=key, category=sig.category,
            same_key_hamming=same_hamming,
            same_key_jaccard=jaccard(sig, same) if same_ok else None,
            best_key=cands[best].key, best_hamming=float(dist[best]), best_jaccard=jaccard(sig, cands[best]),
            candidates=len(cands)))
    return SignatureComparison(target_name, reference_name, seed, tuple(matches), tuple(unmatched))
