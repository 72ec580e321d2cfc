"""The weight measurement pipeline of one (target, reference) pair, without pytest.

signatures (a few seeded rows per tensor) -> layer correspondence and expert assignment -> the streamed
comparison of every tensor pair under that correspondence (``sample``: a seeded share of rows, with 95 %
intervals) -> embedding statistics -> a PCA of the layers. :func:`measure` returns one frozen
:class:`WeightEvidence`; the weight audits judge it, benchmarks and notebooks read it.

The target's side (its signatures and embedding statistics) is the same against every reference:
compute it once with :func:`measure_target` and pass it to each :func:`measure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from modellineage.reading.model import Model
from modellineage.weights.aligned import AlignedComparison, compare_aligned
from modellineage.weights.alignment import (
    LayerCorrespondence,
    correspond_layers,
    detect_upcycling,
    match_experts,
    project_layers,
)
from modellineage.weights.budget import BudgetPlan
from modellineage.weights.embeddings import EmbeddingStats, embedding_stats, shared_token_rows, vocabulary_of
from modellineage.weights.sampling import MIN_SAMPLED_ROWS
from modellineage.weights.signatures import GRID_MIN_ROWS, SAMPLE_ELEMENTS, compare_signatures, model_signatures
from modellineage.weights.slices import match_expert_slices
from modellineage.weights.similarity import CompareRequest, WeightComparison, compare_weights, compare_weights_many

__all__ = ["SIGNATURE_SEED", "EMBEDDING_SEED", "TargetSide", "WeightEvidence", "measure_target", "measure",
           "measure_many",
           "row_alignments", "measure_aligned"]

#: Seeds the rows each tensor signature reads.
SIGNATURE_SEED = 0
#: Seeds the rows the embedding statistics read when sampling.
EMBEDDING_SEED = 1
_EMBEDDING_KEYS = ("embed.weight", "lm_head.weight")


@dataclass(frozen=True)
class TargetSide:
    """What the pipeline measures on the target alone (the same for every reference)."""

    signatures: Mapping[str, Any]
    embeddings: Mapping[str, EmbeddingStats]
    sample: float | None
    signature_min_rows: int = GRID_MIN_ROWS
    bytes_read: int = 0
    signature_elements: int = SAMPLE_ELEMENTS


@dataclass(frozen=True)
class WeightEvidence:
    """Every weight measurement of one (target, reference) pair.

    ``comparison``: per-tensor similarity under the correspondence; ``layers``: the layer
    correspondence (and whether it beats index alignment); ``signatures``: every target tensor's best
    signature match; ``experts`` / ``upcycling``: routed-expert assignment and the dense-MLP check;
    ``projection``: PCA of the layers (or ``None``); ``embeddings``: statistics keyed
    ``"target:embed.weight"`` ...; ``row_alignment``: how embedding rows were paired; ``seeds``: every
    seed used, by what it seeded.
    """

    comparison: WeightComparison
    layers: LayerCorrespondence
    signatures: Any
    experts: tuple
    upcycling: tuple
    projection: Any
    embeddings: Mapping[str, EmbeddingStats]
    row_alignment: Mapping[str, Any]
    seeds: Mapping[str, int] = field(default_factory=dict)
    reading: Mapping[str, Any] = field(default_factory=dict)
    expert_slices: tuple = ()
    """Routed experts narrower than the reference layer's dense MLP, each matched to a slice of its neurons
    (:mod:`modellineage.weights.slices`: fine-grained upcycling)."""
    unequal_shapes: str = ""
    """Why no tensor pair could be compared by name (every tensor changed shape: a width-pruned or wider
    model), or empty. The comparison then holds no pairs; the aligned comparison matches channels, neurons
    and heads to a subset of the wider side's (:func:`measure_aligned`)."""

    @property
    def alignment_text(self) -> str:
        """``"layers aligned by correspondence: 0→0, ..."`` when the correspondence replaced index alignment."""
        if self.comparison.layer_map is None:
            return ""
        pairs = ", ".join(f"{t}→{r}" for t, r in sorted(self.comparison.layer_map.items()))
        extra = self.layers.describe()
        return f"layers aligned by correspondence: {pairs}" + (f" ({extra})" if extra else "")


