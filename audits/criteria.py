"""Judging: compare a measurement with a bound from thresholds.toml.

Each criterion returns a ``Judgement`` whose message states the observed value, the bound and where
the bound comes from, so a failing test reads like
``"target reuses 3 non-constant tensors of 'base' (> 0 allowed; thresholds.toml [reuse].independent_max_reused_tensors)"``.
The library measures; only this module (and the tests calling it) decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modellineage.errors import PlanError
from modellineage.plan import read_toml

# Every bound the audits use: (family, key) -> type. thresholds.toml must define exactly these,
# each as a table with `value` and `source`.
THRESHOLD_SPEC: dict[tuple[str, str], type] = {
    ("architecture", "parameter_claim_rel_tol"): float,
    ("reuse", "independent_max_reused_tensors"): int,
    ("independence", "alpha"): float,
    ("tokenizer", "reuse_min_overlap"): float,
    ("tokenizer", "extension_min_overlap"): float,
    ("tokenizer", "aligned_min_share"): float,
    ("tokenizer", "contained_min_share"): float,
    ("tokenizer", "contained_max_size_ratio"): float,
    ("tokenizer", "contained_min_tokens"): int,
    ("tokenizer", "independent_max_merge_prefix_share"): float,
    ("tokenizer", "merge_order_min_share"): float,
    ("tokenizer", "merge_order_min_kendall"): float,
    ("tokenizer", "merge_order_min_shared"): int,
    ("weights", "independent_max_centred"): float,
    ("weights", "independent_max_embedding_centred"): float,
    ("weights", "early_layer_share"): float,
    ("weights", "derived_min_centred"): float,
    ("weights", "finetune_min_centred"): float,
    ("weights", "finetune_min_early_layers_centred"): float,
    ("weights", "trap_min_raw_cosine"): float,
    ("weights", "trap_max_centred"): float,
    ("weights", "signature_max_hamming"): float,
    ("weights", "signature_min_jaccard"): float,
    ("weights", "merge_max_independent_share"): float,
    ("compute", "mfu_min"): float,
    ("compute", "mfu_max"): float,
    ("compute", "typical_mfu"): float,
    ("compute", "compute_optimal_tokens_per_parameter"): float,
    ("training", "init_max_std_deviation"): float,
    ("training", "init_max_gain_deviation"): float,
    ("training", "min_neighbour_centred"): float,
    ("training", "max_rise_to_first"): float,
    ("training", "max_jump_toward_reference"): float,
    ("training", "scratch_max_first_loss_below_lnv"): float,
    ("training", "scratch_max_first_loss_above_lnv"): float,
    ("training", "tokens_per_step_rel_tol"): float,
    ("training", "tokens_claim_rel_tol"): float,
    ("training", "lr_max_deviation"): float,
    ("behaviour", "independent_min_jsd"): float,
    ("behaviour", "independent_max_continuation_agreement"): float,
    ("behaviour", "cutoff_alpha"): float,
}


@dataclass(frozen=True)
class Bound:
    """One threshold with the citation that justifies it."""

    family: str
    key: str
    value: Any
    source: str

    @property
    def where(self) -> str:
        return f"thresholds.toml [{self.family}].{self.key}"

    def as_dict(self) -> dict:
        return {"family": self.family, "key": self.key, "value": self.value, "source": self.source}


@dataclass(frozen=True)
class Thresholds:
    path: Path
    bounds: dict

    def __getitem__(self, family_key: tuple[str, str]) -> Bound:
        return self.bounds[family_key]

    def as_dict(self) -> dict:
        return {"file": str(self.path),
                "bounds": [self.bounds[k].as_dict() for k in sorted(self.bounds)]}


def load_thresholds(path: Path) -> Thresholds:
    """Read thresholds.toml; unknown, missing or mistyped keys and missing sources are errors."""
    path = Path(path)
    data = read_toml(path, "thresholds file")
    found = {(fam, key) for fam, table in data.items() if isinstance(table, dict) for key in table}
    unknown = sorted(found - set(THRESHOLD_SPEC)) + sorted(f for f, t in data.items() if not isinstance(t, dict))
    if unknown:
        raise PlanError(f"{path}: unknown threshold(s) {unknown}; known: {sorted(THRESHOLD_SPEC)}")
    missing = sorted(set(THRESHOLD_SPEC) - found)
    if missing:
        raise PlanError(f"{path}: missing threshold(s) {[f'[{f}].{k}' for f, k in missing]}")
    bounds = {}
    for (family, key), kind in THRESHOLD_SPEC.items():
        entry = data[family][key]
        where = f"{path}: [{family}].{key}"
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise PlanError(f"{where} must be a table with exactly 'value' and 'source'")
        value, source = entry["value"], entry["source"]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PlanError(f"{where}.value must be {kind.__name__}, found {value!r}")
        if not isinstance(source, str) or not source.strip():
            raise PlanError(f"{where}.source must say where the value comes from")
        bounds[(family, key)] = Bound(family, key, value, source.strip())
    return Thresholds(path=path, bounds=bounds)


@dataclass(frozen=True)
class Judgement:
    """The outcome of comparing one measured value with one bound."""

    claim: str
    measured: Any
    bound: str
    source: str
    failed: bool
    message: str

    def as_dict(self) -> dict:
        return {"claim": self.claim, "measured": self.measured, "bound": self.bound,
                "source": self.source, "failed": self.failed, "message": self.message}


def no_exact_reuse(reuse, bound: Bound, reference: str) -> Judgement:
    """Under `independent`: at most `bound` non-constant target tensors may have exact twins."""
    count = reuse.reused_count
    failed = count > bound.value
    names = ", ".join(r.target_name for r in reuse.reused[:8]) + (" ..." if count > 8 else "")
    if failed:
        message = (f"target reuses {count} of {reuse.counted_tensors} non-constant tensors of {reference!r} "
                   f"byte for byte (> {bound.value} allowed; {bound.where}): {names}")
    else:
        message = (f"target reuses {count} of {reuse.counted_tensors} non-constant tensors of {reference!r} "
                   f"(≤ {bound.value} allowed; {bound.where})")
    return Judgement("no exact tensor reuse", count, f"≤ {bound.value}", bound.where, failed, message)


def config_matches_weights(model: str, agreements) -> Judgement:
    """Every config field that can be read off the tensor shapes agrees with them."""
    checked = [a for a in agreements if a.agrees is not None]
    bad = [a for a in checked if not a.agrees]
    detail = "; ".join(f"{a.field}: " + (a.note if a.weights_value is None and a.note
                                         else f"config {a.config_value} vs weights {a.weights_value}") for a in bad)
    message = (f"{model}: config disagrees with the weights in {len(bad)} of {len(checked)} fields ({detail})"
               if bad else f"{model}: config agrees with the weights in all {len(checked)} checkable fields")
    return Judgement("config agrees with weights", f"{len(checked) - len(bad)}/{len(checked)}",
                     "all agree", "exact (shapes are facts)", bool(bad), message)


def parameter_claim(model: str, claimed: float, counted: int, bound: Bound) -> Judgement:
    """A claimed parameter count must match the count from the safetensors headers within a tolerance."""
    rel = abs(counted - claimed) / claimed if claimed else float("inf")
    failed = rel > bound.value
    message = (f"{model}: claimed {claimed:,.0f} parameters, headers count {counted:,} "
               f"(off by {rel:.2%}; {'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where})")
    return Judgement("claimed parameter count", rel, f"≤ {bound.value}", bound.where, failed, message)


def weights_finite(model: str, files: str, nonfinite: dict, total: int, scope: str = "") -> Judgement:
    """No tensor may hold NaN or Inf: they make every similarity statistic undefined.

    ``scope``: what was read of each tensor when not all of it (e.g. one seeded row under a read budget)."""
    listing = ", ".join(f"{name} ({count})" for name, count in list(nonfinite.items())[:10])
    message = (f"{model} ({files}): {len(nonfinite)} of {total} tensors hold NaN/Inf values{scope}: {listing}"
               if nonfinite else f"{model}: all {total} tensors are finite{scope}")
    return Judgement("weights are finite", len(nonfinite), "0 tensors with NaN/Inf",
                     "exact (a checkpoint defect)", bool(nonfinite), message)


def active_parameter_claim(model: str, claimed: float, counted, bound: Bound) -> Judgement:
    """A claimed per-token active parameter count must match the count from headers + config."""
    rel = abs(counted.active - claimed) / claimed if claimed else float("inf")
    failed = rel > bound.value
    how = (f"{counted.experts_per_token} of {counted.num_experts} routed experts in {counted.moe_layers} MoE layers"
           if counted.is_moe else "dense: every parameter is active")
    message = (f"{model}: claimed {claimed:,.0f} active parameters, headers + config count {counted.active:,} "
               f"({how}; off by {rel:.2%}; {'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where})")
    return Judgement("claimed active parameter count", rel, f"≤ {bound.value}", bound.where, failed, message)


def plausible_utilisation(model: str, util, low: Bound, high: Bound) -> Judgement:
    """Claimed accelerator hours must imply a utilisation between two published-evidence bounds."""
    mfu = util.mfu
    too_high, too_low = mfu > high.value, mfu < low.value
    acc = util.accelerator
    hours = f"{util.gpu_hours:,.0f}" if util.gpu_hours >= 100 else f"{util.gpu_hours:.3g}"
    basis = (f"{util.flops:.3g}".replace("e+", "e") + f" FLOPs (6·N_active·D) in {hours} {acc.name} hours "
             f"= {util.achieved_flops_per_gpu / 1e12:,.3g} TFLOP/s per accelerator of {acc.peak_flops / 1e12:,.1f} peak")
    if too_high:
        message = (f"{model}: claimed compute implies {mfu:.1%} utilisation, > {high.value:.0%} allowed "
                   f"({high.where}): {basis}; the claimed hours are too few for the claimed tokens")
    elif too_low:
        message = (f"{model}: claimed compute implies {mfu:.1%} utilisation, < {low.value:.0%} allowed "
                   f"({low.where}): {basis}; the claimed hours are far more than the claimed tokens need")
    else:
        message = (f"{model}: claimed compute implies {mfu:.1%} utilisation, within {low.value:.0%}-{high.value:.0%} "
                   f"({low.where}, {high.where}): {basis}")
    return Judgement("claimed compute is plausible", mfu, f"{low.value} ≤ MFU ≤ {high.value}",
                     f"{low.where}, {high.where}", too_high or too_low, message)


# ----------------------------------------------------------------------------------------- weights
def _ci_text(summary) -> str:
    ci = summary.centred_ci
    return "" if ci.exact else f" [95% CI {ci.low:.3f}-{ci.high:.3f}]"


def _straddles(summary, bound: float) -> bool:
    ci = summary.centred_ci
    return not ci.exact and ci.low < bound <= ci.high


def early_layer_indices(layers: list[int], share: Bound) -> list[int]:
    """The first ceil(share x layers) compared layer indices (at least one)."""
    import math

    layers = sorted(layers)
    return layers[: max(1, math.ceil(share.value * len(layers)))] if layers else []


def weights_independent(reference: str, categories, early, bound: Bound, embedding_bound: Bound,
                        alignment: str = "") -> Judgement:
    """Under `independent`: every category's mean centred similarity, and the early layers' (``early``: one
    summary over the tensors of the first layers, or None), stay below the from-scratch bounds (embeddings
    have their own, lower bound)."""
    checks = []
    for g in list(categories) + ([early] if early is not None else []):
        b = embedding_bound if g.group == "embedding" else bound
        if g.mean_centred == g.mean_centred:  # NaN: no defined centred figure in the group
            checks.append((g.group, g, b))
    over = [(name, g, b) for name, g, b in checks if g.mean_centred >= b.value]
    worst = max(checks, key=lambda c: c[1].mean_centred - c[2].value) if checks else None
    measured = worst[1].mean_centred if worst else None
    where = ", ".join(sorted({b.where for _, _, b in checks})) or bound.where
    how = f" ({alignment})" if alignment else ""
    if over:
        detail = "; ".join(f"centred similarity of {name} = {g.mean_centred:.3f}{_ci_text(g)} ≥ {b.value} "
                           f"({b.where})" for name, g, b in over)
        message = f"target looks derived from {reference!r}{how}: {detail}"
    else:
        detail = ", ".join(f"{name} {g.mean_centred:.3f}{_ci_text(g)} < {b.value}" for name, g, b in checks)
        message = f"every category of the target stays below the from-scratch bounds against {reference!r}{how}: " \
                  f"{detail} ({where})"
    unsure = [name for name, g, b in checks if _straddles(g, b.value)]
    if unsure:
        message += f"; the sampling interval of {', '.join(unsure)} straddles its bound: re-run without --sample"
    return Judgement("weights not derived (centred similarity below the from-scratch bounds)", measured,
                     f"< {bound.value} (embedding < {embedding_bound.value})", where, bool(over), message)


def weights_derived(reference: str, categories, bound: Bound, alignment: str = "") -> Judgement:
    """Under `derived`: at least one category's mean centred similarity reaches the derivation bound."""
    defined = [g for g in categories if g.mean_centred == g.mean_centred]
    best = max(defined, key=lambda g: g.mean_centred) if defined else None
    shown = [g for g in defined if g.mean_centred >= bound.value]
    how = f" ({alignment})" if alignment else ""
    if shown:
        detail = ", ".join(f"{g.group} {g.mean_centred:.3f}{_ci_text(g)}" for g in shown)
        message = f"{len(shown)} of {len(defined)} categories show derivation from {reference!r}{how}: {detail} " \
                  f"≥ {bound.value} ({bound.where})"
    else:
        detail = ", ".join(f"{g.group} {g.mean_centred:.3f}{_ci_text(g)}" for g in defined)
        message = f"no category shows derivation from {reference!r}{how}: every mean centred similarity is below " \
                  f"{bound.value} ({bound.where}): {detail}"
    return Judgement("weights derived (a category reaches the derivation bound)",
                     best.mean_centred if best else None, f"≥ {bound.value} in some category", bound.where,
                     not shown, message)


