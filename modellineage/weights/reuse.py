"""Exact tensor reuse: which target tensors have byte-identical twins anywhere in a reference.

Byte identity of a trained, non-constant float tensor cannot arise by chance, so it is the plainest
evidence of copying. Three kinds of tensor are kept out of that count and reported on their own:

- constant tensors (all elements with one byte pattern: zeros, ones, fresh norm gains, single values),
  which independent models share by construction;
- deterministic buffers that checkpoints sometimes carry (rotary ``inv_freq``, GPT-2's causal-mask
  ``attn.bias``, BERT's ``position_ids``), computed from the config rather than trained — the
  caller passes them from ``NameMap.buffers``, where canonical naming recognises them;
- integer and boolean tensors, which are listed and hashed but are not weights.

A constant target tensor where the reference's counterpart (same canonical key) is trained — a tensor
zeroed or set to one value, e.g. norm gains set to ones after folding them into the next layer — is
listed on its own (:func:`constant_replacements`): it is neither reuse nor evidence of independence,
but a reader should see which tensor of which file it is.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Collection, Sequence

from modellineage.reading.hashing import TensorDigest
from modellineage.reading.tensors import FLOAT_DTYPES

__all__ = ["excluded_kind", "ReusedTensor", "LayerReuse", "ExactReuse", "ConstantTensor", "measure_exact_reuse",
           "constant_replacements", "SAMPLED_ROWS_MEANING"]


def _gguf_float(dtype: str) -> bool:
    """A GGUF quantised type the reader dequantises (Q8_0, Q4_K, ...): weights, so reuse evidence."""
    from modellineage.reading.gguf_weights import dequantisable_types

    return dtype in dequantisable_types()


def excluded_kind(digest: TensorDigest, buffers: Collection[str] = ()) -> str | None:
    """Why a tensor does not count as reuse evidence, or None when it counts."""
    if digest.dtype not in FLOAT_DTYPES and not _gguf_float(digest.dtype):
        return "non-float"
    if digest.name in buffers:
        return "buffer"
    if digest.constant:
        return "constant"
    return None


@dataclass(frozen=True)
class ReusedTensor:
    """One target tensor whose exact bytes occur in the reference."""

    target_name: str
    reference_names: tuple[str, ...]
    nbytes: int
    same_name: bool

    def as_dict(self) -> dict:
        return {"target": self.target_name, "reference": list(self.reference_names),
                "nbytes": self.nbytes, "same_name": self.same_name}


@dataclass(frozen=True)
class LayerReuse:
    """Counted and reused target tensors of one layer (``layer`` None: embeddings, head, final norm)."""

    layer: int | None
    reused: int
    counted: int

    @property
    def label(self) -> str:
        return "outside layers" if self.layer is None else f"layer {self.layer}"

    def as_dict(self) -> dict:
        return {"layer": self.layer, "reused": self.reused, "counted": self.counted}


@dataclass(frozen=True)
class ExactReuse:
    """Byte-level reuse of target tensors in one reference."""

    target_tensors: int
    reference_tensors: int
    counted_tensors: int  # target tensors that can be evidence (float, not constant, not a buffer)
    counted_bytes: int
    reused: tuple[ReusedTensor, ...]  # counted tensors with an identical twin
    excluded: dict  # kind -> count of target tensors left out
    excluded_matches: dict  # kind -> count of left-out target tensors that also match
    by_layer: tuple[LayerReuse, ...] = ()  # counted and reused tensors per layer (None: outside layers)
    # Target tensors that could not be checked: their bytes were not read (a remote model read in part,
    # or beyond the digests' share of a read budget).
    unchecked: tuple[str, ...] = ()
    # Under a read budget: what the digests covered per model (rows per tensor, seed, bytes, why some are
    # unchecked) and what the check can and cannot show. None for whole-tensor digests.
    coverage: dict | None = None

    @property
    def reused_count(self) -> int:
        return len(self.reused)

    @property
    def reused_share(self) -> float:
        return self.reused_count / self.counted_tensors if self.counted_tensors else 0.0

    @property
    def reused_bytes_share(self) -> float:
        return sum(r.nbytes for r in self.reused) / self.counted_bytes if self.counted_bytes else 0.0

    def as_dict(self) -> dict:
        return {
            "target_tensors": self.target_tensors,
            "reference_tensors": self.reference_tensors,
            "counted_tensors": self.counted_tensors,
            "reused_count": self.reused_count,
            "reused_share": self.reused_share,
            "reused_bytes_share": self.reused_bytes_share,
            "reused": [r.as_dict() for r in self.reused],
            "excluded": dict(sorted(self.excluded.items())),
            "excluded_matches": dict(sorted(self.excluded_matches.items())),
            "by_layer": [r.as_dict() for r in self.by_layer],
            "unchecked": list(self.unchecked),
            **({"coverage": self.coverage} if self.coverage is not None else {}),
        }


def measure_exact_reuse(target: Sequence[TensorDigest], reference: Sequence[TensorDigest], *,
                        buffers: Collection[str] = (),
                        layer_of: Callable[[str], int | None] | None = None,
                        unchecked: Collection[str] = (), coverage: dict | None = None) -> ExactReuse:
    """Find target tensors whose bytes (dtype and shape too) occur anywhere in the reference.

    Args:
        target: per-tensor digests of the audited model.
        reference: per-tensor digests of the reference model.
        buffers: target tensor names that are config-derived buffers (``NameMap.buffers``).
        layer_of: target tensor name -> layer index (``NameMap.layer_of``), for the per-layer counts.
        unchecked: target tensors without a digest (not read: a remote model read in part, or beyond the
            digests' share of a read budget); they are not counted and are listed in the record, so the reader
            sees what the verdict did not cover.
        coverage: recorded as given (:data:`SAMPLED_ROWS_MEANING` and per-model facts under a read budget).

    Digests of sampled rows (``TensorDigest.rows``, under a read budget) match only digests of the same
    rows: a match means those rows are byte-identical (evidence of reuse for those rows, not proof for the
    whole tensor); no match means the tensors differ (exact, as for whole digests).

    Returns:
        An ExactReuse record; any name, any layer, any expert slot counts.
    """
    index: dict[tuple, list[str]] = defaultdict(list)
    for d in reference:
        index[(d.sha256, d.dtype, tuple(d.shape), d.rows)].append(d.name)
    reused: list[ReusedTensor] = []
    excluded: dict[str, int] = defaultdict(int)
    excluded_matches: dict[str, int] = defaultdict(int)
    counted = counted_bytes = 0
    per_layer: dict[int | None, list[int]] = defaultdict(lambda: [0, 0])
    for d in sorted(target, key=lambda t: t.name):
        twins = index.get((d.sha256, d.dtype, tuple(d.shape), d.rows), [])
        kind = excluded_kind(d, buffers)
        if kind is not None:
            excluded[kind] += 1
            excluded_matches[kind] += bool(twins)
            continue
        counted += 1
        counted_bytes += d.nbytes
        tally = per_layer[layer_of(d.name) if layer_of else None]
        tally[1] += 1
        tally[0] += bool(twins)
        if twins:
            names = tuple(sorted(twins))
            reused.append(ReusedTensor(d.name, names, d.nbytes, d.name in names))
    return ExactReuse(
        target_tensors=len(target),
        reference_tensors=len(reference),
        counted_tensors=counted,
        counted_bytes=counted_bytes,
        reused=tuple(reused),
        excluded=dict(excluded),
        excluded_matches=dict(excluded_matches),
        by_layer=tuple(LayerReuse(layer, reused, n) for layer, (reused, n)
                       in sorted(per_layer.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))),
        unchecked=tuple(sorted(unchecked)),
        coverage=coverage,
    )


#: What a reuse check on sampled rows (a read budget) can and cannot show, for the evidence and the report.
SAMPLED_ROWS_MEANING = {
    "can_show": "a target tensor whose digested row is byte-identical to the same row of a reference tensor of "
                "the same shape and dtype (rows chosen by shape alone, so a copy under any name matches); 1-D "
                "tensors are digested whole; a tensor whose row differs is certainly not an exact copy",
    "cannot_show": "whether the rows not read are identical too (a tensor copied with other rows changed counts "
                   "as reused; a byte-identical row of trained weights does not arise by chance); tensors listed "
                   "as unchecked; 'constant' and NaN/Inf counts describe the digested row only",
}


@dataclass(frozen=True)
class ConstantTensor:
    """A target tensor holding one value where the reference's tensor of the same canonical key varies."""

    key: str
    target_tensor: str
    target_file: str
    value: float
    reference_tensor: str
    reference_file: str

    @property
    def line(self) -> str:
        return (f"{self.target_tensor} in {self.target_file} is constant ({self.value:g} everywhere) where the "
                f"reference's {self.reference_tensor} ({self.reference_file}) is not")

    def as_dict(self) -> dict:
        return {"key": self.key, "target_tensor": self.target_tensor, "target_file": self.target_file,
                "value": self.value, "reference_tensor": self.reference_tensor,
                "reference_file": self.reference_file}


def constant_replacements(target, reference) -> tuple[ConstantTensor, ...]:
    """Target tensors that are constant where the reference's counterpart is a non-constant float tensor.

    Counterparts are whole tensors under the same canonical key (:mod:`modellineage.reading.naming`); buffers
    and non-float tensors are left out on either side. Reads one row of each constant tensor for its value.

    Args:
        target, reference: :class:`modellineage.reading.model.Model` handles (their per-tensor digests are cached).
    """
    t_dig = {d.name: d for d in target.tensor_digests()}
    r_dig = {d.name: d for d in reference.tensor_digests()}
    t_buf, r_buf = target.name_map.buffers, reference.name_map.buffers
    r_refs = reference.name_map.refs
    found = []
    for key, tref in target.name_map.refs.items():
        rref = r_refs.get(key)
        if rref is None or not tref.is_whole or not rref.is_whole:
            continue
        td, rd = t_dig.get(tref.source), r_dig.get(rref.source)
        if td is None or rd is None or excluded_kind(td, t_buf) != "constant" or excluded_kind(rd, r_buf) is not None:
            continue
        if td.rows is not None or rd.rows is not None:  # a row sample (read budget): constant only in that row
            continue
        if not td.nbytes:
            continue
        first = target.store.read_row_range(tref.source, 0, 1)
        found.append(ConstantTensor(key, tref.source, target.store.info(tref.source).file.name,
                                    float(first.reshape(-1)[0]), rref.source,
                                    reference.store.info(rref.source).file.name))
    return tuple(found)
