"""Similarity of two equally shaped tensors, accumulated chunk by chunk in float64.

Three figures are reported for a pair ``(a, b)``, with ``b`` the reference:

- raw cosine ``a·b / (||a|| ||b||)``;
- centred cosine (Pearson correlation) of the elements, the cosine of ``a - mean(a)`` and ``b - mean(b)``;
- relative L2 distance ``||a - b|| / ||b||``.

The raw cosine is dominated by the mean when the mean is large against the spread. Norm gains
(RMSNorm/LayerNorm weights) have mean ≈ 1 and a small spread, so *any* two such vectors have a raw
cosine near 1; only the centred cosine says whether the spread itself agrees. Centring is done
without cancellation: each chunk is shifted by a *pivot* per side (the chunk element nearest its
head's mean, so a constant chunk shifts to exact zeros), its sums are taken over the shifted
elements, which are small against their spread, and chunks are combined with the pairwise update
of Chan, Golub and LeVeque (1979) for means, second moments and the co-moment. The textbook
one-pass formula ``sum(a*b) - n*mean(a)*mean(b)`` over the raw elements subtracts two nearly equal
numbers and loses most of its digits on exactly those tensors; after the shift the subtracted term
is tiny, so the digits stay (``test_centred_cosine_stable_when_mean_dominates``).

Speed: the chunk is processed in cache-resident blocks of :data:`BLOCK_ELEMENTS`, every block in one
sweep that writes three float64 arrays (shifted ``a``, shifted ``b``, ``a - b``) and takes six
reductions of them; float32 and float16 input (exact BF16/F16/F32 values) is widened inside that
sweep, never as a separate float64 copy. Dot products run in rows of :data:`DOT_ROW` elements: a
BLAS dot that long stays on the calling thread, where a longer one wakes BLAS worker threads whose
spinning, on a machine whose cores are busy, slows every other step more than it speeds the dot.
BF16/F16 pairs (large models) take the compiled sweep instead (:func:`_kernels`, ``fused``), BF16 ones as
their raw bit patterns (:meth:`PairAccumulator.update_bf16`: decoded in registers, ~8 GB/s of pair bytes
per core where the data is in cache, ~5.5-8 from the page cache).

Edge cases (none is ever silently 0):

- a side whose elements are all equal (zero variance) gives ``centred_cosine = NaN``; the caller
  must report that the centred figure is undefined, not treat it as 0;
- a side that is all zeros (zero norm) gives ``cosine = NaN``;
- a zero reference ``b`` gives ``rel_l2 = NaN``;
- no elements at all: :meth:`PairAccumulator.result` raises ``ValueError``.

Typical use with :meth:`modellineage.reading.tensors.TensorStore.iter_rows` (two stores read with the same
``max_chunk_bytes`` yield blocks of the same rows for tensors of the same shape)::

    acc = PairAccumulator(label_a="target:model.norm.weight", label_b="reference:model.norm.weight")
    for (_, a), (_, b) in zip(target.iter_rows(name), reference.iter_rows(name)):
        acc.update(a, b)
    sim = acc.result()
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np

from modellineage.errors import IncompatibleShapes, NonFiniteWeights


@dataclass(frozen=True)
class Similarity:
    """Similarity figures of one tensor pair; ``b`` is the reference.

    ``std_a`` and ``std_b`` are population standard deviations (ddof = 0). ``cosine``,
    ``centred_cosine`` and ``rel_l2`` may be NaN as documented in the module docstring.
    """

    n: int
    cosine: float
    centred_cosine: float
    rel_l2: float
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "cosine": self.cosine,
            "centred_cosine": self.centred_cosine,
            "rel_l2": self.rel_l2,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "std_a": self.std_a,
            "std_b": self.std_b,
        }


@dataclass(frozen=True)
class _Moments:
    """Sufficient statistics of a set of element pairs."""

    n: int = 0
    mean_a: float = 0.0
    mean_b: float = 0.0
    m2_a: float = 0.0  # sum (a - mean_a)^2
    m2_b: float = 0.0  # sum (b - mean_b)^2
    c_ab: float = 0.0  # sum (a - mean_a)(b - mean_b)
    s_aa: float = 0.0  # sum a^2
    s_bb: float = 0.0  # sum b^2
    s_ab: float = 0.0  # sum a*b
    s_dd: float = 0.0  # sum (a - b)^2


#: Elements per block of the fused moment sweep (three float64 scratch rows of 2 MiB, resident in L3;
#: smaller blocks pay more per-call overhead than they gain in cache hits).
BLOCK_ELEMENTS = 1 << 18
#: Length of the rows dot products are taken in (OpenBLAS keeps a dot of at most 10,000 elements on the
#: calling thread).
DOT_ROW = 8192
_PIVOT_HEAD = 256
#: Input dtypes the sweep widens itself (every value exact in float64); anything else is converted first.
_WIDENED = (np.dtype(np.float64), np.dtype(np.float32), np.dtype(np.float16))

_LOCAL = threading.local()


def scratch(name: str, nbytes: int) -> np.ndarray:
    """A reusable buffer of at least ``nbytes`` (uint8), one per name and thread, grown and never shrunk.

    Streaming allocates the same few large buffers for every block of every tensor; fresh ones are
    page-faulted and zero-filled by the kernel each time (``bytearray(n)`` zero-fills itself), which
    costs about as much as the arithmetic on them. Views of a buffer are valid until its next use.
    """
    bufs = _LOCAL.__dict__.setdefault("buffers", {})
    buf = bufs.get(name)
    if buf is None or buf.nbytes < nbytes:
        buf = bufs[name] = np.empty(max(nbytes, 1), dtype=np.uint8)
    return buf


if hasattr(np, "vecdot"):  # numpy >= 2.0: one call for several dots, in rows of DOT_ROW
    def _dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``(m, n)`` arrays -> the ``m`` row dots ``x_i . y_i``."""
        n = x.shape[-1]
        whole = n - n % DOT_ROW
        total = np.zeros(x.shape[:-1])
        if whole:
            m = x.shape[0]
            total += np.vecdot(x[:, :whole].reshape(m, -1, DOT_ROW), y[:, :whole].reshape(m, -1, DOT_ROW)).sum(axis=1)
        if whole < n:
            total += np.vecdot(x[:, whole:], y[:, whole:])
        return total