def expert_slices_independent(reference: str, slices, bound: Bound) -> Judgement:
    """Under `independent`: routed experts narrower than the reference's dense MLP, each matched to a slice of its
    neurons by gate rows, keep a mean centred down-projection similarity below the from-scratch bound (fine-grained
    upcycling check; the gate rows the matching was fitted on are not judged)."""
    value = float(sum(s.down_centred for s in slices) / len(slices))
    failed = value >= bound.value
    top = sorted(slices, key=lambda s: -s.down_centred)[:6]
    named = ", ".join(f"layer {s.layer} expert {s.expert} {s.down_centred:.3f}" for s in top)
    what = (f"{len(slices)} routed experts of {slices[0].neurons} neurons matched to slices of {reference!r}'s dense "
            f"MLP of {slices[0].reference_neurons} (gate rows; down projections compared)")
    if failed:
        message = (f"routed experts look cut from {reference!r}'s dense MLP (fine-grained upcycling): mean centred "
                   f"similarity of the matched down projections = {value:.3f} ≥ {bound.value} ({bound.where}); "
                   f"{what}; highest: {named}")
    else:
        message = f"{what}: mean centred similarity {value:.3f} < {bound.value} ({bound.where}); highest: {named}"
    return Judgement("routed experts not cut from the reference's dense MLP", round(value, 6), f"< {bound.value}",
                     bound.where, failed, message)


