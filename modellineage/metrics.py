"""Similarity of two equally shaped tensors, accumulated chunk by chunk in float64.

Three figures are reported for a pair ``(a, b)``, with ``b`` the reference:

- raw cosine ``a·b / (||a|| ||b||)``;
- centred cosine (Pearson correlation) of the elements, the cosine of ``a - mean(a)`` and ``b - mean(b)``;
- relative L2 distance ``||a - b|| / ||b||``.

The raw cosine is dominated by the mean when the mean is large against the spread. Norm gains
(RMSNorm/LayerNorm weights) have mean ≈ 1 and a small spread, so *any* two such vectors have a raw
cosine near 1; only the centred cosine says whether the spread itself agrees. Centring is done
without cancellation: each chunk contributes its own mean and centred sums (two passes over the
chunk, which is in memory anyway), and chunks are combined with the pairwise update of Chan, Golub
and LeVeque (1979) for means, second moments and the co-moment. The textbook one-pass formula
``sum(a*b) - n*mean(a)*mean(b)`` subtracts two nearly equal numbers and loses most of its digits
on exactly those tensors.

Edge cases (none is ever silently 0):

- a side whose elements are all equal (zero variance) gives ``centred_cosine = NaN``; the caller
  must report that the centred figure is undefined, not treat it as 0;
- a side that is all zeros (zero norm) gives ``cosine = NaN``;
- a zero reference ``b`` gives ``rel_l2 = NaN``;
- no elements at all: :meth:`PairAccumulator.result` raises ``ValueError``.

Typical use with :meth:`modellineage.tensors.TensorStore.iter_rows` (two stores read with the same
``max_chunk_bytes`` yield blocks of the same rows for tensors of the same shape)::

    acc = PairAccumulator(label_a="target:model.norm.weight", label_b="reference:model.norm.weight")
    for (_, a), (_, b) in zip(target.iter_rows(name), reference.iter_rows(name)):
        acc.update(a, b)
    sim = acc.result()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import IncompatibleShapes, NonFiniteWeights


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
    min_a: float = math.inf
    max_a: float = -math.inf
    min_b: float = math.inf
    max_b: float = -math.inf


def _centre(x: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean of ``x`` and ``x - mean``; two passes, the second removes the rounding of the first."""
    first = x[0]
    if np.all(x == first):  # constant: exact mean, exact zero deviations
        return float(first), np.zeros_like(x)
    mean = float(x.mean())
    dev = x - mean
    corr = float(dev.mean())
    return mean + corr, dev - corr


def _chunk_moments(a: np.ndarray, b: np.ndarray) -> _Moments:
    """Statistics of one chunk (flat float64 arrays of equal, positive length), centred on its own means."""
    n = a.size
    mean_a, da = _centre(a)
    mean_b, db = _centre(b)
    diff = a - b
    return _Moments(
        n=n,
        mean_a=mean_a,
        mean_b=mean_b,
        m2_a=float(np.dot(da, da)),
        m2_b=float(np.dot(db, db)),
        c_ab=float(np.dot(da, db)),
        s_aa=float(np.dot(a, a)),
        s_bb=float(np.dot(b, b)),
        s_ab=float(np.dot(a, b)),
        s_dd=float(np.dot(diff, diff)),
        min_a=float(a.min()),
        max_a=float(a.max()),
        min_b=float(b.min()),
        max_b=float(b.max()),
    )


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
        min_a=min(x.min_a, y.min_a),
        max_a=max(x.max_a, y.max_a),
        min_b=min(x.min_b, y.min_b),
        max_b=max(x.max_b, y.max_b),
    )


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
    """

    def __init__(self, *, label_a: str = "a", label_b: str = "b") -> None:
        self.label_a = label_a
        self.label_b = label_b
        self._m = _Moments()

    @property
    def n(self) -> int:
        """Number of element pairs accumulated so far."""
        return self._m.n

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add one chunk of both tensors.

        Args:
            a: a chunk of side ``a``, any real dtype (converted to float64).
            b: the matching chunk of side ``b``, same shape as ``a``.

        Raises:
            IncompatibleShapes: the chunks differ in shape.
            NonFiniteWeights: a chunk holds NaN or Inf; the message names the side(s) and the count.
                The accumulator is unchanged.
        """
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise IncompatibleShapes(
                f"chunk shapes differ: {self.label_a} {a.shape} vs {self.label_b} {b.shape}"
            )
        if a.size == 0:
            return
        a = a.ravel()
        b = b.ravel()
        bad = [
            f"{label} has {count} NaN/Inf of {a.size}"
            for label, count in ((self.label_a, int(a.size - np.count_nonzero(np.isfinite(a)))),
                                 (self.label_b, int(b.size - np.count_nonzero(np.isfinite(b)))))
            if count
        ]
        if bad:
            raise NonFiniteWeights("non-finite values in chunk: " + "; ".join(bad))
        self._m = _combine(self._m, _chunk_moments(a, b))

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
            cosine = _clip_unit(m.s_ab / (math.sqrt(m.s_aa) * math.sqrt(m.s_bb)))
        else:
            cosine = math.nan
        constant = m.min_a == m.max_a or m.min_b == m.max_b
        if not constant and m.m2_a > 0 and m.m2_b > 0:
            centred = _clip_unit(m.c_ab / (math.sqrt(m.m2_a) * math.sqrt(m.m2_b)))
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
            std_a=0.0 if m.min_a == m.max_a else math.sqrt(m.m2_a / m.n),
            std_b=0.0 if m.min_b == m.max_b else math.sqrt(m.m2_b / m.n),
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
