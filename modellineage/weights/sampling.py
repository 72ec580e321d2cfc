"""Seeded row sampling and bootstrap confidence intervals for the similarity of two tensors.

``--sample 0.1`` compares a seeded random tenth of the rows of every tensor pair instead of all of
them (the design suggests 10-20 % per layer for 100B+ models). Rows are the sampling unit because
a row is what :meth:`modellineage.reading.tensors.TensorStore.read_rows` reads in one ``pread``; the same
row positions are read on both sides, so each sampled row is a matched pair of rows.

Confidence intervals (95 %) are a **Poisson bootstrap over the sampled rows** (Hanley & MacGibbon
2006; Chamandy et al. 2012): each of ``B`` replicates gives every sampled row an independent
Poisson(1) weight, the figures are recomputed from per-row sufficient statistics combined with the
exact pooled moments, and the interval is the 2.5 / 97.5 % percentile of the replicates. Weights
are drawn block by block of rows (:class:`BootstrapAccumulator`), so the bootstrap's memory does not
grow with the number of sampled rows.
Resampling whole rows keeps the dependence between elements of one row (the design effect of
cluster sampling) inside the interval instead of pretending the elements are independent. No
finite-population correction is applied, so at a 10 % share the intervals are about 5 % wider than
needed (conservative). Means over several tensors (a category, a layer) use the same replicate
index across tensors, each tensor resampled independently — the tensors are sampled independently.

When every row of a tensor is read (small tensors, norm vectors, ``fraction = 1``) the figure is
exact and its interval is the point itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modellineage.weights.metrics import DOT_ROW

__all__ = [
    "BOOTSTRAP_REPLICATES",
    "BOOTSTRAP_BLOCK_ROWS",
    "MIN_SAMPLED_ROWS",
    "BootstrapAccumulator",
    "Interval",
    "RowStats",
    "choose_rows",
    "percentile_interval",
    "row_stats",
]

#: Bootstrap replicates per tensor (percentile 95 % interval; Monte-Carlo error of a bound ≈ 1 %).
BOOTSTRAP_REPLICATES = 400
#: A tensor with at most this many rows is read whole even when sampling (too few rows to resample).
MIN_SAMPLED_ROWS = 16


@dataclass(frozen=True)
class Interval:
    """A 95 % confidence interval; ``exact`` when every row was read (``low == high == point``)."""

    low: float
    high: float
    exact: bool
    method: str

    def contains(self, value: float, *, tol: float = 1e-12) -> bool:
        return self.low - tol <= value <= self.high + tol

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "exact": self.exact, "method": self.method}


def choose_rows(total: int, fraction: float | None, rng: np.random.Generator, *,
                min_rows: int = MIN_SAMPLED_ROWS) -> np.ndarray:
    """Positions of the rows to read, sorted.

    Args:
        total: rows of the (2-D view of the) tensor.
        fraction: share of rows to read, in (0, 1]; ``None`` or 1 reads every row.
        rng: the seeded generator of this comparison (advanced only when rows are drawn).
        min_rows: rows every tensor gets at least (a read budget lowers it, :mod:`modellineage.weights.budget`).

    Returns:
        int64 positions in ``[0, total)``, sorted and unique; all rows when the tensor has at most
        :data:`MIN_SAMPLED_ROWS` rows or the share covers them all.
    """
    if fraction is not None and not (0.0 < fraction <= 1.0):
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction!r}")
    if fraction is None or fraction >= 1.0 or total <= min_rows:
        return np.arange(total, dtype=np.int64)
    k = min(total, max(min_rows, 2, math.ceil(fraction * total)))
    if k >= total:
        return np.arange(total, dtype=np.int64)
    return np.sort(rng.choice(total, size=k, replace=False)).astype(np.int64)


@dataclass(frozen=True)
class RowStats:
    """Per-row sufficient statistics of matched rows ``a`` (target) and ``b`` (reference), ``cols`` each."""

    cols: int
    mean_a: np.ndarray
    mean_b: np.ndarray
    m2_a: np.ndarray
    m2_b: np.ndarray
    c_ab: np.ndarray
    s_aa: np.ndarray
    s_bb: np.ndarray
    s_ab: np.ndarray
    s_dd: np.ndarray

def row_stats(a: np.ndarray, b: np.ndarray) -> RowStats:
    """Sufficient statistics of each row of two equally shaped 2-D float64 blocks."""
    mean_a = a.mean(axis=1)
    mean_b = b.mean(axis=1)
    da = a - mean_a[:, None]
    db = b - mean_b[:, None]
    # second pass removes the rounding of the first mean
    ca, cb = da.mean(axis=1), db.mean(axis=1)
    da -= ca[:, None]
    db -= cb[:, None]
    diff = a - b
    return RowStats(
        cols=a.shape[1],
        mean_a=mean_a + ca,
        mean_b=mean_b + cb,
        m2_a=row_dots(da, da),
        m2_b=row_dots(db, db),
        c_ab=row_dots(da, db),
        s_aa=row_dots(a, a),
        s_bb=row_dots(b, b),
        s_ab=row_dots(a, b),
        s_dd=row_dots(diff, diff),
    )


def row_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per row, ``x_i . y_i``: BLAS dots on the calling thread for rows of at most DOT_ROW elements, else einsum."""
    if x.shape[1] <= DOT_ROW and hasattr(np, "vecdot"):
        return np.vecdot(x, y)
    return np.einsum("ij,ij->i", x, y)


