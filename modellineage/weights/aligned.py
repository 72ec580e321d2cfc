"""Weight similarity after undoing the re-parametrisation the independence test found.

A derivative can be re-parametrised without changing a single output: the residual stream permuted
and sign-flipped (embedding columns, every reader's columns, every writer's rows), norm gains folded
into the linear layers that read them (gains set to ones), each attention head's q/k rows rescaled
against each other, v rows against o columns, MLP neurons permuted (gate/up rows with down columns)
and rescaled (up row against down column), heads permuted within their KV groups. Every same-name
centred similarity of such a copy is ≈ 0 (:mod:`modellineage.weights.similarity` compares by name), while
the independence test (:mod:`modellineage.independence`), invariant to all of it, rejects
independence at p ≪ α. This module re-computes the centred figures **in the frame the independence
test aligned**:

- residual dimension ``a`` of the target is reference dimension ``permutation[a]`` times
  ``signs[a]`` (:class:`~modellineage.independence.HiddenAlignment`): token matrices and readers
  (q, k, v, gate, up, lm_head) have their columns mapped, writers (o, down) their rows;
- norm gains are folded on both sides (``W · diag(g)``; gain rescaling cancels there), so the gain
  tensors themselves are not compared on their own (listed in :attr:`AlignedComparison.folded`);
- q/k/v rows are paired through the head alignment (KV heads, query heads within groups), o
  columns through the same query-head map; MLP rows through each unit's neuron matching π_gate,
  down columns through the same π;
- per-row scale and sign where the function allows one (q, k, v and up rows) is taken as
  ``sign(a·b) ||b|| / ||a||`` on the row itself and its inverse is applied to the coupled columns
  (o from v, down from up), so o and down are *not* fitted on their own values.

Honesty of the aligned figures. Every choice above is fitted on data — the residual matching on
the embeddings, π_gate on the gate rows, the head matching on q/k/v rows, the row signs on q/k/v/up
— so on an *independent* pair the fitted tensors show a positive similarity that is selection, not
shared origin (the best of many random pairings). lm_head is fitted too, indirectly: its columns
follow the residual matching fitted on the embedding, and the two token matrices share one
token-frequency structure along the token axis, so the matching lines up lm_head's dominant
component as well. On 112 independent demo-like pairs (``benchmarks/calibrate_weights.py``) the
aligned figures reach embedding 0.24, gate/up 0.21, q/k/v 0.16 and lm_head 0.37, while o and down
(paired by the head and neuron matchings and the residual matching, scaled by the *coupled* v/up
scales — nothing fitted on their own values) stay at ≤ 0.023, as their name-aligned figures do.
:attr:`AlignedComparison.fitted` lists the fitted tensors; the weight audit judges aligned figures
only of the others (o, down), and only when the alignment itself is significant, i.e. when the
independence test rejects independence (:mod:`audits.test_weights`).

Memory: one block of rows per side at a time, plus O(hidden) / O(intermediate) index and scale
vectors per layer; reference rows are gathered by index (``pread`` per run of rows). Every row is
read (``--sample`` does not apply to the aligned pass). Only dense or gated-expert blocks with
separate q/k/v/o and gate/up/down projections are aligned; other roles are listed as skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from modellineage.errors import IncompatibleShapes
from modellineage.independence.matching import IndependenceTest, _vector
from modellineage.reading.naming import canonical_key
from modellineage.stats import PValue
from modellineage.weights.metrics import PairAccumulator
from modellineage.weights.sampling import EXACT_METHOD, Interval
from modellineage.weights.similarity import PairSimilarity, SkippedPair, WeightComparison, read_canonical_rows, row_plan

__all__ = ["AlignmentQuality", "AlignedComparison", "compare_aligned"]

_DEFAULT_CHUNK = 16 << 20
#: Norm gains folded into the readers (and the readers they feed).
_FOLDED = {"attn_norm": ("attn_q", "attn_k", "attn_v"), "mlp_norm": ("mlp_gate", "mlp_up"),
           "final_norm": ("lm_head",)}


@dataclass(frozen=True)
class AlignmentQuality:
    """How good the alignment is: the independence test's p-value and its matching statistics."""

    pvalue: PValue
    """The independence test's combined p-value (the alignment is significant when it is below α)."""
    hidden_matched_abs_corr: float
    hidden_identity_share: float
    hidden_negative_share: float
    neuron_gate_cos: float
    """Mean cosine of the gate rows π_gate pairs, over every matched unit."""
    neuron_order_kept: float
    heads_matched_similarity: float | None
    heads_as_stored_similarity: float | None
    units: int
    layers: int

    def as_dict(self) -> dict:
        return {"pvalue": self.pvalue.as_dict(), "hidden_matched_abs_corr": self.hidden_matched_abs_corr,
                "hidden_identity_share": self.hidden_identity_share,
                "hidden_negative_share": self.hidden_negative_share, "neuron_gate_cos": self.neuron_gate_cos,
                "neuron_order_kept": self.neuron_order_kept,
                "heads_matched_similarity": self.heads_matched_similarity,
                "heads_as_stored_similarity": self.heads_as_stored_similarity,
                "units": self.units, "layers": self.layers}