def experts_independent(reference: str, summary, experts, bound: Bound) -> Judgement:
    """Under `independent`: the routed experts' mean centred similarity stays below the from-scratch bound.

    ``summary`` is the routed-expert category (each expert against its assigned reference expert, or
    against the reference's dense MLP where that layer is dense: sparse upcycling); ``experts`` the
    per-expert summaries (``WeightComparison.by_expert``), whose highest are named in the message.
    """
    value = summary.mean_centred
    defined = value == value
    failed = defined and value >= bound.value
    dense = sum(g.group.endswith(".mlp") for g in experts)
    kinds = ", ".join(x for x in (f"{dense} against {reference}'s dense MLP (upcycling check)" if dense else "",
                                  f"{len(experts) - dense} against its experts after optimal assignment"
                                  if len(experts) > dense else "") if x)
    top = sorted((g for g in experts if g.mean_centred == g.mean_centred), key=lambda g: -g.mean_centred)[:6]
    named = ", ".join(f"{g.group} {g.mean_centred:.3f}" for g in top) + (" ..." if len(experts) > len(top) else "")
    if not defined:
        message = f"no routed expert has a defined centred similarity against {reference!r} ({kinds})"
    elif failed:
        message = (f"routed experts look derived from {reference!r}: centred similarity of routed_expert = "
                   f"{value:.3f}{_ci_text(summary)} ≥ {bound.value} ({bound.where}) over {len(experts)} experts "
                   f"({kinds}); highest: {named}")
    else:
        message = (f"routed experts stay below the from-scratch bound against {reference!r}: centred similarity of "
                   f"routed_expert = {value:.3f}{_ci_text(summary)} < {bound.value} ({bound.where}) over "
                   f"{len(experts)} experts ({kinds}); highest: {named}")
    if defined and _straddles(summary, bound.value):
        message += "; its sampling interval straddles the bound: re-run without --sample"
    return Judgement("routed experts not derived (centred similarity below the from-scratch bound)",
                     value if defined else None, f"< {bound.value}", bound.where, failed, message)