else:  # pragma: no cover - numpy 1.x: einsum's own loops, no BLAS
    def _dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, y)


def _pivot(x: np.ndarray) -> float:
    """An element of ``x`` near its mean: the head element nearest the head's mean (exact, so a constant
    ``x`` shifts to exact zeros; near the mean, so the shifted sums do not cancel)."""
    head = x[:_PIVOT_HEAD]
    with np.errstate(invalid="ignore"):
        mean = float(np.add.reduce(head, dtype=np.float64)) / head.size
        return float(head[int(np.abs(np.subtract(head, mean, dtype=np.float64)).argmin())])


def _chunk_moments(a: np.ndarray, b: np.ndarray) -> _Moments:
    """Statistics of one chunk (flat arrays of equal, positive length; float16/32/64) in one blocked sweep.

    Sums over the pivot-shifted elements ``a - p_a``, ``b - p_b`` give the centred moments without
    cancellation (``m2 = S(a'a') - S(a')^2 / n`` with ``S(a')`` near 0); the raw sums follow from them
    exactly in real arithmetic, and ``a - b`` is summed as it is. Non-finite input makes the sums
    non-finite (the caller checks).
    """
    n = a.size
    pa, pb = _pivot(a), _pivot(b)
    step = min(n, BLOCK_ELEMENTS)
    work = scratch("moments", 3 * step * 8)[:3 * step * 8].view(np.float64).reshape(3, step)
    widen_a, widen_b = a.dtype != np.float64, b.dtype != np.float64
    s1a = s1b = s2a = s2b = sab = sdd = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for lo in range(0, n, step):
            x, y = a[lo:lo + step], b[lo:lo + step]
            k = x.size
            w = work[:, :k]  # rows: a - b, a - p_a, b - p_b
            d, xa, yb = w
            # widen in a plain copy (a mixed-dtype subtract is slower), difference, then shift in place
            if widen_a:
                np.copyto(xa, x)
                x = xa
            if widen_b:
                np.copyto(yb, y)
                y = yb
            np.subtract(x, y, out=d)
            np.subtract(x, pa, out=xa)
            np.subtract(y, pb, out=yb)
            sums = np.add.reduce(w[1:], axis=1)
            squares = _dots(w, w)
            s1a += float(sums[0])
            s1b += float(sums[1])
            sdd += float(squares[0])
            s2a += float(squares[1])
            s2b += float(squares[2])
            sab += float(_dots(w[1:2], w[2:3])[0])
        return _from_sums(n, pa, pb, s1a, s1b, s2a, s2b, sab, sdd)


