"""Embedding rows across vocabularies, and the design's embedding statistics.

Rows of ``embed`` and ``lm_head`` are tokens. A derivative that extended, shifted or reordered its
vocabulary (Mistral v1 -> v3 added control tokens) no longer has row ``i`` for the token of the
reference's row ``i``; comparing row by index would call a copy unrelated. :func:`shared_token_rows`
pairs rows through the normalised vocabularies of :mod:`modellineage.tokenizer.vocab` (every token as the
bytes it stands for): row ``t`` of the target with row ``r`` of the reference when both ids carry
the same normalised bytes. The pairs feed ``row_alignments`` of
:func:`modellineage.weights.similarity.compare_weights`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from modellineage.errors import LineageError, NonFiniteWeights
from modellineage.weights.sampling import choose_rows, row_dots
from modellineage.weights.similarity import iter_canonical_blocks, row_plan

__all__ = ["RowAlignment", "shared_token_rows", "vocabulary_of", "EmbeddingStats", "embedding_stats"]


@dataclass(frozen=True)
class RowAlignment:
    """Row pairs of shared tokens between two vocabularies."""

    target_rows: np.ndarray
    reference_rows: np.ndarray
    target_vocab: int
    reference_vocab: int
    moved: int
    """Shared tokens whose id differs between the two vocabularies."""

    @property
    def shared(self) -> int:
        return int(self.target_rows.size)

    @property
    def is_identity(self) -> bool:
        return self.moved == 0

    @property
    def description(self) -> str:
        return (f"rows of {self.shared} shared normalised tokens (target vocabulary {self.target_vocab}, "
                f"reference {self.reference_vocab}; {self.moved} at a different id)")

    def as_dict(self) -> dict:
        return {"shared": self.shared, "target_vocab": self.target_vocab, "reference_vocab": self.reference_vocab,
                "moved": self.moved}


def shared_token_rows(target_vocab, reference_vocab, target_rows: int, reference_rows: int) -> RowAlignment:
    """Pair embedding rows of tokens with the same normalised bytes.

    Args:
        target_vocab, reference_vocab: :class:`modellineage.tokenizer.vocab.Vocabulary` (``id_of_bytes``).
        target_rows, reference_rows: rows of the embedding matrices (ids beyond them are ignored;
            padded rows beyond the vocabulary are never paired).

    Returns:
        Pairs sorted by target id; a token listed under several ids pairs its lowest ids.
    """
    r_ids = reference_vocab.id_of_bytes()
    t_ids = target_vocab.id_of_bytes()
    pairs = sorted((t, r_ids[b]) for b, t in t_ids.items()
                   if b in r_ids and t < target_rows and r_ids[b] < reference_rows)
    t = np.array([p[0] for p in pairs], dtype=np.int64)
    r = np.array([p[1] for p in pairs], dtype=np.int64)
    return RowAlignment(t, r, target_vocab.size, reference_vocab.size, int(np.count_nonzero(t != r)))


def vocabulary_of(model):
    """The model's normalised vocabulary (``Model.vocabulary``, read once), or None when it has none
    that can be read."""
    try:
        return model.vocabulary
    except (LineageError, ImportError):
        return None


@dataclass(frozen=True)
class EmbeddingStats:
    """The design's embedding statistics of one matrix: shape, row-norm distribution, element variance.

    With sampling, the figures describe the seeded sample of rows read (``rows_read`` of
    ``rows_total``), the same rows a sampled comparison reads.
    """

    key: str
    tensor: str
    shape: tuple[int, ...]
    mean: float
    variance: float
    row_norm_quantiles: dict
    rows_read: int = 0
    rows_total: int = 0
    fraction: float | None = None

    def as_dict(self) -> dict:
        return {"key": self.key, "tensor": self.tensor, "shape": list(self.shape), "mean": self.mean,
                "variance": self.variance, "row_norm_quantiles": self.row_norm_quantiles,
                "rows_read": self.rows_read, "rows_total": self.rows_total, "sample_fraction": self.fraction}


def embedding_stats(store, ref, *, fraction: float | None = None, rng: np.random.Generator | None = None,
                    chunk_bytes: int = 32 << 20) -> EmbeddingStats:
    """Stream an embedding (or lm_head) matrix once: element mean and variance, row-norm quantiles.

    Args:
        store, ref: where the matrix is and which canonical tensor it is.
        fraction: share of rows to read (``None``: every row); needs ``rng``.
        rng: seeded generator choosing the rows (:func:`modellineage.weights.sampling.choose_rows`).
        chunk_bytes: float64 bytes per block of rows.

    Memory: one block plus one float per row read (the row norms, for the quantiles).

    Raises:
        NonFiniteWeights: a value read is NaN or Inf (the message names the file and tensor).
    """
    if fraction is not None and rng is None:
        raise ValueError("sampling needs a seeded rng")
    info = store.info(ref.source)
    plan = row_plan(ref, info)
    total, cols = plan.shape
    picked = choose_rows(total, fraction, rng) if fraction is not None else np.arange(total, dtype=np.int64)
    norms = np.empty(picked.size)
    n, mean, m2 = 0, 0.0, 0.0
    buf = None
    for rows, raw in iter_canonical_blocks(store, plan, picked, chunk_bytes=chunk_bytes):
        if buf is None:
            buf = np.empty(raw.size)
        block = buf[:raw.size].reshape(raw.shape)
        np.copyto(block, raw)  # float64 (blocks of exact float32 values widen here)
        start = n // max(1, cols)
        norms[start:start + block.shape[0]] = np.sqrt(row_dots(block, block))
        k, bm = block.size, float(np.add.reduce(block, axis=None)) / block.size
        block -= bm
        bm2 = float(row_dots(block, block).sum())
        if not math.isfinite(bm + bm2):
            bad = block.size - int(np.count_nonzero(np.isfinite(block)))
            first, last = int(plan.rows[rows].min()), int(plan.rows[rows].max())
            raise NonFiniteWeights(f"{info.file}: tensor {info.name!r} has {bad} non-finite values (NaN/Inf) "
                                   f"in rows {first}-{last}")
        delta = bm - mean
        both = n + k
        mean += delta * k / both
        m2 += bm2 + delta * delta * n * k / both
        n = both
    qs = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
    values = np.quantile(norms, qs) if picked.size else [math.nan] * len(qs)
    return EmbeddingStats(ref.key, ref.source, tuple(ref.shape), mean, m2 / n if n else math.nan,
                          {f"p{int(q * 100)}": float(v) for q, v in zip(qs, values)}, int(picked.size), int(total),
                          fraction if picked.size < total else None)
