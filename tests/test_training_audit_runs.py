"""The training audits end to end (`pytest audits/ -m training` in a subprocess): the demo's real chain and
logs pass, a forged chain and a forged log fail with the observed value and the bound, a missing or corrupt
checkpoint skips its link with the reason while the rest is audited."""

from __future__ import annotations

from pathlib import Path

from tests.test_audit_runs import outcomes, record, run_audit

ROOT = Path(__file__).resolve().parents[1]


def test_demo_chain_and_logs_pass_the_training_audits(tmp_path):
    proc, evidence = run_audit(tmp_path, "-m", "training")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = outcomes(evidence)
    judged = {k: v for k, v in results.items() if k != "test_no_jump_toward_reference[base]"}
    assert len(judged) == 17 and set(judged.values()) == {"passed"}, results
    assert results["test_no_jump_toward_reference[base]"] == "skipped"  # base is claimed as the ancestor
    first = record(evidence, "test_log_first_loss[pretrain]")
    assert first["judgement"]["measured"] < 0.05 and "consistent with a from-scratch start" in first["message"]
    assert {i["model"] for i in evidence["inputs"]} >= {"checkpoint step-0", "log pretrain", "log finetune"}
    html = (tmp_path / "run.html").read_text()
    assert "data:image/png;base64" in html and "Checkpoint chain: mean centred similarity" in html


def test_forged_chain_and_log_fail_and_broken_links_are_skipped(tmp_path):
    data = (ROOT / "fixtures/chain/pretrain/step_0300/model.safetensors").read_bytes()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_bytes((ROOT / "fixtures/chain/pretrain/step_0300/config.json").read_bytes())
    (corrupt / "model.safetensors").write_bytes(data[:1000])
    secret = tmp_path / "secret.jsonl"
    secret.write_text('{"step": 0, "loss": 6.93}\n')
    published = tmp_path / "published"
    published.mkdir()
    (published / "linked.jsonl").symlink_to(secret)  # a log that is a link out of its folder
    plan = tmp_path / "forged.toml"
    plan.write_text(f"""
[target]
name = "finetune"
source = "{ROOT}/fixtures/demo/finetune"

[[reference]]
name = "base"
source = "{ROOT}/fixtures/demo/base"
expect = "independent"      # the forger's claim

[[checkpoint]]
name = "forged-0"           # a fine-tuned copy of base posing as the initialisation
source = "{ROOT}/fixtures/demo/finetune"

[[checkpoint]]
name = "missing"
source = "{tmp_path}/no-such-checkpoint"

[[checkpoint]]
name = "corrupt"
source = "{corrupt}"

[[checkpoint]]
name = "step-400"
source = "{ROOT}/fixtures/chain/pretrain/step_0400"

[[checkpoint]]
name = "step-500"
source = "{ROOT}/fixtures/demo/base"

[[log]]
name = "forged"
source = "{ROOT}/fixtures/chain/forged_scratch.jsonl"
start = "scratch"

[[log]]
name = "linked"
source = "{published}/linked.jsonl"
""")
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), "-m", "training")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    results = outcomes(evidence)
    init = record(evidence, "test_first_checkpoint_is_initialisation")
    assert init["outcome"] == "failed" and "forged-0 does not look like an initialisation" in init["message"]
    assert "allowed, thresholds.toml [training].init_max_std_deviation" in init["message"]
    loss = record(evidence, "test_log_first_loss[forged]")
    assert loss["outcome"] == "failed" and "first logged loss 3.449" in loss["message"]
    assert "ln(V) − 0.5" in loss["message"] and "[training].scratch_max_first_loss_below_lnv" in loss["message"]
    jump = record(evidence, "test_no_jump_toward_reference[base]")
    assert jump["outcome"] == "failed" and "forged-0 attention" in jump["message"]
    missing = record(evidence, "test_checkpoint_link[missing]")
    assert missing["outcome"] == "skipped" and "no-such-checkpoint" in missing["message"]
    corrupt_link = record(evidence, "test_checkpoint_link[corrupt]")
    assert corrupt_link["outcome"] == "skipped" and "model.safetensors" in corrupt_link["message"]
    bridged = record(evidence, "test_checkpoint_link[step-400]")
    # base's step-400 checkpoint and the forged first (base, fine-tuned) are close relatives: the link holds;
    # the forgery is caught at the start of the chain and against the reference.
    assert bridged["outcome"] == "passed" and "step-400: centred similarity to forged-0 " \
        "(bridging unreadable missing, corrupt)" in bridged["message"]
    assert results["test_checkpoint_link[step-500]"] == "passed"
    assert results["test_target_descends_from_last_checkpoint"] == "passed"
    linked = record(evidence, "test_log_first_loss[linked]")
    assert linked["outcome"] == "failed" and "linked.jsonl" in linked["message"] and "refused" in linked["message"]
    entry = next(i for i in evidence["inputs"] if i["model"] == "log linked")
    assert entry["sha256"] is None and "refused" in entry["error"]  # never opened, never hashed
    assert "Traceback" not in proc.stdout
