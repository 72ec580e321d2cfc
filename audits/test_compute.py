"""Compute evidence: are the claimed active parameters, training tokens and accelerator hours consistent?

From-scratch pre-training takes orders of magnitude more compute than a fine-tune, so a claim of
trillions of training tokens must come with the accelerator hours to match. The counts are exact
(safetensors headers + config); training FLOPs are 6·N_active·D. The total parameter claim is
audited in test_architecture.py (test_parameter_count_matches_claim) and not repeated here.
"""

from __future__ import annotations

import pytest

from modellineage.compute.estimate import (
    count_active_parameters,
    gpu_days,
    implied_utilisation,
    plain_claim,
    plain_count,
    plain_flops,
    plain_summary,
    plain_utilisation,
    reference_accelerator,
    training_compute,
)
from modellineage.errors import UnsupportedFormat
from modellineage.reporting import report

from .criteria import active_parameter_claim, plausible_utilisation

pytestmark = pytest.mark.compute


def _count(model):
    if model.arch is None:
        raise UnsupportedFormat(f"{model.source.root}: no config.json, so experts per token are unknown")
    files = tuple(p.name for p in model.source.require_weights())
    return count_active_parameters(model.shapes, model.name_map, model.arch, files=files)


def test_active_parameters_match_claim(target, claims, thresholds, evidence):
    counted = evidence.measured("parameter_count", _count(target))
    rows = [[cat, f"{n:,}", f"{counted.routed_expert_active:,}" if cat == "routed_expert"
             else ("0" if cat == "not_active" else f"{n:,}")] for cat, n in sorted(counted.by_category.items())]
    rows.append(["total", f"{counted.total:,}", f"{counted.active:,}"])
    evidence.html(report.table(["category", "parameters", "active per token"], rows,
                               caption=f"{target.name}: parameters from the safetensors headers"
                               + (f" ({counted.experts_per_token} of {counted.num_experts} routed experts per token)"
                                  if counted.is_moe else "")))
    if "active_parameters" not in claims:
        pytest.skip(f"no [claims].active_parameters in the audit plan (headers + config count "
                    f"{counted.active:,} active of {counted.total:,} parameters)")
    judgement = evidence.judged(active_parameter_claim(target.name, float(claims["active_parameters"]), counted,
                                                       thresholds["architecture", "parameter_claim_rel_tol"]))
    assert not judgement.failed, judgement.message


def test_claimed_compute_is_plausible(target, claims, thresholds, evidence):
    """Claimed tokens and accelerator hours must imply a utilisation that real training runs reach."""
    if "training_tokens" not in claims:
        pytest.skip("no [claims].training_tokens in the audit plan: no training compute to check")
    has_hours = "gpu_hours" in claims  # with gpu_type: the plan is checked at start-up (modellineage.plan)
    counted = _count(target)
    compute = evidence.measured("training_compute", training_compute(counted, claims["training_tokens"]))
    optimal = thresholds["compute", "compute_optimal_tokens_per_parameter"]
    typical = thresholds["compute", "typical_mfu"]
    unit = reference_accelerator()
    days = gpu_days(compute.flops, unit, typical.value)
    kind = "active (MoE: the N in 6 · N · D)" if compute.moe else "dense: all active"
    rows = [["total parameters (headers)", f"{compute.total_parameters:,}"],
            ["active parameters per token (headers + config)", f"{compute.active_parameters:,}"],
            ["claimed training tokens", f"{compute.training_tokens:,.0f}"],
            ["training FLOPs ≈ 6 · N_active · D", plain_flops(compute.flops, 3)],
            ["tokens per parameter (active / total)",
             f"{plain_count(compute.tokens_per_active_parameter)} / {plain_count(compute.tokens_per_total_parameter)}"
             f" ({kind}; compute-optimal ≈ {optimal.value:g}, {optimal.where})"],
            [f"{unit.name}-days at {typical.value:.0%} utilisation ({typical.where})", plain_count(days)]]
    sentence = plain_summary(compute, unit, typical.value, optimal.value)
    if has_hours:
        util = evidence.measured("utilisation", implied_utilisation(compute, claims["gpu_hours"], claims["gpu_type"]))
        hours = plain_claim(util.gpu_hours)
        rows += [["claimed accelerator hours", f"{hours} × {util.accelerator.name}"],
                 ["peak dense throughput", f"{plain_count(util.accelerator.peak_flops / 1e12, 4)} TFLOP/s "
                                           f"({util.accelerator.source})"],
                 ["implied throughput per accelerator", f"{plain_count(util.achieved_flops_per_gpu / 1e12)} TFLOP/s"],
                 ["implied utilisation (MFU)", f"{util.mfu:.1%}"]]
        sentence += " " + plain_utilisation(util)
    evidence.html(report.table(["quantity", "value"], rows, caption=f"{target.name}: claimed training compute"))
    evidence.says(sentence)
    if not has_hours:
        pytest.skip(f"recorded, not judged: no [claims].gpu_hours/gpu_type to check against. {sentence}")
    judgement = evidence.judged(plausible_utilisation(target.name, util, thresholds["compute", "mfu_min"],
                                                      thresholds["compute", "mfu_max"]))
    assert not judgement.failed, judgement.message