def row_alignments(target: Model, reference: Model) -> tuple[dict, dict]:
    """Shared-token row pairs for embed / lm_head when both vocabularies can be read and ids differ.

    Returns ``(alignments, info)``: ``alignments[key] = (target_rows, reference_rows, description)``
    for the matrices whose rows need re-pairing; ``info[key]`` describes every pairing made.
    """
    out, info = {}, {}
    tv, rv = vocabulary_of(target), vocabulary_of(reference)
    if tv is None or rv is None:
        return out, {"vocabulary": "not read (rows paired by index where shapes agree)"}
    aligned = {}  # embed and lm_head usually have the same row counts: pair the vocabularies once
    for key in _EMBEDDING_KEYS:
        tref, rref = target.name_map.refs.get(key), reference.name_map.refs.get(key)
        if tref is None or rref is None or len(tref.shape) != 2 or len(rref.shape) != 2:
            continue
        rows = (tref.shape[0], rref.shape[0])
        if rows not in aligned:
            aligned[rows] = shared_token_rows(tv, rv, *rows)
        align = aligned[rows]
        info[key] = align.as_dict()
        if align.shared and (not align.is_identity or tref.shape != rref.shape):
            out[key] = (align.target_rows, align.reference_rows, align.description)
    return out, info


def _embedding_stats(model: Model, sample: float | None, first_seed: int) -> dict:
    """Statistics of the model's embed / lm_head (seeded ``[EMBEDDING_SEED, first_seed + i]`` when sampling)."""
    out = {}
    for key in _EMBEDDING_KEYS:
        ref = model.name_map.refs.get(key)
        if ref is not None and model.store.info(ref.source).is_float:
            out[key] = embedding_stats(model.store, ref, fraction=sample,
                                       rng=np.random.default_rng([EMBEDDING_SEED, first_seed + len(out)]))
    return out


def measure_target(target: Model, *, sample: float | None = None, signature_min_rows: int = GRID_MIN_ROWS,
                   signature_elements: int = SAMPLE_ELEMENTS) -> TargetSide:
    """The target's signatures and embedding statistics (pass to :func:`measure` for each reference)."""
    before = target.store.bytes_read
    signatures = model_signatures(target, seed=SIGNATURE_SEED, min_rows=signature_min_rows,
                                  elements=signature_elements)
    embeddings = _embedding_stats(target, sample, 0)
    return TargetSide(signatures, embeddings, sample, signature_min_rows, target.store.bytes_read - before,
                      signature_elements)


def measure(target: Model, reference: Model, *, min_layer_match: float, sample: float | None = None,
            seed: int = 0, target_side: TargetSide | None = None, budget: BudgetPlan | None = None
            ) -> WeightEvidence:
    """Measure the weights of ``target`` against ``reference``, streaming one tensor pair at a time.

    Args:
        target, reference: opened models (:class:`modellineage.reading.model.Model`).
        min_layer_match: least centred signature similarity for a layer pair to count in the layer
            correspondence (the audits pass ``[weights.derived_min_centred]`` of thresholds.toml).
        sample: read a seeded share of rows per tensor (e.g. 0.1) and report 95 % intervals; ``None``
            reads every row.
        seed: seeds the sampled rows.
        target_side: :func:`measure_target` of ``target`` with the same ``sample`` (computed here if omitted).
        budget: a read budget's plan (:func:`modellineage.weights.budget.plan_budget`): its row share,
            rows per tensor and signature rows replace ``sample``; the bytes read are recorded in
            :attr:`WeightEvidence.reading`.

    Several references: :func:`measure_many` reads the target once for all of them.
    """
    prepared = _prepare(target, reference, min_layer_match=min_layer_match, sample=sample, seed=seed,
                        target_side=target_side, budget=budget)
    comparison = compare_weights(target, reference, fraction=prepared.sample, seed=seed,
                                 layer_map=prepared.layer_map, expert_map=prepared.expert_map,
                                 row_alignments=prepared.rows, min_rows=prepared.min_rows, allow_empty=True)
    return _finish(target, reference, prepared, comparison, seed=seed, budget=budget)


