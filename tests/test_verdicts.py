"""modellineage.reporting.verdicts: the per-reference combination of evidence families (a pure function over records)."""

from __future__ import annotations

from modellineage.reporting.report import summary_html
from modellineage.reporting.verdicts import EVIDENCE_ORDER, combine, finding_of


def _record(family: str, audit: str, expectation: str, outcome: str, failed: bool | None, subject: str = "base"):
    """An evidence record as evidence.json holds it (judgement None: recorded or skipped)."""
    judgement = None if failed is None else {"claim": audit, "measured": 0.0, "bound": "x", "source": "t",
                                              "failed": failed, "message": "m"}
    return {"nodeid": f"audits/test_{family}.py::{audit}[{subject}]", "family": family, "subject": subject,
            "expectation": expectation, "measurements": {}, "judgement": judgement, "summary": "",
            "outcome": outcome, "message": "m"}


HIDDEN_COPY = [  # the case: a re-parametrised fine-tune claimed independent
    _record("reuse", "test_no_exact_tensor_reuse", "independent", "passed", False),
    _record("weights", "test_weight_similarity", "independent", "passed", False),  # name-aligned ≈ 0
    _record("independence", "test_independence_pvalue", "independent", "failed", True),
    _record("tokenizer", "test_vocabulary_overlap", "independent", "failed", True),
    _record("weights", "test_no_tensor_signature_matches", "independent", "skipped", None),
    _record("architecture", "test_config_comparison_recorded", "independent", "passed", None),
]


def test_findings_follow_outcome_and_judgement():
    assert finding_of(HIDDEN_COPY[0]).finding == "independent"
    assert finding_of(HIDDEN_COPY[2]).finding == "derived"
    assert finding_of(HIDDEN_COPY[4]) is None  # skipped: no finding
    assert finding_of(HIDDEN_COPY[5]) is None  # not judged, and architecture is no lineage evidence
    errored = _record("weights", "test_weight_similarity", "derived", "failed", None)
    assert finding_of(errored) is None  # a failure without a judgement (corrupt file) finds nothing


def test_stronger_family_decides_and_the_sentence_names_both_sides():
    (verdict,) = combine("base", HIDDEN_COPY)
    assert verdict.verdict == "derived" and verdict.holds is False
    assert verdict.deciding.family == "independence"
    assert [f.family for f in verdict.contradicted_by] == ["weights", "reuse"]
    s = verdict.sentence
    assert s.endswith(".") and ". " not in s  # one sentence
    assert "weights (test_weight_similarity) says independent" in s and "reuse" in s
    assert "independence (test_independence_pvalue) says derived" in s
    assert "stronger" in s and "re-parametrisation" in s


def test_positive_evidence_outranks_absence_in_both_directions():
    # a copied embedding with re-trained MLPs: weights find derived, the MLP statistic finds no dependence
    records = [_record("weights", "test_weight_similarity", "independent", "failed", True),
               _record("independence", "test_independence_pvalue", "independent", "passed", False)]
    (v,) = combine("base", records)
    assert v.verdict == "derived" and v.contradicted_by[0].family == "independence"
    # a shared tokenizer does not outweigh independent weights
    records = [_record("tokenizer", "test_vocabulary_overlap", "independent", "failed", True),
               _record("weights", "test_weight_similarity", "independent", "passed", False)]
    (v,) = combine("base", records)
    assert v.verdict == "independent" and v.holds


def test_refinements_are_separate_claims_and_agreement_says_so():
    records = [_record("weights", "test_weight_similarity", "independent", "passed", False, "scratch"),
               _record("tokenizer", "test_vocabulary_overlap", "derived", "passed", False, "scratch"),
               _record("weights", "test_weight_similarity", "derived", "passed", False, "other")]
    verdicts = combine("scratch", records)
    assert [(v.claim, v.verdict, v.contradicted_by) for v in verdicts] == [("independent", "independent", ()),
                                                                          ("derived", "derived", ())]
    assert "no family contradicts" in verdicts[0].sentence
    assert combine("nobody", records) == ()


def test_order_is_total_and_covers_both_directions_of_each_family():
    keys = [(f, d) for f, d, _ in EVIDENCE_ORDER]
    assert len(set(keys)) == len(keys)
    assert {(f, d) for f in ("reuse", "weights", "independence", "tokenizer") for d in ("derived", "independent")} \
        == set(keys)


def test_report_paragraph_carries_the_contradiction():
    plan = {"target": {"name": "hidden", "source": "x"},
            "references": [{"name": "base", "source": "y", "expect": "independent", "family_expect": {}}]}
    html = summary_html(plan, HIDDEN_COPY)
    assert "Evidence families contradict each other on base" in html
