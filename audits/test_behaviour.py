"""Behavioural evidence: does the target *behave* like a reference?

This family answers a different question from the weight families. Weights (reuse, weights, independence)
ask whether the target's parameters descend from the reference's; behaviour asks whether the target says
what the reference says — which a fine-tune may not (further training changes behaviour) and a distilled
model does without sharing a single weight. So behaviour is judged only under ``independent`` (a target
claimed independent must not predict like the reference), recorded under ``derived``, and never enters the
combined lineage verdict (modellineage/reporting/verdicts.py ranks weight-lineage evidence).

The audits run only when asked (``[behaviour] run = true`` in the plan, or ``--behaviour``): they run every
model on the probe sets of ``fixtures/probes/behaviour`` — locally (transformers on CPU, small models) or
through the OpenAI-compatible endpoint the plan names for that model. An endpoint that times out, fails
or answers malformed JSON skips the behaviour audits of that model with the reason; every other audit runs.
"""

from __future__ import annotations

import os

import pytest

from modellineage.behaviour import HttpBackend, LocalBackend, compare, load_encoder, load_probes, profile
from modellineage.errors import LineageError, UnsupportedFormat
from modellineage.reporting import report

from .behaviour_criteria import continuations_independent, cutoff_matches_claim, next_tokens_independent
from .plugin import once

pytestmark = pytest.mark.behaviour

#: Seed of the permutation nulls and bootstraps (recorded in evidence.json `seeds`).
SEED = 0
QUESTION = ("Behaviour answers whether the target behaves like {ref} (derived or distilled from it), not whether "
            "its weights descend from {ref}'s")


def _cache(audit_session) -> dict:
    return audit_session.__dict__.setdefault("_behaviour_cache", {})


@pytest.fixture(scope="session")
def behaviour_plan(audit_session):
    """The [behaviour] table; skips every behaviour audit unless the run asked for them."""
    table = dict(audit_session.plan.behaviour)
    if not table.get("run"):
        pytest.skip("behaviour audits not requested: add `[behaviour] run = true` to the plan or pass --behaviour "
                    "(they run every model on the probe sets)")
    audit_session.seeds["behaviour.permutation"] = SEED
    return table


def _backend(audit_session, name: str):
    serving = audit_session.plan.serving.get(name)
    if serving is None:
        return LocalBackend(audit_session.model(name))
    key = None
    if serving.api_key_env:
        key = os.environ.get(serving.api_key_env)
        if not key:
            raise UnsupportedFormat(f"{name}: environment variable {serving.api_key_env} (the plan's api_key_env) "
                                    "is not set")
    return HttpBackend(name, serving.endpoint, serving.served_model, api_key=key, timeout=serving.timeout,
                       chat=serving.chat, cache_dir=audit_session.evidence_path.parent / "behaviour-cache")


def _profile(audit_session, plan: dict, name: str):
    cache = _cache(audit_session)

    def compute():
        probes = once(cache, "probes", lambda: load_probes(plan["probes"]) if "probes" in plan else load_probes())
        return profile(_backend(audit_session, name), probes)

    return once(cache, ("profile", name), compute)


def _encoder(audit_session, plan: dict):
    """(encoder or None, reason), once per session; an unusable [behaviour].embedder is a reason, not a crash."""
    def load():
        try:
            return load_encoder(plan.get("embedder"))
        except LineageError as exc:
            return None, f"not measured: the embedder cannot be used: {exc}"

    return once(_cache(audit_session), "embedder", load)


def _comparison(audit_session, plan: dict, target: str, reference: str):
    cache = _cache(audit_session)

    def compute():
        a, b = _profile(audit_session, plan, target), _profile(audit_session, plan, reference)
        encoder, reason = _encoder(audit_session, plan)
        return compare(a, b, seed=SEED, embedder=encoder, embedder_reason=reason)

    return once(cache, ("compare", target, reference), compute)


def _cutoff(audit_session, plan: dict, name: str):
    alpha = audit_session.thresholds["behaviour", "cutoff_alpha"].value
    return once(_cache(audit_session), ("cutoff", name),
                lambda: _profile(audit_session, plan, name).cutoff(alpha=alpha, seed=SEED))


def _cutoff_plot(estimates: dict) -> str | None:
    plt = report.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(9, 3))
    for name, est in estimates.items():
        share = [a / n if n else 0.0 for a, n in zip(est.answered, est.asked)]
        ax.plot(range(len(share)), share, marker=".", label=name)
    months = next(iter(estimates.values())).months
    ticks = [i for i, m in enumerate(months) if m.endswith("-01")]
    ax.set_xticks(ticks, [months[i][:4] for i in ticks])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("dated events answered")
    ax.set_title("knowledge-cutoff curves (share of each month's events answered, English + Korean)")
    ax.legend(fontsize=7)
    return report.png_base64(fig)


