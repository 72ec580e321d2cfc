"""Independence test with a p-value that permuting, rescaling or sign-flipping weights cannot evade.

Null hypothesis: target and reference were trained from **independent random initialisations**.
The statistic follows Zhu, Ahmed, Kuditipudi & Liang, "Independence Tests for Language Models"
(ICML 2025), φ_MATCH, with the residual alignment of AWM (2025):

1. **Residual (hidden) dimension.** Embedding rows of tokens both vocabularies share (common ids
   for identical tokenizers, otherwise the normalised vocabularies of :mod:`modellineage.tokenizer.vocab`, or
   explicit ``(target_id, reference_id)`` pairs) give, for every hidden dimension, a profile over
   tokens. Profiles are centred and normalised (so per-channel scale does not matter) and matched
   by optimal assignment on ``|correlation|``; the sign of each matched correlation undoes sign flips.
2. **Norm gains are folded** into the linear layers that read the normalised stream
   (``W · diag(g)``): rescaling a channel's gain by ``s`` and the reader's column by ``1/s`` leaves
   the folded matrix unchanged. Target columns are then permuted and signed into the reference frame.
3. **MLP neurons** of each block are matched twice: once by their gate rows (cosine), once by
   their up rows (``|cosine|``: an up row may flip sign together with its down column) after
   removing from each up row its own neuron's gate direction (in each model separately). Without
   that step the within-neuron gate–up coupling of trained models makes the two matchings agree
   for *independent* models too (see :func:`_decoupled`). ``linear_sum_assignment`` gives two
   matchings ``π_gate`` and ``π_up``.
4. **Statistic:** Spearman's ρ between ``π_gate`` and ``π_up`` — i.e. of the matching
   ``π_up ∘ π_gate⁻¹`` against the identity. A derivative keeps each neuron's gate and up rows
   together, so both matchings find the same partner (ρ ≈ 1) *whatever permutation was applied*;
   for independent models the two matchings are unrelated and ρ is that of a uniformly random
   permutation, whose one-sided p-value :func:`modellineage.stats.spearman_permutation_pvalue` gives.
   Per-layer p-values are combined with Fisher's method. MoE layers: experts are matched by their
   router rows (identity without a router) and each matched expert pair is one unit.

Validity: the Spearman null is exact only if ``π_gate`` and ``π_up`` are independent uniform
permutations under H0; gate and up rows of one trained neuron are not independent, so this is an
approximation that ``benchmarks/calibrate_independence.py`` checks on independently trained pairs
(Kolmogorov–Smirnov against uniform), as Zhu et al. check theirs empirically.

**Attention heads** are aligned within KV groups (KV heads by their k and v rows, query heads of a
matched group by their q rows, each row compared by ``|cosine|`` so per-row sign flips do not matter)
and recorded per layer — the matched against the as-stored head similarity shows head shuffles;
with few KV heads per layer they carry too few units for a useful p-value and do not enter it.

Cost: one block at a time. Rows are streamed in bounded chunks, folded, aligned and — when the
hidden size exceeds ``max_features`` — projected onto ``max_features`` seeded Gaussian directions of
the reference frame (a Johnson–Lindenstrauss sketch: cosines are preserved to about
``1/sqrt(max_features)``). Layers wider than ``dense_max`` neurons are matched on a sparse graph of
each neuron's ``top_k`` candidates (plus one seeded random perfect matching so a full matching always
exists) with ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` instead of a dense
``n × n`` assignment. Candidates come from a float32 product and ``torch.topk``; the edge weights
and every recorded similarity are float64. Gain, sign and permutation are folded into the sketch
matrix, so a row block costs one float32 product (a 4096 × 14336 block: ~9 s with the residual
alignment, benchmarks/bench_independence.py). BF16/F16/F32 rows are decoded straight to float32 for it
and the dense assignment decides on a float32 product (the matched cosines recorded are float64).

Scale: units (MLP blocks, expert pairs) run on ``default_workers()`` threads, each the same computation
whatever the thread count, combined in canonical order. MoE layers test at most
:data:`EXPERTS_PER_LAYER` routed experts each by default (a seeded choice; ``coverage`` in the record
says how many units of how many); a 1280-neuron × 4096 unit costs ~0.35–0.6 s of one core on the shared
machine (benchmarks/bench_scale.py ``--only independence``). Depth-changed stacks can be paired by the
weight audits' layer correspondence (:func:`depth_layer_map`, ``layer_map=``); ``layer_pairing`` says
which pairing the p-value used.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from modellineage.errors import IncompatibleShapes, UnsupportedFormat
from modellineage.reading.naming import TensorRef
from modellineage.reading.tensors import EXACT_DTYPES, decode_exact
from modellineage.stats import PValue, fisher_combine, spearman_permutation_pvalue
from modellineage.weights.similarity import default_workers, read_canonical_rows, row_plan

__all__ = [
    "TokenPairs",
    "HiddenAlignment",
    "HeadAlignment",
    "UnitResult",
    "LayerResult",
    "IndependenceTest",
    "shared_token_pairs",
    "align_hidden",
    "match_rows",
    "measure_independence",
    "depth_layer_map",
]

#: Routed experts per MoE layer the test takes by default (a seeded choice; every expert below this count).
#: Solar-Open-100B (48 layers x 128 experts + a shared one) then tests 48 x 17 = 816 units instead of 6,192:
#: ~2 min on 2 cores instead of ~20 (benchmarks/bench_scale.py --only independence); a derived pair's
#: units each give p far below any alpha, so the cap costs nothing there, and a subset chosen without
#: looking at the weights leaves the null distribution of the combined p-value unchanged.
EXPERTS_PER_LAYER = 16

STATISTIC = ("Spearman rho between the gate-row and up-row matchings of MLP neurons (Zhu et al. ICML 2025, "
             "phi_MATCH; up rows decoupled from their own gate row), residual dims aligned through shared-token "
             "embeddings, norm gains folded; "
             "layers combined with Fisher's method")
STATISTIC_PLAIN = STATISTIC.replace("; up rows decoupled from their own gate row", "; plain, up rows not decoupled")


# ----------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class TokenPairs:
    """Tokens both models embed: row ``target_ids[i]`` of the target is row ``reference_ids[i]`` of the reference."""

    target_ids: tuple[int, ...]
    reference_ids: tuple[int, ...]
    source: str
    """``identical tokenizers (common ids)``, ``shared normalised tokens (modellineage.tokenizer.vocab)`` or ``explicit pairs``."""

    def __len__(self) -> int:
        return len(self.target_ids)

    def as_dict(self) -> dict[str, Any]:
        return {"count": len(self), "source": self.source}


@dataclass(frozen=True)
class HiddenAlignment:
    """Target residual dimension ``a`` is reference dimension ``permutation[a]`` times ``signs[a]``."""

    permutation: tuple[int, ...]
    signs: tuple[int, ...]
    matched_abs_corr: float
    """Mean |correlation| of the matched dimension profiles over the sampled tokens (1.0: same embedding)."""
    identity_share: float
    """Share of dimensions matched to the same index (1.0: no residual permutation)."""
    negative_share: float
    tokens_used: int
    tokens_shared: int
    token_source: str
    seed: int
    tensors: tuple[str, str]
    reference_dims: int | None = None
    """The reference's hidden size (None: equal to the target's)."""

    @property
    def matched_dims(self) -> int:
        return sum(p >= 0 for p in self.permutation)

    def as_dict(self) -> dict[str, Any]:
        out = {"matched_abs_corr": self.matched_abs_corr, "identity_share": self.identity_share,
               "negative_share": self.negative_share, "tokens_used": self.tokens_used,
               "tokens_shared": self.tokens_shared, "token_source": self.token_source, "seed": self.seed,
               "tensors": list(self.tensors), "dims": len(self.permutation)}
        if self.reference_dims is not None and self.reference_dims != len(self.permutation):
            out.update(reference_dims=self.reference_dims, matched_dims=self.matched_dims)
        return out


@dataclass(frozen=True)
class HeadAlignment:
    """Attention heads of one layer matched within KV groups."""

    kv_permutation: tuple[int, ...]
    """Target KV head ``g`` ↔ reference KV head ``kv_permutation[g]``."""
    head_permutation: tuple[int, ...]
    """Target query head ``h`` ↔ reference query head ``head_permutation[h]`` (inside the matched group)."""
    as_stored_similarity: float
    """Mean per-row |cosine| of q/k/v rows with heads taken as stored (what a naive comparison sees)."""
    matched_similarity: float
    """The same after matching heads within KV groups."""

    def as_dict(self) -> dict[str, Any]:
        return {"kv_permutation": list(self.kv_permutation), "head_permutation": list(self.head_permutation),
                "as_stored_similarity": self.as_stored_similarity, "matched_similarity": self.matched_similarity}


@dataclass(frozen=True)
class UnitResult:
    """One MLP (a dense block or one matched expert pair) and its p-value."""

    layer: int
    expert: int | None
    reference_expert: int | None
    neurons: int
    rho: float
    pvalue: PValue
    gate_matched_cos: float
    """Mean cosine of the gate rows paired by π_gate."""
    up_matched_abs_cos: float
    neuron_order_kept: float
    """Share of neurons that π_gate pairs with the same index (≈1 for a plain fine-tune, ≈0 after a shuffle)."""
    matcher: str
    tensors: tuple[str, ...]
    gate_up_coupling: tuple[float, float] = (0.0, 0.0)
    """Mean |cos(gate row, up row)| within a neuron, target and reference (removed before the up matching)."""
    permutation: tuple[int, ...] = field(default=(), repr=False)
    """π_gate: target neuron ``i`` ↔ reference neuron ``permutation[i]`` (the alignment
    :mod:`modellineage.weights.aligned` re-uses; summarised, not listed, in :meth:`as_dict`)."""
    roles: tuple[str, str, str] = ("mlp_gate", "mlp_up", "mlp_down")
    """Canonical roles of the unit's gate, up and down projections."""

    @property
    def label(self) -> str:
        return f"layer {self.layer}" + ("" if self.expert is None else f" expert {self.expert}")

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "expert": self.expert, "reference_expert": self.reference_expert,
                "neurons": self.neurons, "rho": self.rho, "pvalue": self.pvalue.as_dict(),
                "gate_matched_cos": self.gate_matched_cos, "up_matched_abs_cos": self.up_matched_abs_cos,
                "neuron_order_kept": self.neuron_order_kept, "matcher": self.matcher, "tensors": list(self.tensors),
                "gate_up_coupling": list(self.gate_up_coupling)}


