"""Independence test with a calibrated p-value (issue #5; Zhu et al., ICML 2025).

H0: the target and the reference were trained from independent random initialisations. MLP neurons
are matched twice (gate rows, up rows) after aligning the residual dimensions through shared-token
embeddings and folding norm gains; Spearman's ρ between the two matchings gives a per-layer p-value,
combined over layers with Fisher's method. Permuting, rescaling or sign-flipping hidden units leaves
the statistic unchanged (tests/test_independence.py proves it on the demo).
"""

from __future__ import annotations

import math

import pytest

from modellineage.reporting import report

from .criteria import _p_text, independence_alpha, independence_pvalue
from .shared import independence_reading, independence_test

pytestmark = pytest.mark.independence


def test_independence_pvalue(target, reference, thresholds, evidence, audit_session, pytestconfig):
    test = evidence.measured("independence", independence_test(pytestconfig, target, reference, audit_session))
    evidence.measured("reading", independence_reading(pytestconfig, reference))
    bound = thresholds["independence", "alpha"]
    n_refs = len(audit_session.plan.references)
    alpha = independence_alpha(bound, n_refs)
    expectation = reference.expectation("independence")
    evidence.html(_layer_table(test, alpha))
    evidence.png(report.bar_plot([str(r.layer) for r in test.layers],
                                 [min(350.0, -r.pvalue.log10_p) for r in test.layers],
                                 title=f"−log10 p per layer vs {reference.name} (α = {alpha:.3g} ⇒ "
                                       f"{-math.log10(alpha):.1f}; capped at 350)",
                                 ylabel="−log10 p"), "independence p by layer")
    low = [r.layer for r in test.layers if r.pvalue.p < alpha]
    cov = test.coverage
    tested = "" if not cov or cov["units_tested"] >= cov["units_available"] else \
        f" {cov['units_tested']} of {cov['units_available']} MLP units tested ({cov['why']})."
    evidence.says(f"Independence test against {reference.name}: combined p = {_p_text(test.combined)} over "
                  f"{len(test.layers)} layers ({len(low)} layer(s) below α = {alpha:.3g}"
                  f"{': ' + ', '.join(map(str, low)) if low else ''}); layers paired {test.layer_pairing}.{tested}")
    if expectation == "independent" and test.combined.min_p >= alpha:
        pytest.skip(f"recorded, not judged: even a perfect match could not reach α = {alpha:.3g} "
                    f"(smallest attainable p {test.combined.min_p:.3g}); the test has no power here")
    judgement = evidence.judged(independence_pvalue(test, expectation, bound, n_refs))
    assert not judgement.failed, judgement.message


def _layer_table(test, alpha: float) -> str:
    rows = []
    for layer in test.layers:
        att = layer.attention
        for unit in layer.units:
            label = unit.label if layer.reference_layer is None else f"{unit.label} ↔ reference layer {layer.reference_layer}"
            rows.append([label, unit.neurons, f"{unit.rho:+.3f}", _p_text(unit.pvalue),
                         f"{unit.pvalue.min_p:.3g}" if unit.pvalue.min_p > 0 else f"10^{unit.pvalue.log10_min_p:.0f}",
                         unit.pvalue.method, f"{unit.gate_matched_cos:.3f}", f"{unit.up_matched_abs_cos:.3f}",
                         f"{unit.neuron_order_kept:.0%}",
                         "—" if att is None else f"{att.as_stored_similarity:.3f} → {att.matched_similarity:.3f}",
                         "below α" if unit.pvalue.p < alpha else ""])
    h = test.hidden
    head = report.table(
        ["combined p", "smallest attainable", "layers", "hidden alignment", "shared tokens", "features"],
        [[_p_text(test.combined), f"10^{test.combined.log10_min_p:.0f}", len(test.layers),
          f"mean |corr| {h.matched_abs_corr:.3f}, same index {h.identity_share:.0%}, flipped {h.negative_share:.0%}",
          f"{h.tokens_used} of {h.tokens_shared} ({h.token_source})",
          f"{test.features}{' (seeded sketch)' if test.projected else ''}"]],
        caption=f"Independence test vs {test.reference} (Fisher over layers)")
    return head + report.table(
        ["block", "neurons", "ρ(π_gate, π_up)", "p", "min p", "method", "gate cos (matched)", "|up cos| (matched)",
         "neuron order kept", "attention heads: stored → matched", ""], rows,
        caption="Per-layer p-values (up rows matched after removing each neuron's own gate direction; "
                "|cos(gate, up)| within neurons is in evidence.json)")
