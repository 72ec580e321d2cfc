"""Read budgets (--budget): parsing, the plan a budget makes from the headers, and verdicts under a budget
that agree with the full-read verdicts on the demo (the synthetic 100B-shaped pairs: benchmarks/bench_budget.py)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from modellineage.errors import UnsupportedFormat
from modellineage.independence.matching import measure_independence
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.weights.budget import parse_budget, plan_budget
from modellineage.weights.pipeline import measure

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
THRESHOLDS = tomllib.loads((ROOT / "thresholds.toml").read_text())


def _model(name: str) -> Model:
    return Model(name, resolve_source(str(DEMO / name)))


@pytest.mark.parametrize("text, fraction, nbytes", [
    ("0.01", 0.01, None), ("1%", 0.01, None), ("1", 1.0, None), ("4e9", None, 4 * 10**9), ("4GB", None, 4 * 10**9),
    ("512MiB", None, 512 * 2**20), ("2", None, 2)])
def test_parse_budget(text, fraction, nbytes):
    b = parse_budget(text)
    assert (b.fraction, b.nbytes) == (fraction, nbytes)


@pytest.mark.parametrize("text", ["", "-1", "0", "0%", "150%", "1 byte", "abc", "1"[:0] + "0.5 GB/s"])
def test_parse_budget_refuses(text):
    with pytest.raises(ValueError, match="budget"):
        parse_budget(text)


def _side(figures: dict, expect: str) -> dict:
    """Which side of its bound each category's mean centred similarity falls (the weight audit's rule)."""
    w = THRESHOLDS["weights"]
    if expect == "derived":
        return {k: v >= w["derived_min_centred"]["value"] for k, v in figures.items()}
    return {k: v >= (w["independent_max_embedding_centred"]["value"] if k == "embedding"
                     else w["independent_max_centred"]["value"]) for k, v in figures.items()}


@pytest.mark.parametrize("reference, expect", [("base", "derived"), ("scratch", "independent")])
def test_weight_verdicts_at_one_percent_agree_with_the_full_read(reference, expect):
    target, ref = _model("finetune"), _model(reference)
    full = measure(target, ref, min_layer_match=0.5)
    plan = plan_budget(target, ref, parse_budget("0.01"))
    cheap = measure(target, ref, min_layer_match=0.5, budget=plan)
    f = {g.group: g.mean_centred for g in full.comparison.by_category}
    c = {g.group: g.mean_centred for g in cheap.comparison.by_category}
    assert f.keys() == c.keys()
    assert _side(f, expect) == _side(c, expect)
    assert cheap.comparison.fraction == plan.sample and all(g.centred_ci.low <= g.mean_centred <= g.centred_ci.high
                                                            for g in cheap.comparison.by_category)
    # the reading is recorded: far less than the full read, but the demo's tiny rows cannot fit 1%
    assert cheap.reading["bytes_read"] < full.reading["bytes_read"] / 4
    assert cheap.reading["bytes_present"] == full.reading["bytes_present"] == plan.bytes_present
    assert cheap.reading["budget"]["bytes_allowed"] == plan.bytes_allowed
    assert cheap.reading["within_budget"] is False and plan.over_budget  # said, not hidden
    assert plan.signature_min_rows == 1 and plan.signature_elements < 2048 and plan.sample_min_rows == 2


def test_independence_under_a_budget():
    target, base, scratch = _model("finetune"), _model("base"), _model("scratch")
    tiny = plan_budget(target, base, parse_budget("0.01"))
    assert tiny.independence_layers is None
    with pytest.raises(UnsupportedFormat, match="below its smallest form"):
        tiny.check_independence()
    plan = plan_budget(target, base, parse_budget("0.45"))  # the demo's embeddings are 40% of it
    assert plan.independence_layers and len(plan.independence_layers) < 4
    alpha = THRESHOLDS["independence"]["alpha"]["value"] / 2
    for ref, derived in ((base, True), (scratch, False)):
        full = measure_independence(target, ref)
        cheap = measure_independence(target, ref, layers=plan.independence_layers, heads=False,
                                     max_tokens=plan.align_tokens)
        assert [r.layer for r in cheap.layers] == list(plan.independence_layers)
        assert (full.combined.p < alpha) == (cheap.combined.p < alpha) == derived
        assert any("read budget" in n for n in cheap.notes)


def test_budgeted_demo_audit_end_to_end(tmp_path):
    """`pytest audits/ --budget 1%`: exit 0, the same weight verdicts as the full run, the reading recorded, the
    independence audits skipped with the reason (the demo's embeddings alone are 40% of it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_audit_runs import outcomes, record, run_audit

    proc, evidence = run_audit(tmp_path, "--budget", "1%", "-m", "weights or independence or reuse", name="budget")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = outcomes(evidence)
    assert results["test_weight_similarity[base]"] == results["test_weight_similarity[scratch]"] == "passed"
    assert results["test_independence_pvalue[base]"] == "skipped"
    assert "below its smallest form" in record(evidence, "test_independence_pvalue[base]")["message"]
    reading = record(evidence, "test_weight_similarity[scratch]")["measurements"]["reading"]
    assert reading["budget"]["budget"] == "1%" and reading["bytes_read"] < reading["bytes_present"]
    assert reading["within_budget"] is False  # the demo's floor (1 grid row + 2 rows per tensor), said
    # the reuse audit's digests: one seeded row per tensor within 10% of the budget, the rest named with the reason
    reuse = record(evidence, "test_no_exact_tensor_reuse[scratch]")["measurements"]["exact_reuse"]
    assert reuse["coverage"]["models"]["finetune"]["rows_per_tensor"] == 1 and reuse["unchecked"]
    assert "share of the read budget" in reuse["coverage"]["models"]["finetune"]["unchecked_reason"]
    # no weight file hashed whole: its size and header SHA-256 identify it, and the record says so
    inputs = evidence["inputs"]
    weights = [i for i in inputs if i["path"].endswith(".safetensors")]
    assert weights and all(i["sha256"] is None and i["header_sha256"] and i["sha256_source"].startswith(
        "not computed under --budget") for i in weights)
    assert all(i["sha256"] and i["sha256_source"] == "computed over the full file" for i in inputs if i not in weights)
    proc, _ = run_audit(tmp_path, "--budget", "1%", "--sample", "0.1", name="both")
    assert proc.returncode != 0 and "give one" in proc.stdout + proc.stderr