@dataclass(frozen=True)
class AlignedComparison:
    """Centred similarity of every aligned tensor pair, with the alignment's quality."""

    comparison: WeightComparison
    quality: AlignmentQuality
    folded: tuple[str, ...]
    """Norm gains folded into their readers on both sides (compared there, not on their own)."""
    fitted: tuple[str, ...]
    """Target keys whose pairing or row scale was fitted on their own values, or (lm_head) on the embedding that
    shares their token structure: on an independent pair their aligned figures are selection, not evidence."""

    def as_dict(self) -> dict:
        return {"comparison": self.comparison.as_dict(), "quality": self.quality.as_dict(),
                "folded": list(self.folded), "fitted": list(self.fitted)}


def _quality(test: IndependenceTest) -> AlignmentQuality:
    units = [u for layer in test.layers for u in layer.units]
    heads = [layer.attention for layer in test.layers if layer.attention is not None]
    mean = (lambda xs: float(np.mean(xs)) if xs else math.nan)
    return AlignmentQuality(
        pvalue=test.combined, hidden_matched_abs_corr=test.hidden.matched_abs_corr,
        hidden_identity_share=test.hidden.identity_share, hidden_negative_share=test.hidden.negative_share,
        neuron_gate_cos=mean([u.gate_matched_cos for u in units]),
        neuron_order_kept=mean([u.neuron_order_kept for u in units]),
        heads_matched_similarity=mean([h.matched_similarity for h in heads]) if heads else None,
        heads_as_stored_similarity=mean([h.as_stored_similarity for h in heads]) if heads else None,
        units=len(units), layers=len(test.layers))


@dataclass(frozen=True)
class _Map:
    """How one target tensor is laid onto its reference partner.

    Target row ``t_rows[k]`` pairs with reference row ``r_rows[k]``; target column ``c`` lands on
    reference column ``cols[c]`` after multiplication by ``col_t[c]``; reference columns are
    multiplied by ``col_r``; target rows by ``row_t[k]``; ``fit``: a further per-row scale
    ``sign(a·b) ||b|| / ||a||`` is fitted and returned. A row or column index of -1 has no partner (a
    width-pruned side): such rows and columns are left out, so the pair compares the matched sub-matrices.
    """

    t_rows: np.ndarray
    r_rows: np.ndarray
    cols: np.ndarray | None = None
    col_t: np.ndarray | None = None
    col_r: np.ndarray | None = None
    row_t: np.ndarray | None = None
    fit: bool = False
    how: str = ""


