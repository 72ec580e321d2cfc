"""Compute claims end to end: wrong active counts and impossible utilisation fail with clear messages,
consistent claims pass (real `pytest audits/` runs on the demo's fine-tune)."""

from __future__ import annotations

from pathlib import Path

from .test_audit_runs import DEMO, outcomes, record, run_audit


def _plan(tmp_path: Path, claims: str) -> Path:
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[target]\nname = "finetune"\nsource = "{DEMO / "finetune"}"\n\n[claims]\n{claims}\n')
    return plan


def test_wrong_active_count_and_impossible_utilisation_fail_with_clear_messages(tmp_path):
    # 19.7T tokens on a 313K-parameter model in 10 H100 hours: 3.7e19 FLOPs need ~1000x the peak
    plan = _plan(tmp_path, 'active_parameters = 400000\ntraining_tokens = 19.7e12\n'
                           'gpu_hours = 10\ngpu_type = "H100"\n')
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), "-m", "compute")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = outcomes(evidence)
    assert results["test_active_parameters_match_claim"] == "failed"
    assert results["test_claimed_compute_is_plausible"] == "failed"
    active = record(evidence, "test_active_parameters_match_claim")["message"]
    assert "claimed 400,000 active parameters, headers + config count 312,896" in active
    assert "thresholds.toml [architecture].parameter_claim_rel_tol" in active
    mfu = record(evidence, "test_claimed_compute_is_plausible")
    assert "> 70% allowed (thresholds.toml [compute].mfu_max)" in mfu["message"]
    assert "too few for the claimed tokens" in mfu["message"]
    assert "too few for the claimed tokens" in proc.stdout  # the terminal shows the claim, not the code


def test_too_many_hours_and_unknown_accelerators_fail(tmp_path):
    plan = _plan(tmp_path, 'training_tokens = 665600\ngpu_hours = 1000\ngpu_type = "A100"\n')
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), "-m", "compute", name="slow")
    assert proc.returncode == 1
    assert "< 5% allowed (thresholds.toml [compute].mfu_min)" in \
        record(evidence, "test_claimed_compute_is_plausible")["message"]
    # an unknown or ambiguous accelerator is a usage error before any audit runs (plan validation: exit code 4)
    for gpu, says in [("RTX-9999", "'RTX-9999' is not in modellineage/data/accelerators.json"),
                      ("H100-80GB", "'H100-80GB' is ambiguous: it fits H100-SXM")]:
        plan = _plan(tmp_path, f'training_tokens = 665600\ngpu_hours = 1\ngpu_type = "{gpu}"\n')
        proc, _ = run_audit(tmp_path, "--audit", str(plan), "-m", "compute", name=f"bad-{gpu}")
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert says in proc.stdout + proc.stderr


def test_consistent_claims_pass_and_state_the_sentence(tmp_path):
    # 6 x 312,896 x 665,600 = 1.2496e12 FLOPs; at 40% of an H100-SXM that is 3.16 ms = 8.77e-7 h
    plan = _plan(tmp_path, 'active_parameters = 312896\ntraining_tokens = 665600\n'
                           'gpu_hours = 8.77e-7\ngpu_type = "H100-SXM"\n')
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), "-m", "compute", name="ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = record(evidence, "test_claimed_compute_is_plausible")
    assert rec["outcome"] == "passed"
    assert abs(rec["measurements"]["utilisation"]["mfu"] - 0.40) < 0.005
    summary = rec["summary"]
    assert summary.startswith("666K tokens × 313K active parameters × 6 ≈ 1.2e12 FLOPs ≈ 0.0032 seconds of one "
                              "H100-SXM at 40% utilisation.")
    assert "That is 2.13 training tokens per parameter, 0.11 times the ~20 tokens per parameter" in summary
    assert "The claimed 0.000000877 H100-SXM hours (0.0032 seconds of one) imply 40% utilisation." in summary
    assert "e+" not in summary and "e-0" not in summary
