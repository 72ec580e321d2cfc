"""The report's answer-first layer: claim verdicts from evidence records, the family registry, the HTML.

Records here have the shape of evidence.json ``audits`` entries (what the plugin writes); the demo's
own records are checked end to end in test_audit_runs.py and rendered in test_report_render.py.
"""

from __future__ import annotations

import re

from modellineage.reporting import families, headline, report


def _record(nodeid, family, subject, expectation, outcome, measured=None, bound=None, message="", source=None):
    judgement = None if measured is None else {"claim": "c", "measured": measured, "bound": bound, "failed":
                                               outcome == "failed", "message": message, "source": source}
    return {"nodeid": nodeid, "family": family, "subject": subject, "expectation": expectation,
            "judgement": judgement, "outcome": outcome, "message": message, "measurements": {}, "summary": ""}


def _coverage(subject, relation, fams, records, refinement=None):
    mine = [r for r in records if r["subject"] == subject and r["family"] in fams]
    judged = [r["nodeid"] for r in mine if r["judgement"] and r["outcome"] in ("passed", "failed")]
    return {"subject": subject, "relation": relation, "refinement": refinement, "families": list(fams),
            "judged_by": judged, "tested_by": len(judged), "label": f"claimed {relation} from {subject}",
            "not_judged": [{"audit": r["nodeid"], "outcome": r["outcome"], "reason": r["message"]}
                           for r in mine if r["nodeid"] not in judged]}


def test_unknown_family_falls_back_and_keeps_its_place():
    assert families.family("behaviour").registered and families.family("training").registered
    odd = families.family("provenance_chain")
    assert not odd.registered and odd.title == "Provenance chain" and "No description" in odd.scope
    assert families.families_in_order(["zeta", "weights", "behaviour", "tokenizer", "alpha"]) == \
        ["tokenizer", "weights", "behaviour", "alpha", "zeta"]
    rec = _record("audits/test_x.py::test_outputs_agree_on_probes[ref]", "zeta", "ref", "derived", "passed")
    assert families.audit_title(rec) == "Outputs agree on probes"
    assert families.audit_title(dict(rec, nodeid="audits/test_weights.py::test_weight_similarity[ref]",
                                     family="weights")) == "Weight similarity by category"


def test_byte_copies_decide_against_same_name_weights_and_the_card_names_both():
    records = [
        _record("audits/test_reuse.py::test_no_exact_tensor_reuse[ref]", "reuse", "ref", "independent", "failed",
                3, "≤ 0", "target reuses 3 of 39 non-constant tensors", "thresholds.toml [reuse].x"),
        _record("audits/test_weights.py::test_weight_similarity[ref]", "weights", "ref", "independent", "passed",
                0.05, "< 0.3", "every category below", "thresholds.toml [weights].independent_max_centred"),
        _record("audits/test_architecture.py::test_config_comparison_recorded[ref]", "architecture", "ref",
                "independent", "passed", message="Configs are identical in all 21 fields"),
    ]
    cov = [_coverage("ref", "independent", ("architecture", "reuse", "weights"), records)]
    (v,) = headline.claim_verdicts("tgt", cov, records)

    assert (v.outcome, v.contested, v.deciding) == ("fails", True, "reuse")
    assert v.headline == "tgt was not derived from ref"
    assert v.strongest[0].audit.endswith("test_no_exact_tensor_reuse[ref]") and "3" in v.strongest[0].text
    assert [e.family for e in v.against] == ["weights"]
    assert v.untested == (("architecture", "informational, not judged: Configs are identical in all 21 fields"),)
    html = report.summary_html({"target": {"name": "tgt"}, "references": [{"name": "ref", "expect": "independent"}]},
                               records, cov, [{"family": "reuse", "key": "x", "value": 0, "source": "exact"}])
    assert "1 of 1 claim fails" in html and "claim FAILS" in html and "(contested)" in html
    assert 'title="thresholds.toml [reuse].x = 0: exact"' in html  # the bound's source on hover ...
    assert re.search(r'<li id="bound-\d+">thresholds.toml \[reuse\].x = 0: exact</li>', html)  # ... and a footnote


def test_a_failed_audit_of_an_unranked_family_contests_a_holding_claim_and_still_shows():
    records = [
        _record("audits/test_independence.py::test_independence_pvalue[ref]", "independence", "ref", "derived",
                "passed", 1e-20, "p < 0.0005"),
        _record("audits/test_behaviour.py::test_outputs_agree[ref]", "behaviour", "ref", "derived", "failed",
                0.2, "≥ 0.9", "outputs agree on 20% of probes"),
    ]
    cov = [_coverage("ref", "derived", ("independence", "behaviour"), records)]
    (v,) = headline.claim_verdicts("tgt", cov, records)

    assert (v.outcome, v.contested, v.deciding) == ("holds", True, "independence")
    assert v.strongest[0].text == "The independence test rejects separate training: p ≈ 10^-20 (α = 0.0005)."
    assert v.against[0].family == "behaviour" and "measured 0.2, bound ≥ 0.9 — fails" in v.against[0].text
    doc = headline.verdicts_document("tgt", cov, records)
    assert doc["overall"] == {"claims": 1, "holds": 1, "fails": 0, "untested": 0, "contested": 1,
                              "allow_untested": False, "checks": 0, "checks_failed": [],
                              "failed_audits": ["audits/test_behaviour.py::test_outputs_agree[ref]"]}
    html = report.summary_html({"target": {"name": "tgt"}, "references": [{"name": "ref", "expect": "derived"}]},
                               records, cov, [])
    assert "The claim holds, but 1 audit failed" in html  # the run fails: no green banner
    assert 'id="family-behaviour"' in html and report.esc(families.family("behaviour").scope) in html
    assert "10<sup>−20</sup>" in html


def test_an_untested_claim_says_which_families_could_not_judge_it():
    records = [_record("audits/test_weights.py::test_weight_similarity[ref]", "weights", "ref", "derived",
                       "skipped", message="cannot measure: reference has no weights")]
    cov = [_coverage("ref", "derived", ("weights",), records, refinement=None)]
    (v,) = headline.claim_verdicts("tgt", cov, records)

    assert v.outcome == "untested" and not v.strongest
    assert v.untested == (("weights", "cannot measure: reference has no weights"),)
    banner = report.summary_html({"target": {"name": "tgt"}, "references": []}, records, cov, [],
                                 allow_untested=True)
    assert "1 of 1 claim untested" in banner and "accepted by this plan" in banner


def test_plain_numbers():
    assert headline.pvalue_text(1.9e-148) == "p ≈ 10^-148"
    assert headline.pvalue_text(0.211) == "p = 0.21"
    assert headline.plain_number(312896) == "312,896" and headline.plain_number(0.04396) == "0.044"
