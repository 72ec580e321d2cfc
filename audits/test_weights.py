"""Weight similarity: centred statistics per canonical tensor, layer correspondence, moved tensors, MoE.

One measurement per (target, reference) pair, cached for the session: signatures (a few sampled rows
per tensor) -> layer correspondence and expert assignment -> the streamed comparison of every tensor
pair under the chosen correspondence (``--sample F``: a seeded share of rows, with 95 % intervals).

The pipeline is the library's (:mod:`modellineage.weights.pipeline`); this module judges and reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from modellineage.errors import LineageError
from modellineage.reporting import plots as weight_plots
from modellineage.reporting import report
from modellineage.weights.aligned import AlignedComparison
from modellineage.weights.pipeline import WeightEvidence, measure_target
from modellineage.weights.pipeline import measure_many
from modellineage.weights.pipeline import measure_aligned as _measure_aligned
from modellineage.weights.similarity import WeightComparison, summarise

from .criteria import (
    _p_text,
    early_layer_indices,
    expert_slices_independent,
    experts_independent,
    independence_alpha,
    no_signature_matches,
    weights_derived,
    weights_independent,
)
from .plugin import SAMPLE_SEED, ReferenceHandle, once
from .shared import budget_plan, independence_test

pytestmark = pytest.mark.weights

#: Judged by test_moe_experts (the routed-expert claim), not by test_weight_similarity's independent verdict.
EXPERT_CATEGORY = "routed_expert"


#: Key of the weights cache holding the references whose weight audits this run selected.
_SELECTED = ("selected references",)


@pytest.fixture(scope="session")
def weights_cache(request: pytest.FixtureRequest) -> dict:
    """The session's weight measurements by reference name, and (under :data:`_SELECTED`) the references
    whose weight audits the run selected (after ``-k`` / ``-m``): the ones :func:`measure` measures together."""
    selected = []
    for item in request.session.items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        module = getattr(getattr(item, "module", None), "__name__", None)
        if module == __name__ and "reference" in params:
            selected.append(params["reference"].name)
    return {_SELECTED: tuple(dict.fromkeys(selected))}


def measure(target, reference, thresholds, audit_session, cache, config) -> WeightEvidence:
    """Everything the weight audits of one reference need (the library's pipeline, once per session).

    The first call measures every reference whose weight audits the run selected, in one pass over the
    target (:func:`modellineage.weights.pipeline.measure_many`: each target byte read once, every record
    equal to a one-reference measurement); a run selecting one reference (``-k``) measures only it."""
    if reference.name not in cache:
        wanted = {reference.name, *cache.get(_SELECTED, ())} - set(cache)
        handles = [reference if spec.name == reference.name else ReferenceHandle(spec, audit_session.model(spec.name))
                   for spec in audit_session.plan.references if spec.name in wanted]  # plan order
        if reference not in handles:
            handles.append(reference)
        budgets, batch = {}, []
        for handle in handles:
            try:
                budgets[handle.name] = budget_plan(config, target, handle, audit_session)
                batch.append(handle)
            except LineageError as exc:
                cache[handle.name] = exc
        if batch:
            side = None if audit_session.budget is not None else \
                once(cache, ("target", target.name), lambda: measure_target(target, sample=audit_session.sample))
            results = measure_many(target, [h.model for h in batch],
                                   min_layer_match=thresholds["weights", "derived_min_centred"].value,
                                   sample=audit_session.sample, seed=SAMPLE_SEED, target_side=side,
                                   budgets=[budgets[h.name] for h in batch])
            for handle, m in zip(batch, results):
                if not isinstance(m, LineageError):
                    audit_session.seeds.update(m.seeds)
                cache[handle.name] = m
    return once(cache, reference.name, lambda: None)


def measure_aligned(target, reference, audit_session, config, cache) -> tuple[AlignedComparison | None, str]:
    """The weight comparison in the frame the independence test aligned (once per session), or None and why."""
    def compute():
        if audit_session.budget is not None:
            return None, "not computed under a read budget (--budget): the aligned figures read every tensor of " \
                         "the tested layers in full"
        try:
            test = independence_test(config, target, reference, audit_session)
        except LineageError as exc:  # no alignment (no shared tokens, refused tokenizer, ...): name-aligned only
            return None, f"the independence test found no alignment: {exc}"
        try:
            return _measure_aligned(target, reference.model, test), ""
        except LineageError as exc:
            return None, str(exc)

    return once(cache, (reference.name, "aligned"), compute)


@dataclass(frozen=True)
class _Judged:
    """Which figures the weight verdict reads: name-aligned, or aligned when the alignment is significant."""

    categories: tuple
    early: object
    significant: bool
    alpha: float
    text: str


def _judged_figures(comp: WeightComparison, aligned: AlignedComparison | None, why: str, early_share, alpha: float,
                    ) -> _Judged:
    """Name-aligned figures; when the independence test's alignment is significant (p < α), per category the
    higher of the name-aligned figure and the aligned figure of the tensors whose alignment was not fitted on
    them (o, down: no selection bias, see modellineage.weights.aligned). Both are unbiased; the fitted tensors' aligned
    figures (embedding, lm_head, q/k/v, gate, up) are reported, never judged."""
    def early_of(pairs, label_suffix=""):
        idx = early_layer_indices(sorted({p.layer for p in pairs if p.layer is not None}), early_share)
        chosen = [p for p in pairs if p.layer in idx and p.category != EXPERT_CATEGORY]
        label = f"early layers ({', '.join(map(str, idx))}){label_suffix}"
        return summarise(chosen, lambda p: label)[0] if chosen else None

    def higher(named, candidate):
        if candidate is None or not math.isfinite(candidate.mean_centred):
            return named
        if named is None or not math.isfinite(named.mean_centred) or candidate.mean_centred > named.mean_centred:
            return candidate
        return named

    name_early = early_of(comp.pairs)
    if aligned is None:
        return _Judged(comp.by_category, name_early, False, alpha,
                       f"judged on name-aligned figures ({why})" if why else "")
    pv = aligned.quality.pvalue
    held_out = [p for p in aligned.comparison.pairs if p.key not in set(aligned.fitted)]
    if not pv.p < alpha:
        # A category none of whose tensors kept its shape (width pruning) has no name-aligned figure: it is judged
        # on its matched sub-matrices' held-out figure, which nothing was fitted on (unbiased whatever p is).
        named = {g.group for g in comp.by_category}
        only = [replace(g, group=f"{g.group} (matched sub-matrices)")
                for g in summarise(held_out, lambda p: p.category) if g.group not in named]
        if not only:
            return _Judged(comp.by_category, name_early, False, alpha,
                           f"judged on name-aligned figures: the independence test's alignment is not significant "
                           f"(p = {_p_text(pv)} ≥ α = {alpha:.3g}), so aligned figures are not judged")
        early = name_early or early_of(held_out, " (matched sub-matrices)")
        return _Judged(tuple(comp.by_category) + tuple(only), early, False, alpha,
                       f"the independence test's alignment is not significant (p = {_p_text(pv)} ≥ α = {alpha:.3g}); "
                       f"{', '.join(g.group.removesuffix(' (matched sub-matrices)') for g in only)} changed shape, so "
                       f"judged on the matched sub-matrices of the tensors the matching was not fitted on (o, down: "
                       f"channels, heads and neurons matched to a subset of the reference's): "
                       + ", ".join(f"{g.group.removesuffix(' (matched sub-matrices)')} {g.mean_centred:.3f}"
                                   for g in only))
    chosen = {g.group: g for g in comp.by_category}
    for g in summarise(held_out, lambda p: p.category):
        chosen[g.group] = higher(chosen.get(g.group), replace(g, group=f"{g.group} (aligned)"))
    early = higher(name_early, early_of(held_out, " (aligned)"))
    aligned_text = ", ".join(f"{g.group} {g.mean_centred:.3f}" for g in summarise(held_out, lambda p: p.category))
    return _Judged(tuple(chosen.values()), early, True, alpha,
                   f"alignment significant (independence p = {_p_text(pv)} < α = {alpha:.3g}): each category judged "
                   f"on the higher of its name-aligned figure and its aligned figure over the tensors the alignment "
                   f"was not fitted on (o, down after undoing residual permutation/signs, folded gains, "
                   f"head and neuron matching and rescaling: {aligned_text})")


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def _ci(ci) -> str:
    return "exact" if ci.exact else f"{ci.low:.3f}–{ci.high:.3f}"


def test_weight_similarity(target, reference, thresholds, evidence, audit_session, weights_cache, pytestconfig):
    m = measure(target, reference, thresholds, audit_session, weights_cache, pytestconfig)
    comp = m.comparison
    evidence.measured("weight_similarity", comp)
    evidence.measured("reading", m.reading)
    evidence.measured("layer_correspondence", m.layers)
    evidence.measured("embedding_rows", m.row_alignment)
    evidence.measured("embedding_stats", m.embeddings)
    aligned, why = measure_aligned(target, reference, audit_session, pytestconfig, weights_cache)
    if m.unequal_shapes and aligned is None:
        pytest.skip(f"{m.unequal_shapes}; and the matched sub-matrices could not be compared either: {why}")
    alpha = independence_alpha(thresholds["independence", "alpha"], len(audit_session.plan.references))
    # the early-layer profile is the dense stack's: routed experts (judged by test_moe_experts) would outnumber it
    judged = _judged_figures(comp, aligned, why, thresholds["weights", "early_layer_share"], alpha)
    categories, early = judged.categories, judged.early
    evidence.measured("early_layers", early)
    evidence.measured("aligned_similarity", {
        "significant": judged.significant, "alpha": alpha, "judged_on": "aligned" if judged.significant else "name",
        "why_not": why or None, "judged_categories": categories,
        "aligned": aligned})

    # norm-gain trap: raw high, centred low (bounds from thresholds.toml)
    raw_min = thresholds["weights", "trap_min_raw_cosine"]
    centred_max = thresholds["weights", "trap_max_centred"]
    traps = [p for p in comp.pairs if p.similarity.cosine >= raw_min.value
             and math.isfinite(p.similarity.centred_cosine) and p.similarity.centred_cosine < centred_max.value]
    evidence.measured("norm_gain_trap", {"tensors": [p.key for p in traps], "raw_min": raw_min.value,
                                         "centred_max": centred_max.value})
    fine = thresholds["weights", "finetune_min_early_layers_centred"]
    callouts = []
    if traps:
        callouts.append(
            f"Norm-gain trap: {len(traps)} tensor(s) have raw cosine ≥ {raw_min.value} but centred similarity "
            f"< {centred_max.value} ({', '.join(p.key for p in traps[:6])}{' ...' if len(traps) > 6 else ''}): "
            "their elements share a large common mean (norm gains start at 1), which dominates the raw dot product "
            "while the spread around it is unrelated — raw cosine is not evidence here, the centred figure is.")
    if early is not None and early.mean_centred >= fine.value:
        light = thresholds["weights", "finetune_min_centred"]
        judged_means = [c for c in categories if math.isfinite(c.mean_centred)]
        lowest = min(judged_means, key=lambda c: c.mean_centred, default=None)
        if lowest is None or lowest.mean_centred >= light.value:
            rest = "" if lowest is None else (f", and every category keeps ≥ {light.value} (lowest: {lowest.group} "
                                              f"{lowest.mean_centred:.3f}; {light.where})")
            callouts.append(f"Fine-tune pattern: the early layers keep centred similarity {early.mean_centred:.3f} "
                            f"≥ {fine.value} ({fine.where}){rest}.")
        else:
            callouts.append(f"Early layers kept, the rest moved: the early layers keep centred similarity "
                            f"{early.mean_centred:.3f} ≥ {fine.value} ({fine.where}), but {lowest.group} falls to "
                            f"{lowest.mean_centred:.3f} < {light.value}, below what a light fine-tune keeps "
                            f"({light.where}): longer training, or tensors replaced.")
    if m.alignment_text:
        callouts.append(f"Layer correspondence beats index alignment ({m.layers.aligned_score:.2f} vs "
                        f"{m.layers.index_score:.2f} summed similarity): {m.alignment_text}.")
    if judged.text:
        callouts.append(judged.text[0].upper() + judged.text[1:] + ".")
    evidence.html("".join(f"<p>{report.esc(c)}</p>" for c in callouts) + _tables(comp, comp.by_category, early)
                  + _aligned_table(comp, aligned, judged) + _token_tables(comp, m.embeddings))
    profile = comp.by_layer_and_category()
    if profile:
        evidence.png(weight_plots.layer_profile(profile, title=f"Similarity to {reference.name} by layer "
                                                "(solid: centred, dashed: raw)"), "layer profile")
    if m.layers.matrix.size:
        evidence.png(weight_plots.layer_heatmap(m.layers.matrix, m.layers.target_layers, m.layers.reference_layers,
                                                m.layers.path, title=f"Layer correspondence with {reference.name} "
                                                "(sampled, centred)"), "layer heatmap")
    if m.projection is not None:
        evidence.png(weight_plots.layer_pca(m.projection, target=target.name, reference=reference.name), "layer PCA")
        evidence.measured("layer_pca", m.projection)

    worst = max((g for g in comp.by_category if math.isfinite(g.mean_centred)), key=lambda g: g.mean_centred,
                 default=None)
    top = max((g for g in categories if math.isfinite(g.mean_centred)), key=lambda g: g.mean_centred, default=None)
    evidence.says(f"Against {reference.name}, the highest mean centred weight similarity is "
                  f"{worst.mean_centred:.3f} ({worst.group}) over {len(comp.pairs)} tensor pairs"
                  + (f"; {len(traps)} tensor(s) show the norm-gain trap (raw high, centred low)" if traps else "")
                  + (f"; {m.alignment_text}" if m.alignment_text else "")
                  + (f"; after the independence test's alignment (significant) the highest is {top.mean_centred:.3f} "
                     f"({top.group})" if judged.significant and top else "") + "." if worst else
                  f"No centred similarity is defined against {reference.name}.")
    dense = sum(p.against_dense for p in comp.pairs)
    how = "; ".join(x for x in (m.alignment_text, f"{dense} routed-expert tensors compared with the reference's "
                                "dense MLP (upcycling check)" if dense else "", judged.text) if x)
    if reference.expectation("weights") == "derived":  # every category may show derivation, upcycled experts too
        judgement = weights_derived(reference.name, categories, thresholds["weights", "derived_min_centred"], how)
    else:  # routed experts are the claim of test_moe_experts
        judged_cats = [g for g in categories if g.group.removesuffix(" (aligned)") != EXPERT_CATEGORY]
        how = "; ".join(x for x in (m.alignment_text, "routed experts: judged by test_moe_experts"
                                    if len(judged_cats) < len(categories) else "", judged.text) if x)
        judgement = weights_independent(reference.name, judged_cats, early, thresholds["weights", "independent_max_centred"],
                                        thresholds["weights", "independent_max_embedding_centred"], how)
    evidence.judged(judgement)
    assert not judgement.failed, judgement.message


def test_no_tensor_signature_matches(target, reference, thresholds, evidence, audit_session, weights_cache,
                                     pytestconfig):
    m = measure(target, reference, thresholds, audit_session, weights_cache, pytestconfig)
    if m.unequal_shapes:
        pytest.skip(f"no tensor of {target.name} has the shape of one of {reference.name}'s, so no signature can "
                    f"match (test_weight_similarity compares the matched sub-matrices): {m.unequal_shapes}")
    sigs = m.signatures
    evidence.measured("signatures", sigs)
    hmax, jmin = thresholds["weights", "signature_max_hamming"], thresholds["weights", "signature_min_jaccard"]
    matching = sigs.matching(hmax.value, jmin.value)
    moved = [x for x in matching if x.best_key != x.key]
    evidence.measured("signature_matches", {"matching": [x.key for x in matching],
                                            "moved": [[x.key, x.best_key] for x in moved]})
    rows = [[cat, v["tensors"], _fmt(v["same_key_mean_hamming"]), _fmt(v["same_key_mean_jaccard"]),
             _fmt(v["best_mean_hamming"]), _fmt(v["best_mean_jaccard"])] for cat, v in sigs.by_category().items()]
    evidence.html(report.table(["category", "tensors", "Hamming (same key)", "Jaccard (same key)",
                                "Hamming (best anywhere)", "Jaccard (best anywhere)"], rows,
                               caption=f"Tensor signatures against {reference.name} (SimHash / MinHash)")
                  + (report.table(["target tensor", "matches reference tensor", "Hamming", "Jaccard"],
                                  [[x.key, x.best_key, f"{x.best_hamming:.1%}", f"{x.best_jaccard:.2f}"]
                                   for x in moved[:50]], caption="Tensors found under another key") if moved else ""))
    evidence.says(f"{len(matching)} of {len(sigs.matches)} target tensors match a tensor of {reference.name} by "
                  f"signature ({len(moved)} under another layer, expert or role).")
    if reference.expectation("weights") == "derived":
        pytest.skip(f"recorded, not judged: a derivative may keep or change any tensor; {len(matching)} of "
                    f"{len(sigs.matches)} target tensors match {reference.name!r} by signature ({len(moved)} moved)")
    judgement = evidence.judged(no_signature_matches(reference.name, matching, len(sigs.matches), hmax, jmin))
    assert not judgement.failed, judgement.message


def test_moe_experts(target, reference, thresholds, evidence, audit_session, weights_cache, pytestconfig):
    m = measure(target, reference, thresholds, audit_session, weights_cache, pytestconfig)
    comp = m.comparison
    cats = {g.group: g for g in comp.by_category}
    experts = cats.get(EXPERT_CATEGORY)
    slices = m.expert_slices
    if slices:
        evidence.measured("expert_slices", slices)
    if experts is None and slices:
        return _judge_slices(reference, thresholds, evidence, slices)
    if experts is None:
        has = any(r.expert is not None for r in target.name_map.refs.values())
        why = next((f"{s.key}: {s.reason}" for s in comp.skipped if ".experts." in s.key), None)
        pytest.skip(f"no routed expert of {target.name} was compared with {reference.name}: "
                    + (why if has and why else "the target has no routed experts"))
    evidence.measured("expert_matching", m.experts)
    evidence.measured("upcycling", m.upcycling)
    per_expert = comp.by_expert()
    evidence.measured("experts", per_expert)
    derivation = thresholds["weights", "derived_min_centred"]
    upcycled = [u for u in m.upcycling if all(math.isfinite(s) and s >= derivation.value for s in u.similarity)]
    html = report.table(["routed expert ~ reference partner", "tensors", "raw cosine", "centred", "95% CI (centred)"],
                        [[g.group, g.tensors, _fmt(g.mean_cosine), _fmt(g.mean_centred), _ci(g.centred_ci)]
                         for g in per_expert[:64]],
                        caption=f"Routed experts against {reference.name} (every row read or sampled as the run; "
                                f"partner: its assigned expert, or the dense MLP where {reference.name}'s layer "
                                f"is dense; first 64 of {len(per_expert)})")
    if m.experts:
        html += report.table(["layer", "reference layer", "experts", "re-ordered", "matched similarity (sampled)",
                              "index similarity (sampled)"],
                             [[e.layer, e.reference_layer, len(e.assignment), e.permuted,
                               _fmt(e.as_dict()["mean_matched_similarity"]), _fmt(e.identity_similarity)]
                              for e in m.experts], caption="Routed experts matched by optimal assignment (signatures)")
    if m.upcycling:
        html += report.table(["layer", "reference layer (dense)", "experts", "min similarity to the dense MLP",
                              "all experts match"],
                             [[u.layer, u.reference_layer, len(u.experts), _fmt(min(u.similarity)),
                               "yes" if u in upcycled else "no"] for u in m.upcycling],
                             caption=f"Target experts against {reference.name}'s dense MLP (signatures; match: "
                                     f"≥ {derivation.value}, {derivation.where})")
    evidence.html(html)
    parts = [f"{c} {cats[c].mean_centred:.3f}" for c in ("router", EXPERT_CATEGORY, "shared_expert") if c in cats]
    evidence.says(f"MoE against {reference.name}: {sum(e.permuted for e in m.experts)} expert slot(s) re-ordered by "
                  f"assignment; {sum(p.against_dense for p in comp.pairs)} routed-expert tensors compared with the "
                  f"dense MLP (upcycling check); centred similarity {', '.join(parts)}.")
    if reference.expectation("weights") == "derived":
        pytest.skip(f"recorded, not judged: under `derived` the routed experts are one of the categories that may "
                    f"show derivation (test_weight_similarity); {EXPERT_CATEGORY} {experts.mean_centred:.3f}")
    judgement = experts_independent(reference.name, experts, per_expert, thresholds["weights", "independent_max_centred"])
    if slices and not judgement.failed:  # narrower experts elsewhere: the fine-grained check may still fail
        judgement = expert_slices_independent(reference.name, slices, thresholds["weights", "independent_max_centred"])
    evidence.judged(judgement)
    assert not judgement.failed, judgement.message


def _judge_slices(reference, thresholds, evidence, slices) -> None:
    """Routed experts narrower than the reference's dense MLP (fine-grained upcycling check)."""
    bound = thresholds["weights", "independent_max_centred"]
    evidence.html(report.table(
        ["layer", "expert", "neurons", "reference layer (dense)", "dense neurons", "gate cos (matched, fitted)",
         "down centred (not fitted)", "longest run of consecutive dense neurons"],
        [[s.layer, s.expert, s.neurons, s.reference_layer, s.reference_neurons, _fmt(s.gate_matched_cos),
          _fmt(s.down_centred), f"{s.contiguous_share:.0%}"] for s in slices[:64]],
        caption=f"Routed experts matched to slices of {reference.name}'s dense MLP (first 64 of {len(slices)}; "
                f"neurons matched by gate rows, the down projections compared; judged: the mean down figure, "
                f"{bound.where})"))
    mean = sum(s.down_centred for s in slices) / len(slices)
    evidence.says(f"Fine-grained experts against {reference.name}: {len(slices)} routed experts matched to slices of "
                  f"its dense MLP, mean centred down-projection similarity {mean:.3f}.")
    if reference.expectation("weights") == "derived":
        pytest.skip(f"recorded, not judged: under `derived` the weight similarity audit judges the relation; "
                    f"mean down-projection similarity of the experts' matched slices {mean:.3f}")
    judgement = evidence.judged(expert_slices_independent(reference.name, slices, bound))
    assert not judgement.failed, judgement.message


def _tables(comp: WeightComparison, categories, early) -> str:
    rows = [[g.group, g.tensors, _fmt(g.mean_cosine), _fmt(g.mean_centred), _ci(g.centred_ci), _fmt(g.mean_rel_l2),
             _fmt(g.min_centred), _fmt(g.max_centred)] for g in list(categories) + ([early] if early else [])]
    html = report.table(["category", "tensors", "raw cosine", "centred", "95% CI (centred)", "rel. L2",
                         "min centred", "max centred"], rows,
                        caption=f"Weight similarity by category ({'sampled ' + format(comp.fraction, '.0%') + ' of rows' if comp.fraction else 'every row read'}; "
                                f"{comp.bytes_read:,} bytes read)")
    html += report.table(["layer", "tensors", "raw cosine", "centred", "95% CI (centred)"],
                         [[g.layer, g.tensors, _fmt(g.mean_cosine), _fmt(g.mean_centred), _ci(g.centred_ci)]
                          for g in comp.by_layer], caption="By layer")
    pairs = sorted(comp.pairs, key=lambda p: (p.similarity.centred_cosine if math.isfinite(p.similarity.centred_cosine)
                                              else 2.0))[:40]
    html += report.table(["tensor", "reference tensor", "raw cosine", "centred", "95% CI", "rel. L2"],
                         [[p.key, p.reference_key, _fmt(p.similarity.cosine), _fmt(p.similarity.centred_cosine),
                           _ci(p.centred_ci), _fmt(p.similarity.rel_l2)] for p in pairs],
                         caption=f"Tensor pairs, lowest centred similarity first (first 40 of {len(comp.pairs)})")
    if comp.skipped:
        html += report.table(["tensor", "not compared because"], [[s.key, s.reason] for s in comp.skipped[:40]],
                             caption=f"Not compared ({len(comp.skipped)})")
    return html


def _aligned_table(comp: WeightComparison, aligned: AlignedComparison | None, judged: _Judged) -> str:
    """Name-aligned against aligned figures per category, and the alignment's quality."""
    if aligned is None:
        return ""
    q = aligned.quality
    fitted = set(aligned.fitted)
    everything = {g.group: g for g in aligned.comparison.by_category}
    held = {g.group: g for g in summarise([p for p in aligned.comparison.pairs if p.key not in fitted],
                                          lambda p: p.category)}
    named = {g.group: g for g in comp.by_category}
    rows = [[cat, _fmt(named[cat].mean_centred) if cat in named else "—",
             _fmt(everything[cat].mean_centred) if cat in everything else "—",
             _fmt(held[cat].mean_centred) if cat in held else "—"]
            for cat in dict.fromkeys(list(named) + list(everything))]
    heads = ("—" if q.heads_matched_similarity is None
             else f"{q.heads_as_stored_similarity:.3f} → {q.heads_matched_similarity:.3f}")
    return report.table(
        ["alignment p", "significant", "residual dims: mean |corr| (same index, flipped)", "neurons: gate cos "
         "(order kept)", "heads: stored → matched", "folded norms"],
        [[_p_text(q.pvalue), f"{'yes' if judged.significant else 'no'} (α = {judged.alpha:.3g})",
          f"{q.hidden_matched_abs_corr:.3f} ({q.hidden_identity_share:.0%}, {q.hidden_negative_share:.0%})",
          f"{q.neuron_gate_cos:.3f} ({q.neuron_order_kept:.0%})", heads, len(aligned.folded)]],
        caption="The independence test's alignment (residual permutation/signs, folded gains, heads, neurons)") \
        + report.table(["category", "name-aligned centred", "aligned centred (all)",
                        "aligned centred (not fitted: o, down)"], rows,
                       caption="Centred similarity before and after the alignment (judged: "
                               + ("per category the higher of name-aligned and aligned, not fitted"
                                  if judged.significant else "name-aligned") + "; the fitted tensors' aligned figures "
                               "include the matching's own selection and are never judged)")


def _token_tables(comp: WeightComparison, embeddings: dict) -> str:
    """Token matrices: centred similarity against its rotation null; the design's embedding statistics."""
    html = ""
    token = [p for p in comp.pairs if p.rotation_null_sd is not None]
    if token:
        html += report.table(
            ["tensor", "centred", "rotation-null s.d.", "centred / s.d."],
            [[p.key, _fmt(p.similarity.centred_cosine), _fmt(p.rotation_null_sd),
              "—" if p.rotation_z is None else f"{p.rotation_z:.1f}"] for p in token],
            caption="Token matrices: the spread of the centred similarity that unrelated hidden bases give these two "
                    "matrices (random rotation of one side's hidden basis; recorded, not judged). Independent models "
                    "sharing a tokenizer and data share a token-frequency direction, so at small widths their "
                    "element-wise similarity scatters by about this much around 0.")
    if embeddings:
        html += report.table(
            ["model: tensor", "shape", "rows read", "mean", "variance", "row norm p5", "p50", "p95"],
            [[name, "×".join(map(str, st.shape)), f"{st.rows_read:,} of {st.rows_total:,}", f"{st.mean:.3g}",
              f"{st.variance:.3g}", f"{st.row_norm_quantiles['p5']:.3g}", f"{st.row_norm_quantiles['p50']:.3g}",
              f"{st.row_norm_quantiles['p95']:.3g}"] for name, st in embeddings.items()],
            caption="Embedding statistics (element mean and variance, row-norm quantiles"
                    + (f"; seeded sample of {comp.fraction:.0%} of rows)" if comp.fraction else "; every row)"))
    return html