@dataclass(frozen=True)
class LayerResult:
    """One block: its MLP unit(s), their combined p-value and the attention head alignment."""

    layer: int
    pvalue: PValue
    units: tuple[UnitResult, ...]
    attention: HeadAlignment | None = None
    reference_layer: int | None = None
    """The reference layer tested against target ``layer`` when the pairing is not by index (None: the same)."""

    def as_dict(self) -> dict[str, Any]:
        out = {"layer": self.layer, "pvalue": self.pvalue.as_dict(), "units": [u.as_dict() for u in self.units],
               "attention": None if self.attention is None else self.attention.as_dict()}
        if self.reference_layer is not None:
            out["reference_layer"] = self.reference_layer
        return out


@dataclass(frozen=True)
class IndependenceTest:
    """The whole test for one (target, reference) pair."""

    target: str
    reference: str
    statistic: str
    hidden: HiddenAlignment
    layers: tuple[LayerResult, ...]
    combined: PValue
    """Fisher combination over every unit of every layer."""
    features: int
    """Columns compared per row: the hidden size, or the size of the random sketch."""
    projected: bool
    seed: int
    dense_max: int
    top_k: int
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    coverage: dict[str, Any] = field(default_factory=dict)
    layer_pairing: str = "by index"
    """How target layers were paired with reference layers: ``by index`` or ``by layer correspondence``
    (:func:`modellineage.weights.alignment.correspond_layers`, one-to-one); the pairs are the layers' own
    ``layer`` / ``reference_layer``."""
    """MLP units tested of those both models have (``units_tested``, ``units_available``, layers likewise)
    and ``why`` fewer were tested (a read budget, the default expert cap)."""

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "reference": self.reference, "statistic": self.statistic,
                "combined": self.combined.as_dict(), "coverage": dict(self.coverage),
                "layer_pairing": self.layer_pairing, "hidden": self.hidden.as_dict(),
                "layers": [layer.as_dict() for layer in self.layers], "features": self.features,
                "projected": self.projected, "seed": self.seed, "dense_max": self.dense_max, "top_k": self.top_k,
                "files": list(self.files), "notes": list(self.notes)}


# ----------------------------------------------------------------------------------------- reading
def _refs(model) -> dict[str, TensorRef]:
    return model.name_map.refs


def _ref(model, key: str) -> TensorRef | None:
    return _refs(model).get(key)