def no_signature_matches(reference: str, matches, total: int, max_hamming: Bound, min_jaccard: Bound) -> Judgement:
    """Under `independent`: no target tensor's signature matches any reference tensor within the fine-tune band."""
    where = f"{max_hamming.where}, {min_jaccard.where}"
    names = ", ".join(f"{m.key} ~ {m.best_key} (Hamming {m.best_hamming:.1%}, Jaccard {m.best_jaccard:.2f})"
                      for m in matches[:8]) + (" ..." if len(matches) > 8 else "")
    if matches:
        message = (f"{len(matches)} of {total} target tensors match a tensor of {reference!r} within the fine-tune "
                   f"band (Hamming ≤ {max_hamming.value:.0%} and Jaccard ≥ {min_jaccard.value}; {where}): {names}")
    else:
        message = (f"none of {total} target tensors matches a tensor of {reference!r} within the fine-tune band "
                   f"(Hamming ≤ {max_hamming.value:.0%} and Jaccard ≥ {min_jaccard.value}; {where})")
    return Judgement("no tensor signature matches", len(matches), "0 matching tensors", where, bool(matches), message)


def merge_share_independent(reference: str, share: float, layer, layer_share: float, explained: float,
                            bound: Bound) -> Judgement:
    """Under `independent`: the reference explains less than a material share of the target's matrices, in every
    layer (a merge decomposition over all references: modellineage.weights.merges)."""
    where = bound.where
    if layer_share >= bound.value:
        message = (f"{reference!r} explains {layer_share:.1%} of the target's centred weight variance in layer {layer} "
                   f"(mean over layers {share:.1%}; the candidates together {explained:.1%}) ≥ {bound.value:.1%} "
                   f"({where}): the target looks like a merge with {reference!r}")
    else:
        message = (f"{reference!r} explains at most {layer_share:.2%} of the target's centred weight variance in any "
                   f"layer (layer {layer}; mean {share:.2%}) < {bound.value:.1%} ({where})")
    return Judgement("not merged from the reference (share of the target's weights it explains)",
                     round(layer_share, 6), f"< {bound.value}", where, layer_share >= bound.value, message)