def test_knowledge_cutoff(target, audit_session, behaviour_plan, claims, evidence):
    """Per model: which months' events it knows; the target's claimed cutoff must lie in the estimate's interval."""
    mine = _cutoff(audit_session, behaviour_plan, target.name)  # the target's failure skips (or fails) this audit
    estimates, rows = {target.name: mine}, []
    for name in audit_session.subjects[1:]:  # a reference that cannot be asked is listed with the reason
        try:
            estimates[name] = _cutoff(audit_session, behaviour_plan, name)
        except LineageError as exc:
            rows.append([name, "—", "—", "—", f"cannot measure: {exc}"])
    for name, est in estimates.items():
        evidence.measured(f"cutoff[{name}]", est)
    rows = [[name, f"{sum(e.answered)}/{sum(e.asked)}", e.month or "—",
             f"{e.interval[0]}..{e.interval[1]}" if e.interval else "—", e.reason] for name, e in estimates.items()] + rows
    evidence.html(report.table(["model", "events answered", "cutoff", "95% interval", "estimate"], rows,
                               caption="Knowledge cutoff from dated-event probes (one event per month, 2020-2024)"))
    png = _cutoff_plot(estimates)
    if png:
        evidence.png(png, "knowledge cutoff curves")
    evidence.says(f"Knowledge cutoff of {target.name}: {mine.reason}.")
    if "knowledge_cutoff" not in claims:
        pytest.skip(f"recorded, not judged: no [claims].knowledge_cutoff ({target.name}: {mine.reason})")
    if not mine.located:
        pytest.skip(f"cannot measure the claimed knowledge cutoff {claims['knowledge_cutoff']}: {mine.reason}")
    judgement = evidence.judged(cutoff_matches_claim(target.name, claims["knowledge_cutoff"], mine))
    assert not judgement.failed, judgement.message


def _record_bound(evidence, bound, side: str) -> None:
    """The bound independent models keep, recorded even when not judged: the report's verdict card says on which
    side of it the figure lies (modellineage/reporting/headline.py, behaviour_summary)."""
    evidence.measured("independent_bound", {"value": bound.value, "side": side, "where": bound.where})


def _record_question(evidence, reference) -> None:
    evidence.says(QUESTION.format(ref=reference.name) + ".")


def test_next_token_divergence(target, reference, audit_session, behaviour_plan, thresholds, evidence):
    """Next-token distributions over shared tokens: a target claimed independent must not predict like the reference."""
    comp = _comparison(audit_session, behaviour_plan, target.name, reference.name)
    evidence.measured("backends", {"target": _profile(audit_session, behaviour_plan, target.name).backend,
                                   "reference": _profile(audit_session, behaviour_plan, reference.name).backend})
    if comp.next_token is None:
        pytest.skip(f"cannot measure next-token divergence: {comp.next_token_reason}")
    nt = evidence.measured("next_token", comp.next_token)
    evidence.html(report.table(["quantity", "value"], [
        ["prompts", nt.prompts], ["mean JSD (bits)", f"{nt.mean_jsd:.4f}"], ["median JSD", f"{nt.median_jsd:.4f}"],
        ["largest JSD", f"{nt.max_jsd:.4f}"], ["same top-1 token", f"{nt.top1_agreement:.1%}"],
        ["tokens compared", nt.shared_tokens],
        ["probability mass kept (target / reference)", f"{nt.target_shared_mass:.4f} / {nt.reference_shared_mass:.4f}"]],
        caption=f"{target.name} vs {reference.name}: next-token distributions"))
    _record_bound(evidence, thresholds["behaviour", "independent_min_jsd"], "min")
    expectation = reference.expectation("behaviour")
    if expectation != "independent":
        _record_question(evidence, reference)
        pytest.skip(f"recorded, not judged under '{expectation}': further training may change behaviour "
                    f"(mean JSD {nt.mean_jsd:.4f})")
    judgement = evidence.judged(next_tokens_independent(reference.name, nt,
                                                        thresholds["behaviour", "independent_min_jsd"]))
    evidence.says(QUESTION.format(ref=reference.name) + ": " + judgement.message + ".")
    assert not judgement.failed, judgement.message


def test_continuation_agreement(target, reference, audit_session, behaviour_plan, thresholds, evidence):
    """Greedy continuations of neutral and multilingual prompts, compared token by token (text when tokenizers differ)."""
    comp = _comparison(audit_session, behaviour_plan, target.name, reference.name)
    cont = evidence.measured("continuation", comp.continuation)
    evidence.html(report.table(["prompt", "identical prefix", "agreement", target.name, reference.name],
                               [list(r) for r in cont.per_prompt[:12]],
                               caption=f"greedy continuations ({cont.level} level): agreement {cont.agreement:.3f} "
                                       f"({_fmt(cont.baseline)} for continuations of different prompts, permutation "
                                       f"p = {_fmt(cont.p_value)}), identical {cont.identical:.0%}, mean prefix "
                                       f"{cont.prefix:.1f}"))
    _record_bound(evidence, thresholds["behaviour", "independent_max_continuation_agreement"], "max")
    expectation = reference.expectation("behaviour")
    if expectation != "independent":
        pytest.skip(f"recorded, not judged under '{expectation}': further training may change behaviour "
                    f"(agreement {cont.agreement:.3f})")
    if cont.level != "token":
        pytest.skip(f"recorded, not judged: the tokenizers differ (or an endpoint gives no token ids), and the bound "
                    f"is calibrated on token-level agreement (text-level agreement {cont.agreement:.3f})")
    judgement = evidence.judged(continuations_independent(
        reference.name, cont, thresholds["behaviour", "independent_max_continuation_agreement"]))
    assert not judgement.failed, judgement.message


