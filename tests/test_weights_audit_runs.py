"""The weight audits end to end (`pytest audits/` in a subprocess) on the demo and on models built from it."""

from __future__ import annotations

import base64
import html as html_lib
import math
import re

import pytest

from . import weight_builders as wb
from .test_audit_runs import DEMO, outcomes, record, run_audit


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights-audit")
    return {"relayered": wb.relayered(tmp / "relayered", [2, 3, 0, 1]),
            "shifted": wb.vocab_shifted(tmp / "shifted"),
            "narrow": wb.narrow(tmp / "narrow"),
            "one": wb.train_tiny(tmp / "one", seed=1),
            "two": wb.train_tiny(tmp / "two", seed=2)}


@pytest.fixture(scope="module")
def demo_full(tmp_path_factory):
    """The demo plan's weight audits, every row read."""
    tmp = tmp_path_factory.mktemp("weights-demo")
    proc, evidence = run_audit(tmp, "-m", "weights")
    return tmp, proc, evidence


def report_images(html_path) -> dict[str, dict[str, bytes]]:
    """test id -> image name -> decoded bytes, from each audit's row in the report's family sections."""
    page = html_path.read_text()
    rows = list(re.finditer(r'<tr id="audit-[^"]*" data-nodeid="([^"]*)"', page))
    out = {}
    for row, following in zip(rows, rows[1:] + [None]):
        segment = page[row.end():following.start() if following else len(page)]
        images = {html_lib.unescape(name): base64.b64decode(data) for name, data in
                  re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', segment)}
        out[html_lib.unescape(row.group(1)).split("::")[-1]] = images
    return out


def test_demo_verdicts_and_flipped_expectations(tmp_path, demo_full):
    tmp, proc, evidence = demo_full
    assert proc.returncode == 0, proc.stdout
    assert outcomes(evidence)["test_weight_similarity[base]"] == "passed"
    assert outcomes(evidence)["test_weight_similarity[scratch]"] == "passed"
    sim = record(evidence, "test_weight_similarity[scratch]")["measurements"]
    assert sim["norm_gain_trap"]["tensors"]  # scratch's norms: raw ≈ 1, centred ≈ 0 — flagged, not judged on raw
    assert "Norm-gain trap" in (tmp / "run.html").read_text()
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--expect", "independent", name="flipped")
    assert proc.returncode == 1
    failing = record(evidence, "test_weight_similarity[base]")
    assert failing["outcome"] == "failed"
    assert "centred similarity of attention" in failing["message"]
    assert "thresholds.toml [weights].independent_max_centred" in failing["message"]


def test_report_shows_the_layer_plots_and_the_embedding_statistics(demo_full):
    tmp, _, evidence = demo_full
    images = report_images(tmp / "run.html")
    for ref in ("base", "scratch"):
        shown = images[f"test_weight_similarity[{ref}]"]
        assert set(shown) == {"layer profile", "layer heatmap", "layer PCA"}, (ref, set(shown))
        assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in shown.values())
    page = (tmp / "run.html").read_text()
    assert "Embedding statistics" in page and "rotation-null s.d." in page
    stats = record(evidence, "test_weight_similarity[scratch]")["measurements"]["embedding_stats"]
    assert set(stats) == {f"{side}:{key}" for side in ("target", "reference") for key in ("embed.weight", "lm_head.weight")}
    assert all(s["rows_read"] == s["rows_total"] == 1024 for s in stats.values())


def test_sampled_intervals_contain_the_full_run_values(tmp_path, demo_full):
    """The sampled run's 95 % interval of every sampled category holds the value the full run measured."""
    _, _, full = demo_full
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--sample", "0.1")
    assert proc.returncode == 0, proc.stdout
    assert evidence["seeds"]["weights.sample"] == 0 and "weights.embedding_stats" in evidence["seeds"]
    checked = moved = 0
    for ref in ("base", "scratch"):
        sampled = record(evidence, f"test_weight_similarity[{ref}]")["measurements"]["weight_similarity"]
        exact = record(full, f"test_weight_similarity[{ref}]")["measurements"]["weight_similarity"]
        assert sampled["sample_fraction"] == 0.1 and sampled["bytes_read"] < 0.3 * exact["bytes_read"]
        truth = {g["group"]: g["mean_centred"] for g in exact["by_category"]}
        for g in sampled["by_category"]:
            if g["exact"]:
                assert g["mean_centred"] == truth[g["group"]]  # norms: one row each, read whole
                continue
            low, high = g["centred_ci"]
            assert low <= truth[g["group"]] <= high, (ref, g["group"], low, truth[g["group"]], high)
            checked += 1
            moved += g["mean_centred"] != truth[g["group"]]
        stats = record(evidence, f"test_weight_similarity[{ref}]")["measurements"]["embedding_stats"]
        assert all(s["rows_read"] == math.ceil(0.1 * 1024) and s["sample_fraction"] == 0.1 for s in stats.values())
    assert checked == 8  # embedding, attention, mlp, lm_head of both references
    assert moved == 7  # really sampled: every figure but base's frozen embedding (1.0 on any rows) moved


