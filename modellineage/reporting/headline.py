"""The answer first: one verdict per claim, with its strongest evidence in plain words and numbers.

Pure functions over evidence data (the ``audits`` records, ``claim_coverage`` and threshold bounds of
evidence.json), so the report's verdict cards and evidence.json's ``verdicts`` section (read by a CI
gate) say the same thing and are reproducible from the evidence alone.

A claim's outcome:

- ``untested`` when no audit measured and judged it (claim coverage: tested by 0 audits);
- otherwise the combined verdict of :mod:`modellineage.reporting.verdicts` (the documented rank of the
  families) decides ``holds`` or ``fails``; a judged audit of a family that rank does not know
  (``training``, ``behaviour``, ...) still counts: with no ranked finding the claim fails when any of
  its judged audits failed, and a failed unranked audit under a holding verdict marks it *contested*;
- *contested* also when a weaker family contradicts the deciding one (both are named).

Behaviour is no lineage finding (it answers "does the target behave like X", which distillation also
produces) and never enters the verdict; when its audits measured a reference, :func:`behaviour_summary`
puts one line on that reference's main card — each figure against the bound independent models keep.

The ``strongest`` evidence is the deciding finding and up to two more that agree with the verdict, in
the rank's order, each as one plain sentence with its number, bound and the audit that measured it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

from modellineage.reporting.families import audit_name, audit_title, family
from modellineage.reporting.verdicts import CombinedVerdict, combine, finding_of

__all__ = ["Evidence", "ClaimVerdict", "claim_verdicts", "verdicts_document", "behaviour_summary", "pvalue_text",
           "plain_number"]

STRONGEST = 3  # pieces of evidence per card


@dataclass(frozen=True)
class Evidence:
    """One judged audit in plain words."""

    family: str
    audit: str  # node id
    text: str
    finding: str | None  # "derived" / "independent" (ranked families), None otherwise
    outcome: str
    measured: Any = None
    bound: Any = None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "audit": self.audit, "text": self.text, "finding": self.finding,
                "outcome": self.outcome, "measured": self.measured, "bound": self.bound, "source": self.source}


@dataclass(frozen=True)
class ClaimVerdict:
    """The verdict on one claim of the plan (a reference's relation, a per-family refinement, or [catalog])."""

    subject: str  # reference name, or "catalog"
    relation: str  # "derived" / "independent"
    refinement: str | None  # family of a per-family refinement
    label: str  # the claim-coverage label ("claimed derived from base")
    headline: str  # "finetune was derived from base"
    outcome: str  # "holds" / "fails" / "untested"
    contested: bool
    deciding: str | None  # family that decided
    strongest: tuple[Evidence, ...]
    against: tuple[Evidence, ...]  # judged evidence that disagrees with the verdict
    untested: tuple[tuple[str, str], ...]  # (family, why no audit of it judged the claim)
    sentence: str  # verdicts.py's sentence (names disagreeing families and why the deciding one wins)
    judged_by: tuple[str, ...] = field(default=())
    behaviour: Mapping[str, Any] | None = None  # behaviour_summary() of the subject, on its main claim only

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "relation": self.relation, "refinement": self.refinement,
                "claim": self.label, "headline": self.headline, "outcome": self.outcome,
                "contested": self.contested, "deciding_family": self.deciding,
                "strongest": [e.as_dict() for e in self.strongest], "against": [e.as_dict() for e in self.against],
                "untested": [{"family": f, "why": w} for f, w in self.untested], "sentence": self.sentence,
                "judged_by": list(self.judged_by), "behaviour": None if self.behaviour is None else dict(self.behaviour)}