#: Rows per block of bootstrap weights: one ``(replicates, block)`` float64 matrix at a time
#: (400 x 1024 x 8 B = 3.3 MB), whatever the number of sampled rows.
BOOTSTRAP_BLOCK_ROWS = 1024

# Per-row features whose weighted sums give every figure (see BootstrapAccumulator).
_N_FEATURES = 13


def _features(stats: RowStats, pivot_a: float, pivot_b: float) -> np.ndarray:
    """``(n, 13)`` per-row features: 1, shifted row means and their products, within-row moments, raw sums."""
    d_a = stats.mean_a - pivot_a
    d_b = stats.mean_b - pivot_b
    return np.column_stack([np.ones_like(d_a), d_a, d_b, d_a * d_a, d_b * d_b, d_a * d_b, stats.m2_a, stats.m2_b,
                            stats.c_ab, stats.s_aa, stats.s_bb, stats.s_ab, stats.s_dd])


def _figures(sums: np.ndarray, cols: int) -> dict[str, np.ndarray]:
    """Figures from ``(B, 13)`` weighted feature sums (the exact pooled moments, shifted-data form)."""
    w, sa, sb, saa, sbb, sab = (sums[:, i] for i in range(6))
    m2a_in, m2b_in, cab_in, s_aa, s_bb, s_ab, s_dd = (sums[:, i] for i in range(6, 13))
    with np.errstate(invalid="ignore", divide="ignore"):
        # within-row moments plus the between-row spread of the row means around the replicate's mean
        m2_a = m2a_in + cols * (saa - sa * sa / w)
        m2_b = m2b_in + cols * (sbb - sb * sb / w)
        c_ab = cab_in + cols * (sab - sa * sb / w)
        cosine = np.where((s_aa > 0) & (s_bb > 0), s_ab / np.sqrt(s_aa * s_bb), np.nan)
        centred = np.where((w > 0) & (m2_a > 0) & (m2_b > 0), c_ab / np.sqrt(m2_a * m2_b), np.nan)
        rel_l2 = np.where(s_bb > 0, np.sqrt(s_dd / s_bb), np.nan)
    return {"cosine": np.clip(cosine, -1.0, 1.0), "centred_cosine": np.clip(centred, -1.0, 1.0),
            "rel_l2": rel_l2}


class BootstrapAccumulator:
    """Poisson-bootstrap replicates of the three figures, fed block by block of sampled rows.

    Each row gets an independent Poisson(1) weight per replicate, drawn when its block arrives; the
    replicates keep only ``(B, 13)`` weighted sums of per-row features, so memory is bounded by
    :data:`BOOTSTRAP_BLOCK_ROWS` (a 256k-row vocabulary sampled at 50 % needs the same few MB as a
    100-row tensor). The between-row moments use row means shifted by a pivot (the first block's
    mean), which keeps the one-pass sums free of cancellation.

    Args:
        rng: the seeded generator of the comparison (advanced block by block, in row order).
        replicates: ``B``.
        block_rows: rows per block of weights.
    """

    def __init__(self, rng: np.random.Generator, replicates: int = BOOTSTRAP_REPLICATES,
                 block_rows: int = BOOTSTRAP_BLOCK_ROWS) -> None:
        self._rng = rng
        self._replicates = replicates
        self._block = max(1, int(block_rows))
        self._sums = np.zeros((replicates, _N_FEATURES))
        self._pivot: tuple[float, float] | None = None
        self._cols: int | None = None
        self.rows = 0

    def update(self, stats: RowStats) -> None:
        """Add rows, each weighted by a Poisson(1) draw per replicate."""
        n = stats.mean_a.size
        if n == 0:
            return
        if self._cols is None:
            self._cols = stats.cols
            self._pivot = (float(stats.mean_a.mean()), float(stats.mean_b.mean()))
        elif stats.cols != self._cols:
            raise ValueError(f"rows of {stats.cols} columns added to a bootstrap of {self._cols}")
        feats = _features(stats, *self._pivot)
        for start in range(0, n, self._block):
            stop = min(n, start + self._block)
            w = self._rng.poisson(1.0, size=(self._replicates, stop - start)).astype(np.float64)
            self._sums += w @ feats[start:stop]
        self.rows += n

    def figures(self) -> dict[str, np.ndarray]:
        """``{"cosine", "centred_cosine", "rel_l2"}`` -> ``(B,)``; NaN where a replicate is undefined."""
        if self._cols is None:
            nan = np.full(self._replicates, np.nan)
            return {"cosine": nan, "centred_cosine": nan.copy(), "rel_l2": nan.copy()}
        return _figures(self._sums, self._cols)


def percentile_interval(replicates: np.ndarray, point: float, *, method: str) -> Interval:
    """The 2.5-97.5 % percentile interval of bootstrap replicates (NaN replicates dropped).

    The interval is widened to contain the point estimate if the replicate distribution is so skewed
    that it does not (possible near ±1 with few rows).
    """
    values = np.asarray(replicates, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0 or not math.isfinite(point):
        return Interval(math.nan, math.nan, False, method)
    low, high = (float(x) for x in np.quantile(values, [0.025, 0.975]))
    return Interval(min(low, point), max(high, point), False, method)


BOOTSTRAP_METHOD = (f"Poisson bootstrap over sampled rows ({BOOTSTRAP_REPLICATES} replicates, "
                    "2.5-97.5 % percentiles, no finite-population correction)")
EXACT_METHOD = "exact (every row read)"