def test_upcycled_and_expert_copies_fail_independent_and_count_as_derivation(tmp_path):
    """Experts = base's dense MLP + 10 % noise, all else from the independent scratch: only the experts carry
    base's weights. A second MoE holds the target's experts (and router rows) in permuted slots."""
    target = wb.upcycled(tmp_path / "upcycled", noise=0.1, others_from=DEMO / "scratch")
    copy = wb.permuted_experts(target, tmp_path / "copy", [2, 0, 3, 1], others_from=DEMO / "finetune")
    plan = tmp_path / "audit.toml"
    plan.write_text(f"""
[target]
name = "upcycled"
source = "{target}"

[[reference]]
name = "base-independent"
source = "{DEMO / 'base'}"
expect = "independent"

[[reference]]
name = "base-derived"
source = "{DEMO / 'base'}"
expect = "derived"

[[reference]]
name = "expert-copy"
source = "{copy}"
expect = "independent"
""")
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--audit", str(plan))
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    results = outcomes(evidence)
    assert results["test_weight_similarity[base-independent]"] == "passed"  # nothing else is base's ...
    upcycled = record(evidence, "test_moe_experts[base-independent]")
    assert upcycled["outcome"] == "failed"  # ... but the experts are
    message = upcycled["message"]
    assert "centred similarity of routed_expert = 0.99" in message and "≥ 0.3" in message, message
    assert "[weights].independent_max_centred" in message and "16 against base-independent's dense MLP" in message
    assert re.search(r"layers\.\d\.experts\.\d ~ layers\.\d\.mlp 0\.99\d", message), message

    derived = record(evidence, "test_weight_similarity[base-derived]")
    assert derived["outcome"] == "passed" and "routed_expert 0.99" in derived["message"], derived["message"]
    assert "compared with the reference's dense MLP (upcycling check)" in derived["message"]
    assert results["test_moe_experts[base-derived]"] == "skipped"

    copied = record(evidence, "test_moe_experts[expert-copy]")
    assert copied["outcome"] == "failed" and "16 against its experts after optimal assignment" in copied["message"]
    pairs = {g["group"] for g in copied["measurements"]["experts"]}
    assert {f"layers.{i}.experts.{perm} ~ layers.{i}.experts.{slot}" for i in range(4)
            for slot, perm in enumerate([2, 0, 3, 1])} == pairs  # copy's slot e holds the target's expert perm[e]
    by_cat = {g["group"]: g for g in record(evidence, "test_weight_similarity[expert-copy]")["measurements"]
              ["weight_similarity"]["by_category"]}
    assert by_cat["router"]["mean_centred"] > 0.99  # router rows paired by the same assignment
    router_fail = record(evidence, "test_weight_similarity[expert-copy]")
    assert router_fail["outcome"] == "failed" and "centred similarity of router" in router_fail["message"]


def test_bad_sample_fraction_is_a_usage_error(tmp_path):
    proc, _ = run_audit(tmp_path, "--sample", "1.5")
    assert proc.returncode == 4 and "--sample needs a fraction in (0, 1]" in proc.stderr


def test_relayered_and_vocabulary_shifted_copies_are_caught_and_a_narrow_model_is_judged(tmp_path, models):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(models["relayered"]),
                               "--reference", f"base={DEMO / 'base'}", "--reference", f"narrow={models['narrow']}",
                               "--expect", "independent")
    assert proc.returncode == 1
    relayered = record(evidence, "test_weight_similarity[base]")
    assert relayered["outcome"] == "failed" and "layers aligned by correspondence" in relayered["message"]
    # a random model of another width: no tensor keeps its shape, so it is judged on the matched sub-matrices
    # (the target's channels, neurons and heads matched to a subset of the narrower model's) and passes
    narrow = record(evidence, "test_weight_similarity[narrow]")
    assert narrow["outcome"] == "passed" and "changed shape, so judged on the matched sub-matrices" in narrow["message"]
    assert outcomes(evidence)["test_no_tensor_signature_matches[narrow]"] == "skipped"
    assert "Traceback" not in proc.stdout

    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(models["shifted"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent", name="shifted")
    shifted = record(evidence, "test_weight_similarity[base]")
    assert shifted["outcome"] == "failed" and "embedding = 1.000" in shifted["message"]
    rows = shifted["measurements"]["weight_similarity"]["pairs"][0]
    assert rows["key"] == "embed.weight" and "shared normalised tokens" in rows["row_alignment"]


def test_independently_trained_models_pass_despite_raw_norm_cosine(tmp_path, models):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(models["one"]),
                               "--reference", f"two={models['two']}", "--expect", "independent")
    assert proc.returncode == 0, proc.stdout
    pairs = record(evidence, "test_weight_similarity[two]")["measurements"]["weight_similarity"]["pairs"]
    norms = [p for p in pairs if p["category"] == "norm"]
    assert norms and all(p["cosine"] > 0.95 for p in norms)
    assert outcomes(evidence)["test_no_tensor_signature_matches[two]"] == "passed"