def _fitted_scale(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dot = np.einsum("ij,ij->i", a, b)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return np.where(ok, np.where(dot < 0, -1.0, 1.0) * nb / np.where(ok, na, 1.0), 1.0)


def _compare(target, reference, tkey: str, rkey: str, m: _Map, chunk_bytes: int) -> tuple[PairSimilarity, np.ndarray]:
    tref, rref = target.name_map.refs[tkey], reference.name_map.refs[rkey]
    if tref.transpose or rref.transpose:
        raise IncompatibleShapes(f"{tkey}: transposed storage is not aligned (compared by name only)")
    tinfo, rinfo = target.store.info(tref.source), reference.store.info(rref.source)
    tplan, rplan = row_plan(tref, tinfo), row_plan(rref, rinfo)
    cols, r_cols = tplan.shape[1], rplan.shape[1]
    if (m.cols is None and cols != r_cols) or (m.cols is not None and (m.cols.size != cols or m.cols.max() >= r_cols
                                                                       or not (m.cols >= 0).any())):
        raise IncompatibleShapes(f"{tkey}: {tplan.shape} vs reference {rkey} {rplan.shape}")
    paired = np.flatnonzero((m.t_rows >= 0) & (m.r_rows >= 0))
    if paired.size == 0 or m.t_rows.max() >= tplan.shape[0] or m.r_rows.max() >= rplan.shape[0]:
        raise IncompatibleShapes(f"{tkey}: row pairing out of range ({tplan.shape} vs {rplan.shape})")
    # square: a permutation of the columns (scatter, as always); otherwise gather the matched sub-matrix
    square = m.cols is None or (cols == r_cols and bool((m.cols >= 0).all())
                                and np.array_equal(np.sort(m.cols), np.arange(cols)))
    kept = None if square else np.flatnonzero(m.cols >= 0)
    acc = PairAccumulator(label_a=f"target tensor {tref.source!r} in {tinfo.file}",
                          label_b=f"reference tensor {rref.source!r} in {rinfo.file}")
    scales = np.ones(m.t_rows.size)
    step = max(1, chunk_bytes // max(1, cols * 8))
    before_t, before_r = target.store.thread_bytes_read, reference.store.thread_bytes_read
    for start in range(0, paired.size, step):
        k = paired[start:start + step]
        a = read_canonical_rows(target.store, tplan, m.t_rows[k], check_finite=False)
        b = read_canonical_rows(reference.store, rplan, m.r_rows[k], check_finite=False)
        if m.col_t is not None:
            a = a * m.col_t
        if kept is not None:
            if m.col_r is not None:
                b = b * m.col_r
            a, b = a[:, kept], b[:, m.cols[kept]]
        elif m.cols is not None:
            moved = np.empty_like(a)
            moved[:, m.cols] = a
            a = moved
        if kept is None and m.col_r is not None:
            b = b * m.col_r
        if m.row_t is not None:
            a = a * m.row_t[k][:, None]
        if m.fit:
            scales[k] = _fitted_scale(a, b)
            a = a * scales[k][:, None]
        acc.update(a, b)
    sim = acc.result()
    exact = {f: Interval(getattr(sim, f), getattr(sim, f), True, EXACT_METHOD)
             for f in ("cosine", "centred_cosine", "rel_l2")}
    pair = PairSimilarity(
        key=tkey, reference_key=rkey, role=tref.role, layer=tref.layer, reference_layer=rref.layer,
        expert=tref.expert, reference_expert=rref.expert, shape=tuple(tref.shape), target_tensor=tref.source,
        reference_tensor=rref.source, similarity=sim, cosine_ci=exact["cosine"], centred_ci=exact["centred_cosine"],
        rel_l2_ci=exact["rel_l2"], rows_read=int(paired.size), rows_total=int(tplan.shape[0]),
        bytes_read=(target.store.thread_bytes_read - before_t) + (reference.store.thread_bytes_read - before_r),
        row_alignment=m.how)
    return pair, scales


def _head_maps(target, test_layer, rows_q: int, rows_kv: int):
    """(q row map, kv row map, query head -> kv head of the target, head_dim) for one layer."""
    arch = target.arch
    h = getattr(arch, "num_heads", None) if arch is not None else None
    hkv = (getattr(arch, "num_kv_heads", None) or h) if arch is not None else None
    hd = getattr(arch, "head_dim", None) if arch is not None else None
    att = None if test_layer is None else test_layer.attention
    if not h or not hd or h * hd != rows_q or hkv * hd != rows_kv or h % hkv:
        return np.arange(rows_q), np.arange(rows_kv), None, None, "identity (head layout unknown)"
    group = h // hkv
    if att is None:
        head_perm, kv_perm, how = np.arange(h), np.arange(hkv), "heads as stored (no head alignment)"
    else:
        head_perm, kv_perm = np.asarray(att.head_permutation), np.asarray(att.kv_permutation)
        how = "heads matched within KV groups"
    # an unmatched head (-1: a head-pruned side) leaves its rows unpaired
    q_rows = np.where(head_perm[:, None] >= 0, head_perm[:, None] * hd + np.arange(hd)[None, :], -1).reshape(-1)
    kv_rows = np.where(kv_perm[:, None] >= 0, kv_perm[:, None] * hd + np.arange(hd)[None, :], -1).reshape(-1)
    kv_of_q = np.repeat(np.arange(hkv), group)  # target query head -> its target kv head
    return q_rows, kv_rows, kv_of_q, hd, how


def compare_aligned(target, reference, test: IndependenceTest, *,
                    token_rows: Mapping[str, tuple[np.ndarray, np.ndarray, str]] | None = None,
                    chunk_bytes: int = _DEFAULT_CHUNK) -> AlignedComparison:
    """Centred similarity of every tensor pair in the frame ``test`` aligned (see the module docstring).

    Args:
        target, reference: the models ``test`` was measured on (:class:`modellineage.reading.model.Model`).
        test: their :class:`~modellineage.independence.IndependenceTest` (its hidden alignment, per-unit
            neuron matchings and per-layer head alignments).
        token_rows: explicit token-row pairs for ``embed.weight`` / ``lm_head.weight`` when the
            vocabularies differ (as :func:`modellineage.weights.similarity.compare_weights` takes them);
            otherwise token rows pair by index.
        chunk_bytes: float64 bytes per block of rows per side.

    Returns:
        An :class:`AlignedComparison` whose ``comparison`` has the same summaries (by category, layer)
        as the name-aligned one.

    Raises:
        IncompatibleShapes: no tensor pair could be aligned.
    """
    t_refs, r_refs = target.name_map.refs, reference.name_map.refs
    perm = np.asarray(test.hidden.permutation, dtype=np.int64)
    signs = np.asarray(test.hidden.signs, dtype=np.float64)
    hidden = perm.size
    widths = {"t": hidden, "r": test.hidden.reference_dims or hidden}
    ident = np.arange(hidden)
    layers = {r.layer: r for r in test.layers}
    pairs: list[PairSimilarity] = []
    skipped: list[SkippedPair] = []
    fitted: list[str] = []
    done: set[str] = set()
    gains: dict[tuple[str, str], np.ndarray | None] = {}

    def gain(side, key: str):
        model = target if side == "t" else reference
        if (side, key) not in gains:
            ref = model.name_map.refs.get(key)
            gains[(side, key)] = None if ref is None or len(ref.shape) != 1 or ref.shape[0] != widths[side] \
                else _vector(model, ref)
        return gains[(side, key)]

    def run(tkey: str, rkey: str, m: _Map, fitted_here: bool = False) -> np.ndarray | None:
        done.add(tkey)
        if tkey not in t_refs or rkey not in r_refs:
            skipped.append(SkippedPair(tkey, f"no {rkey} in the reference"))
            return None
        try:
            pair, scales = _compare(target, reference, tkey, rkey, m, chunk_bytes)
        except IncompatibleShapes as exc:
            skipped.append(SkippedPair(tkey, str(exc)))
            return None
        pairs.append(pair)
        if fitted_here or m.fit:
            fitted.append(tkey)
        return scales

    def reader(norm_key: str | None, rows_t: np.ndarray, rows_r: np.ndarray, how: str, fit: bool,
               norm_r: str | None = None) -> _Map:
        g_t = gain("t", norm_key) if norm_key else None
        g_r = gain("r", norm_r or norm_key) if norm_key else None
        col_t = signs if g_t is None else signs * g_t
        return _Map(rows_t, rows_r, cols=perm, col_t=col_t, col_r=g_r, fit=fit,
                    how=f"residual columns aligned{', ' + norm_key + ' folded' if norm_key else ''}; {how}")

    # token matrices: rows are tokens, columns the residual stream
    for key, norm in (("embed.weight", None), ("lm_head.weight", "final_norm.weight")):
        if key not in t_refs or key not in r_refs:
            continue
        given = (token_rows or {}).get(key)
        if given is not None:
            rows_t, rows_r, how = np.asarray(given[0]), np.asarray(given[1]), given[2]
        elif t_refs[key].shape[0] == r_refs[key].shape[0]:  # same token rows (widths may differ: pruned)
            rows_t = rows_r = np.arange(t_refs[key].shape[0])
            how = "token rows by id"
        else:
            done.add(key)
            skipped.append(SkippedPair(key, "token rows cannot be paired (vocabularies differ, not read)"))
            continue
        # lm_head counts as fitted too: its columns follow the residual matching fitted on the embedding, and both
        # token matrices share one token-frequency structure (independent demo-like pairs reach 0.37 aligned)
        run(key, key, reader(norm, rows_t, rows_r, how, False), fitted_here=True)

    for layer in sorted({r.layer for r in t_refs.values() if r.layer is not None}):
        lr = layers.get(layer)
        # the reference layer the independence test paired with this one (by index unless it used a layer map)
        rl = layer if lr is None or lr.reference_layer is None else lr.reference_layer
        key = lambda role, expert=None: canonical_key(layer, expert, role, "weight")  # noqa: E731
        rkey = lambda role, expert=None: canonical_key(rl, expert, role, "weight")  # noqa: E731
        q, k, v, o = key("attn_q"), key("attn_k"), key("attn_v"), key("attn_o")
        if all(x in t_refs for x in (q, k, v, o)) and all(rkey(x) in r_refs for x in ("attn_q", "attn_k", "attn_v",
                                                                                         "attn_o")):
            q_rows, kv_rows, kv_of_q, hd, how = _head_maps(target, lr, t_refs[q].shape[0], t_refs[k].shape[0])
            norm, norm_r = key("attn_norm"), rkey("attn_norm")
            run(q, rkey("attn_q"), reader(norm, np.arange(q_rows.size), q_rows, how, True, norm_r))
            run(k, rkey("attn_k"), reader(norm, np.arange(kv_rows.size), kv_rows, how, True, norm_r))
            s_v = run(v, rkey("attn_v"), reader(norm, np.arange(kv_rows.size), kv_rows, how, True, norm_r))
            o_cols = q_rows
            col_t = None
            if s_v is not None and kv_of_q is not None:
                col_t = 1.0 / (s_v.reshape(-1, hd)[kv_of_q]).reshape(-1)
            run(o, rkey("attn_o"), _Map(ident, perm, cols=o_cols, col_t=col_t, row_t=signs,
                           how=f"residual rows aligned; {how}; v scale undone on o columns"))
        for unit in (lr.units if lr is not None else ()):
            gate_role, up_role, down_role = unit.roles
            pi = np.asarray(unit.permutation, dtype=np.int64)
            if pi.size == 0:
                continue
            e_t, e_r = unit.expert, unit.reference_expert
            g_t, g_r = key(gate_role, e_t), rkey(gate_role, e_r)
            norm, norm_r = key("mlp_norm"), rkey("mlp_norm")
            how = "neurons matched by gate rows (π_gate)"
            run(g_t, g_r, reader(norm, np.arange(pi.size), pi, how, False, norm_r), fitted_here=True)
            s_up = run(key(up_role, e_t), rkey(up_role, e_r), reader(norm, np.arange(pi.size), pi, how, True, norm_r))
            run(key(down_role, e_t), rkey(down_role, e_r),
                _Map(ident, perm, cols=pi, col_t=None if s_up is None else 1.0 / s_up, row_t=signs,
                     how=f"residual rows aligned; {how}; up scale undone on down columns"))
    folded = tuple(sorted(kk for kk, r in t_refs.items() if r.role in _FOLDED and kk not in done))
    for kk, r in t_refs.items():
        if kk not in done and r.role not in _FOLDED:
            skipped.append(SkippedPair(kk, f"no alignment for role {r.role} (compared by name only)"))
    if not pairs:
        raise IncompatibleShapes(f"{target.name} vs {reference.name}: no tensor pair could be aligned")
    comparison = WeightComparison(
        target=target.name, reference=reference.name, pairs=tuple(pairs), skipped=tuple(skipped),
        reference_only=(), fraction=None, seed=test.seed, layer_map=None, expert_map=None,
        target_files=tuple(p.name for p in target.store.files),
        reference_files=tuple(p.name for p in reference.store.files))
    return AlignedComparison(comparison=comparison, quality=_quality(test), folded=folded, fitted=tuple(fitted))
