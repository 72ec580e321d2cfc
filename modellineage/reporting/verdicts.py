"""One verdict per reference and claim from the evidence families' judgements, and what to say when they disagree.

Each judged audit (an evidence record with a judgement and an outcome of ``passed`` or ``failed``)
is a *finding*: the claim it tested when it passed, the opposite when it failed. Skipped, recorded
and errored audits find nothing. Findings are combined per claim: the reference's ``expect`` and
every family refinement (``tokenizer = "derived"`` under ``expect = "independent"``) are separate
claims, so a refined family never contradicts the main claim.

**The rule.** Findings are ranked by how hard they are to produce without the relation they
find (:data:`EVIDENCE_ORDER`, strongest first); the combined verdict is the highest-ranked finding's,
and every finding that disagrees with it is named, with the reason the deciding one is stronger, in
one sentence (:attr:`CombinedVerdict.sentence`). The order follows two principles:

1. Positive evidence of a shared origin outranks the absence of it. A copy, a dependence test
   below α or a similarity above the independent band has a controlled false-positive rate; not
   finding a relation can always be produced by a transformation or by training the method does not
   see (re-parametrisation hides same-name similarity; any fine-tuning step changes every tensor's bytes).
2. Among findings of the same kind, the one with the smaller false-positive rate, or invariant to more
   transformations, ranks higher: byte identity (≈ 2^-128 by chance) over the calibrated independence
   p-value (α, invariant to permutation, rescaling, sign flips, gain folding) over the centred weight
   similarity (calibrated bounds, but compared by name unless the alignment is significant); the
   tokenizer last in both directions, since independent models openly share tokenizers.

A pure function over records: :func:`combine` takes the evidence records of one subject (the
``audits`` entries of evidence.json, or the plugin's records as plain data) and returns one
:class:`CombinedVerdict` per claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

__all__ = ["EVIDENCE_ORDER", "Finding", "CombinedVerdict", "finding_of", "combine"]

#: (family, finding, why it is as strong as its place says), strongest first.
EVIDENCE_ORDER: tuple[tuple[str, str, str], ...] = (
    ("reuse", "derived", "byte-identical trained tensors do not arise by chance (SHA-256, ~2^-128)"),
    ("independence", "derived", "its p-value is calibrated on independently trained pairs and no output-preserving "
                                "re-parametrisation (permutation, rescaling, sign flips, folded gains) can raise it"),
    ("weights", "derived", "a centred similarity above what independently trained models reach "
                           "(calibrated bounds) is not produced by independent training"),
    ("independence", "independent", "the test that re-parametrisation cannot evade finds no dependence, and it "
                                    "rejects every dependent pair of its calibration"),
    ("weights", "independent", "weight statistics in the from-scratch band (centred similarity, signatures) are "
                               "weaker evidence: re-parametrisation or long further training lowers them while the "
                               "origin stays the same"),
    ("tokenizer", "derived", "a shared or extended vocabulary says the tokenizer was reused, which independently "
                             "trained models openly do"),
    ("tokenizer", "independent", "an independent vocabulary says nothing about the weights, which can be kept "
                                 "under a new tokenizer"),
    ("reuse", "independent", "no byte-identical tensor is the weakest finding: any fine-tuning step changes "
                             "every tensor's bytes"),
)
_RANK = {(family, finding): i for i, (family, finding, _) in enumerate(EVIDENCE_ORDER)}
_WHY = {(family, finding): why for family, finding, why in EVIDENCE_ORDER}
_OPPOSITE = {"derived": "independent", "independent": "derived"}


@dataclass(frozen=True)
class Finding:
    """What one judged audit found: the relation its outcome supports."""

    family: str
    audit: str
    claim: str
    finding: str
    rank: int

    @property
    def why(self) -> str:
        return _WHY[(self.family, self.finding)]

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "audit": self.audit, "claim": self.claim, "finding": self.finding,
                "rank": self.rank}


@dataclass(frozen=True)
class CombinedVerdict:
    """The verdict on one claim about one reference, combined over every family that judged it."""

    subject: str
    claim: str
    findings: tuple[Finding, ...]
    """Every finding on this claim, strongest first."""

    @property
    def deciding(self) -> Finding | None:
        return self.findings[0] if self.findings else None

    @property
    def verdict(self) -> str | None:
        """``derived``, ``independent``, or None when no family judged the claim."""
        return None if self.deciding is None else self.deciding.finding

    @property
    def holds(self) -> bool | None:
        return None if self.verdict is None else self.verdict == self.claim

    @property
    def contradicted_by(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.finding != self.verdict)

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f.family for f in self.findings))

    @property
    def sentence(self) -> str:
        """One sentence: the combined verdict, and when families disagree, who and why the deciding one wins."""
        top = self.deciding
        if top is None:
            return f"No evidence family judged the claim '{self.claim}' about {self.subject}."
        if not self.contradicted_by:
            return (f"Combined verdict on {self.subject}, claim '{self.claim}' as tested by "
                    f"{', '.join(self.families)}: {top.finding}, and no family contradicts it.")
        against = sorted({f.family for f in self.contradicted_by})
        others = "; ".join(f"{f.family} ({f.audit}) says {f.finding}" for f in self.contradicted_by)
        weaker = self.contradicted_by[0]
        return (f"Evidence families contradict each other on {self.subject} ({self.claim} claimed): {others}, while "
                f"{top.family} ({top.audit}) says {top.finding}; the combined verdict is {top.finding} because the "
                f"{top.family} evidence is stronger — {top.why} — than the {'/'.join(against)} evidence, where "
                f"{weaker.why}.")

    def as_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "claim": self.claim, "verdict": self.verdict, "holds": self.holds,
                "deciding": None if self.deciding is None else self.deciding.as_dict(),
                "contradicted_by": [f.as_dict() for f in self.contradicted_by],
                "findings": [f.as_dict() for f in self.findings], "sentence": self.sentence}


def _audit_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def finding_of(record: Mapping[str, Any]) -> Finding | None:
    """The finding of one evidence record, or None (not judged, skipped, errored, or a family without a rank)."""
    claim = record.get("expectation")
    judgement = record.get("judgement")
    family = record.get("family")
    if claim not in _OPPOSITE or not judgement or (family, "derived") not in _RANK:
        return None
    failed = judgement.get("failed") if isinstance(judgement, Mapping) else getattr(judgement, "failed", None)
    outcome = record.get("outcome")
    if outcome == "passed" and not failed:
        found = claim
    elif outcome == "failed" and failed:
        found = _OPPOSITE[claim]
    else:
        return None
    return Finding(family, _audit_name(record.get("nodeid", "")), claim, found, _RANK[(family, found)])


def combine(subject: str, records: Iterable[Mapping[str, Any]]) -> tuple[CombinedVerdict, ...]:
    """One :class:`CombinedVerdict` per claim (expectation) among ``records`` of ``subject``.

    Args:
        subject: the reference's name (records of other subjects are ignored).
        records: evidence records (``nodeid``, ``family``, ``subject``, ``expectation``, ``judgement``,
            ``outcome``), as in evidence.json.

    Returns:
        The claims in order of first appearance; findings strongest first (ties by audit name).
    """
    by_claim: dict[str, list[Finding]] = {}
    for record in records:
        if record.get("subject") != subject:
            continue
        found = finding_of(record)
        if found is not None:
            by_claim.setdefault(found.claim, []).append(found)
    return tuple(CombinedVerdict(subject, claim, tuple(sorted(found, key=lambda f: (f.rank, f.audit))))
                 for claim, found in by_claim.items())
