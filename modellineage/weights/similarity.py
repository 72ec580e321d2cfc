"""Weight similarity of two models, canonical tensor by canonical tensor, streamed in float64.

For every canonical tensor of the target whose counterpart in the reference has the same shape,
three figures are computed with :class:`modellineage.weights.metrics.PairAccumulator` (see there for why
the centred figure is the one to judge by):

- raw cosine (the design's statistic, kept in the evidence),
- centred cosine (Pearson correlation of the elements; the statistic verdicts use),
- relative L2 distance ``||target - reference|| / ||reference||``.

One pair per worker thread is in memory at a time, and of it only one read window and one block of
rows per side: each canonical tensor is read as rows of its source tensor (``TensorRef.selections``
become explicit row and column indices, so a fused ``qkv_proj`` or a stacked expert tensor is read
only where the part lies). When one side is stored transposed and the other is not (GPT-2
``Conv1D``), the transposed side's canonical rows are gathered as columns from a streamed pass over
its stored rows (see ``_Side``).

Every byte of a pair is read once (a transposed side read by columns excepted, see ``_Side``), and
that one read feeds every accumulator of the pair (the moments, the bootstrap, the rotation null). Where every row is read in order (no sampling, no row
alignment), a side is read in large windows — mapped read-only where the store allows it
(:meth:`~modellineage.reading.tensors.TensorStore.map_raw_row_range`: no page-cache copy, one window per
side in RSS), else one ``pread`` into a reused buffer — and consumed in cache-resident blocks of its
exact float32/float64 values, widened to float64 inside the moment sweep
(:mod:`modellineage.weights.metrics`); a BF16 pair goes to the compiled sweep as the windows' raw bit
patterns, one call per window (no float32 copy). Pairs are compared on :func:`default_workers` threads
(the compiled kernels, numpy and ``pread`` release the GIL, and one thread's reads overlap another's
arithmetic). Bytes read are
counted by the store as they are read (``PairSimilarity.bytes_read``), not computed from a plan.

Token matrices (embedding, lm_head) also carry the *rotation null*: the spread of the centred
cosine that two unrelated hidden bases would give these very two matrices. Independent models that
share a tokenizer and data learn the same token-frequency structure along the token axis, so the
element-wise correlation of their token matrices is a random cosine of hidden directions, with a
spread of about ``1/sqrt(H)`` times the share of variance in that shared structure — large in a
64-wide model, small at 4096 (see :func:`compare_pair`).

Which target tensor is paired with which reference tensor is the caller's choice, given as maps:
by default the same canonical key; a ``layer_map`` (from layer correspondence, see
:mod:`modellineage.weights.alignment`) and an ``expert_map`` (optimal expert assignment) re-route layer and
expert indices, and ``row_alignments`` pair embedding / lm_head rows of different vocabularies.

With ``fraction`` set, a seeded random subset of rows is read per tensor (the same positions on
both sides) and every figure carries a bootstrap 95 % interval (:mod:`modellineage.weights.sampling`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modellineage.errors import IncompatibleShapes
from modellineage.reading.naming import TensorRef, canonical_key, role_category
from modellineage.reading.tensors import EXACT_DTYPES, MappedRows, TensorInfo, TensorStore, decode_exact
from modellineage.weights.metrics import (
    BLOCK_ELEMENTS,
    PairAccumulator,
    Similarity,
    accumulate_cross,
    bf16_values,
    count_sketch,
    scratch,
    shifted_buckets,
)
from modellineage.weights.sampling import (
    BOOTSTRAP_METHOD,
    EXACT_METHOD,
    BootstrapAccumulator,
    Interval,
    MIN_SAMPLED_ROWS,
    choose_rows,
    percentile_interval,
    row_stats,
)

__all__ = [
    "RowPlan",
    "PairSimilarity",
    "GroupSummary",
    "WeightComparison",
    "row_plan",
    "read_canonical_rows",
    "iter_canonical_blocks",
    "compare_pair",
    "compare_weights",
    "compare_weights_many",
    "CompareRequest",
    "ManyComparison",
    "TargetPass",
    "SHARE_BYTES",
    "default_workers",
    "summarise",
    "remap_key",
    "DENSE_ROLE_OF_EXPERT",
    "ROTATION_SKETCH",
]

FIGURES = ("cosine", "centred_cosine", "rel_l2")
_DEFAULT_CHUNK = 32 << 20
#: Rows per ``pread`` of a streamed side, counted in float64 bytes of the canonical rows like
#: ``chunk_bytes`` (the raw read is a quarter of it for BF16): a few MiB per read for the disk, and a
#: bound on the reused read buffers (one per side and thread) whatever ``chunk_bytes`` is.
STREAM_READ_BYTES = 32 << 20


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


class _Side:
    """Reads canonical rows of one side of a pair.

    ``by_columns``: the side is stored transposed while the other is not (GPT-2 ``Conv1D`` ``(in, out)``
    against a linear ``(out, in)``): canonical row ``o`` is column ``o`` of the stored view, so a
    block of canonical rows is gathered from one streamed pass over the stored rows, ``chunk_bytes``
    at a time. Memory stays one block per side; the price is one pass over this side's tensor per
    block of canonical rows (``rows x cols x 8 / chunk_bytes`` passes: GPT-2 XL's largest tensor,
    6400 x 1600, takes 3 at the default 32 MiB).

    ``stream_rows`` (the fast path, see :meth:`stream`): every canonical row is read in order, the
    rows are one contiguous run of the source and its dtype decodes exactly to float32/float64; then
    one ``pread`` fetches up to ``stream_rows`` rows into a reused buffer and :meth:`read` decodes
    the blocks asked for from it (a view, valid until the next call), so the compute blocks can be
    small and cache-resident while the reads stay large.

    ``bytes_read``: bytes this side's reads took from the files, counted by the store as they happen
    (on this thread: pairs may be compared on several threads at once).
    """

    def __init__(self, store: TensorStore, plan: RowPlan, info: TensorInfo, by_columns: bool, chunk_bytes: int,
                 slot: str = "side"):
        self.store, self.plan, self.info, self.by_columns, self.chunk_bytes = store, plan, info, by_columns, chunk_bytes
        self.row_bytes = info.cols * info.itemsize
        self.bytes_read = 0
        self.slot = slot  # names this side's reusable buffers (metrics.scratch): one per side of a pair
        self._stream_rows = 0
        self._first = 0
        self._lo = self._hi = 0
        self._raw: np.ndarray | None = None  # the current window's bytes (uint8)
        self._mapped: MappedRows | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the canonical rows this side yields."""
        r, c = self.plan.shape
        return (c, r) if self.by_columns else (r, c)

    def stream(self, rows: int) -> bool:
        """Switch to the sequential fast path (canonical rows read in order, ``rows`` per ``pread``) where
        this side allows it; returns whether it does."""
        plan = self.plan
        r = plan.rows
        if (self.by_columns or plan.cols is not None or self.info.dtype not in EXACT_DTYPES or not r.size
                or int(r[-1]) - int(r[0]) != r.size - 1 or not np.all(np.diff(r) == 1)):
            return False
        self._stream_rows = max(1, int(rows))
        self._first = int(r[0])
        return True

    def read(self, positions: np.ndarray) -> np.ndarray:
        """Canonical rows ``positions``: float64, or on the fast path the exact float32/float64 values
        (consecutive ascending positions only)."""
        if self._stream_rows:
            return self._read_streamed(int(positions[0]), int(positions[-1]) + 1)
        if not self.by_columns:
            before = self.store.thread_bytes_read
            out = read_canonical_rows(self.store, self.plan, positions, check_finite=False)
            self.bytes_read += self.store.thread_bytes_read - before
            return out
        stored_rows = self.plan.shape[0]
        out = np.empty((positions.size, stored_rows))
        step = max(1, self.chunk_bytes // max(1, self.plan.source_cols * 8))
        before = self.store.thread_bytes_read
        for start in range(0, stored_rows, step):
            idx = np.arange(start, min(stored_rows, start + step), dtype=np.int64)
            block = read_canonical_rows(self.store, self.plan, idx, check_finite=False)
            out[:, start:start + idx.size] = block[:, positions].T
        self.bytes_read += self.store.thread_bytes_read - before
        return out

    def read_bits(self, positions: np.ndarray) -> np.ndarray:
        """On the fast path of a BF16 side: canonical rows ``positions`` (consecutive, ascending) as their
        stored bit patterns, uint16 ``(rows, cols)`` — a view of the window, valid until the next read."""
        lo, hi = int(positions[0]), int(positions[-1]) + 1
        return self._window(lo, hi).view(np.uint16).reshape(hi - lo, self.info.cols)

    def _window(self, lo: int, hi: int) -> np.ndarray:
        """The stored bytes of canonical rows ``lo:hi`` (uint8), from the current window or a new one of
        up to ``stream_rows`` rows: mapped where the store allows it (no copy), else one ``pread``."""
        if not (self._lo <= lo and hi <= self._hi):
            self.close()
            stop = min(self.plan.rows.size, lo + max(hi - lo, self._stream_rows))
            source, first = self.plan.source, self._first
            before = self.store.thread_bytes_read
            self._mapped = self.store.map_raw_row_range(source, first + lo, first + stop)
            if self._mapped is not None:
                self._raw = self._mapped.data
            else:
                view = self.store.read_raw_row_range(source, first + lo, first + stop,
                                                     into=scratch(self.slot + ".raw", (stop - lo) * self.row_bytes))
                self._raw = np.frombuffer(view, dtype=np.uint8)
            self.bytes_read += self.store.thread_bytes_read - before
            self._lo, self._hi = lo, stop
        return self._raw[(lo - self._lo) * self.row_bytes:(hi - self._lo) * self.row_bytes]

    def _read_streamed(self, lo: int, hi: int) -> np.ndarray:
        raw = self._window(lo, hi)
        cols = self.info.cols
        wide = None
        if self.info.dtype == "BF16":
            wide = scratch(self.slot + ".bf16", (hi - lo) * cols * 4)[:(hi - lo) * cols * 4].view(np.uint32)
        return decode_exact(self.info.dtype, raw, (hi - lo, cols), scratch=wide)

    def close(self) -> None:
        """Unmap the current window (views of it are invalid afterwards)."""
        self._raw = None
        mapped, self._mapped = self._mapped, None
        if mapped is not None:
            mapped.close()
        self._lo = self._hi = 0


def iter_canonical_blocks(store: TensorStore, plan: RowPlan, positions: np.ndarray, *,
                          chunk_bytes: int = _DEFAULT_CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Canonical rows ``positions`` (pre-transpose view) in blocks: ``(positions of the block, rows)``.

    When ``positions`` is every row in order and the source allows it, the rows come from large
    ``pread`` s in cache-sized blocks of exact float32/float64 values (views valid until the next
    block); otherwise float64 blocks of ``chunk_bytes``. No NaN/Inf check: the caller's sums see them.
    """
    cols = plan.shape[1]
    side = _Side(store, plan, store.info(plan.source), False, chunk_bytes, "blocks")
    step = max(1, chunk_bytes // max(1, cols * 8))
    if positions.size == plan.shape[0] and np.array_equal(positions, np.arange(positions.size)) and side.stream(
            min(step, STREAM_READ_BYTES // max(1, cols * 8))):
        step = max(1, min(chunk_bytes, BLOCK_ELEMENTS * 8) // max(1, cols * 8))
    try:
        for start in range(0, positions.size, step):
            chunk = positions[start:start + step]
            yield chunk, side.read(chunk)
    finally:
        side.close()


#: Stored dtypes whose pairs go through the compiled moment sweep (:class:`PairAccumulator` ``fused``).
FUSED_DTYPES = frozenset({"BF16", "F16"})


#: Buckets per side of the rotation null's two-sided CountSketch above ``2 x`` this width (exact below).
ROTATION_SKETCH = 128


class _RotationNull:
    """The rotation null's sums over row blocks of two ``(rows, H)`` matrices (centred globally at the end).

    Exact up to ``H = 2 x ROTATION_SKETCH``: the ``H x H`` cross product ``A^T B``, whose centred
    ``||A_c^T B_c||_F`` over ``sqrt(H) ||A_c|| ||B_c||`` (the norms from the moment sweep) is the figure.
    Above, the same ratio with every matrix replaced by its column sketch: each side's columns are
    hashed into ``k = ROTATION_SKETCH`` buckets with random signs (a CountSketch ``S``: ``k x H``, one ±1
    per column, ``E[S^T S] = I`` whatever the buckets; each chunk of ``k`` columns is rotated onto the
    buckets by a random shift, so two columns of different chunks share a bucket with probability ``1/k``
    as under random hashing, and a chunk is added as two contiguous runs), and the figure is
    ``||S_a A_c^T B_c S_b^T||_F / (sqrt(H) ||A_c S_a^T||_F ||B_c S_b^T||_F)``. Numerator and denominator
    share each side's sketch, so a dominant direction (the token-frequency structure this null is about)
    fluctuates in both and cancels. Cost per row: ``2 H`` additions (the sketches, compiled, from BF16
    bits where the rows are stored so) and ``k^2`` multiply-adds (compiled,
    :func:`~modellineage.weights.metrics.accumulate_cross`), against ``2 H k`` for the one-sided Gaussian
    sketch of 128 columns this replaced. Error on the standard deviation, r.m.s. over 40 sketch seeds
    (``benchmarks/bench_speed.py --accuracy``, results in ``benchmarks/results/bench_speed.json``; the
    Gaussian sketch in brackets): 4096 x 1024 matrices whose variance is 80 % one shared frequency
    direction 1.6 % (6.3 %), the same with 4 massive hidden dimensions 1.3 % (6.2 %), no shared structure
    0.5 % (0.4 %), one side's dominant direction not the shared one 5.4 % (5.3 %); all-MiniLM-L6-v2's real
    word embeddings (30522 x 384) against a copy with rotated hidden axes 0.7 % (0.9 %); mean error
    ≤ 0.5 %. The seeds are fixed per width: the same pair gives the same figure.
    """

    def __init__(self, width: int, *, seed: int | None = None) -> None:
        self.width = width
        self.sketched = width > 2 * ROTATION_SKETCH
        self.k = ROTATION_SKETCH if self.sketched else width
        if self.sketched:  # ``seed``: other sketches of the same width (the accuracy benchmark draws many)
            rng = np.random.default_rng([0x524F54, 2, width] + ([] if seed is None else [seed]))
            self.shifts = [rng.integers(0, self.k, -(-width // self.k)) for _ in range(2)]
            self.buckets = [shifted_buckets(width, self.k, sh) for sh in self.shifts]
            self.signs = [rng.choice(np.array([-1.0, 1.0]), width) for _ in range(2)]
            self.p = np.zeros((self.k, self.k))
            self.sq = [0.0, 0.0]  # sums of squares of the sketched (shifted) rows, per side
        else:
            self.p = np.zeros((width, self.k))
        self.colsum_a = np.zeros(self.k)  # exact: column sums of A; sketched: of A S_a^T
        self.bg_sum = np.zeros(self.k)  # exact: column sums of B; sketched: of B S_b^T
        self.rows = 0
        self.pivot: tuple[float, float] | None = None

    def update(self, a: np.ndarray, b: np.ndarray, *, bits: bool = False,
               pivot: tuple[float, float] | None = None) -> None:
        """Add a block of rows of both matrices: exact float values, or with ``bits`` BF16 bit patterns.

        ``pivot``: the shift of every block (only the first call's counts), by default the first block's
        means — any value near the means keeps the centring cancellation-free.
        """
        if a.size == 0:
            return
        if self.pivot is None:  # shift by the first block's means: the centring below stays cancellation-free
            if pivot is None:
                va, vb = (bf16_values(a), bf16_values(b)) if bits else (a, b)
                pivot = (float(va.mean(dtype=np.float64)), float(vb.mean(dtype=np.float64)))
            self.pivot = pivot
        if self.sketched:
            sa = count_sketch(a, self.buckets[0], self.signs[0], self.k, self.pivot[0], bits=bits, slot="null.a",
                              shifts=self.shifts[0])
            sb = count_sketch(b, self.buckets[1], self.signs[1], self.k, self.pivot[1], bits=bits, slot="null.b",
                              shifts=self.shifts[1])
            accumulate_cross(sa, sb, self.p)
            self.colsum_a += sa.sum(axis=0)
            self.bg_sum += sb.sum(axis=0)
            self.sq[0] += float(np.einsum("ij,ij->", sa, sa))
            self.sq[1] += float(np.einsum("ij,ij->", sb, sb))
        else:
            if bits:
                a, b = bf16_values(a), bf16_values(b)
            a = np.subtract(a, self.pivot[0], dtype=np.float64)  # float32 blocks (exact values) widen here
            b = np.subtract(b, self.pivot[1], dtype=np.float64)
            self.p += a.T @ b
            self.colsum_a += a.sum(axis=0)
            self.bg_sum += b.sum(axis=0)
        self.rows += a.shape[0]

    def sd(self, sim: Similarity) -> float:
        """The centred cosine's standard deviation under a random rotation of one side's columns."""
        if self.pivot is None or not math.isfinite(sim.centred_cosine):
            return math.nan
        ma, mb = sim.mean_a - self.pivot[0], sim.mean_b - self.pivot[1]
        if self.sketched:  # from the shifted sums: A_c S_a^T = A' S_a^T - ma 1 g_a^T, g_a = S_a 1 (B alike)
            ga, gb = (np.bincount(bk, weights=sg, minlength=self.k) for bk, sg in zip(self.buckets, self.signs))
            m = (self.p - mb * np.outer(self.colsum_a, gb) - ma * np.outer(ga, self.bg_sum)
                 + self.rows * ma * mb * np.outer(ga, gb))
            m2_a = self.sq[0] - 2 * ma * float(self.colsum_a @ ga) + self.rows * ma * ma * float(ga @ ga)
            m2_b = self.sq[1] - 2 * mb * float(self.bg_sum @ gb) + self.rows * mb * mb * float(gb @ gb)
        else:
            ones = np.ones(self.width)
            m = (self.p - mb * np.outer(self.colsum_a, ones) - ma * np.outer(ones, self.bg_sum)
                 + self.rows * ma * mb * np.outer(ones, ones))
            m2_a, m2_b = sim.std_a ** 2 * sim.n, sim.std_b ** 2 * sim.n
        fro2 = float(np.einsum("ij,ij->", m, m))
        if m2_a <= 0 or m2_b <= 0:
            return math.nan
        return math.sqrt(fro2 / self.width) / math.sqrt(m2_a * m2_b)


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
    """``identity`` (row i with row i) or a description of the explicit row (or column) pairs used."""
    rotation_null_sd: float | None = None
    """Token matrices (embedding, lm_head) only: the standard deviation of the centred cosine under a
    random rotation of one side's hidden basis, ``||A_c^T B_c||_F / (sqrt(H) ||A_c|| ||B_c||)`` —
    the spread two *unrelated* hidden bases give these two matrices (see :func:`compare_pair`)."""
    replicates: Mapping[str, np.ndarray] | None = field(default=None, repr=False, compare=False)
    """Bootstrap replicates of each figure (sampled pairs only; not written to the evidence)."""

    @property
    def category(self) -> str:
        return role_category(self.role)

    @property
    def exact(self) -> bool:
        return self.rows_read == self.rows_total

    @property
    def against_dense(self) -> bool:
        """A routed expert compared with the reference's dense MLP (the upcycling check)."""
        return self.expert is not None and self.reference_expert is None

    @property
    def rotation_z(self) -> float | None:
        """Centred cosine in units of :attr:`rotation_null_sd` (None where no null was computed)."""
        sd = self.rotation_null_sd
        c = self.similarity.centred_cosine
        return c / sd if sd is not None and math.isfinite(c) and math.isfinite(sd) and sd > 0 else None

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
            "rotation_null_sd": self.rotation_null_sd, "rotation_z": self.rotation_z,
            "against_dense": self.against_dense,
        }


def _index_pairs(pairs, where: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    t, r = (np.asarray(x, dtype=np.int64).reshape(-1) for x in pairs)
    if t.size != r.size or t.size == 0:
        raise IncompatibleShapes(f"{what} alignment needs equal, non-zero pair counts: {where}: {t.size} vs {r.size}")
    return t, r


def compare_pair(
    target: TensorStore,
    tref: TensorRef,
    reference: TensorStore,
    rref: TensorRef,
    *,
    fraction: float | None = None,
    rng: np.random.Generator | None = None,
    row_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    col_pairs: tuple[np.ndarray, np.ndarray] | None = None,
    row_alignment: str = "identity",
    rotation_null: bool = False,
    chunk_bytes: int = _DEFAULT_CHUNK,
    min_rows: int = MIN_SAMPLED_ROWS,
) -> PairSimilarity:
    """Compare one target canonical tensor with one reference canonical tensor.

    Args:
        target, reference: the stores holding the source tensors.
        tref, rref: the canonical tensors (target, reference).
        fraction: share of rows to read (``None``: all); needs ``rng``.
        rng: seeded generator choosing sampled rows and bootstrap weights.
        row_pairs: explicit row alignment ``(target_rows, reference_rows)`` of the canonical 2-D
            views (embedding rows of shared tokens, router rows of assigned experts); ``None``
            pairs row i with row i.
        col_pairs: explicit column alignment (a 1-D router bias of assigned experts).
        row_alignment: a description of ``row_pairs`` / ``col_pairs`` for the evidence.
        rotation_null: also compute :attr:`PairSimilarity.rotation_null_sd` (2-D token matrices:
            their rows are tokens, a basis both models share, their columns a hidden basis that
            independent models do not share; a frequency structure shared along the token axis
            then gives unrelated models an element-wise correlation of ``cos(u, u')`` for random
            hidden directions ``u, u'``, whose spread ``~ 1/sqrt(H)`` this figure measures).
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
    mixed = tplan.transpose != rplan.transpose  # one side stored transposed: read it by columns
    tside = _Side(target, tplan, tinfo, mixed and tplan.transpose, chunk_bytes, "target")
    rside = _Side(reference, rplan, rinfo, mixed and rplan.transpose, chunk_bytes, "reference")
    t_cols = r_cols = None
    if col_pairs is not None:
        t_cols, r_cols = _index_pairs(col_pairs, where, "column")
        if tside.shape[0] != rside.shape[0] or t_cols.max() >= tside.shape[1] or r_cols.max() >= rside.shape[1]:
            raise IncompatibleShapes(f"column alignment out of range: {where}: {tside.shape} vs {rside.shape}")
    if row_pairs is None:
        if tuple(tref.shape) != tuple(rref.shape) and col_pairs is None:
            raise IncompatibleShapes(f"shapes differ: {where}: {tuple(tref.shape)} vs {tuple(rref.shape)}")
        if tside.shape[0] != rside.shape[0]:
            raise IncompatibleShapes(f"shapes differ after transposition: {where}: {tside.shape} vs {rside.shape}")
        t_rows = r_rows = np.arange(tside.shape[0], dtype=np.int64)
    else:
        t_rows, r_rows = _index_pairs(row_pairs, where, "row")
        if tplan.shape[1] != rplan.shape[1] or tref.transpose or rref.transpose:
            raise IncompatibleShapes(f"row alignment needs equal widths and untransposed tensors: {where}: "
                                     f"{tplan.shape} vs {rplan.shape}")
        if t_rows.max() >= tplan.shape[0] or r_rows.max() >= rplan.shape[0]:
            raise IncompatibleShapes(f"row alignment out of range: {where}: {tplan.shape} vs {rplan.shape}")
    total = int(t_rows.size)
    picked = choose_rows(total, fraction, rng, min_rows=min_rows) if fraction is not None \
        else np.arange(total, dtype=np.int64)
    cols = tside.shape[1] if t_cols is None else int(t_cols.size)
    # PairAccumulator refuses NaN/Inf itself; its labels name the files
    acc = PairAccumulator(label_a=f"target tensor {tref.source!r} in {tinfo.file}",
                          label_b=f"reference tensor {rref.source!r} in {rinfo.file}",
                          fused=tinfo.dtype in FUSED_DTYPES and rinfo.dtype in FUSED_DTYPES)
    sampled = picked.size < total
    boot = BootstrapAccumulator(rng) if sampled else None
    null = _RotationNull(cols) if rotation_null and len(tref.shape) == 2 else None
    width = max(cols, tside.shape[1], rside.shape[1])
    chunk_rows = max(1, chunk_bytes // max(1, width * 8))
    step = chunk_rows
    bits = False
    # every row read once, in order, on both sides: large reads, and (without the rotation null, whose
    # matrix products want large blocks) small cache-resident compute blocks
    if not mixed and not sampled and row_pairs is None and col_pairs is None:
        if null is None:
            step = max(1, min(chunk_bytes, BLOCK_ELEMENTS * 8) // max(1, width * 8))
        read_rows = max(step, min(chunk_rows, STREAM_READ_BYTES // max(1, width * 8)))
        streamed = tside.stream(read_rows) & rside.stream(read_rows)
        # BF16 pairs: the windows' bit patterns go straight into the compiled sweep (decoded in registers),
        # one call per window; the rotation null sketches them from the same bits
        bits = streamed and tinfo.dtype == rinfo.dtype == "BF16"
        if bits:
            step = read_rows
    try:
        for start in range(0, picked.size, step):
            chunk = picked[start:start + step]
            if bits:
                a, b = tside.read_bits(t_rows[chunk]), rside.read_bits(r_rows[chunk])
                acc.update_bf16(a, b)
                if null is not None:  # shifted by the first block's means, as the moment sweep found them
                    null.update(a, b, bits=True, pivot=acc.means)
                a = b = None  # the windows' views: gone before the next window is mapped, so RSS holds one
                continue
            a = tside.read(t_rows[chunk])
            b = rside.read(r_rows[chunk])
            if t_cols is not None:
                a, b = a[:, t_cols], b[:, r_cols]
            acc.update(a, b)
            if boot is not None:
                boot.update(row_stats(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
            if null is not None:
                null.update(a, b)
        a = b = None  # views of the windows: released before they are unmapped
    finally:
        tside.close()
        rside.close()
    sim = acc.result()
    replicates = None
    if boot is not None:
        replicates = boot.figures()
        cis = {f: percentile_interval(replicates[f], getattr(sim, f), method=BOOTSTRAP_METHOD) for f in FIGURES}
    else:
        cis = {f: Interval(getattr(sim, f), getattr(sim, f), True, EXACT_METHOD) for f in FIGURES}
    return PairSimilarity(
        key=tref.key, reference_key=rref.key, role=tref.role, layer=tref.layer, reference_layer=rref.layer,
        expert=tref.expert, reference_expert=rref.expert, shape=tuple(tref.shape), target_tensor=tref.source,
        reference_tensor=rref.source, similarity=sim, cosine_ci=cis["cosine"], centred_ci=cis["centred_cosine"],
        rel_l2_ci=cis["rel_l2"], rows_read=int(picked.size), rows_total=total,
        bytes_read=tside.bytes_read + rside.bytes_read, row_alignment=row_alignment,
        rotation_null_sd=None if null is None else null.sd(sim), replicates=replicates,
    )


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
    """Interval of the unweighted mean of ``figure`` over the pairs with a defined value.

    Replicate ``k`` of the mean averages replicate ``k`` of every sampled pair with the exact value
    of every pair read whole; exact when no pair with a defined value was sampled (also when the
    only sampled pairs have an undefined figure, e.g. a constant tensor).
    """
    defined = [p for p in pairs if math.isfinite(getattr(p.similarity, figure))]
    widths = {len(p.replicates[figure]) for p in defined if p.replicates is not None}
    if not widths:
        return Interval(point, point, True, EXACT_METHOD)
    width = max(widths)
    stacked = np.stack([np.full(width, getattr(p.similarity, figure)) if p.replicates is None
                        else p.replicates[figure] for p in defined])
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a replicate undefined in every tensor: NaN, dropped
        means = np.nanmean(stacked, axis=0)
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
#: Routed-expert roles and the dense MLP role an upcycled expert starts from.
DENSE_ROLE_OF_EXPERT = {"expert_gate": "mlp_gate", "expert_up": "mlp_up", "expert_down": "mlp_down",
                        "expert_gate_up": "mlp_gate_up"}
#: Shared-expert roles and the dense MLP role they are compared with where the reference has no shared expert.
DENSE_ROLE_OF_SHARED = {"shared_gate": "mlp_gate", "shared_up": "mlp_up", "shared_down": "mlp_down"}
_ROUTER_ROLES = {"router": "rows", "router_bias": "columns"}
#: Categories whose rows are tokens (a basis independent models share): they carry the rotation null.
_TOKEN_CATEGORIES = frozenset({"embedding", "lm_head"})


@dataclass(frozen=True)
class _Partner:
    """Which reference tensor a target tensor is compared with, and how (or why it is not)."""

    key: str | None
    reason: str = ""
    row_pairs: tuple[np.ndarray, np.ndarray] | None = None
    col_pairs: tuple[np.ndarray, np.ndarray] | None = None
    description: str = "identity"


class _Pairing:
    """The pairing rules of :func:`compare_weights` (see there)."""

    def __init__(self, reference_refs: Mapping[str, TensorRef] | None, layer_map, expert_map) -> None:
        self.refs = reference_refs or {}
        self.layer_map = layer_map
        # None (reference unknown): every layer counts as having experts (no dense fallback)
        self.expert_layers = None if reference_refs is None else \
            {r.layer for r in reference_refs.values() if r.expert is not None}
        self.assigned: dict[int, dict[int, int]] = defaultdict(dict)
        for (layer, expert), r in (expert_map or {}).items():
            self.assigned[layer][expert] = r

    def partner(self, ref: TensorRef) -> _Partner:
        layer, expert = ref.layer, ref.expert
        new_layer = layer
        if layer is not None and self.layer_map is not None:
            if layer not in self.layer_map:
                return _Partner(None, f"layer {layer} has no corresponding reference layer")
            new_layer = self.layer_map[layer]
        assigned = self.assigned.get(layer) if layer is not None else None
        if expert is not None and self.expert_layers is not None and new_layer not in self.expert_layers:
            dense = DENSE_ROLE_OF_EXPERT.get(ref.role)
            key = None if dense is None else canonical_key(new_layer, None, dense, ref.kind)
            if key is None or key not in self.refs:
                return _Partner(None, f"reference layer {new_layer} has no routed experts and no dense "
                                      f"{dense or ref.role} to compare expert {expert} with")
            return _Partner(key)  # PairSimilarity.against_dense tells these pairs apart
        if expert is not None and assigned:
            if expert not in assigned:
                return _Partner(None, f"expert {expert} of layer {layer} is not assigned to a reference expert "
                                      f"(the optimal assignment pairs {len(assigned)} of the target's experts)")
            return _Partner(canonical_key(new_layer, assigned[expert], ref.role, ref.kind))
        key = canonical_key(new_layer, expert, ref.role, ref.kind)
        dense = DENSE_ROLE_OF_SHARED.get(ref.role)
        if dense is not None and key not in self.refs and canonical_key(new_layer, None, dense, ref.kind) in self.refs:
            return _Partner(canonical_key(new_layer, None, dense, ref.kind),
                            description="shared expert against the reference's dense MLP (upcycling check)")
        how = _ROUTER_ROLES.get(ref.role)
        if how is None or not assigned or key not in self.refs:
            return _Partner(key)
        t = np.array(sorted(assigned), dtype=np.int64)
        r = np.array([assigned[e] for e in t.tolist()], dtype=np.int64)
        rref = self.refs[key]
        if np.array_equal(t, r) and tuple(rref.shape) == tuple(ref.shape):
            return _Partner(key)
        axis = 0 if how == "rows" else len(ref.shape) - 1
        if not ref.shape or t.max() >= ref.shape[axis] or not rref.shape or r.max() >= rref.shape[axis]:
            return _Partner(None, f"{ref.role} {tuple(ref.shape)} / reference {tuple(rref.shape)} has no "
                                  f"{how} for every assigned expert of layer {layer}")
        pairs = (t, r)
        text = (f"{how} of {t.size} assigned experts reordered by the expert assignment "
                f"({int(np.count_nonzero(t != r))} moved)")
        return _Partner(key, row_pairs=pairs if how == "rows" else None,
                        col_pairs=pairs if how == "columns" else None, description=text)


def remap_key(ref: TensorRef, layer_map: Mapping[int, int] | None, expert_map: Mapping[tuple[int, int], int] | None,
              reference_refs: Mapping[str, TensorRef] | None = None) -> str | None:
    """The reference key paired with a target canonical tensor, or None when it has no partner.

    No partner: its layer is not in ``layer_map``, or it is a routed expert of a layer with an
    assignment that leaves it out (unequal expert counts). With ``reference_refs``, a routed expert
    whose reference layer has no experts pairs with that layer's dense MLP tensor of the same role.
    """
    return _Pairing(reference_refs, layer_map, expert_map).partner(ref).key


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

    def by_expert(self) -> tuple[GroupSummary, ...]:
        """One summary per compared routed expert (over its roles), labelled with its partner:
        ``layers.0.experts.3 ~ layers.0.experts.1`` or ``layers.0.experts.3 ~ layers.0.mlp`` (the
        reference's dense MLP, the upcycling check)."""
        def partner(p: PairSimilarity) -> str | None:
            if p.category != "routed_expert":
                return None
            other = "mlp" if p.against_dense else f"experts.{p.reference_expert}"
            return f"layers.{p.layer}.experts.{p.expert} ~ layers.{p.reference_layer}.{other}"

        return summarise(self.pairs, partner)

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


def default_workers() -> int:
    """Threads :func:`compare_weights` compares pairs on by default: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _run_in_order(slots, workers: int | None) -> Iterator[object]:
    """Run the jobs among ``slots`` (``(key, reference key, job)``; other slots are yielded as ``None``),
    yielding each outcome in slot order: the job's result, or the IncompatibleShapes it raised (any other
    exception propagates, in slot order). Jobs run on ``workers`` threads (numpy and ``pread`` release
    the GIL), at most ``workers`` at a time in flight, so memory is ``workers`` pairs' buffers."""
    jobs = [slot[2] if isinstance(slot, tuple) else None for slot in slots]

    def run(job):
        try:
            return job()
        except IncompatibleShapes as exc:
            return exc

    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or sum(j is not None for j in jobs) < 2:
        for job in jobs:
            yield None if job is None else run(job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="compare_weights") as pool:
        futures = [None if job is None else pool.submit(run, job) for job in jobs]
        try:
            for fut in futures:
                yield None if fut is None else fut.result()
        finally:
            for fut in futures:
                if fut is not None:
                    fut.cancel()


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
    workers: int | None = None,
    min_rows: int = MIN_SAMPLED_ROWS,
    allow_empty: bool = False,
) -> WeightComparison:
    """Compare every canonical target tensor with its reference counterpart, one pair at a time.

    Args:
        target, reference: :class:`modellineage.reading.model.Model` handles (anything with ``name``,
            ``store`` and ``name_map``).
        fraction: share of rows per tensor to read (``None``: all rows, exact figures).
        seed: seeds row choice and bootstrap (one generator, tensors in canonical order).
        layer_map: target layer -> reference layer; layers not in it are not compared.
            ``None``: the same index.
        expert_map: (target layer, target expert) -> reference expert (optimal assignment). In a
            layer with an assignment, an expert left out of it (unequal expert counts) is skipped
            and recorded, and the router's rows (a router bias's columns) are paired by the same
            assignment. Layers without an assignment keep the expert index.
        row_alignments: canonical key (``embed.weight``, ``lm_head.weight``) -> ``(target rows,
            reference rows, description)``: explicit row pairs for tensors whose rows are tokens.

    A routed expert whose reference layer has no routed experts is compared with that layer's dense
    MLP tensor of the same role (``expert_up`` with ``mlp_up``, ...): sparse upcycling starts every
    expert from the dense MLP, so the pair's similarity is the upcycling evidence
    (:attr:`PairSimilarity.against_dense`); a shared expert the reference lacks is compared with the
    dense MLP the same way (``row_alignment`` says so). Embedding and lm_head pairs also carry
    :attr:`PairSimilarity.rotation_null_sd`.
        keys: restrict to these target keys (default: all).
        allow_empty: return a comparison without pairs (every tensor in ``skipped`` with its reason)
            instead of raising when no tensor has a same-shaped counterpart (a width-pruned target:
            :mod:`modellineage.weights.aligned` compares its matched sub-matrices).
        chunk_bytes: float64 bytes per block of rows per side.
        workers: threads comparing pairs at once when every row is read (default
            :func:`default_workers`); each pair is computed alone, in the same order of operations, so
            the figures do not depend on it. A sampled comparison runs on one thread: one seeded
            generator draws rows and bootstrap weights tensor after tensor.

    Returns:
        A :class:`WeightComparison`.

    Raises:
        IncompatibleShapes: no target tensor has a counterpart of the same shape (different widths);
            the message names both models' files and the first mismatches.
    """
    slots = _plan_slots(target, reference, fraction=fraction, rng=np.random.default_rng(seed), layer_map=layer_map,
                        expert_map=expert_map, row_alignments=row_alignments, keys=keys, chunk_bytes=chunk_bytes,
                        min_rows=min_rows)
    bound = [slot if isinstance(slot, SkippedPair) else (slot[0], slot[1], functools.partial(slot[2], target.store))
             for slot in slots]
    outcomes = _run_in_order(bound, 1 if fraction is not None else workers)
    return _assemble(target, reference, slots, outcomes, fraction=fraction, seed=seed, layer_map=layer_map,
                     expert_map=expert_map, allow_empty=allow_empty)


def _plan_slots(target, reference, *, fraction, rng, layer_map, expert_map, row_alignments, keys, chunk_bytes,
                min_rows) -> list:
    """The comparison's slots in canonical order: a :class:`SkippedPair`, or ``(key, reference key, job)`` where
    ``job(target_store)`` compares the pair reading the target through ``target_store`` (the target's own store,
    or a :class:`~modellineage.weights.sharing.SharedReads` view of it)."""
    t_refs, r_refs = target.name_map.refs, reference.name_map.refs
    wanted = set(keys) if keys is not None else None
    slots: list[SkippedPair | tuple[str, str, Callable[[TensorStore], PairSimilarity]]] = []  # canonical order
    pairing = _Pairing(r_refs, layer_map, expert_map)
    for key, tref in t_refs.items():
        if wanted is not None and key not in wanted:
            continue
        if not target.store.info(tref.source).is_float:
            slots.append(SkippedPair(key, f"dtype {target.store.info(tref.source).dtype} is not decoded"))
            continue
        partner = pairing.partner(tref)
        rkey = partner.key
        if rkey is None:
            slots.append(SkippedPair(key, partner.reason))
            continue
        rref = r_refs.get(rkey)
        if rref is None:
            slots.append(SkippedPair(key, f"no {rkey} in the reference"))
            continue
        if not reference.store.info(rref.source).is_float:
            slots.append(SkippedPair(key, f"reference dtype {reference.store.info(rref.source).dtype} is not decoded"))
            continue
        align = (row_alignments or {}).get(key)
        if align is not None:
            row_pairs, col_pairs, how = (align[0], align[1]), None, align[2]
        else:
            row_pairs, col_pairs, how = partner.row_pairs, partner.col_pairs, partner.description
        if row_pairs is None and col_pairs is None and tuple(tref.shape) != tuple(rref.shape):
            slots.append(SkippedPair(key, f"shape {tuple(tref.shape)} vs reference {rkey} {tuple(rref.shape)}"))
            continue
        # the target store is the job's one argument (compare_pair's first)
        slots.append((key, rkey, functools.partial(
            compare_pair, tref=tref, reference=reference.store, rref=rref, fraction=fraction, rng=rng,
            row_pairs=row_pairs, min_rows=min_rows,
            col_pairs=col_pairs, row_alignment=how, chunk_bytes=chunk_bytes,
            rotation_null=role_category(tref.role) in _TOKEN_CATEGORIES)))
    return slots


def _assemble(target, reference, slots, outcomes, *, fraction, seed, layer_map, expert_map,
              allow_empty) -> WeightComparison:
    """The :class:`WeightComparison` of ``slots`` (:func:`_plan_slots`) and their outcomes, in slot order."""
    r_refs = reference.name_map.refs
    pairs: list[PairSimilarity] = []
    skipped: list[SkippedPair] = []
    used: set[str] = set()
    for slot, outcome in zip(slots, outcomes):
        if isinstance(slot, SkippedPair):
            skipped.append(slot)
        elif isinstance(outcome, IncompatibleShapes):
            skipped.append(SkippedPair(slot[0], str(outcome)))
        else:
            pairs.append(outcome)
            used.add(slot[1])
    t_files = tuple(str(p) for p in target.store.files)  # full paths for messages
    r_files = tuple(str(p) for p in reference.store.files)
    if not pairs and not allow_empty:
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


# ----------------------------------------------------------------------------------------- many references
#: Bytes of target tensors :func:`compare_weights_many` keeps in memory at once (over all its threads) so the
#: next references compared with a tensor read it from memory; a tensor above its thread's share is read
#: from its file once per reference (:attr:`TargetPass.read_through`).
SHARE_BYTES = 512 << 20


@dataclass(frozen=True)
class CompareRequest:
    """One reference of :func:`compare_weights_many` and the options :func:`compare_weights` would take for it."""

    reference: object
    fraction: float | None = None
    seed: int = 0
    layer_map: Mapping[int, int] | None = None
    expert_map: Mapping[tuple[int, int], int] | None = None
    row_alignments: Mapping[str, tuple[np.ndarray, np.ndarray, str]] | None = None
    keys: Iterable[str] | None = None
    min_rows: int = MIN_SAMPLED_ROWS
    allow_empty: bool = False


@dataclass(frozen=True)
class TargetPass:
    """How one pass over the target's tensors served every reference of :func:`compare_weights_many`."""

    references: int
    target_bytes_read: int
    """Bytes the comparisons read from the target's files (every byte once, but :attr:`read_through`)."""
    target_bytes_per_reference: tuple[int, ...]
    """Per reference, the target bytes its comparison consumed: what a one-reference-at-a-time run reads."""
    bytes_read_through: int
    """Of :attr:`target_bytes_read`, bytes of tensors too large to keep, read once per reference."""
    read_through: tuple[str, ...]
    shared: bool
    """False when the target's store cannot be shared (a GGUF target: read once per reference)."""
    workers: int

    def as_dict(self) -> dict:
        return {"references": self.references, "target_bytes_read": self.target_bytes_read,
                "target_bytes_per_reference": list(self.target_bytes_per_reference),
                "bytes_read_through": self.bytes_read_through, "read_through": list(self.read_through),
                "shared": self.shared}


@dataclass(frozen=True)
class ManyComparison:
    """:func:`compare_weights_many`'s result: one entry per request, in order — its :class:`WeightComparison`,
    or the :class:`~modellineage.errors.LineageError` its comparison raised (the others are unaffected)."""

    comparisons: tuple
    target_pass: TargetPass


def compare_weights_many(target, requests, *, chunk_bytes: int = _DEFAULT_CHUNK, workers: int | None = None,
                         share_bytes: int = SHARE_BYTES) -> ManyComparison:
    """:func:`compare_weights` of one target against several references in one pass over the target.

    Each canonical target tensor is compared with its partner in every reference one after another on
    one thread, reading the target through a :class:`~modellineage.weights.sharing.SharedReads` view: the
    first comparison fetches its bytes, the next ones read them from memory (each reference's partner is
    read once, as always). Tensors are spread over ``workers`` threads like the pairs of
    :func:`compare_weights`; when any request samples rows, everything runs on one thread, tensors in
    canonical order, so each reference's seeded generator draws its rows and bootstrap weights in the
    order a one-reference run draws them. Every :class:`PairSimilarity` — figures, intervals, rows and
    bytes read (the bytes the pair consumed) — is therefore the one :func:`compare_weights` gives.

    Args:
        target: the model compared (:class:`modellineage.reading.model.Model`).
        requests: :class:`CompareRequest` s, one per reference.
        chunk_bytes, workers: as :func:`compare_weights`.
        share_bytes: bytes of target tensors kept in memory at once over all threads (:data:`SHARE_BYTES`).

    Returns:
        A :class:`ManyComparison`: per request its comparison or the LineageError it raised (NaN in the
        reference, a reference whose store cannot be opened, no same-shaped tensor without
        ``allow_empty``), and the :class:`TargetPass` with the target bytes read.
    """
    from modellineage.errors import LineageError
    from modellineage.weights.sharing import SharedReads, can_share

    requests = list(requests)
    n = len(requests)
    sampled = any(r.fraction is not None for r in requests)
    workers = 1 if sampled else (default_workers() if workers is None else max(1, int(workers)))
    planned: list = []
    for req in requests:
        try:
            planned.append(_plan_slots(target, req.reference, fraction=req.fraction,
                                       rng=np.random.default_rng(req.seed), layer_map=req.layer_map,
                                       expert_map=req.expert_map, row_alignments=req.row_alignments, keys=req.keys,
                                       chunk_bytes=chunk_bytes, min_rows=req.min_rows))
        except LineageError as exc:  # the reference cannot be opened or listed: the others still run
            planned.append(exc)
    # one group per target key, references in request order; keys in the target's canonical order
    groups: dict[str, list[tuple[int, int]]] = {}
    for j, slots in enumerate(planned):
        if isinstance(slots, LineageError):
            continue
        for s, slot in enumerate(slots):
            if not isinstance(slot, SkippedPair):
                groups.setdefault(slot[0], []).append((j, s))
    order = {key: i for i, key in enumerate(target.name_map.refs)}
    keyed = sorted(groups.items(), key=lambda kv: order.get(kv[0], len(order)))
    share = can_share(target.store)
    per_thread = max(0, int(share_bytes)) // workers
    outcomes: list = [None if isinstance(p, LineageError) else [None] * len(p) for p in planned]
    consumed = [0] * n
    totals = {"through": 0, "names": []}
    before = target.store.bytes_read

    def run_group(members):
        view = SharedReads(target.store, per_thread) if share and len(members) > 1 else None
        store = view if view is not None else target.store
        done = []
        try:
            for j, s in members:
                start = store.thread_bytes_read
                try:
                    out = planned[j][s][2](store)
                except (IncompatibleShapes, LineageError) as exc:  # a skip, or the reference's error
                    out = exc
                done.append((j, s, out, store.thread_bytes_read - start))
        finally:
            if view is not None:
                view.release()
        return done, (0 if view is None else view.bytes_unshared), ([] if view is None else view.unshared)

    for result in _run_in_order([(key, None, functools.partial(run_group, members)) for key, members in keyed],
                                workers):
        done, through, names = result
        for j, s, out, got in done:
            outcomes[j][s] = out
            consumed[j] += got
        totals["through"] += through
        totals["names"].extend(names)
    comparisons = []
    for j, (req, slots) in enumerate(zip(requests, planned)):
        if isinstance(slots, LineageError):
            comparisons.append(slots)
            continue
        failed = next((o for o in outcomes[j] if isinstance(o, LineageError) and not isinstance(o, IncompatibleShapes)),
                      None)
        if failed is not None:  # the first error in canonical order, as compare_weights raises it
            comparisons.append(failed)
            continue
        try:
            comparisons.append(_assemble(target, req.reference, slots, outcomes[j], fraction=req.fraction,
                                         seed=req.seed, layer_map=req.layer_map, expert_map=req.expert_map,
                                         allow_empty=req.allow_empty))
        except LineageError as exc:
            comparisons.append(exc)
    passed = TargetPass(references=n, target_bytes_read=int(target.store.bytes_read - before),
                        target_bytes_per_reference=tuple(int(c) for c in consumed),
                        bytes_read_through=int(totals["through"]), read_through=tuple(dict.fromkeys(totals["names"])),
                        shared=share, workers=workers)
    return ManyComparison(tuple(comparisons), passed)