# ----------------------------------------------------------------------------------------- independence
def independence_alpha(bound: Bound, references: int) -> float:
    """The family-wise level split over the plan's references (Bonferroni)."""
    return bound.value / max(1, references)


def _p_text(pv) -> str:
    return _fmt_p(pv.p, pv.log10_p)


def _fmt_p(p: float, log10_p: float) -> str:
    """A p-value as text; below float range as a power of ten."""
    return f"{p:.3g}" if p > 0 else f"10^{log10_p:.1f}"


def independence_pvalue(test, expectation: str, bound: Bound, references: int) -> Judgement:
    """`independent`: fail when p < α (the data reject independence); `derived`: fail when p ≥ α.

    α is `bound.value` Bonferroni-corrected over the plan's references. When even a perfect statistic
    could not reach α (``min_p ≥ α``), a `derived` claim cannot be supported and fails with that reason.
    """
    alpha = independence_alpha(bound, references)
    pv = test.combined
    where = f"{bound.where} = {bound.value:g} / {references} reference(s)"
    layers = ", ".join(f"{r.layer}: {_p_text(r.pvalue)}" for r in test.layers)
    if expectation == "derived":
        failed = not pv.p < alpha
        verdict = "reject" if not failed else "do not reject"
        extra = (f"; the test cannot reach α here (smallest attainable p {_fmt_p(pv.min_p, pv.log10_min_p)})"
                 if pv.min_p >= alpha else "")
        message = (f"independence test p = {_p_text(pv)} {'<' if not failed else '≥'} α = {alpha:.3g} ({where}): "
                   f"the data {verdict} independence from {test.reference!r}{extra}; per-layer p: {layers}")
    else:
        failed = pv.p < alpha
        message = (f"independence test p = {_p_text(pv)} {'<' if failed else '≥'} α = {alpha:.3g} ({where}): "
                   f"{'the weights show dependence on' if failed else 'no evidence of dependence on'} "
                   f"{test.reference!r}; per-layer p: {layers}")
    bound_text = f"p < {alpha:.3g}" if expectation == "derived" else f"p ≥ {alpha:.3g}"
    return Judgement("independence p-value", pv.p, bound_text, bound.where, failed, message)