def measure_many(target: Model, references, *, min_layer_match: float, sample: float | None = None, seed: int = 0,
                 target_side: TargetSide | None = None, budgets=None, workers: int | None = None) -> list:
    """:func:`measure` of ``target`` against every reference in ``references``, reading the target once.

    Each reference's signatures, correspondence and embedding statistics are measured as :func:`measure`
    does; the streamed comparisons run in one pass over the target
    (:func:`modellineage.weights.similarity.compare_weights_many`): each target tensor's bytes are read
    from its file once and compared with its partner in every reference. Every record equals the one
    :func:`measure` gives for that reference alone (figures, intervals, seeds, bytes read), except that
    ``reading["one_pass"]`` also says what the shared pass read from the target.

    Args:
        references: the reference models, in order.
        budgets: ``None`` or one :class:`BudgetPlan` (or ``None``) per reference.
        target_side: as :func:`measure` (recomputed for references whose budget changes its parameters).
        workers: threads of the comparison pass (default
            :func:`modellineage.weights.similarity.default_workers`; one when sampling).
        min_layer_match, sample, seed: as :func:`measure`.

    Returns:
        One entry per reference, in order: its :class:`WeightEvidence`, or the
        :class:`~modellineage.errors.LineageError` measuring it raised (the other references are measured).
    """
    from modellineage.errors import LineageError

    references = list(references)
    budgets = [None] * len(references) if budgets is None else list(budgets)
    sides: dict = {}
    if target_side is not None:
        sides[(target_side.sample, target_side.signature_min_rows, target_side.signature_elements)] = target_side
    prepared: list = []
    for reference, budget in zip(references, budgets):
        try:
            params = _params(sample, budget)
            side = sides.get(params[:3])
            if side is None:
                side = sides[params[:3]] = measure_target(target, sample=params[0], signature_min_rows=params[1],
                                                          signature_elements=params[2])
            prepared.append(_prepare(target, reference, min_layer_match=min_layer_match, sample=sample, seed=seed,
                                     target_side=side, budget=budget))
        except LineageError as exc:
            prepared.append(exc)
    live = [j for j, p in enumerate(prepared) if not isinstance(p, LineageError)]
    many = compare_weights_many(target, [
        CompareRequest(references[j], fraction=prepared[j].sample, seed=seed, layer_map=prepared[j].layer_map,
                       expert_map=prepared[j].expert_map, row_alignments=prepared[j].rows,
                       min_rows=prepared[j].min_rows, allow_empty=True) for j in live], workers=workers)
    comparisons = dict(zip(live, many.comparisons))
    one_pass = {**many.target_pass.as_dict(), "reference_names": [references[j].name for j in live],
                "note": "the streamed comparisons of these references ran in one pass over the target: each target "
                        "byte was read from its file once (target_bytes_read; bytes_read_through: tensors too large "
                        "to keep, read once per reference), while bytes_read above counts what this pair consumed, "
                        "as a one-reference run reads it"}
    out: list = []
    for j, (reference, budget) in enumerate(zip(references, budgets)):
        found = prepared[j] if isinstance(prepared[j], LineageError) else comparisons[j]
        if isinstance(found, LineageError):
            out.append(found)
            continue
        try:
            out.append(_finish(target, reference, prepared[j], found, seed=seed, budget=budget, one_pass=one_pass))
        except LineageError as exc:
            out.append(exc)
    return out


def _params(sample: float | None, budget: BudgetPlan | None) -> tuple:
    """``(sample, signature rows, signature elements, least sampled rows)`` under ``budget``."""
    if budget is None:
        return sample, GRID_MIN_ROWS, SAMPLE_ELEMENTS, MIN_SAMPLED_ROWS
    return budget.sample, budget.signature_min_rows, budget.signature_elements, budget.sample_min_rows


@dataclass(frozen=True)
class _Prepared:
    """What :func:`measure` knows before the streamed comparison (and what it read to know it)."""

    target_side: TargetSide
    sample: float | None
    min_rows: int
    rs: Any
    layers: LayerCorrespondence
    layer_map: Mapping[int, int] | None
    experts: tuple
    expert_map: Mapping | None
    rows: Mapping
    row_info: Mapping
    bytes_read: int