# ------------------------------------------------------------------------------------ plain numbers
def plain_number(value: Any) -> str:
    """A number as a reader writes it: 0.967, 1.9e-148 -> "1.9e-148", 312896 -> "312,896"."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2g}"
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def pvalue_text(p: Any) -> str:
    """p-value as ``p ≈ 10^-148`` when tiny (the report shows the exponent raised), ``p = 0.21`` otherwise."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not math.isfinite(p):
        return f"p = {p}"
    if 0 < p < 1e-4:
        return f"p ≈ 10^{math.floor(math.log10(p) + 0.5)}"
    if p == 0:
        return "p < 10^-300"
    return f"p = {p:.2g}"


def _j(record: Mapping[str, Any]) -> Mapping[str, Any]:
    judgement = record.get("judgement")
    return judgement if isinstance(judgement, Mapping) else {}


def _m(record: Mapping[str, Any], *path: str) -> Any:
    x: Any = record.get("measurements") or {}
    for key in path:
        if not isinstance(x, Mapping):
            return None
        x = x.get(key)
    return x


_ALPHA = re.compile(r"p\s*[<≥>]=?\s*([0-9.eE+-]+)")


def _independence(record, finding) -> str | None:
    p = _j(record).get("measured")
    alpha = _ALPHA.search(str(_j(record).get("bound", "")))
    at = f" (α = {alpha.group(1)})" if alpha else ""
    if finding == "derived":
        return f"The independence test rejects separate training: {pvalue_text(p)}{at}."
    if finding == "independent":
        return f"The independence test finds no sign of shared training: {pvalue_text(p)}{at}."
    return None


def _categories(record) -> list[Mapping]:
    judged = _m(record, "aligned_similarity", "judged_categories")
    cats = judged if isinstance(judged, list) and judged else _m(record, "weight_similarity", "by_category") or []
    return [c for c in cats if isinstance(c, Mapping) and isinstance(c.get("mean_centred"), (int, float))
            and math.isfinite(c["mean_centred"])]


def _weights(record, finding) -> str | None:
    cats = _categories(record)
    if not cats:
        return None
    top = max(cats, key=lambda c: c["mean_centred"])
    group = str(top.get("group", "")).removesuffix(" (aligned)")
    early = _m(record, "early_layers", "mean_centred")
    bound = _j(record).get("bound", "")
    if finding == "derived":
        held = sum(1 for c in cats if c["mean_centred"] >= _number(bound, 0.3))
        text = (f"Weights stay alike: {held} of {len(cats)} weight categories keep centred similarity ≥ "
                f"{plain_number(_number(bound, 0.3))}, up to {top['mean_centred']:.2f} ({group})")
        if isinstance(early, (int, float)) and math.isfinite(early):
            text += f"; the early layers keep {early:.2f}"
        return text + "."
    if finding == "independent":
        return (f"Weights look unrelated: the highest centred similarity is {top['mean_centred']:.2f} ({group}), "
                f"inside the band of independently trained models ({bound}).")
    return None