def not_a_catalog_tokenizer(model: str, matches, extension: Bound, contained: Bound, max_ratio: Bound,
                            min_tokens: Bound) -> Judgement:
    """Under [catalog] expect = independent: no catalog tokenizer may be identical (SHA-256), overlap the
    target in the extension/reuse band (estimated Jaccard ≥ `extension`), or share `contained` of the
    smaller vocabulary with the larger one: a catalog tokenizer inside the target is an extension
    (target ⊇ catalog + K, Jaccard as low as |catalog| / |target|), a target inside one a pruned copy.

    Containment is judged on the smaller side because the larger side's share only says how big the
    smaller one is, and only where it is evidence on its own (audits.tokenizer_criteria): the larger side
    at most `max_ratio` times the smaller, the smaller at least `min_tokens` tokens. Beyond that ratio
    independent vocabularies contain most of a smaller one too (a 248k vocabulary holds 0.955 of Mistral
    v1's 32k tokens); the estimate (Laplace-smoothed, modellineage.tokenizer.fingerprint) does not call a handful of
    sampled tokens "contained".
    """
    bound_text = (f"Jaccard < {extension.value:g} and contained share < {contained.value:g} (size ratio ≤ "
                  f"{max_ratio.value:g}, ≥ {min_tokens.value:,} tokens)")
    source = f"{extension.where}; {contained.where}; {max_ratio.where}; {min_tokens.where}"
    name = "tokenizer independent of the catalog"
    if not matches:
        return Judgement(name, None, bound_text, source, False,
                         f"{model}: the catalog holds no tokenizer fingerprints to compare with")

    def _is_contained(m) -> bool:
        return (m.overlap.contained_share >= contained.value and m.overlap.size_ratio <= max_ratio.value
                and min(m.overlap.target_distinct, m.overlap.other_distinct) >= min_tokens.value)

    hits = [m for m in matches if m.identical or m.overlap.jaccard >= extension.value or _is_contained(m)]
    closest = max(matches, key=lambda m: (m.identical, m.overlap.contained_share, m.overlap.jaccard))

    def _one(m) -> str:
        o = m.overlap
        used = f" (used by {', '.join(m.models[:4])}{' ...' if len(m.models) > 4 else ''})" if m.models else ""
        if m.identical:
            return f"{m.tokenizer_id}{used}: identical vocabulary (SHA-256 match)"
        if o.smaller == "other":
            share = (f"{o.contained_share:.1%} ± {o.contained_stderr:.1%} of {m.tokenizer_id}'s {o.other_distinct:,} "
                     f"tokens are in the target's {o.target_distinct:,}")
            kind = f"an extension: target ⊇ {m.tokenizer_id} + K, K ≈ {o.target_distinct - o.other_distinct:,}"
        else:
            share = (f"{o.contained_share:.1%} ± {o.contained_stderr:.1%} of the target's {o.target_distinct:,} "
                     f"tokens are in {m.tokenizer_id}'s {o.other_distinct:,}")
            kind = f"a subset (pruned copy) of {m.tokenizer_id}"
        text = f"{m.tokenizer_id}{used}: estimated Jaccard {o.jaccard:.1%} ± {o.stderr:.1%}; {share}"
        if _is_contained(m):
            text += f" (≥ {contained.value:.0%} at size ratio {o.size_ratio:.2f}, {kind})"
        elif o.contained_share >= contained.value:
            text += (f" (≥ {contained.value:.0%}, but at size ratio {o.size_ratio:.1f} or with fewer than "
                     f"{min_tokens.value:,} tokens containment is no evidence on its own: independent vocabularies "
                     "that much larger contain most of a smaller one too)")
        return text

    bands = (f"reuse/extension band Jaccard ≥ {extension.value:.0%} ({extension.where}); contained from "
             f"{contained.value:.0%} of the smaller vocabulary ({contained.where}) at a size ratio up to "
             f"{max_ratio.value:g} ({max_ratio.where}) and from {min_tokens.value:,} tokens ({min_tokens.where})")
    if hits:
        message = f"{model}: tokenizer matches the catalog — " + "; ".join(_one(m) for m in hits) + f" ({bands})"
    else:
        message = (f"{model}: no catalog tokenizer is identical, overlapping or contained; closest "
                   f"{_one(closest)} ({bands})")
    measured = 1.0 if closest.identical else round(closest.overlap.contained_share, 6)
    return Judgement(name, measured, bound_text, source, bool(hits), message)