def _prepare(target: Model, reference: Model, *, min_layer_match: float, sample, seed: int,
             target_side: TargetSide | None, budget: BudgetPlan | None) -> _Prepared:
    sample, sig_rows, sig_elements, min_rows = _params(sample, budget)
    if target_side is None or (target_side.sample, target_side.signature_min_rows, target_side.signature_elements) \
            != (sample, sig_rows, sig_elements):
        target_side = measure_target(target, sample=sample, signature_min_rows=sig_rows,
                                     signature_elements=sig_elements)
    before = reference.store.bytes_read + target.store.bytes_read
    ts = target_side.signatures
    rs = model_signatures(reference, seed=SIGNATURE_SEED, min_rows=sig_rows, elements=sig_elements)
    layers = correspond_layers(ts, rs, min_match=min_layer_match)
    layer_map = layers.layer_map if layers.beats_index else None
    experts = match_experts(ts, rs, layer_map)
    expert_map = {(m.layer, t): r for m in experts for t, r in m.assignment} or None
    rows, row_info = row_alignments(target, reference)
    read = reference.store.bytes_read + target.store.bytes_read - before
    return _Prepared(target_side, sample, min_rows, rs, layers, layer_map, tuple(experts), expert_map, rows, row_info,
                     int(read))


def _finish(target: Model, reference: Model, prepared: _Prepared, comparison: WeightComparison, *, seed: int,
            budget: BudgetPlan | None, one_pass: Mapping | None = None) -> WeightEvidence:
    target_side, sample, layer_map = prepared.target_side, prepared.sample, prepared.layer_map
    ts, rs = target_side.signatures, prepared.rs
    before = reference.store.bytes_read + target.store.bytes_read
    unequal = ""
    if not comparison.pairs:
        detail = "; ".join(f"{s.key}: {s.reason}" for s in comparison.skipped[:3])
        unequal = (f"no canonical tensor of {target.name} ({', '.join(map(str, target.store.files))}) has a "
                   f"counterpart of the same shape in {reference.name} ({', '.join(map(str, reference.store.files))}), "
                   f"so weights cannot be compared element by element (different widths?): {detail}")
    # seeds [EMBEDDING_SEED, i]: i counts the target's matrices first, then the reference's
    embeddings = {f"target:{k}": v for k, v in target_side.embeddings.items()}
    embeddings.update({f"reference:{k}": v for k, v in
                       _embedding_stats(reference, sample, len(target_side.embeddings)).items()})
    slices = match_expert_slices(target, reference, layer_map, seed=seed)
    after = reference.store.bytes_read + target.store.bytes_read - before
    # the streamed comparison's bytes are what its pairs consumed (a one-pass run shares the target's)
    read = prepared.bytes_read + comparison.bytes_read + after + target_side.bytes_read
    present = sum(m.store.info(n).nbytes for m in (target, reference) for n in m.store.names())
    reading = {"bytes_read": int(read), "bytes_present": int(present),
               "share_read": read / present if present else None,
               "note": "bytes this pair's weight measurement read (the target's signatures and embedding "
                       "statistics counted with every reference), against every tensor byte of both models"}
    if budget is not None:
        reading["budget"] = budget.as_dict()
        reading["within_budget"] = read <= budget.bytes_allowed
    if one_pass is not None:
        reading["one_pass"] = dict(one_pass)
    seeds = {"weights.signatures": SIGNATURE_SEED}
    if sample is not None:
        seeds.update({"weights.sample": seed, "weights.embedding_stats": EMBEDDING_SEED})
    return WeightEvidence(comparison, prepared.layers,
                          compare_signatures(ts, rs, target_name=target.name, reference_name=reference.name,
                                             seed=SIGNATURE_SEED),
                          prepared.experts, detect_upcycling(ts, rs, layer_map), project_layers(ts, rs), embeddings,
                          prepared.row_info, seeds, reading, slices, unequal)


def measure_aligned(target: Model, reference: Model, test) -> AlignedComparison:
    """The weight comparison in the frame the independence test ``test`` aligned (raises LineageError)."""
    rows, _ = row_alignments(target, reference)
    return compare_aligned(target, reference, test, token_rows=rows)