def _stream(model, ref: TensorRef, fn: Callable[[np.ndarray], np.ndarray], chunk_bytes: int) -> np.ndarray:
    """Apply ``fn`` to row blocks of the canonical 2-D view of ``ref`` and stack the results.

    When the canonical rows are one contiguous run of a float tensor whose values float32 holds exactly
    (F32, F16, BF16; F64 as float64), each block is one ``pread`` decoded straight to that dtype
    (:func:`~modellineage.reading.tensors.decode_exact`) — the sketch multiplies float32 anyway, so the
    float64 decode and the narrowing copy it replaces only cost time (~40 % of a unit). Readers that
    do not declare ``accepts_float32`` get the block widened to float64, as from the general path.
    Non-finite values raise NonFiniteWeights naming the file and tensor on both paths.
    """
    info = model.store.info(ref.source)
    plan = row_plan(ref, info)
    if _fast_rows(model.store, plan, info):
        return _stream_exact(model.store, plan, info, fn, chunk_bytes)
    if plan.transpose:  # Conv1D-style storage: the canonical rows are source columns; one tensor in memory
        whole = read_canonical_rows(model.store, plan, np.arange(plan.rows.size)).T
        step = max(1, chunk_bytes // max(1, whole.shape[1] * 8))
        return np.concatenate([fn(whole[i:i + step]) for i in range(0, whole.shape[0], step)])
    n_rows, cols = plan.shape
    step = max(1, chunk_bytes // max(1, cols * 8))
    parts = [fn(read_canonical_rows(model.store, plan, np.arange(i, min(n_rows, i + step))))
             for i in range(0, n_rows, step)]
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _fast_rows(store, plan, info) -> bool:
    r = plan.rows
    return (not plan.transpose and plan.cols is None and info.dtype in EXACT_DTYPES and r.size > 0
            and hasattr(store, "read_raw_row_range") and int(r[-1]) - int(r[0]) == r.size - 1
            and bool(np.all(np.diff(r) == 1)))


def _stream_exact(store, plan, info, fn: Callable[[np.ndarray], np.ndarray], chunk_bytes: int) -> np.ndarray:
    n_rows, cols = plan.shape
    first = int(plan.rows[0])
    step = max(1, chunk_bytes // max(1, cols * 8))
    buf = bytearray(min(n_rows, step) * cols * info.itemsize)  # reused by every block (views of it are
    wide = np.empty(min(n_rows, step) * cols, dtype=np.uint32) if info.dtype == "BF16" else None  # consumed
    narrow = getattr(fn, "accepts_float32", False)  # before the next read)
    parts = []
    for i in range(0, n_rows, step):
        stop = min(n_rows, i + step)
        raw = store.read_raw_row_range(plan.source, first + i, first + stop, into=buf)
        block = decode_exact(info.dtype, raw, (stop - i, cols), scratch=wide)
        if not np.isfinite(block).all():  # the general path raises NonFiniteWeights naming file, tensor, rows
            read_canonical_rows(store, plan, np.arange(i, stop))
        parts.append(fn(block if narrow else block.astype(np.float64)))
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _vector(model, ref: TensorRef | None) -> np.ndarray | None:
    if ref is None:
        return None
    return _stream(model, ref, lambda block: block, 1 << 20).reshape(-1)


# ----------------------------------------------------------------------------------------- tokens
def shared_token_pairs(target, reference) -> TokenPairs:
    """Embedding rows both models give to the same token.

    Identical vocabularies (same normalised tokens at the same ids) pair the common ids; otherwise
    tokens are paired by their normalised bytes (:mod:`modellineage.tokenizer.vocab`), special tokens excluded.

    Raises:
        UnsupportedFormat: a side has no readable tokenizer, or the vocabularies share fewer than 2 tokens.
    """
    for model in (target, reference):
        if not model.source.tokenizer_files:
            raise UnsupportedFormat(f"{model.source.root}: no tokenizer files; the hidden dimensions are aligned "
                                    "through shared tokens (or pass explicit token_pairs)")
    vt, vr = target.vocabulary, reference.vocabulary  # read once per model for the session
    rows_t = _refs(target)["embed.weight"].shape[0] if "embed.weight" in _refs(target) else 0
    rows_r = _refs(reference)["embed.weight"].shape[0] if "embed.weight" in _refs(reference) else 0
    if vt.ids == vr.ids and vt.normalised == vr.normalised:
        ids = tuple(i for i in vt.ids if i < min(rows_t, rows_r))
        pairs = TokenPairs(ids, ids, "identical tokenizers (common ids)")
    else:
        ref_ids = vr.id_of_bytes()
        found = []
        seen = set()
        for i, b in zip(vt.ids, vt.normalised):
            if i in vt.special_ids or b in seen or i >= rows_t:
                continue
            j = ref_ids.get(b)
            if j is not None and j not in vr.special_ids and j < rows_r:
                seen.add(b)
                found.append((i, j))
        pairs = TokenPairs(tuple(i for i, _ in found), tuple(j for _, j in found),
                           "shared normalised tokens (modellineage.tokenizer.vocab)")
    if len(pairs) < 2:
        raise UnsupportedFormat(f"{target.source.root} and {reference.source.root}: the vocabularies share "
                                f"{len(pairs)} tokens; cannot align hidden dimensions")
    return pairs


# ----------------------------------------------------------------------------------------- matching
def match_rows(target_rows: np.ndarray, reference_rows: np.ndarray, *, absolute: bool = False,
               dense_max: int = 4096, top_k: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """Optimal one-to-one matching of unit-norm rows by (absolute) cosine.

    Args:
        target_rows, reference_rows: ``(n, k)`` arrays of unit-norm rows.
        absolute: match by ``|cosine|`` (units whose sign is a symmetry).
        dense_max: up to this ``n`` a dense assignment; above, a sparse top-``top_k`` graph.
        top_k: candidates per row in the sparse matcher.
        seed: seeds the random perfect matching added to the sparse graph (it guarantees feasibility).

    Returns:
        ``(perm, sims, matcher)``: target row ``i`` ↔ reference row ``perm[i]``, the cosine of each pair
        (signed), and ``"dense"`` or ``"sparse top-k"``. With unequal row counts the assignment is
        rectangular: every row of the smaller side is matched to a distinct row of the larger (a pruned
        model's neurons to a subset of its parent's); unmatched target rows get ``perm[i] = -1`` and
        ``sims[i] = nan``.
    """
    n, n_r = target_rows.shape[0], reference_rows.shape[0]
    if n > n_r:  # the reference is the narrower side: match its rows into the target's, then invert
        back, back_sims, how = match_rows(reference_rows, target_rows, absolute=absolute, dense_max=dense_max,
                                          top_k=top_k, seed=seed)
        perm, sims = np.full(n, -1, dtype=np.int64), np.full(n, np.nan)
        perm[back], sims[back] = np.arange(n_r), back_sims
        return perm, sims, how
    from scipy.optimize import linear_sum_assignment

    if n <= dense_max:
        # float32 decides the assignment (half the float64 product's time; cosines of sketched rows are
        # only good to ~1/sqrt(features) anyway), the recorded cosines of the matched pairs are float64
        score = target_rows.astype(np.float32) @ reference_rows.astype(np.float32).T
        if absolute:
            np.abs(score, out=score)
        rows, cols = linear_sum_assignment(score, maximize=True)
        del score
        perm = np.empty(n, dtype=np.int64)
        perm[rows] = cols
        return perm, np.einsum("ij,ij->i", target_rows, reference_rows[perm]), "dense"
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    k = min(top_k, n_r)
    rng = np.random.default_rng(seed)
    extra = rng.permutation(n_r)[:n]  # a feasible matching of every target row (a perfect one when square)
    # Candidates from a float32 product and torch's top-k (several times faster than numpy's argpartition
    # on 14k-wide rows); edge weights recomputed exactly in float64, block by block (bounded memory).
    import torch

    t32, r32 = torch.from_numpy(target_rows.astype(np.float32)), torch.from_numpy(reference_rows.astype(np.float32))
    block = max(1, (64 << 20) // (4 * n_r))
    ii, jj, ww = [], [], []
    for start in range(0, n, block):
        s = t32[start:start + block] @ r32.T
        if absolute:
            s.abs_()
        top = torch.topk(s, k, dim=1, sorted=False).indices.numpy().astype(np.int64)
        idx = np.arange(start, start + top.shape[0])
        cand = np.concatenate([top, extra[idx][:, None]], axis=1)
        w = np.einsum("ik,ijk->ij", target_rows[idx], reference_rows[cand])
        ii.append(np.repeat(idx, k + 1))
        jj.append(cand.reshape(-1))
        ww.append((np.abs(w) if absolute else w).reshape(-1))
    del t32, r32
    i_all, j_all, w_all = np.concatenate(ii), np.concatenate(jj), np.concatenate(ww)
    _, first = np.unique(i_all * n_r + j_all, return_index=True)
    graph = csr_matrix((w_all[first] + 2.0, (i_all[first], j_all[first])), shape=(n, n_r))  # > 0: zero = no edge
    rows, cols = min_weight_full_bipartite_matching(graph, maximize=True)
    perm = np.empty(n, dtype=np.int64)
    perm[rows] = cols
    sims = np.einsum("ij,ij->i", target_rows, reference_rows[perm])
    return perm, sims, "sparse top-k"


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def align_hidden(target, reference, pairs: TokenPairs, *, max_tokens: int = 4096, seed: int = 0) -> HiddenAlignment:
    """Match the residual dimensions of two models through the embedding rows of shared tokens.

    Hidden sizes may differ (a width-pruned model keeps a subset of its parent's channels): the
    assignment is then rectangular, every channel of the narrower side matched to a distinct channel of
    the wider; target channels left unmatched get ``permutation[a] = -1``.

    Raises:
        UnsupportedFormat: a model has no input embedding.
    """
    from scipy.optimize import linear_sum_assignment

    et, er = _ref(target, "embed.weight"), _ref(reference, "embed.weight")
    if et is None or er is None:
        missing = target if et is None else reference
        raise UnsupportedFormat(f"{missing.source.root}: no input embedding found; cannot align hidden dimensions")
    d_t, d_r = et.shape[-1], er.shape[-1]
    n = len(pairs)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=max_tokens, replace=False)) if n > max_tokens else np.arange(n)
    rows_t = np.asarray(pairs.target_ids, dtype=np.int64)[pick]
    rows_r = np.asarray(pairs.reference_ids, dtype=np.int64)[pick]
    a = read_canonical_rows(target.store, row_plan(et, target.store.info(et.source)), rows_t)
    b = read_canonical_rows(reference.store, row_plan(er, reference.store.info(er.source)), rows_r)
    a = _unit((a - a.mean(axis=0)).T)  # (d, tokens): one centred profile per hidden dimension
    b = _unit((b - b.mean(axis=0)).T)
    corr = np.abs(a.astype(np.float32) @ b.astype(np.float32).T)  # float32 decides the assignment ...
    rows, cols = linear_sum_assignment(corr, maximize=True)
    del corr
    perm = np.full(d_t, -1, dtype=np.int64)
    perm[rows] = cols
    # ... the recorded correlations are float64 (every target dimension matched: in target order, as always)
    matched = np.einsum("ij,ij->i", a, b[perm]) if rows.size == d_t else np.einsum("ij,ij->i", a[rows], b[cols])
    signs = np.ones(d_t, dtype=np.int64)
    signs[rows] = np.where(matched < 0, -1, 1)
    return HiddenAlignment(permutation=tuple(int(x) for x in perm), signs=tuple(int(s) for s in signs),
                           matched_abs_corr=float(np.mean(np.abs(matched))),
                           identity_share=float(np.mean(perm == np.arange(d_t))),
                           negative_share=float(np.mean(signs[rows] < 0)), tokens_used=int(pick.size),
                           tokens_shared=n, token_source=pairs.source, seed=int(seed),
                           tensors=(et.source, er.source), reference_dims=int(d_r))


# ----------------------------------------------------------------------------------------- features
class _Frames:
    """Folds norm gains, maps target columns into the reference frame, and sketches when the rows are long."""

    def __init__(self, hidden: HiddenAlignment, max_features: int, seed: int) -> None:
        self.perm = np.asarray(hidden.permutation, dtype=np.int64)
        self.signs = np.asarray(hidden.signs, dtype=np.float64)
        self.width = {"target": self.perm.size, "reference": hidden.reference_dims or self.perm.size}
        # The frame: the matched reference channels in reference order (every channel when the widths agree);
        # target channel t_cols[p] and reference channel r_cols[p] sit at position p.
        matched = np.flatnonzero(self.perm >= 0)
        order = np.argsort(self.perm[matched], kind="stable")
        self.t_cols, self.r_cols = matched[order], self.perm[matched][order]
        self.position = np.full(self.perm.size, -1, dtype=np.int64)
        self.position[self.t_cols] = np.arange(self.t_cols.size)
        d = self.t_cols.size
        self.square = d == self.width["target"] == self.width["reference"]
        self.projected = d > max_features
        self.features = max_features if self.projected else d
        # float32: the sketch approximates cosines to ~1/sqrt(max_features) anyway, and sgemm halves its cost
        self.sketch = (np.random.default_rng(seed).standard_normal((d, max_features)).astype(np.float32)
                       / np.float32(math.sqrt(max_features)) if self.projected else None)

    def reader(self, side: str, gain: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
        if self.sketch is not None:
            # Gain, sign and permutation folded into the sketch once: row a of the target's matrix is
            # S[position[a]] · signs[a] · gain[a], so (x · gain)[:, a] lands on S[position[a]] as in the branch
            # below; channels outside the frame get zero rows.
            width = self.width[side]
            scale = np.ones(width) if gain is None else np.asarray(gain, dtype=np.float64)
            folded = np.zeros((width, self.features), dtype=np.float32)
            if side == "target":
                folded[self.t_cols] = ((scale * self.signs)[self.t_cols, None] * self.sketch).astype(np.float32)
            else:
                folded[self.r_cols] = (scale[self.r_cols, None] * self.sketch).astype(np.float32)
            def sketched(block: np.ndarray) -> np.ndarray:
                return (block.astype(np.float32, copy=False) @ folded).astype(np.float64)

            sketched.accepts_float32 = True  # the float32 product is exact for float32-exact blocks
            return sketched

        def fn(block: np.ndarray) -> np.ndarray:
            x = block * gain if gain is not None else block
            if side == "target":
                if self.square:
                    y = np.empty_like(x)
                    y[:, self.perm] = x * self.signs
                    return y
                return x[:, self.t_cols] * self.signs[self.t_cols]
            return x if self.square else x[:, self.r_cols]

        return fn


def _rows(model, key: str, frames: _Frames, reader: Callable, chunk_bytes: int, side: str) -> np.ndarray:
    ref = _ref(model, key)
    if ref.shape[-1] != frames.width[side]:
        raise IncompatibleShapes(f"{model.source.root}: {ref.source} has {ref.shape[-1]} columns, "
                                 f"hidden size is {frames.width[side]}")
    return _stream(model, ref, reader, chunk_bytes)


def _gain(model, key: str) -> np.ndarray | None:
    return _vector(model, _ref(model, key))


# ----------------------------------------------------------------------------------------- per block
def _mlp_unit(target, reference, layer: int, expert: int | None, ref_expert: int | None, prefix_t: str,
              prefix_r: str, gate_role: str, up_role: str, frames: _Frames, readers: tuple, opts: dict) -> UnitResult:
    kt = (f"{prefix_t}{gate_role}.weight", f"{prefix_t}{up_role}.weight")
    kr = (f"{prefix_r}{gate_role}.weight", f"{prefix_r}{up_role}.weight")
    gt = _unit(_rows(target, kt[0], frames, readers[0], opts["chunk_bytes"], "target"))
    gr = _unit(_rows(reference, kr[0], frames, readers[1], opts["chunk_bytes"], "reference"))
    seed = opts["seed"] * 1_000_003 + layer * 1009 + (expert or 0)
    pi_g, sims_g, matcher = match_rows(gt, gr, absolute=False, dense_max=opts["dense_max"], top_k=opts["top_k"],
                                       seed=seed)
    ut, coupling_t = _decoupled(_rows(target, kt[1], frames, readers[0], opts["chunk_bytes"], "target"), gt,
                                opts["decouple"])
    ur, coupling_r = _decoupled(_rows(reference, kr[1], frames, readers[1], opts["chunk_bytes"], "reference"), gr,
                                opts["decouple"])
    del gt, gr
    pi_u, sims_u, _ = match_rows(ut, ur, absolute=True, dense_max=opts["dense_max"], top_k=opts["top_k"],
                                 seed=seed + 1)
    pv = spearman_permutation_pvalue(*_matched_ranks(pi_g, pi_u))
    sources = tuple(_ref(target, k).source for k in kt) + tuple(_ref(reference, k).source for k in kr)
    return UnitResult(layer=layer, expert=expert, reference_expert=ref_expert, neurons=int(pi_g.size),
                      rho=pv.statistic, pvalue=pv, gate_matched_cos=float(np.nanmean(sims_g)),
                      up_matched_abs_cos=float(np.nanmean(np.abs(sims_u))),
                      neuron_order_kept=float(np.mean(pi_g == np.arange(pi_g.size))), matcher=matcher,
                      tensors=sources, gate_up_coupling=(coupling_t, coupling_r),
                      permutation=tuple(int(x) for x in pi_g),
                      roles=(gate_role, up_role, _DOWN_ROLE[gate_role]))


_DOWN_ROLE = {"mlp_gate": "mlp_down", "shared_gate": "shared_down", "expert_gate": "expert_down"}


def _matched_ranks(pi_g: np.ndarray, pi_u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two matchings as permutations of the units both matched: ranks of their partners.

    Square (equal widths): the matchings themselves. Rectangular (a pruned side): each matching sends the
    narrower side's units to a subset of the wider side's; ranking the partners within each subset gives two
    permutations of ``0..m-1`` whose Spearman ρ is ≈ 1 when both matchings agree and, when they are unrelated,
    has the null of a uniformly random permutation (unit indices of an independently initialised model are
    exchangeable). benchmarks/calibrate_pruning.py checks it on independent pairs of the reduced shape.
    """
    both = (pi_g >= 0) & (pi_u >= 0)
    if both.all() and pi_g.size and np.array_equal(np.sort(pi_g), np.arange(pi_g.size)) \
            and np.array_equal(np.sort(pi_u), np.arange(pi_u.size)):
        return pi_g, pi_u
    g, u = pi_g[both], pi_u[both]
    return np.argsort(np.argsort(g, kind="stable"), kind="stable"), np.argsort(np.argsort(u, kind="stable"),
                                                                              kind="stable")


def _decoupled(up: np.ndarray, gate_unit: np.ndarray, decouple: bool = True) -> tuple[np.ndarray, float]:
    """Up rows with each neuron's own gate direction removed, unit-normalised; and the mean |cos(gate, up)|.

    Trained gated MLPs couple a neuron's gate and up rows (|cos| 0.3-0.5 in the demo models, ~0.1
    for random rows of that width). Two *independent* models that both have this coupling give
    similarity matrices ``S_up ≈ c_i c_j S_gate + noise``, so the up matching follows the gate
    matching and ρ is positive under H0 — a false accusation (demo ``scratch``: p = 0.001 before,
    0.21 after). Projecting out ``g_i`` in each model's own (folded, aligned) frame removes that
    shared component; it commutes with neuron permutations, signed residual permutations and the
    folded rescaling, so a derivative keeps its matching (the metamorphic tests check this).
    """
    coupling = float(np.mean(np.abs(np.einsum("ij,ij->i", _unit(up), gate_unit)))) if up.size else 0.0
    if not decouple:
        return _unit(up), coupling
    residual = up - np.einsum("ij,ij->i", up, gate_unit)[:, None] * gate_unit
    return _unit(residual), coupling


def _experts(model, layer: int) -> list[int]:
    found = {r.expert for r in _refs(model).values()
             if r.layer == layer and r.expert is not None and r.role in ("expert_gate", "expert_up")}
    return sorted(found)


def _match_experts(target, reference, layer: int, ref_layer: int, experts_t: list[int], experts_r: list[int],
                   frames: _Frames, readers: tuple, chunk_bytes: int) -> dict[int, int]:
    """Target expert -> reference expert, by router rows (identity when a model has no router)."""
    key, key_r = f"layers.{layer}.router.weight", f"layers.{ref_layer}.router.weight"
    if len(experts_t) != len(experts_r):
        raise IncompatibleShapes(f"{target.source.root}: layer {layer} has {len(experts_t)} experts, "
                                 f"{reference.source.root} has {len(experts_r)} (layer {ref_layer})")
    if _ref(target, key) is None or _ref(reference, key_r) is None:
        return dict(zip(experts_t, experts_r))
    from scipy.optimize import linear_sum_assignment

    a = _unit(_rows(target, key, frames, readers[0], chunk_bytes, "target"))
    b = _unit(_rows(reference, key_r, frames, readers[1], chunk_bytes, "reference"))
    rows, cols = linear_sum_assignment(a @ b.T, maximize=True)
    return {experts_t[r]: experts_r[c] for r, c in zip(rows, cols)}


def _heads(target, reference, layer: int, frames: _Frames, readers: tuple, chunk_bytes: int,
           ref_layer: int | None = None) -> HeadAlignment | None:
    """KV heads matched by their k and v rows, query heads of each matched group by their q rows. Head counts
    may differ (a head-pruned side): the assignments are then rectangular and unmatched target heads get -1."""
    keys = [f"layers.{layer}.attn_{r}.weight" for r in ("q", "k", "v")]
    rkeys = {k: k.replace(f"layers.{layer}.", f"layers.{layer if ref_layer is None else ref_layer}.", 1)
             for k in keys}
    if any(_ref(target, k) is None or _ref(reference, rkeys[k]) is None for k in keys):
        return None
    arch_t, arch_r = target.arch, reference.arch
    if arch_t is None or arch_r is None:
        return None
    h, hkv, hd = arch_t.num_heads, arch_t.num_kv_heads or arch_t.num_heads, arch_t.head_dim
    h_r, hkv_r = arch_r.num_heads, arch_r.num_kv_heads or arch_r.num_heads
    if not h or not hd or not h_r or hd != arch_r.head_dim or h % hkv or h_r % hkv_r:
        return None
    from scipy.optimize import linear_sum_assignment

    def per_head(key: str, heads: int, heads_r: int) -> np.ndarray:
        a = _unit(_rows(target, key, frames, readers[0], chunk_bytes, "target"))
        b = _unit(_rows(reference, rkeys[key], frames, readers[1], chunk_bytes, "reference"))
        if a.shape[0] != heads * hd or b.shape[0] != heads_r * hd:
            raise IncompatibleShapes(f"{target.source.root}: {key} has {a.shape[0]} rows, expected {heads}×{hd}")
        a, b = a.reshape(heads, hd, -1), b.reshape(heads_r, hd, -1)
        return np.abs(np.einsum("ark,brk->abr", a, b)).mean(axis=2)

    sim_q, sim_k, sim_v = per_head(keys[0], h, h_r), per_head(keys[1], hkv, hkv_r), per_head(keys[2], hkv, hkv_r)
    group, group_r = h // hkv, h_r // hkv_r
    sim_group = (sim_k + sim_v) / 2.0
    rows, cols = linear_sum_assignment(sim_group, maximize=True)
    kv = np.full(hkv, -1, dtype=np.int64)
    kv[rows] = cols
    head_perm = np.full(h, -1, dtype=np.int64)
    for g_t in range(hkv):
        g_r = int(kv[g_t])
        if g_r < 0:
            continue
        block = sim_q[g_t * group:(g_t + 1) * group, g_r * group_r:(g_r + 1) * group_r]
        r_in, c_in = linear_sum_assignment(block, maximize=True)
        head_perm[g_t * group + r_in] = g_r * group_r + c_in
    n_q, n_kv = min(h, h_r), min(hkv, hkv_r)
    stored = float((np.trace(sim_q) + np.trace(sim_k) + np.trace(sim_v)) / (n_q + 2 * n_kv))
    mq, mkv = np.flatnonzero(head_perm >= 0), np.flatnonzero(kv >= 0)
    matched = float((sim_q[mq, head_perm[mq]].sum() + sim_k[mkv, kv[mkv]].sum()
                     + sim_v[mkv, kv[mkv]].sum()) / (mq.size + 2 * mkv.size))
    return HeadAlignment(kv_permutation=tuple(int(x) for x in kv), head_permutation=tuple(int(x) for x in head_perm),
                         as_stored_similarity=stored, matched_similarity=matched)


def _layers(model) -> list[int]:
    return sorted({r.layer for r in _refs(model).values() if r.layer is not None})


def _unit_count(target, reference, layer: int, ref_layer: int) -> int:
    """MLP units target ``layer`` and reference ``ref_layer`` both have: the dense MLP or shared expert, and
    each routed expert."""
    n = 0
    for gate_role, up_role in (("mlp_gate", "mlp_up"), ("shared_gate", "shared_up")):
        n += all(_ref(m, f"layers.{x}.{role}.weight") is not None for m, x in ((target, layer), (reference, ref_layer))
                 for role in (gate_role, up_role))
    experts_t, experts_r = _experts(target, layer), _experts(reference, ref_layer)
    return n + (min(len(experts_t), len(experts_r)) if experts_t and experts_r else 0)


def _layer_jobs(target, reference, layer: int, ref_layer: int, frames: _Frames, opts: dict, notes: list, *,
                experts_per_layer: int | None, heads: bool, shared_units: bool) -> tuple[list, Callable | None]:
    """Target ``layer`` against reference ``ref_layer``: its unit jobs (closures, in canonical order: dense
    MLP, shared expert, routed experts by target index) and its head-alignment job. Reads only norm gains and
    router rows (the expert matching)."""
    chunk_bytes = opts["chunk_bytes"]
    pt_, pr_ = f"layers.{layer}.", f"layers.{ref_layer}."
    # one reader per side and norm, built once per layer (the folded sketch depends only on the gain)
    mlp_read = (frames.reader("target", _gain(target, pt_ + "mlp_norm.weight")),
                frames.reader("reference", _gain(reference, pr_ + "mlp_norm.weight")))
    jobs = []
    experts_t, experts_r = _experts(target, layer), _experts(reference, ref_layer)
    for gate_role, up_role in (("mlp_gate", "mlp_up"), ("shared_gate", "shared_up")):
        if gate_role == "shared_gate" and not shared_units and experts_t and experts_r:
            continue
        if all(_ref(m, x + role + ".weight") for m, x in ((target, pt_), (reference, pr_)) for role in (gate_role, up_role)):
            jobs.append(functools.partial(_mlp_unit, target, reference, layer, None, None, pt_, pr_, gate_role,
                                          up_role, frames, mlp_read, opts))
    if experts_t and experts_r:
        mapping = _match_experts(target, reference, layer, ref_layer, experts_t, experts_r, frames, mlp_read,
                                 chunk_bytes)
        tested = experts_t
        if experts_per_layer is not None and experts_per_layer < len(experts_t):
            pick = np.random.default_rng([opts["seed"], 0xE4, layer]).choice(len(experts_t), size=experts_per_layer,
                                                                             replace=False)
            tested = [experts_t[i] for i in sorted(pick)]
            notes.append(f"routed experts: a seeded {len(tested)} of {len(experts_t)} per layer tested "
                         f"(seed {opts['seed']}; {opts['subset_reason']})")
        for e_t in tested:
            e_r = mapping[e_t]
            pt, pr = f"{pt_}experts.{e_t}.", f"{pr_}experts.{e_r}."
            if _ref(target, pt + "expert_gate.weight") and _ref(reference, pr + "expert_gate.weight"):
                jobs.append(functools.partial(_mlp_unit, target, reference, layer, e_t, e_r, pt, pr, "expert_gate",
                                              "expert_up", frames, mlp_read, opts))
    head_job = None
    if heads and jobs:
        attn_read = (frames.reader("target", _gain(target, pt_ + "attn_norm.weight")),
                     frames.reader("reference", _gain(reference, pr_ + "attn_norm.weight")))
        head_job = functools.partial(_heads, target, reference, layer, frames, attn_read, chunk_bytes, ref_layer)
    return jobs, head_job


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS on one thread while the units run: the parallelism is the units' own (whole units per thread).
    A unit's products are small (1280 × 4096 @ 4096 × 256); OpenBLAS splitting each over its own threads on
    top of the unit threads doubled the CPU seconds per unit on the 2-core machine (0.25 → 0.50–0.56 s,
    spinning threads) for little wall time. Process-wide while it lasts (threadpoolctl); the results are
    the same (BLAS splits output blocks, not the sums)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a declared dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _run_layers(target, reference, layers: Sequence[tuple[int, int]], frames: _Frames, opts: dict, notes: list, *,
                progress: Callable[[int, int], None] | None, experts_per_layer: int | None, heads: bool,
                shared_units: bool) -> list[LayerResult]:
    """Every layer's units on ``opts["workers"]`` threads (BLAS, LAPJV and ``pread`` release the GIL).

    Each unit is the same computation whatever the thread count (its own reads, its own seeded matcher)
    and the results are combined in canonical order, so the record is identical for any ``workers``.
    Layers are prepared on the calling thread while earlier layers' units run; at most about
    ``4 × workers`` units are in flight, so memory stays a few units' sketches and read buffers.
    """
    workers = opts["workers"]

    def collect(layer: tuple[int, int], units: list, head) -> LayerResult | None:
        units = [u() if callable(u) else u.result() for u in units]
        if not units:
            return None
        att = None if head is None else (head() if callable(head) else head.result())
        pv = units[0].pvalue if len(units) == 1 else fisher_combine([u.pvalue for u in units])
        return LayerResult(layer=layer[0], pvalue=pv, units=tuple(units), attention=att,
                           reference_layer=None if layer[1] == layer[0] else layer[1])

    results: list[LayerResult] = []
    done = 0

    def finish(item) -> None:
        nonlocal done
        found = collect(*item)
        if found is not None:
            results.append(found)
        done += 1
        if progress is not None:
            progress(done, len(layers))

    kw = {"experts_per_layer": experts_per_layer, "heads": heads, "shared_units": shared_units}
    if progress is not None:
        progress(0, len(layers))  # the bar appears before the first layer's units finish
    if workers == 1:
        for layer in layers:
            jobs, head_job = _layer_jobs(target, reference, *layer, frames, opts, notes, **kw)
            finish((layer, jobs, head_job))
        return results
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    pending: deque = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="independence") as pool:
        try:
            for layer in layers:
                while pending and sum(len(item[1]) for item in pending) >= 4 * workers:
                    finish(pending.popleft())
                jobs, head_job = _layer_jobs(target, reference, *layer, frames, opts, notes, **kw)
                pending.append((layer, [pool.submit(job) for job in jobs],
                                None if head_job is None else pool.submit(head_job)))
            while pending:
                finish(pending.popleft())
        finally:
            for _, futures, head in pending:
                for fut in futures + ([head] if head is not None else []):
                    fut.cancel()
    return results


def depth_layer_map(target, reference, *, min_match: float, seed: int = 0) -> dict[int, int] | None:
    """Target layer -> reference layer for a depth-changed pair (layer counts differ), from the weight audits'
    layer correspondence on tensor signatures (:func:`modellineage.weights.alignment.correspond_layers`, a
    few seeded rows per tensor); ``None`` when the counts agree or the correspondence does not beat index
    alignment (then layers are paired by index, as always). Pass it as ``layer_map`` to
    :func:`measure_independence`.

    Pairing by signatures does not bias the p-value under H0: signatures summarise whole layers (row norms
    and sketches, invariant to the neuron order the statistic looks at), every candidate pair of layers of
    independent models is itself a null pair, and the pairing is made one-to-one.
    """
    if len(_layers(target)) == len(_layers(reference)):
        return None
    from modellineage.weights.alignment import correspond_layers
    from modellineage.weights.signatures import model_signatures

    found = correspond_layers(model_signatures(target, seed=seed), model_signatures(reference, seed=seed),
                              min_match=min_match)
    return found.layer_map if found.beats_index else None


# ----------------------------------------------------------------------------------------- entry point
def measure_independence(target, reference, *, token_pairs: TokenPairs | Sequence[tuple[int, int]] | None = None,
                         seed: int = 0, max_tokens: int = 4096, max_features: int = 256, dense_max: int = 4096,
                         top_k: int = 16, chunk_bytes: int = 16 << 20, decouple: bool = True,
                         progress: Callable[[int, int], None] | None = None,
                         layers: Sequence[int] | None = None, experts_per_layer: int | None = EXPERTS_PER_LAYER,
                         heads: bool = True, shared_units: bool = True, workers: int | None = None,
                         layer_map: Mapping[int, int] | None = None) -> IndependenceTest:
    """Test H0 "target and reference were trained from independent initialisations".

    Args:
        target, reference: :class:`modellineage.reading.model.Model` handles (read lazily, one block at a time).
        token_pairs: tokens shared by both embeddings; default :func:`shared_token_pairs`. Explicit
            ``(target_id, reference_id)`` pairs plug in any cross-tokenizer alignment.
        seed: seeds token sampling, the sketch and the sparse matcher.
        max_tokens: shared tokens sampled for the residual alignment.
        max_features: rows longer than this are sketched to this many seeded Gaussian directions.
        dense_max: blocks with more neurons use the sparse top-``top_k`` matcher.
        chunk_bytes: bound on each float64 block read.
        decouple: remove each neuron's gate direction from its up row before the up matching (the
            default; ``False`` is the plain φ_MATCH statistic, kept for the calibration's comparison).
        progress: called with ``(0, layers)`` first, then ``(layers done, layers)`` as each layer's result is
            collected (in layer order).
        layers: test only these layers (a read budget, :mod:`modellineage.weights.budget`); default every
            layer both models have.
        experts_per_layer: test at most this many routed experts per layer, a seeded choice (``seed``) among
            the target's (each against the reference expert the router rows assign it); default
            :data:`EXPERTS_PER_LAYER`, ``None`` tests every expert. The choice does not look at the weights,
            so the Fisher combination over the chosen units is as calibrated as over all of them;
            ``IndependenceTest.coverage`` records how many units of how many were tested and why.
        heads: also align attention heads per tested layer (reads q, k, v; recorded, not in the p-value).
        shared_units: test the shared expert of a layer with routed experts (a read budget may leave it out:
            the routed experts tested are units of the same statistic).
        workers: threads the units run on (default :func:`~modellineage.weights.similarity.default_workers`);
            the record is the same for any value.
        layer_map: target layer -> reference layer (a depth-changed stack: depth up-scaling, pruned or
            reordered layers), e.g. :attr:`LayerCorrespondence.layer_map
            <modellineage.weights.alignment.LayerCorrespondence>` of the weight audits' signatures. The pairing
            is made one-to-one, in target order: a reference layer several target layers map to is tested
            once, against the first (every unit p-value then comes from a distinct pair of layers, so Fisher's
            combination still sees independent parts); target layers without a partner are not tested.
            Default: layers paired by index.

    Returns:
        An :class:`IndependenceTest`; ``combined.p`` is the Fisher-combined p-value.

    Raises:
        UnsupportedFormat: no shared tokens, no embedding, or no gated MLP (gate and up rows) in any layer.
        IncompatibleShapes: a tensor's columns disagree with its model's hidden size. Hidden sizes, MLP widths
            and head counts may differ between the models (width pruning): channels, neurons and heads of the
            narrower side are matched to a subset of the wider side's (rectangular assignments).
    """
    if token_pairs is None:
        pairs = shared_token_pairs(target, reference)
    elif isinstance(token_pairs, TokenPairs):
        pairs = token_pairs
    else:
        listed = list(token_pairs)
        pairs = TokenPairs(tuple(int(a) for a, _ in listed), tuple(int(b) for _, b in listed), "explicit pairs")
    hidden = align_hidden(target, reference, pairs, max_tokens=max_tokens, seed=seed)
    frames = _Frames(hidden, max_features, seed + 1)
    opts = {"seed": seed, "dense_max": dense_max, "top_k": top_k, "chunk_bytes": chunk_bytes, "decouple": decouple}
    if layers is not None:
        opts["subset_reason"] = "a read budget"
    elif experts_per_layer == EXPERTS_PER_LAYER:
        opts["subset_reason"] = (f"the full read's default: at most {EXPERTS_PER_LAYER} routed experts per layer "
                                 "keep a 100B-class MoE within minutes; experts_per_layer=None (the audits: --all-experts) tests all")
    else:
        opts["subset_reason"] = f"experts_per_layer={experts_per_layer} asked"
    notes = []
    layers_t, layers_r = _layers(target), _layers(reference)
    if layer_map is None:
        paired = [(layer, layer) for layer in layers_t if layer in set(layers_r)]
        pairing = "by index"
        if len(layers_t) != len(layers_r):
            notes.append(f"layer counts differ ({len(layers_t)} vs {len(layers_r)}); layers compared by index")
    else:
        paired, used = [], set()
        for layer in layers_t:
            r = layer_map.get(layer)
            if r is not None and r in set(layers_r) and r not in used:
                paired.append((layer, int(r)))
                used.add(r)
        pairing = "by layer correspondence"
        notes.append(f"layers paired by the layer correspondence ({len(paired)} pairs of {len(layers_t)} target and "
                     f"{len(layers_r)} reference layers; a reference layer matched by several target layers is "
                     "tested once, against the first)")
    available = sum(_unit_count(target, reference, t, r) for t, r in paired)
    layers_available = len(paired)
    if layers is not None:
        chosen = {int(x) for x in layers}
        kept = [pair for pair in paired if pair[0] in chosen]
        notes.append(f"a read budget: {len(kept)} of {len(paired)} layers tested "
                     f"({', '.join(str(t) for t, _ in kept)})")
        paired = kept
    opts["workers"] = default_workers() if workers is None else max(1, int(workers))
    with _one_blas_thread():
        results = _run_layers(target, reference, paired, frames, opts, notes, progress=progress,
                              experts_per_layer=experts_per_layer, heads=heads, shared_units=shared_units)
    if not results:
        raise UnsupportedFormat(f"{target.source.root} vs {reference.source.root}: no layer with a gated MLP "
                                "(gate and up projections) in both models; the matching statistic needs both")
    notes = list(dict.fromkeys(notes))  # one line for the expert subset, not one per layer
    combined = fisher_combine([u.pvalue for r in results for u in r.units])
    tested = sum(len(r.units) for r in results)
    subset = sorted({n for n in notes if n.startswith("routed experts:")})
    why = []
    if layers is not None:
        why.append("a read budget: fewer layers")
    if subset:
        why.append("routed experts: " + opts["subset_reason"])
    if not shared_units:
        why.append("shared experts left out by a read budget")
    coverage = {"units_tested": tested, "units_available": available, "layers_tested": len(results),
                "layers_available": layers_available,
                "why": "; ".join(why) if why else ("every MLP unit both models have" if tested >= available
                                                  else "units whose tensors one side lacks are not tested")}
    files = tuple(str(p) for m in (target, reference) for p in m.source.require_weights())
    return IndependenceTest(target=target.name, reference=reference.name,
                            statistic=STATISTIC if decouple else STATISTIC_PLAIN, hidden=hidden,
                            layers=tuple(results), combined=combined, features=frames.features,
                            projected=frames.projected, seed=int(seed), dense_max=int(dense_max), top_k=int(top_k),
                            files=files, notes=tuple(notes), coverage=coverage, layer_pairing=pairing)