# ----------------------------------------------------------------------------------------- claim coverage
#: Families whose audits compare the target with a reference (catalog and compute audit the target alone).
REFERENCE_FAMILIES = ("architecture", "reuse", "tokenizer", "weights", "independence", "training")


@dataclass(frozen=True)
class ClaimCoverage:
    """How many audits of this run measured and judged one claim (a reference's relation, or [catalog]).

    ``refinement`` names the family of a per-family refinement (``tokenizer = "derived"``); the default
    claim of a reference covers every other family. Judged: the audit passed or failed with a judgement
    (not skipped, not merely recorded).
    """

    subject: str  # reference name, or "catalog"
    relation: str
    refinement: str | None
    families: tuple[str, ...]
    judged_by: tuple[str, ...]  # node ids
    not_judged: tuple[tuple[str, str, str], ...]  # (node id, outcome, reason)

    @property
    def label(self) -> str:
        if self.subject == "catalog":
            return f"claimed {self.relation} of every catalog model ([catalog])"
        scope = f" ({self.refinement} evidence)" if self.refinement else ""
        return f"claimed {self.relation} from {self.subject}{scope}"

    @property
    def tested(self) -> int:
        return len(self.judged_by)

    def as_dict(self) -> dict:
        return {"subject": self.subject, "relation": self.relation, "refinement": self.refinement,
                "families": list(self.families), "tested_by": self.tested, "judged_by": list(self.judged_by),
                "not_judged": [{"audit": n, "outcome": o, "reason": r} for n, o, r in self.not_judged]}


