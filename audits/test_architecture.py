"""Architecture evidence: does each config tell the truth about its weights, and how do configs compare?

A shared config decides nothing on its own (several from-scratch 7B models use Llama-2-7B's exact
config), so the config comparison is recorded for the report and never judged.
"""

from __future__ import annotations

import pytest

from modellineage.architecture.compare import check_config_against_weights, compare_configs
from modellineage.errors import UnsupportedFormat
from modellineage.reporting import report

from .criteria import config_matches_weights, parameter_claim, weights_finite

pytestmark = pytest.mark.architecture


def test_config_matches_weights(subject, evidence):
    if subject.arch is None:
        raise UnsupportedFormat(f"{subject.source.root}: no config.json to check against the weights")
    facts = evidence.measured("weight_facts", subject.weight_facts)
    agreements = evidence.measured("agreements", check_config_against_weights(subject.arch, facts))
    evidence.measured("unknown_tensors", subject.name_map.unknown)
    evidence.html(report.table(
        ["field", "config", "weights", "agrees", "note"],
        [[a.field, a.config_value, a.weights_value, {True: "yes", False: "NO", None: "—"}[a.agrees], a.note]
         for a in agreements],
        caption=f"{subject.name}: config.json against the tensor shapes"))
    if subject.name_map.unknown:
        evidence.html(report.table(["tensor kept verbatim (no canonical role)"],
                                   [[n] for n in subject.name_map.unknown[:100]],
                                   caption=f"{len(subject.name_map.unknown)} unrecognised tensor name(s)"))
    judgement = evidence.judged(config_matches_weights(subject.name, agreements))
    evidence.says(judgement.message.split(": ", 1)[1].capitalize() + ".")
    assert not judgement.failed, judgement.message


def test_weights_are_finite(subject, evidence):
    """NaN or Inf weights make every similarity undefined; they are a defect of the checkpoint."""
    digests = subject.tensor_digests()
    bad = evidence.measured("nonfinite_tensors", {d.name: d.nonfinite for d in digests if d.nonfinite})
    if subject.digest_coverage is not None:  # a read budget: one seeded row per tensor was checked
        evidence.measured("digest_coverage", subject.digest_coverage)
    if subject.unchecked_tensors:  # a remote model read in part, or beyond the budget's digest share
        evidence.measured("unchecked_tensors", list(subject.unchecked_tensors))
        if not digests:
            pytest.skip(f"{subject.name}: no tensor was read ({len(subject.unchecked_tensors)} tensor(s): "
                        f"{subject.unchecked_reason})")
    files = ", ".join(str(p) for p in subject.source.weight_files)
    coverage = subject.digest_coverage
    scope = "" if coverage is None else (
        f" (checked on one seeded row each under the read budget, 1-D tensors whole"
        + (f"; {len(subject.unchecked_tensors)} tensor(s) not checked: {subject.unchecked_reason}"
           if subject.unchecked_tensors else "") + ")")
    judgement = evidence.judged(weights_finite(subject.name, files, bad, len(digests), scope))
    assert not judgement.failed, judgement.message


def test_parameter_count_matches_claim(target, claims, thresholds, evidence):
    counted = evidence.measured("parameters", target.weight_facts.total_parameters)
    if "parameters" not in claims:
        pytest.skip(f"no [claims].parameters in the audit plan (headers count {counted:,} parameters)")
    judgement = evidence.judged(parameter_claim(target.name, float(claims["parameters"]), counted,
                                                thresholds["architecture", "parameter_claim_rel_tol"]))
    assert not judgement.failed, judgement.message


def test_config_comparison_recorded(target, reference, evidence):
    """Informational: the normalised configs side by side. Fails only when a config cannot be read."""
    if target.arch is None or reference.model.arch is None:
        missing = target if target.arch is None else reference.model
        raise UnsupportedFormat(f"{missing.source.root}: no config.json, configs cannot be compared")
    comparison = evidence.measured("config_comparison", compare_configs(target.arch, reference.model.arch))
    evidence.html(report.table(
        ["field", "target", reference.name, "equal"],
        [[f.field, f.target, f.reference, "yes" if f.equal else "differs"] for f in comparison.fields],
        caption=f"Normalised configs: target vs {reference.name}"))
    if comparison.identical:
        evidence.says(f"Configs are identical in all {len(comparison.fields)} fields (not evidence on its own: "
                      "independent models often share a standard config).")
    else:
        evidence.says(f"Configs differ in {len(comparison.differing)} of {len(comparison.fields)} fields "
                      f"({', '.join(comparison.differing)}).")