def _number(text: Any, default: float) -> float:
    found = re.search(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", str(text))
    return float(found.group(0)) if found else default


def _reuse(record, finding) -> str | None:
    reused = _j(record).get("measured")
    total = _m(record, "exact_reuse", "counted_tensors")
    of = f" of {plain_number(total)}" if isinstance(total, int) else ""
    if finding == "derived":
        return f"{plain_number(reused)}{of} trained tensors are byte-identical copies of the reference's."
    if finding == "independent":
        return f"{plain_number(reused)}{of} trained tensors are byte-identical to the reference's."
    return None


def _signatures(record, finding) -> str | None:
    matched = _j(record).get("measured")
    found = re.search(r"of (\d[\d,]*) target tensors", str(_j(record).get("message", "")))
    of = f" of {found.group(1)}" if found else ""
    return f"{plain_number(matched)}{of} tensors match a reference tensor's fingerprint (SimHash/MinHash)."


def _vocabulary(record, finding) -> str | None:
    shared = _m(record, "overlap", "normalised", "jaccard")
    if not isinstance(shared, (int, float)):
        return None
    if finding == "derived":
        return f"The tokenizer is shared: {shared:.0%} of the two vocabularies overlap (Jaccard)."
    return f"The vocabularies are distinct: {shared:.0%} overlap (Jaccard), below the reuse bands."


def _catalog_tokenizer(record, finding) -> str | None:
    message = str(_j(record).get("message", ""))
    closest = re.search(r"closest ([^\s(]+)", message)
    share = _j(record).get("measured")
    if record.get("outcome") == "failed" or not closest or not isinstance(share, (int, float)):
        return None
    bound = re.search(r"contained share < ([0-9.]+)", str(_j(record).get("bound", "")))
    limit = f" (a copy needs {float(bound.group(1)):.0%})" if bound else ""
    return (f"No catalog tokenizer is reused, extended or pruned: the closest, {closest.group(1)}, holds "
            f"{share:.0%} of the target's tokens{limit}.")


_PHRASES: dict[str, Callable[[Mapping[str, Any], str | None], str | None]] = {
    "test_independence_pvalue": _independence,
    "test_weight_similarity": _weights,
    "test_no_exact_tensor_reuse": _reuse,
    "test_no_tensor_signature_matches": _signatures,
    "test_vocabulary_overlap": _vocabulary,
    "test_tokenizer_not_from_catalog": _catalog_tokenizer,
}


def _generic(record: Mapping[str, Any]) -> str:
    j = _j(record)
    measured = plain_number(j.get("measured"))
    verdict = "fails" if record.get("outcome") == "failed" else "holds"
    return f"{audit_title(record)}: measured {measured}, bound {j.get('bound', '—')} — {verdict}."


def evidence_of(record: Mapping[str, Any]) -> Evidence:
    """One judged audit as a plain sentence with its number (audit-specific wording, else a generic one)."""
    found = finding_of(record)
    finding = found.finding if found else None
    phrase = _PHRASES.get(audit_name(record.get("nodeid", "")))
    try:
        text = phrase(record, finding) if phrase else None
    except Exception:  # noqa: BLE001 - odd measurements: the generic sentence still carries the number
        text = None
    j = _j(record)
    return Evidence(record.get("family", ""), record.get("nodeid", ""), text or _generic(record), finding,
                    record.get("outcome", ""), j.get("measured"), j.get("bound"), j.get("source"))


# ------------------------------------------------------------------------------------- verdicts
def _headline(target: str, subject: str, relation: str, refinement: str | None) -> str:
    if subject == "catalog":
        return (f"{target} was derived from none of the catalog's well-known models" if relation == "independent"
                else f"{target} was derived from a catalog model")
    verb = "was derived" if relation == "derived" else "was not derived"
    if refinement:
        return f"{target}'s {family(refinement).title.lower()} {verb} from {subject}'s"
    return f"{target} {verb} from {subject}"


def _judged(records: Sequence[Mapping[str, Any]], nodeids: Sequence[str]) -> list[Mapping[str, Any]]:
    wanted = set(nodeids)
    return [r for r in records if r.get("nodeid") in wanted]


def _verdict(target: str, coverage: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> ClaimVerdict:
    subject, relation, refinement = coverage["subject"], coverage["relation"], coverage.get("refinement")
    judged = _judged(records, coverage.get("judged_by", ()))
    untested_families = []
    judged_families = {r.get("family") for r in judged}
    for fam in coverage.get("families", ()):
        if fam in judged_families:
            continue
        reasons = [("informational, not judged: " if n.get("outcome") == "passed" else "") + n["reason"]
                   for n in coverage.get("not_judged", ())
                   if any(r.get("nodeid") == n["audit"] and r.get("family") == fam for r in records)]
        if reasons:  # a family with no audit in this run (deselected by -m) is not reported as untested
            why = reasons[0] if len(reasons[0]) <= 160 else reasons[0][:160] + "…"
            untested_families.append((fam, why))
    combined: CombinedVerdict | None = next((c for c in combine(subject, judged) if c.claim == relation), None)
    if subject == "catalog":  # catalog audits have no rank in verdicts.py: judged by their outcomes
        combined = None
    unranked_failed = [r for r in judged if finding_of(r) is None and r.get("outcome") == "failed"]
    if not judged:
        outcome, contested = "untested", False
    elif combined is not None and combined.verdict is not None:
        outcome = "holds" if combined.holds else "fails"
        contested = bool(combined.contradicted_by) or (outcome == "holds" and bool(unranked_failed))
    else:
        outcome = "fails" if any(r.get("outcome") == "failed" for r in judged) else "holds"
        contested = outcome == "fails" and any(r.get("outcome") == "passed" for r in judged)
    all_evidence = [evidence_of(r) for r in judged]
    by_node = {e.audit: e for e in all_evidence}
    if combined is not None and combined.verdict is not None:
        ordered = [f for f in combined.findings]
        nodes = {audit_name(r["nodeid"]) + "|" + r.get("family", ""): r["nodeid"] for r in judged}
        ranked = [by_node[nodes[f"{f.audit}|{f.family}"]] for f in ordered if f"{f.audit}|{f.family}" in nodes]
        rest = [e for e in all_evidence if e not in ranked]
        agree = [e for e in ranked if e.finding == combined.verdict] + [e for e in rest if e.outcome == "passed"]
        # within a family (same rank), its headline audit (one with its own wording) first
        place = {fam: i for i, fam in enumerate(dict.fromkeys(e.family for e in agree))}
        order = {name: i for i, name in enumerate(_PHRASES)}
        agree.sort(key=lambda e: (place[e.family], order.get(audit_name(e.audit), len(order))))
        against = [e for e in ranked if e.finding != combined.verdict] + [e for e in rest if e.outcome != "passed"]
        deciding = combined.deciding.family if combined.deciding else None
        sentence = combined.sentence
    else:
        want = "failed" if outcome == "fails" else "passed"
        agree = [e for e in all_evidence if e.outcome == want]
        against = [e for e in all_evidence if e.outcome != want]
        deciding = agree[0].family if agree else None
        sentence = (f"No audit of {', '.join(coverage.get('families', ())) or 'any family'} judged this claim."
                    if outcome == "untested" else f"Judged by {len(judged)} audit(s) of "
                    f"{', '.join(dict.fromkeys(r.get('family', '') for r in judged))}; {len(against)} disagree.")
    return ClaimVerdict(subject, relation, refinement, coverage.get("label", ""),
                        _headline(target, subject, relation, refinement), outcome, contested, deciding,
                        tuple(agree[:STRONGEST]), tuple(against), tuple(untested_families), sentence,
                        tuple(coverage.get("judged_by", ())))


def behaviour_summary(subject: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What the behaviour family measured about ``subject``, in one line, or None when it measured nothing.

    Each figure is set against the bound independent models keep (``independent_bound`` as the audit recorded
    it, judged or not): continuation agreement above its bound or next-token divergence below its bound is
    *close* — closer than any independent model should be, as a fine-tune or a distilled student is. The line
    is never a lineage verdict (see :mod:`modellineage.reporting.families`, behaviour's scope).
    """
    parts, sides, audits = [], [], []
    for r in sorted((r for r in records if r.get("family") == "behaviour" and r.get("subject") == subject),
                    key=lambda r: r.get("nodeid", "")):
        m = r.get("measurements") or {}
        name = audit_name(r.get("nodeid", ""))
        bound = m.get("independent_bound") if isinstance(m.get("independent_bound"), Mapping) else {}
        value = None
        if name == "test_continuation_agreement" and isinstance(m.get("continuation"), Mapping):
            c = m["continuation"]
            value = c.get("agreement")
            if c.get("level") == "token" and bound.get("value") is not None:
                other = (f"; {c['baseline']:.3f} for different prompts" if c.get("baseline") is not None else "")
                parts.append(f"continuation agreement {value:.3f} (independent models ≤ {bound['value']:g}{other})")
                sides.append(value > bound["value"])
            else:
                parts.append(f"continuation agreement {value:.3f} ({c.get('level')} level, no calibrated bound)")
        elif name == "test_next_token_divergence" and isinstance(m.get("next_token"), Mapping):
            value = m["next_token"].get("mean_jsd")
            if bound.get("value") is not None:
                parts.append(f"next-token JSD {value:.3f} bits (independent models ≥ {bound['value']:g})")
                sides.append(value < bound["value"])
        elif name == "test_refusal_behaviour" and isinstance(m.get("refusal"), Mapping) \
                and isinstance(m["refusal"].get("phrasing"), Mapping):
            ph = m["refusal"]["phrasing"]
            value = ph.get("mean")
            base = ph.get("baseline")
            parts.append(f"refusal phrasing {value:.2f}" + (f" (refusals to other requests {base:.2f})"
                                                            if base is not None else ""))
            if bound.get("value") is not None:
                sides.append(value > bound["value"])
        if value is not None:
            audits.append(r.get("nodeid", ""))
    if not parts:
        return None
    if any(sides):
        reading = "close: closer than independent models are, consistent with fine-tuning or distillation"
    elif sides:
        reading = "within what independent models show"
    else:
        reading = "recorded (no calibrated bound applies)"
    return {"text": "behaviour: " + ", ".join(parts) + " — " + reading, "close": any(sides) if sides else None,
            "audits": audits}


def claim_verdicts(target: str, coverage: Sequence[Mapping[str, Any]],
                   records: Sequence[Mapping[str, Any]]) -> tuple[ClaimVerdict, ...]:
    """One :class:`ClaimVerdict` per claim-coverage item (references in plan order, then [catalog]).

    The first claim of each reference without a refinement (its main claim) also carries
    :func:`behaviour_summary` when the behaviour audits measured that reference.

    Args:
        target: the audited model's name.
        coverage: evidence.json ``claim_coverage`` items (``subject``, ``relation``, ``refinement``,
            ``families``, ``judged_by``, ``not_judged``, ``label``).
        records: evidence.json ``audits`` records.
    """
    out, seen = [], set()
    for c in coverage:
        v = _verdict(target, c, records)
        if v.subject != "catalog" and v.subject not in seen and v.refinement is None:
            seen.add(v.subject)
            summary = behaviour_summary(v.subject, records)
            if summary is not None:
                v = replace(v, behaviour=summary)
        out.append(v)
    return tuple(out)


def target_checks(target: str, records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Judged audits that are no claim about a reference: integrity and claimed facts (counts, compute)."""
    return [r for r in records if r.get("expectation") is None and r.get("judgement")
            and r.get("family") not in ("claims", "catalog") and r.get("outcome") in ("passed", "failed")]


def verdicts_document(target: str, coverage: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]],
                      *, allow_untested: bool = False) -> dict[str, Any]:
    """evidence.json's ``verdicts`` section: overall counts, one list of claim verdicts per reference, the
    [catalog] claim, and the target's integrity/fact checks that failed. Deterministic (input order)."""
    verdicts = claim_verdicts(target, coverage, records)
    checks = target_checks(target, records)
    failed_checks = sorted(r["nodeid"] for r in checks if r.get("outcome") == "failed")
    references: dict[str, list] = {}
    for v in verdicts:
        if v.subject != "catalog":
            references.setdefault(v.subject, []).append(v.as_dict())
    catalog = next((v.as_dict() for v in verdicts if v.subject == "catalog"), None)
    count = {o: sum(v.outcome == o for v in verdicts) for o in ("holds", "fails", "untested")}
    failed_audits = sorted(r["nodeid"] for r in records if r.get("outcome") == "failed")
    return {"overall": {"claims": len(verdicts), **count, "contested": sum(v.contested for v in verdicts),
                        "allow_untested": allow_untested, "checks": len(checks), "checks_failed": failed_checks,
                        "failed_audits": failed_audits},
            "references": references, "catalog": catalog}
