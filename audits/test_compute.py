"""Compute evidence: are the claimed active parameters, training tokens and accelerator hours consistent?

From-scratch pre-training takes orders of magnitude more compute than a fine-tune, so a claim of
trillions of training tokens must come with the accelerator hours to match. The counts are exact
(safetensors headers + config); training FLOPs are 6·N_active·D. The total parameter claim is
audited in test_architecture.py (test_parameter_count_matches_claim) and not repeated here.
"""

from __future__ import annotations

import pytest

from modellineage import report
from modellineage.compute import (count_active_parameters, gpu_days, implied_utilisation, plain_number,
                                  reference_accelerator, training_compute)
from modellineage.errors import PlanError, UnsupportedFormat

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
    has_hours, has_type = "gpu_hours" in claims, "gpu_type" in claims
    if has_hours != has_type:
        raise PlanError("[claims]: gpu_hours and gpu_type go together (hours of which accelerator?)")
    counted = _count(target)
    compute = evidence.measured("training_compute", training_compute(counted, claims["training_tokens"]))
    optimal = thresholds["compute", "compute_optimal_tokens_per_parameter"]
    typical = thresholds["compute", "typical_mfu"]
    unit = reference_accelerator()
    rows = [["total parameters (headers)", f"{compute.total_parameters:,}"],
            ["active parameters per token (headers + config)", f"{compute.active_parameters:,}"],
            ["claimed training tokens", f"{compute.training_tokens:,.0f}"],
            ["training FLOPs ≈ 6 · N_active · D", f"{compute.flops:.3g}"],
            ["tokens per parameter (total / active)",
             f"{compute.tokens_per_total_parameter:,.1f} / {compute.tokens_per_active_parameter:,.1f} "
             f"(compute-optimal ≈ {optimal.value:g}, {optimal.where})"],
            [f"{unit.name}-days at {typical.value:.0%} utilisation",
             f"{gpu_days(compute.flops, unit, typical.value):,.3g}"]]
    sentence = (f"{plain_number(compute.training_tokens)} tokens × {plain_number(compute.active_parameters)} active "
                f"parameters ≈ {_sci(compute.flops)} FLOPs ≈ {_duration(gpu_days(compute.flops, unit, typical.value))} "
                f"of one {unit.name} at {typical.value:.0%} utilisation; that is "
                f"{compute.tokens_per_total_parameter / optimal.value:.2g}× the compute-optimal "
                f"~{optimal.value:g} tokens per parameter.")
    if has_hours:
        util = evidence.measured("utilisation", implied_utilisation(compute, claims["gpu_hours"], claims["gpu_type"]))
        hours = f"{util.gpu_hours:,.0f}" if util.gpu_hours >= 100 else f"{util.gpu_hours:.3g}"
        rows += [["claimed accelerator hours", f"{hours} × {util.accelerator.name}"],
                 ["peak dense throughput", f"{util.accelerator.peak_flops / 1e12:,.1f} TFLOP/s "
                                           f"({util.accelerator.source})"],
                 ["implied throughput per accelerator", f"{util.achieved_flops_per_gpu / 1e12:,.3g} TFLOP/s"],
                 ["implied utilisation (MFU)", f"{util.mfu:.1%}"]]
        sentence += (f" The claimed {hours} {util.accelerator.name} hours imply {util.mfu:.0%} "
                     "utilisation.")
    evidence.html(report.table(["quantity", "value"], rows, caption=f"{target.name}: claimed training compute"))
    evidence.says(sentence)
    if not has_hours:
        pytest.skip(f"recorded, not judged: no [claims].gpu_hours/gpu_type to check against. {sentence}")
    judgement = evidence.judged(plausible_utilisation(target.name, util, thresholds["compute", "mfu_min"],
                                                      thresholds["compute", "mfu_max"]))
    assert not judgement.failed, judgement.message


def _sci(x: float) -> str:
    return f"{x:.2g}".replace("e+", "e")


def _duration(days: float) -> str:
    if days >= 1:
        return f"{days:,.3g} days"
    if days * 24 >= 1:
        return f"{days * 24:.2g} hours"
    return f"{days * 86400:.2g} seconds"
