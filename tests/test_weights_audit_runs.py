"""The weight audits end to end (`pytest audits/` in a subprocess) on the demo and on models built from it."""

from __future__ import annotations

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


def test_demo_verdicts_and_flipped_expectations(tmp_path):
    proc, evidence = run_audit(tmp_path, "-m", "weights")
    assert proc.returncode == 0, proc.stdout
    assert outcomes(evidence)["test_weight_similarity[base]"] == "passed"
    assert outcomes(evidence)["test_weight_similarity[scratch]"] == "passed"
    sim = record(evidence, "test_weight_similarity[scratch]")["measurements"]
    assert sim["norm_gain_trap"]["tensors"]  # scratch's norms: raw ≈ 1, centred ≈ 0 — flagged, not judged on raw
    assert "Norm-gain trap" in (tmp_path / "run.html").read_text()
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--expect", "independent", name="flipped")
    assert proc.returncode == 1
    failing = record(evidence, "test_weight_similarity[base]")
    assert failing["outcome"] == "failed"
    assert "centred similarity of attention" in failing["message"]
    assert "thresholds.toml [weights].independent_max_centred" in failing["message"]


def test_sampled_run_records_seed_and_intervals(tmp_path):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--sample", "0.1")
    assert proc.returncode == 0, proc.stdout
    assert evidence["seeds"]["weights.sample"] == 0
    sim = record(evidence, "test_weight_similarity[base]")["measurements"]["weight_similarity"]
    assert sim["sample_fraction"] == 0.1
    attention = next(g for g in sim["by_category"] if g["group"] == "attention")
    assert not attention["exact"] and attention["centred_ci"][0] <= attention["mean_centred"] <= attention["centred_ci"][1]


def test_bad_sample_fraction_is_a_usage_error(tmp_path):
    proc, _ = run_audit(tmp_path, "--sample", "1.5")
    assert proc.returncode == 4 and "--sample needs a fraction in (0, 1]" in proc.stderr


def test_relayered_and_vocabulary_shifted_copies_are_caught_and_a_narrow_model_skips(tmp_path, models):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(models["relayered"]),
                               "--reference", f"base={DEMO / 'base'}", "--reference", f"narrow={models['narrow']}",
                               "--expect", "independent")
    assert proc.returncode == 1
    relayered = record(evidence, "test_weight_similarity[base]")
    assert relayered["outcome"] == "failed" and "layers aligned by correspondence" in relayered["message"]
    narrow = record(evidence, "test_weight_similarity[narrow]")
    assert narrow["outcome"] == "skipped" and "different widths" in narrow["message"]
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