def _covered(subject: str, relation: str, refinement: str | None, families, records) -> ClaimCoverage:
    judged, not_judged = [], []
    for r in sorted(records, key=lambda r: r["nodeid"]):
        if r["family"] not in families:
            continue
        if r["outcome"] in ("passed", "failed") and r.get("judgement") is not None:
            judged.append(r["nodeid"])
        else:
            not_judged.append((r["nodeid"], r["outcome"], r.get("message") or "recorded, not judged"))
    return ClaimCoverage(subject, relation, refinement, tuple(families), tuple(judged), tuple(not_judged))


def claim_coverage(reference, records) -> list[ClaimCoverage]:
    """The claims a plan reference makes (its default relation, then each refinement) and which audits of
    this run judged each. ``records`` are evidence records (dicts with nodeid, family, subject, outcome,
    judgement, message)."""
    # Audits parametrized by this reference (they carry its expectation), not audits of the model on its own.
    mine = [r for r in records if r["subject"] == reference.name and r.get("expectation") is not None]
    refined = {f: rel for f, rel in reference.family_expect.items() if f != "expect"}
    found = []
    default = tuple(f for f in REFERENCE_FAMILIES if f not in refined)
    if default:
        found.append(_covered(reference.name, reference.expect, None, default, mine))
    for family in sorted(refined):
        found.append(_covered(reference.name, refined[family], family, (family,), mine))
    return found


def catalog_coverage(catalog_plan, target: str, records) -> ClaimCoverage | None:
    """The [catalog] claim (``expect = "independent"``) and the catalog audits that judged it, or None."""
    if catalog_plan.get("expect") is None:
        return None
    mine = [r for r in records if r["subject"] == target]
    return _covered("catalog", catalog_plan["expect"], None, ("catalog",), mine)


def claims_tested(coverage, allow_untested: bool) -> Judgement:
    """Every claim was measured and judged by at least one audit, unless untested claims are accepted."""
    untested = [c for c in coverage if c.tested == 0]
    counts = "; ".join(f"{c.label}: tested by {c.tested} audit{'s' if c.tested != 1 else ''}" for c in coverage)
    source = "[options].allow_untested / --allow-untested (default: an untested claim fails)"
    if not untested:
        return Judgement("every claim was tested", min(c.tested for c in coverage), "≥ 1 audit", source, False,
                         counts)

    def why(c: ClaimCoverage) -> str:
        reasons = "; ".join(f"{n.split('::')[-1]} {'informational, not judged' if o == 'passed' else o}: "
                            f"{r if len(r) <= 200 else r[:200] + '…'}" for n, o, r in c.not_judged[:6])
        return (f"{c.label}: tested by 0 audits — no audit of {', '.join(c.families)} could measure and judge it"
                + (f" ({reasons}{' ...' if len(c.not_judged) > 6 else ''})" if reasons else " (none ran)"))

    detail = " | ".join(why(c) for c in untested)
    if allow_untested:
        return Judgement("every claim was tested", 0, "≥ 1 audit", source, False,
                         f"accepted as untested (allow_untested): {detail}")
    return Judgement("every claim was tested", 0, "≥ 1 audit", source, True,
                     f"{detail}. Nothing examined this claim, so it cannot pass; to accept an untested claim set "
                     f"[options] allow_untested = true in the plan or pass --allow-untested")