def test_refusal_behaviour(target, reference, audit_session, behaviour_plan, evidence):
    """Refusal rates on benign-but-edgy and disallowed requests, and how alike the refusals are phrased."""
    comp = _comparison(audit_session, behaviour_plan, target.name, reference.name)
    ref = evidence.measured("refusal", comp.refusal)
    rows = [[kind, v["prompts"], f"{v['target_rate']:.0%}", f"{v['reference_rate']:.0%}"]
            for kind, v in sorted(ref.by_kind.items())]
    evidence.html(report.table(["requests", "prompts", f"{target.name} refuses", f"{reference.name} refuses"], rows,
                               caption="Refusals (refusal phrases in the first 200 characters)"))
    if ref.examples:
        evidence.html(report.table(["requests", target.name, reference.name], [list(e) for e in ref.examples],
                                   caption="Example answers"))
    if ref.phrasing is None:
        pytest.skip(f"cannot compare refusal phrasing: no request refused by both models (refusal rate "
                    f"{ref.target_rate:.0%} / {ref.reference_rate:.0%})")
    rows = [_similarity_row("character 3-5-grams", ref.phrasing)]
    rows.append(_similarity_row(f"sentence embeddings ({ref.embedder['name']})", ref.embedding) if ref.embedding
                else ["sentence embeddings", "—", "—", "—", ref.embedding_reason])
    evidence.html(report.table(["phrasing similarity", "same request (mean)", "different requests (baseline)",
                                "permutation p", "pairs"], rows,
                               caption=f"Refusals both gave ({ref.both_refused} requests), against refusals to "
                                       "different requests (what a shared refusal style alone gives)"))
    emb = (f"; embedding cosine {ref.embedding.mean:.3f} (baseline {_fmt(ref.embedding.baseline)})" if ref.embedding
           else f"; embedding {ref.embedding_reason}")
    pytest.skip(f"recorded, not judged: refusal phrasing n-gram similarity {ref.phrasing.mean:.3f} (baseline "
                f"{_fmt(ref.phrasing.baseline)}) over {ref.both_refused} requests{emb}. {REFUSAL_CALIBRATION}")


#: Why refusal phrasing is recorded, not judged (benchmarks/calibrate_refusals.py, 8 derived and 96 independent
#: pairs of refusing demo-sized models): it separates a derivative from an independent model taught *other*
#: refusals, but not from one taught the *same* refusals — which independent models trained on shared safety
#: data are — so a bound would accuse them.
REFUSAL_CALIBRATION = ("Same-phrasing similarity does not separate derivation from shared refusal data "
                       "(benchmarks/results/calibrate_refusals.json: n-gram 0.46-0.98 and embedding 0.66-0.99 for "
                       "derivatives; 0.28-1.00 and 0.52-1.00 for independent models taught the same refusals; "
                       "0.09-0.17 and 0.36-0.50 for independent models taught other refusals)")


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _similarity_row(label: str, s) -> list:
    return [label, f"{s.mean:.3f}", _fmt(s.baseline), "—" if s.p_value is None else f"{s.p_value:.3g}", s.pairs]


def test_representation_similarity(target, reference, audit_session, behaviour_plan, evidence):
    """Layer-wise linear CKA of hidden states on the same texts with a permutation null (REEF), local models only."""
    comp = _comparison(audit_session, behaviour_plan, target.name, reference.name)
    if comp.representation is None:
        pytest.skip(f"cannot measure representation similarity: {comp.representation_reason}")
    rep = evidence.measured("representation", comp.representation)
    evidence.html(report.table(["target layer", "reference layer", "linear CKA", "permutation p"],
                               [list(r) for r in rep.layers],
                               caption=f"REEF: CKA of last-token hidden states on {rep.texts} texts "
                                       f"({rep.permutations} permutations, seed {rep.seed}; layer 0 = embeddings)"))
    pytest.skip(f"recorded, not judged: mean CKA {rep.mean_cka:.3f} (smallest p {rep.min_p:.3g}); models trained on the "
                "same data share representations (every independent calibration pair is significant too), and the "
                "gap between independent and fine-tuned pairs is too thin to bound "
                "(benchmarks/results/calibrate_behaviour.json: 0.898-0.942 vs 0.952-0.968)")
