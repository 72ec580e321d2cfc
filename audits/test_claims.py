"""Claims nothing examined: per reference (and [catalog]), how many audits measured and judged the claim.

These audits run last (the plugin orders them after every other audit) and read what the others recorded.
A claim that no audit could test — every weight, reuse and independence audit skipped because the models
share no comparable tensor, say — fails here rather than passing unexamined, unless the plan says
``[options] allow_untested = true`` or the run passes ``--allow-untested``.
"""

from __future__ import annotations

import pytest

from modellineage.reporting import report

from .criteria import catalog_coverage, claim_coverage, claims_tested

pytestmark = pytest.mark.claims


def _others(audit_session, evidence_nodeid: str) -> list[dict]:
    return [r.as_dict() for r in audit_session.records if r.family != "claims" and r.nodeid != evidence_nodeid]


def _judge(coverage, audit_session, evidence) -> None:
    evidence.measured("coverage", [c.as_dict() for c in coverage])
    evidence.html(report.claims_html([c.as_dict() | {"label": c.label} for c in coverage],
                                     allow_untested=audit_session.plan.allow_untested))
    judgement = evidence.judged(claims_tested(coverage, audit_session.plan.allow_untested))
    evidence.says(judgement.message[:1].upper() + judgement.message[1:] + ".")
    assert not judgement.failed, judgement.message


def test_claim_was_tested(reference, audit_session, evidence, request):
    """The reference's claim (and each per-family refinement) was judged by at least one audit."""
    coverage = claim_coverage(reference.spec, _others(audit_session, request.node.nodeid))
    _judge(coverage, audit_session, evidence)


def test_catalog_claim_was_tested(target, catalog_plan, audit_session, evidence, request):
    """[catalog] expect = "independent" was judged by at least one catalog audit."""
    coverage = catalog_coverage(catalog_plan, target.name, _others(audit_session, request.node.nodeid))
    if coverage is None:
        pytest.skip("no [catalog] claim in the plan (nor --against-catalog)")
    _judge([coverage], audit_session, evidence)