def _from_sums(n: int, pa: float, pb: float, s1a: float, s1b: float, s2a: float, s2b: float, sab: float,
               sdd: float) -> _Moments:
    """Moments from the pivoted sums S(a'), S(b'), S(a'a'), S(b'b'), S(a'b'), S(dd) of n pairs (a' = a - pa).

    a == b gives bit-identical s_aa, s_bb and s_ab: the three are formed the same way.
    """
    return _Moments(
        n=n,
        mean_a=pa + s1a / n,
        mean_b=pb + s1b / n,
        m2_a=max(0.0, s2a - s1a * s1a / n),
        m2_b=max(0.0, s2b - s1b * s1b / n),
        c_ab=sab - s1a * s1b / n,
        s_aa=s2a + pa * s1a + pa * s1a + n * pa * pa,
        s_bb=s2b + pb * s1b + pb * s1b + n * pb * pb,
        s_ab=sab + pb * s1a + pa * s1b + n * pa * pb,
        s_dd=sdd,
    )


#: Elements per register-resident block of the fused sweep (its six sums are added into the totals in order).
FUSED_BLOCK = 4096
#: Elements per block of the BF16 sweep (as :data:`FUSED_BLOCK`).
BF16_BLOCK = 4096


@functools.cache
def _kernels():
    """The compiled sweeps (numba), or None when numba is not installed.

    ``sweep(a, b, pa, pb, step)``: per element of two float32 arrays (exact BF16/F16/F32 values): widen
    to float64, ``d = a - b``, ``a' = a - p_a``, ``b' = b - p_b``, and accumulate ``S(a')``, ``S(b')``,
    ``S(a'a')``, ``S(b'b')``, ``S(a'b')``, ``S(dd)`` in float64 — the same six sums as
    :func:`_chunk_moments`, read once from memory instead of a dozen passes over float64 scratch rows.
    ``sweep_bf16(a, b, pa, pb, step)``: the same over BF16 *bit patterns* (uint16), each decoded in
    registers (``bits << 16`` reinterpreted as float32: exact) — no float32 copy of the tensor is ever
    written, and half the bytes of the float32 sweep are read. (Widening each block into an L1 buffer
    first runs at half the rate on data beyond L2: two loops per block defeat the prefetcher.)
    ``sketch_rows`` / ``sketch_rows_bf16(x, bucket, sign, pivot, out)``: a CountSketch of each row of
    ``x - pivot`` into ``out`` (see :func:`count_sketch`).

    Within a block the compiler may reassociate the sums (``fastmath`` ``reassoc``/``nsz`` only: NaN
    and Inf propagate, no fused multiply-add), i.e. it keeps several partial sums in vector lanes, as
    BLAS's dot does; the block sums are added in order. Errors stay at float64 rounding (a few 1e-16
    relative per block, as numpy's pairwise sums), but the last bits differ from the numpy sweep's.
    Each block is handed to the inner loop as a slice indexed from 0: indexed from a runtime offset,
    numba's negative-index wraparound keeps LLVM from proving unit stride and it falls back to
    gathers (a quarter of the rate).
    """
    try:
        from numba import njit
    except ImportError:  # pragma: no cover - numba is a dependency; the numpy sweep stays correct without it
        return None
    from llvmlite import ir
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def bf16(typingctx, bits):
        """BF16 bit pattern (uint16) -> its float32 value: ``bits << 16`` reinterpreted (an LLVM bitcast, so
        the loop around it vectorises: widen, shift, convert)."""
        def codegen(context, builder, signature, args):
            wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
            return builder.bitcast(wide, ir.FloatType())
        return types.float32(types.uint16), codegen

    @njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz"}, cache=True)
    def block(a, b, pa, pb):
        s0 = s1 = s2 = s3 = s4 = s5 = 0.0
        for i in range(a.size):
            x = np.float64(a[i])
            y = np.float64(b[i])
            d = x - y
            xs = x - pa
            ys = y - pb
            s0 += xs
            s1 += ys
            s2 += xs * xs
            s3 += ys * ys
            s4 += xs * ys
            s5 += d * d
        return s0, s1, s2, s3, s4, s5

    @njit(nogil=True, boundscheck=False, cache=True)
    def sweep(a, b, pa, pb, step):
        out = np.zeros(6)
        n = a.size
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            s = block(a[lo:hi], b[lo:hi], pa, pb)
            for r in range(6):
                out[r] += s[r]
        return out

    @njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz"}, cache=True)
    def block_bf16(a, b, pa, pb):
        s0 = s1 = s2 = s3 = s4 = s5 = 0.0
        for i in range(a.size):
            x = np.float64(bf16(a[i]))
            y = np.float64(bf16(b[i]))
            d = x - y
            xs = x - pa
            ys = y - pb
            s0 += xs
            s1 += ys
            s2 += xs * xs
            s3 += ys * ys
            s4 += xs * ys
            s5 += d * d
        return s0, s1, s2, s3, s4, s5

    @njit(nogil=True, boundscheck=False, cache=True)
    def sweep_bf16(a, b, pa, pb, step):
        out = np.zeros(6)
        n = a.size
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            s = block_bf16(a[lo:hi], b[lo:hi], pa, pb)
            for r in range(6):
                out[r] += s[r]
        return out

    @njit(nogil=True, boundscheck=False, cache=True)
    def sketch_rows(x, bucket, sign, pivot, out):
        for r in range(x.shape[0]):
            row = x[r]
            o = out[r]
            for j in range(row.size):
                o[bucket[j]] += sign[j] * (np.float64(row[j]) - pivot)

    @njit(nogil=True, boundscheck=False, cache=True)
    def sketch_rows_bf16(x, bucket, sign, pivot, out):
        for r in range(x.shape[0]):
            row = x[r]
            o = out[r]
            for j in range(row.size):
                o[bucket[j]] += sign[j] * (np.float64(bf16(row[j])) - pivot)

    @njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz"}, cache=True)
    def shifted_row(row, shifts, sign, pivot, o):
        k = o.size
        for c in range(shifts.size):  # chunk c of k columns lands on the buckets rotated by shifts[c]
            lo = c * k
            n = min(k, row.size - lo)
            s = shifts[c]
            first = min(n, k - s)
            oa, ra, sa = o[s:s + first], row[lo:lo + first], sign[lo:lo + first]
            for t in range(first):
                oa[t] += sa[t] * (np.float64(ra[t]) - pivot)
            ob, rb, sb = o[:n - first], row[lo + first:lo + n], sign[lo + first:lo + n]
            for t in range(n - first):
                ob[t] += sb[t] * (np.float64(rb[t]) - pivot)

    @njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz"}, cache=True)
    def shifted_row_bf16(row, shifts, sign, pivot, o):
        k = o.size
        for c in range(shifts.size):
            lo = c * k
            n = min(k, row.size - lo)
            s = shifts[c]
            first = min(n, k - s)
            oa, ra, sa = o[s:s + first], row[lo:lo + first], sign[lo:lo + first]
            for t in range(first):
                oa[t] += sa[t] * (np.float64(bf16(ra[t])) - pivot)
            ob, rb, sb = o[:n - first], row[lo + first:lo + n], sign[lo + first:lo + n]
            for t in range(n - first):
                ob[t] += sb[t] * (np.float64(bf16(rb[t])) - pivot)

    @njit(nogil=True, boundscheck=False, cache=True)
    def sketch_shifted(x, shifts, sign, pivot, out):
        for r in range(x.shape[0]):
            shifted_row(x[r], shifts, sign, pivot, out[r])

    @njit(nogil=True, boundscheck=False, cache=True)
    def sketch_shifted_bf16(x, shifts, sign, pivot, out):
        for r in range(x.shape[0]):
            shifted_row_bf16(x[r], shifts, sign, pivot, out[r])

    @njit(nogil=True, boundscheck=False, fastmath={"reassoc", "nsz", "contract"}, cache=True)
    def cross(sa, sb, p):
        rows, k = sa.shape
        whole = rows - rows % 8
        for r0 in range(0, whole, 8):  # eight rows per pass over p: a row of p takes 8 updates while in L1
            b0, b1, b2, b3 = sb[r0], sb[r0 + 1], sb[r0 + 2], sb[r0 + 3]
            b4, b5, b6, b7 = sb[r0 + 4], sb[r0 + 5], sb[r0 + 6], sb[r0 + 7]
            for i in range(k):
                x0, x1, x2, x3 = sa[r0, i], sa[r0 + 1, i], sa[r0 + 2, i], sa[r0 + 3, i]
                x4, x5, x6, x7 = sa[r0 + 4, i], sa[r0 + 5, i], sa[r0 + 6, i], sa[r0 + 7, i]
                row = p[i]
                for j in range(row.size):
                    row[j] += ((x0 * b0[j] + x1 * b1[j] + x2 * b2[j] + x3 * b3[j])
                               + (x4 * b4[j] + x5 * b5[j] + x6 * b6[j] + x7 * b7[j]))
        for r in range(whole, rows):
            b = sb[r]
            for i in range(k):
                x = sa[r, i]
                row = p[i]
                for j in range(row.size):
                    row[j] += x * b[j]

    from types import SimpleNamespace

    return SimpleNamespace(sweep=sweep, sweep_bf16=sweep_bf16, sketch_rows=sketch_rows,
                           sketch_rows_bf16=sketch_rows_bf16, sketch_shifted=sketch_shifted,
                           sketch_shifted_bf16=sketch_shifted_bf16, cross=cross)


