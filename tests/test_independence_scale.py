"""The independence test at scale: units on threads (same record for any thread count), the default cap on routed
experts per layer (coverage in the record, the read budget's plan within it), the float32 assignment (the same
matching as float64) and the float32 read path (the same rows as the float64 one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from modellineage import open_model
from modellineage.independence.matching import EXPERTS_PER_LAYER, _unit, match_rows, measure_independence
from modellineage.weights.budget import parse_budget, plan_budget

from . import weight_builders as wb


@pytest.fixture(scope="module")
def moe_pair(tmp_path_factory):
    """A 20-expert upcycled MoE and a noisy copy with its experts (and router rows) permuted: a derived MoE pair."""
    tmp = tmp_path_factory.mktemp("moe")
    experts = EXPERTS_PER_LAYER + 4
    source = wb.upcycled(tmp / "moe", experts=experts)
    perm = [int(x) for x in np.random.default_rng(3).permutation(experts)]
    return open_model(wb.permuted_experts(source, tmp / "copy", perm)), open_model(source), experts


def test_threads_give_the_same_record_and_the_default_caps_routed_experts(moe_pair):
    target, reference, experts = moe_pair
    one = measure_independence(target, reference, workers=1, heads=False)
    two = measure_independence(target, reference, workers=2, heads=False)
    assert json.dumps(one.as_dict()) == json.dumps(two.as_dict())
    layers = len(one.layers)
    assert one.coverage["units_tested"] == layers * EXPERTS_PER_LAYER
    assert one.coverage["units_available"] == layers * experts
    assert "the full read's default" in one.coverage["why"]
    assert any(f"{EXPERTS_PER_LAYER} of {experts} per layer" in n for n in one.notes)
    assert one.combined.log10_p < -50
    every = measure_independence(target, reference, experts_per_layer=None, heads=False)
    assert every.coverage["units_tested"] == every.coverage["units_available"] == layers * experts
    assert every.coverage["why"] == "every MLP unit both models have"
    # the capped test's units are the same computation as in the full one (a subset of its records)
    full = {(u.layer, u.expert): u.as_dict() for x in every.layers for u in x.units}
    assert all(full[(u.layer, u.expert)] == u.as_dict() for x in one.layers for u in x.units)


def test_a_read_budget_never_plans_more_experts_than_the_default_cap(moe_pair):
    target, reference, _ = moe_pair
    plan = plan_budget(target, reference, parse_budget("100%"))
    assert plan.experts_per_layer == EXPERTS_PER_LAYER


@pytest.mark.parametrize("absolute", [False, True])
def test_float32_assignment_is_the_float64_optimum(absolute):
    """The dense matcher decides on a float32 product: on sketched-size rows it picks the float64 optimum."""
    rng = np.random.default_rng(0)
    for n, k in ((300, 64), (700, 256)):
        a, b = _unit(rng.standard_normal((n, k))), _unit(rng.standard_normal((n, k)))
        perm, sims, how = match_rows(a, b, absolute=absolute)
        score = a @ b.T
        rows, cols = linear_sum_assignment(np.abs(score) if absolute else score, maximize=True)
        assert how == "dense" and np.array_equal(perm[rows], cols)
        assert np.allclose(sims, score[np.arange(n), perm], rtol=0, atol=1e-12)


def test_progress_reports_layers_in_order_and_the_audit_draws_a_layer_bar():
    import io

    from audits.shared import _LayerBar
    from modellineage.reading import progress

    from .test_audit_runs import DEMO

    calls = []
    target, base = open_model(DEMO / "finetune"), open_model(DEMO / "base")
    measure_independence(target, base, heads=False, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 4) for i in range(5)]

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    before = (progress._flag, progress._stream)  # the session's setting, restored below
    progress.configure(True, stream=screen)
    try:
        with _LayerBar("independence vs base") as bar:
            measure_independence(target, base, heads=False, progress=bar)
    finally:
        progress.configure(*before)
    assert "independence vs base" in screen.getvalue() and "/4" in screen.getvalue()


def test_a_nan_read_on_the_float32_path_is_named(tmp_path):
    """The float32 read path checks every block: a NaN raises NonFiniteWeights naming the file and tensor."""
    from modellineage.errors import NonFiniteWeights

    from .test_audit_runs import DEMO

    tensors = wb.load(DEMO / "finetune")
    key = "model.layers.1.mlp.up_proj.weight"
    tensors[key] = tensors[key].copy()
    tensors[key][3, 5] = np.nan
    bad = wb.write_model(tmp_path / "bad", tensors, wb.config(DEMO / "finetune"))
    with pytest.raises(NonFiniteWeights, match=r"bad/model\.safetensors: tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        measure_independence(open_model(bad), open_model(DEMO / "base"), heads=False)


def test_the_audit_tests_every_routed_expert_only_when_asked(moe_pair, tmp_path):
    """--all-experts lifts the default cap in the audit (evidence coverage says so); with --budget it is refused."""
    from .test_audit_runs import record, run_audit

    target, reference, experts = moe_pair
    args = ("--target", str(target.source.root), "--reference", f"base={reference.source.root}", "--expect", "derived",
            "-k",
            "test_independence_pvalue")
    proc, evidence = run_audit(tmp_path, *args, "--all-experts", name="all")
    assert evidence is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    cov = record(evidence, "test_independence_pvalue[base]")["measurements"]["independence"]["coverage"]
    assert cov["units_tested"] == cov["units_available"] and cov["why"] == "every MLP unit both models have"
    assert evidence["plan"]["options"]["all_experts"] is True
    proc, _ = run_audit(tmp_path, *args, "--all-experts", "--budget", "1%", name="refused")
    assert proc.returncode != 0 and "--all-experts and --budget" in proc.stdout + proc.stderr
