"""Tokenizer fingerprints: an exact SHA-256 of a normalised vocabulary and a bottom-k MinHash sketch.

The sketch lets a catalog say how much two vocabularies overlap without shipping either vocabulary.

* **Exact fingerprint**: SHA-256 over the sorted, distinct token byte strings, each prefixed by its
  length (4 bytes, big-endian), so no two different sets hash alike by concatenation. Token ids are
  not part of it: a permuted copy of a vocabulary is still the same vocabulary.
* **Sketch**: every token is hashed to 64 bits (BLAKE2b, 8-byte digest, personalisation
  ``b"mlineage"``); the sketch keeps the ``k`` smallest distinct hash values (a bottom-k sketch,
  Broder 1997; Cohen & Kaplan 2007). The Jaccard similarity of two sets is estimated from the
  ``k`` smallest values of the union of the two sketches: the share of them present in both.
  That estimator is unbiased with standard error ≈ sqrt(J(1-J)/k) (at most 0.5/sqrt(k): 1.1 points
  for the default k = 2048; 0.4 points at J = 0.95). With the distinct-token counts stored beside
  the sketch, the intersection and both containments follow from J: |A∩B| = J(|A|+|B|)/(1+J).

Inputs are plain iterables of byte strings (e.g. ``Vocabulary.normalised`` minus special tokens),
so this module does not depend on how a vocabulary was read.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, fields
from typing import Any, Iterable

__all__ = ["HASH", "DEFAULT_K", "MinHashSketch", "vocabulary_sha256", "sketch", "OverlapEstimate",
           "estimate_overlap", "exact_overlap"]

HASH = "blake2b-64/person=mlineage"
DEFAULT_K = 2048
_PERSON = b"mlineage"


def _h(token: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(token, digest_size=8, person=_PERSON).digest(), "big")


def vocabulary_sha256(tokens: Iterable[bytes]) -> str:
    """SHA-256 of the distinct tokens, sorted bytewise, each as 4-byte big-endian length + bytes."""
    digest = hashlib.sha256()
    for token in sorted(set(tokens)):
        digest.update(len(token).to_bytes(4, "big"))
        digest.update(token)
    return digest.hexdigest()


@dataclass(frozen=True)
class MinHashSketch:
    """The ``k`` smallest 64-bit token hashes of a set of distinct tokens (all of them if fewer)."""

    k: int
    values: tuple[int, ...]
    distinct: int
    """Number of distinct tokens in the sketched set."""
    hash: str = HASH

    def encode(self) -> str:
        """The values as base64 of packed big-endian uint64 (for JSON files)."""
        return base64.b64encode(b"".join(v.to_bytes(8, "big") for v in self.values)).decode("ascii")

    @classmethod
    def decode(cls, k: int, data: str, distinct: int, hash: str = HASH) -> "MinHashSketch":
        raw = base64.b64decode(data.encode("ascii"), validate=True)
        if len(raw) % 8:
            raise ValueError("sketch data is not a whole number of 64-bit values")
        values = tuple(int.from_bytes(raw[i:i + 8], "big") for i in range(0, len(raw), 8))
        if list(values) != sorted(set(values)):
            raise ValueError("sketch values must be distinct and ascending")
        if len(values) != min(k, distinct):
            raise ValueError(f"sketch holds {len(values)} values, expected min(k={k}, distinct={distinct})")
        return cls(k, values, distinct, hash)

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "hash": self.hash, "distinct": self.distinct, "values_b64": self.encode()}


def sketch(tokens: Iterable[bytes], k: int = DEFAULT_K) -> MinHashSketch:
    """Bottom-k sketch of the distinct tokens."""
    distinct = set(tokens)
    hashes = sorted({_h(t) for t in distinct})
    return MinHashSketch(k, tuple(hashes[:k]), len(distinct))


@dataclass(frozen=True)
class OverlapEstimate:
    """Overlap of two token sets A (target) and B (other): exact when computed from the sets,
    estimated (with ``stderr``) when computed from sketches."""

    jaccard: float
    intersection: float
    share_of_target: float
    """|A∩B| / |A|."""
    share_of_other: float
    """|A∩B| / |B|."""
    target_distinct: int
    other_distinct: int
    stderr: float
    """Standard error of ``jaccard`` (0 for an exact overlap)."""
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _from_jaccard(j: float, a: int, b: int, stderr: float, method: str) -> OverlapEstimate:
    inter = j * (a + b) / (1 + j) if a + b else 0.0
    return OverlapEstimate(j, inter, inter / a if a else 0.0, inter / b if b else 0.0, a, b, stderr, method)


def estimate_overlap(a: MinHashSketch, b: MinHashSketch) -> OverlapEstimate:
    """Estimate the overlap of two sets from their bottom-k sketches.

    Raises:
        ValueError: the sketches use different hashes (they cannot be compared).
    """
    if a.hash != b.hash:
        raise ValueError(f"sketches use different hashes ({a.hash} vs {b.hash})")
    k = min(a.k, b.k)
    sa, sb = set(a.values[:k]), set(b.values[:k])
    union_bottom = sorted(sa | sb)[:k]
    if not union_bottom:
        return _from_jaccard(0.0, a.distinct, b.distinct, 0.0, "bottom-k sketch (empty)")
    both = sum(1 for v in union_bottom if v in sa and v in sb)
    j = both / len(union_bottom)
    exact = a.distinct <= k and b.distinct <= k  # both sketches hold their whole sets
    stderr = 0.0 if exact else math.sqrt(j * (1 - j) / len(union_bottom))
    return _from_jaccard(j, a.distinct, b.distinct, stderr,
                         "exact (both sets fit in the sketch)" if exact else f"bottom-{k} MinHash estimate")


def exact_overlap(a: Iterable[bytes], b: Iterable[bytes]) -> OverlapEstimate:
    """The exact overlap of two token sets (what :func:`estimate_overlap` estimates)."""
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    j = len(sa & sb) / union if union else 0.0
    return _from_jaccard(j, len(sa), len(sb), 0.0, "exact")