def _fused_kernel():
    """The compiled float32 sweep of :func:`_kernels`, or None when numba is not installed."""
    k = _kernels()
    return None if k is None else k.sweep


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """BF16 bit patterns (uint16) as their exact float32 values (a new array of the same shape)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def shifted_buckets(width: int, k: int, shifts: np.ndarray) -> np.ndarray:
    """The bucket of every column when chunk ``c`` of ``k`` columns is rotated by ``shifts[c]`` (one shift per
    chunk, ``ceil(width / k)`` of them): ``(j mod k + shifts[j // k]) mod k`` (see :func:`count_sketch`)."""
    j = np.arange(width)
    return (j % k + np.asarray(shifts, dtype=np.int64)[j // k]) % k


def count_sketch(x: np.ndarray, bucket: np.ndarray, sign: np.ndarray, k: int, pivot: float, *,
                 bits: bool = False, slot: str | None = None, shifts: np.ndarray | None = None) -> np.ndarray:
    """Rows of ``x - pivot`` through a CountSketch: ``out[r, bucket[j]] += sign[j] * (x[r, j] - pivot)``.

    ``x``: ``(rows, H)`` float array, or with ``bits`` BF16 bit patterns (uint16) decoded on the fly;
    ``bucket``: int64 in ``[0, k)`` per column; ``sign``: ±1.0 per column. Returns ``(rows, k)`` float64,
    in the reusable buffer ``slot`` (:func:`scratch`: valid until its next use) when given.
    ``shifts``: the buckets are ``shifted_buckets(H, k, shifts)`` (each chunk of ``k``
    columns rotated by a random shift: two columns of different chunks share a bucket with probability
    ``1/k``, as under random hashing), so a chunk is added as two contiguous runs (vectorised, ~2x the
    scattered form).
    Compiled where numba is installed (one pass, ``rows x H`` additions, no ``H x k`` product); else the
    same sums as a product with the dense ``H x k`` sketch matrix (equal to rounding).
    """
    kern = _kernels()
    x = np.ascontiguousarray(x)
    if slot is None:
        out = np.zeros((x.shape[0], k))
    else:
        out = scratch(slot, x.shape[0] * k * 8)[:x.shape[0] * k * 8].view(np.float64).reshape(x.shape[0], k)
        out[...] = 0.0
    if kern is not None and x.size:
        if shifts is not None:
            shifts = np.asarray(shifts, dtype=np.int64)
            (kern.sketch_shifted_bf16 if bits else kern.sketch_shifted)(x, shifts, sign, float(pivot), out)
        elif bits:
            kern.sketch_rows_bf16(x, bucket, sign, float(pivot), out)
        else:
            kern.sketch_rows(x, bucket, sign, float(pivot), out)
        return out
    dense = np.zeros((x.shape[1], k))
    dense[np.arange(x.shape[1]), bucket] = sign
    values = bf16_values(x) if bits else x
    return np.subtract(values, pivot, dtype=np.float64) @ dense


def accumulate_cross(sa: np.ndarray, sb: np.ndarray, p: np.ndarray) -> None:
    """``p += sa^T sb`` for ``(rows, k)`` float64 blocks (the rotation null's sketched cross product).

    Compiled where numba is installed: on the calling thread, ~25 GFLOP/s. A BLAS product would be
    faster alone but for ``k x k`` outputs OpenBLAS always wakes its worker threads, whose spinning on
    a machine whose cores are busy cost 2-40 ms of CPU per 2048 x 128 block instead of 2-3 (measured).
    """
    kern = _kernels()
    if kern is None or not sa.size:
        p += sa.T @ sb
    else:
        kern.cross(np.ascontiguousarray(sa), np.ascontiguousarray(sb), p)


def _fused_moments(a: np.ndarray, b: np.ndarray, kernel) -> _Moments:
    """:func:`_chunk_moments` through the compiled sweep (flat float32 arrays of equal, positive length)."""
    n = a.size
    pa, pb = _pivot(a), _pivot(b)
    s1a, s1b, s2a, s2b, sab, sdd = (float(x) for x in kernel(a, b, pa, pb, FUSED_BLOCK))
    return _from_sums(n, pa, pb, s1a, s1b, s2a, s2b, sab, sdd)


def _bf16_moments(a: np.ndarray, b: np.ndarray, kernel) -> _Moments:
    """:func:`_chunk_moments` of two flat BF16 bit-pattern arrays (uint16) through the compiled BF16 sweep;
    the pivots are those :func:`_fused_moments` takes from the decoded values (the same head elements)."""
    n = a.size
    pa, pb = _pivot(bf16_values(a[:_PIVOT_HEAD])), _pivot(bf16_values(b[:_PIVOT_HEAD]))
    s1a, s1b, s2a, s2b, sab, sdd = (float(x) for x in kernel(a, b, pa, pb, BF16_BLOCK))
    return _from_sums(n, pa, pb, s1a, s1b, s2a, s2b, sab, sdd)


def _combine(x: _Moments, y: _Moments) -> _Moments:
    """Chan et al.'s pairwise update of two disjoint sets of pairs."""
    if x.n == 0:
        return y
    if y.n == 0:
        return x
    n = x.n + y.n
    delta_a = y.mean_a - x.mean_a
    delta_b = y.mean_b - x.mean_b
    weight = x.n * y.n / n
    return _Moments(
        n=n,
        mean_a=x.mean_a + delta_a * (y.n / n),
        mean_b=x.mean_b + delta_b * (y.n / n),
        m2_a=x.m2_a + y.m2_a + delta_a * delta_a * weight,
        m2_b=x.m2_b + y.m2_b + delta_b * delta_b * weight,
        c_ab=x.c_ab + y.c_ab + delta_a * delta_b * weight,
        s_aa=x.s_aa + y.s_aa,
        s_bb=x.s_bb + y.s_bb,
        s_ab=x.s_ab + y.s_ab,
        s_dd=x.s_dd + y.s_dd,
    )


def _root_product(x: float, y: float) -> float:
    """``sqrt(x * y)`` of two positive sums: one rounding, so ``x == y`` gives exactly ``x`` (a copy's
    cosine is exactly 1); the product of roots where ``x * y`` would leave the float range."""
    p = x * y
    return math.sqrt(p) if 0.0 < p < math.inf else math.sqrt(x) * math.sqrt(y)


def _clip_unit(x: float) -> float:
    """Clamp rounding overshoot (e.g. 1 + 2e-16) back into [-1, 1]."""
    return max(-1.0, min(1.0, x))


class PairAccumulator:
    """Raw cosine, centred cosine (Pearson) and relative L2 of two tensors, fed chunk by chunk.

    Chunks of ``a`` and ``b`` passed to one :meth:`update` must cover the same elements; the order
    of chunks does not matter. Partial accumulators (from split or parallel reads of disjoint parts)
    combine with :meth:`merge`.

    Args:
        label_a: names side ``a`` in error messages (e.g. ``"target:model.norm.weight"``).
        label_b: names side ``b`` (the reference) in error messages.
        fused: take float32 chunks (and :meth:`update_bf16` bit patterns) through the compiled one-pass
            sweep (:func:`_kernels`, ~5x the numpy sweep's rate); the figures agree with the numpy sweep's
            to float64 rounding, not bit for bit. The weight comparison asks for it where both tensors are stored BF16 or F16 (large
            models); F32/F64 tensors (the demo and the calibrations the thresholds cite) keep the numpy
            sweep, so their evidence is unchanged.
    """

    def __init__(self, *, label_a: str = "a", label_b: str = "b", fused: bool = False) -> None:
        self.label_a = label_a
        self.label_b = label_b
        self._m = _Moments()
        self._kernel = _fused_kernel() if fused else None

    @property
    def n(self) -> int:
        """Number of element pairs accumulated so far."""
        return self._m.n

    @property
    def means(self) -> tuple[float, float]:
        """Means of side ``a`` and side ``b`` over the elements accumulated so far (0 before any)."""
        return (self._m.mean_a, self._m.mean_b)

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one chunk of both tensors.

        Args:
            a: a chunk of side ``a``, any real dtype (float16 and float32 are widened block by block inside
                the sweep, other dtypes converted to float64 first).
            b: the matching chunk of side ``b``, same shape as ``a``.

        Raises:
            IncompatibleShapes: the chunks differ in shape.
            NonFiniteWeights: a chunk holds NaN or Inf; the message names the side(s) and the count.
                The accumulator is unchanged.
        """
        a = np.asarray(a)
        b = np.asarray(b)
        if a.shape != b.shape:
            raise IncompatibleShapes(
                f"chunk shapes differ: {self.label_a} {a.shape} vs {self.label_b} {b.shape}"
            )
        if a.size == 0:
            return
        a = (a if a.dtype in _WIDENED else a.astype(np.float64)).ravel()
        b = (b if b.dtype in _WIDENED else b.astype(np.float64)).ravel()
        m = _fused_moments(a, b, self._kernel) if self._kernel is not None and a.dtype == b.dtype == np.float32 \
            else _chunk_moments(a, b)
        self._add(m, lambda: a, lambda: b)

    def update_bf16(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one chunk of two BF16 tensors given as their bit patterns (the stored bytes viewed as uint16).

        The same figures as :meth:`update` of their decoded float32 values: with ``fused`` the compiled
        BF16 sweep decodes them block by block in L1 (no float32 copy of the chunk is written); without,
        they are decoded and go through :meth:`update`.

        Raises:
            IncompatibleShapes, NonFiniteWeights: as :meth:`update`.
        """
        a = np.asarray(a)
        b = np.asarray(b)
        if a.dtype != np.uint16 or b.dtype != np.uint16:
            raise TypeError(f"update_bf16 takes uint16 bit patterns, got {a.dtype} and {b.dtype}")
        kern = _kernels() if self._kernel is not None else None
        if kern is None:
            self.update(bf16_values(a), bf16_values(b))
            return
        if a.shape != b.shape:
            raise IncompatibleShapes(
                f"chunk shapes differ: {self.label_a} {a.shape} vs {self.label_b} {b.shape}"
            )
        if a.size == 0:
            return
        a = np.ascontiguousarray(a).reshape(-1)
        b = np.ascontiguousarray(b).reshape(-1)
        self._add(_bf16_moments(a, b, kern.sweep_bf16), lambda: bf16_values(a), lambda: bf16_values(b))

    def _add(self, m: _Moments, values_a, values_b) -> None:
        """Combine one chunk's moments, or raise NonFiniteWeights naming the side(s) whose values (the
        callables give them, only on this failure path) hold NaN/Inf."""
        if not math.isfinite(m.m2_a + m.m2_b + m.s_dd + m.mean_a + m.mean_b):  # NaN/Inf in, or overflow
            a, b = values_a(), values_b()
            bad = [
                f"{label} has {count} NaN/Inf of {a.size}"
                for label, count in ((self.label_a, int(a.size - np.count_nonzero(np.isfinite(a)))),
                                     (self.label_b, int(b.size - np.count_nonzero(np.isfinite(b)))))
                if count
            ]
            if bad:
                raise NonFiniteWeights("non-finite values in chunk: " + "; ".join(bad))
        self._m = _combine(self._m, m)

    def merge(self, other: PairAccumulator) -> PairAccumulator:
        """Combine with another accumulator over a disjoint part of the same pair.

        Args:
            other: a partial accumulator; neither it nor ``self`` is modified.

        Returns:
            A new accumulator (labels of ``self``) holding both parts.
        """
        if not isinstance(other, PairAccumulator):
            raise TypeError(f"can only merge a PairAccumulator, got {type(other).__name__}")
        merged = PairAccumulator(label_a=self.label_a, label_b=self.label_b)
        merged._m = _combine(self._m, other._m)
        return merged

    def result(self) -> Similarity:
        """The figures of everything accumulated so far.

        Returns:
            A :class:`Similarity`; NaN fields as documented in the module docstring.

        Raises:
            ValueError: nothing was accumulated (n == 0).
        """
        m = self._m
        if m.n == 0:
            raise ValueError(
                f"no elements accumulated for {self.label_a} vs {self.label_b}; similarity is undefined"
            )
        if m.s_aa > 0 and m.s_bb > 0:
            cosine = _clip_unit(m.s_ab / _root_product(m.s_aa, m.s_bb))
        else:
            cosine = math.nan
        # a constant side shifts to exact zeros (its pivot is one of its elements): m2 is exactly 0
        if m.m2_a > 0 and m.m2_b > 0:
            centred = _clip_unit(m.c_ab / _root_product(m.m2_a, m.m2_b))
        else:
            centred = math.nan
        rel_l2 = math.sqrt(m.s_dd) / math.sqrt(m.s_bb) if m.s_bb > 0 else math.nan
        return Similarity(
            n=m.n,
            cosine=cosine,
            centred_cosine=centred,
            rel_l2=rel_l2,
            mean_a=m.mean_a,
            mean_b=m.mean_b,
            std_a=math.sqrt(m.m2_a / m.n),
            std_b=math.sqrt(m.m2_b / m.n),
        )


def similarity(a: np.ndarray, b: np.ndarray) -> Similarity:
    """Similarity of two whole arrays (one chunk of a :class:`PairAccumulator`).

    Args:
        a: the compared tensor, any real dtype.
        b: the reference tensor, same shape.

    Returns:
        A :class:`Similarity`.

    Raises:
        IncompatibleShapes, NonFiniteWeights, ValueError: as :class:`PairAccumulator`.
    """
    acc = PairAccumulator()
    acc.update(a, b)
    return acc.result()
