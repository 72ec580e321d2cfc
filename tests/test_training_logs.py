"""modellineage.training.logs on real logs: the demo's pre-training (JSON lines) and fine-tuning (W&B CSV)
logs from fixtures/build_chain.py, the same run written by torch's TensorBoard SummaryWriter, the forged
from-scratch log, and hostile files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from audits import training_criteria as tc
from audits.criteria import load_thresholds
from modellineage.errors import CorruptCheckpoint, Refused, SourceNotFound, UnsupportedFormat
from modellineage.training.logs import MAX_LOG_BYTES, LogClaim, measure_log, read_log

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / "fixtures" / "chain"
PRETRAIN = LogClaim("scratch", 16, 64, 3e-3, 20, "cosine", 3e-4, 500)
FINETUNE = LogClaim("pretrain", 16, 64, 1e-3, 10, "cosine", 1e-4, 150)


@pytest.fixture(scope="module")
def bounds():
    return load_thresholds(ROOT / "thresholds.toml")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_demo_pretraining_log_is_a_from_scratch_run(bounds):
    log = measure_log(LOGS / "pretrain.jsonl", name="pretrain", vocab_size=1024, claim=PRETRAIN)
    assert log.format == "jsonl" and log.missing == () and log.rows == 500
    assert log.ln_vocab == pytest.approx(math.log(1024)) and abs(log.first_offset) < 0.05
    judgement = tc.first_loss(log, bounds["training", "scratch_max_first_loss_below_lnv"],
                              bounds["training", "scratch_max_first_loss_above_lnv"])
    assert not judgement.failed, judgement.message
    assert not tc.loss_falls(log).failed
    assert log.tokens_per_step == 1024 and log.tokens_trained == 512_000
    assert not tc.tokens_per_step(log, bounds["training", "tokens_per_step_rel_tol"]).failed
    assert not tc.steps_match(log).failed
    assert log.lr_max_deviation < 1e-9 and log.lr_peak == 3e-3 and log.lr_peak_step == 19


def test_wandb_history_export_of_the_fine_tune(bounds):
    log = measure_log(LOGS / "finetune.csv", name="finetune", vocab_size=1024, claim=FINETUNE)
    assert log.format == "csv" and dict(log.columns) == {"step": "_step", "loss": "train/loss",
                                                          "lr": "train/learning_rate", "tokens": "train/tokens"}
    judgement = tc.first_loss(log, bounds["training", "scratch_max_first_loss_below_lnv"],
                              bounds["training", "scratch_max_first_loss_above_lnv"])
    assert not judgement.failed and "consistent with a start from the trained 'pretrain'" in judgement.message
    assert log.tokens_trained == 153_600


def test_forged_log_fails_the_from_scratch_claim_with_value_and_bound(bounds):
    log = measure_log(LOGS / "forged_scratch.jsonl", name="forged", vocab_size=1024, claim=LogClaim("scratch"))
    below = bounds["training", "scratch_max_first_loss_below_lnv"]
    judgement = tc.first_loss(log, below, bounds["training", "scratch_max_first_loss_above_lnv"])
    assert judgement.failed
    assert f"first logged loss {log.first_loss:.3f}" in judgement.message and "ln(1,024) = 6.931" in judgement.message
    assert f"ln(V) − {below.value}" in judgement.message and below.where in judgement.message
    # The honest fine-tune log, claimed from scratch, fails the same way; the pre-training log claimed to start
    # from a trained model fails the other way.
    assert tc.first_loss(measure_log(LOGS / "finetune.csv", vocab_size=1024), below,
                         bounds["training", "scratch_max_first_loss_above_lnv"]).failed
    wrong = tc.first_loss(measure_log(LOGS / "pretrain.jsonl", vocab_size=1024, claim=LogClaim("base")), below,
                          bounds["training", "scratch_max_first_loss_above_lnv"])
    assert wrong.failed and "a start at the from-scratch level" in wrong.message


def test_tensorboard_event_file_reads_like_the_json_lines(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard event files need the tensorboard package")
    from torch.utils.tensorboard import SummaryWriter

    source = rows(LOGS / "pretrain.jsonl")[:120]
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        for r in source:
            writer.add_scalar("train/loss", r["loss"], r["step"])
            writer.add_scalar("train/lr", r["lr"], r["step"])
            writer.add_scalar("train/tokens", r["tokens"], r["step"])
    event_file = next(tmp_path.glob("events.out.tfevents.*"))
    series = read_log(event_file)
    assert series.format == "tensorboard" and series.columns["loss"] == "train/loss"
    assert series.steps.tolist() == [r["step"] for r in source]
    assert series.loss.tolist() == pytest.approx([r["loss"] for r in source], rel=1e-6)  # float32 in the file
    assert series.tokens.tolist() == [r["tokens"] for r in source]


def test_wandb_ui_export_and_missing_fields_are_recorded_not_guessed(tmp_path, bounds):
    path = tmp_path / "export.csv"
    lines = ["Step,run-7 - train/loss,run-7 - train/loss__MIN,run-7 - train/loss__MAX"]
    lines += [f"{i},{7.0 - i * 0.01},{6.9 - i * 0.01},{7.1 - i * 0.01}" for i in range(1, 201)]
    path.write_text("\n".join(lines) + "\n")
    log = measure_log(path, vocab_size=1024, claim=LogClaim(batch_size=8, sequence_length=128))
    assert log.columns["loss"] == "train/loss" and log.missing == ("lr", "tokens")
    assert log.first_loss == pytest.approx(6.99) and log.tokens_per_step is None and log.lr_peak is None
    assert log.tokens_trained == 200 * 1024 and "no token column" in log.tokens_basis
    none = measure_log(path, vocab_size=1024)
    assert none.tokens_trained is None and none.lr_max_deviation is None


def test_a_schedule_other_than_the_claimed_one_fails(bounds):
    bound = bounds["training", "lr_max_deviation"]
    linear = measure_log(LOGS / "pretrain.jsonl", vocab_size=1024,
                         claim=LogClaim("scratch", 16, 64, 3e-3, 20, "linear", 3e-4, 500))
    judgement = tc.lr_schedule(linear, bound)
    assert judgement.failed and f"> {bound.value:.0%} allowed" in judgement.message
    peak = measure_log(LOGS / "pretrain.jsonl", vocab_size=1024,
                       claim=LogClaim("scratch", 16, 64, 6e-3, 20, "cosine", 6e-4, 500))
    assert tc.lr_schedule(peak, bound).failed
    batch = measure_log(LOGS / "pretrain.jsonl", vocab_size=1024, claim=LogClaim("scratch", 32, 64, steps=1000))
    assert tc.tokens_per_step(batch, bounds["training", "tokens_per_step_rel_tol"]).failed
    assert tc.steps_match(batch).failed


def test_hostile_logs_are_refused_naming_the_file(tmp_path):
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"step": 0, "loss": 1.0}\n')
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "link.jsonl").symlink_to(outside)
    with pytest.raises(Refused, match="link.jsonl"):
        read_log(folder / "link.jsonl")
    huge = folder / "huge.jsonl"
    with open(huge, "wb") as fh:  # sparse: refused by its size before anything is read
        fh.truncate(MAX_LOG_BYTES + 1)
    with pytest.raises(CorruptCheckpoint, match="huge.jsonl.*above the safety limit"):
        read_log(huge)
    bad = folder / "bad.jsonl"
    bad.write_text('{"step": 0, "loss": 7.0}\n{"step": 1, "loss": [[[[\n')
    with pytest.raises(CorruptCheckpoint, match="bad.jsonl"):
        read_log(bad)
    truncated = folder / "events.out.tfevents.1.host"
    truncated.write_bytes((1000).to_bytes(8, "little") + b"\0" * 20)
    with pytest.raises(CorruptCheckpoint, match="tfevents.*declares 1,000 bytes"):
        read_log(truncated)
    noloss = folder / "metrics.csv"
    noloss.write_text("step,accuracy\n0,0.1\n")
    with pytest.raises(UnsupportedFormat, match="metrics.csv: no training loss column"):
        read_log(noloss)
    with pytest.raises(UnsupportedFormat, match="not a training log format"):
        read_log(ROOT / "audit.toml")
    with pytest.raises(SourceNotFound):
        read_log(folder / "absent.jsonl")
    fifo = folder / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(Refused, match="pipe.jsonl"):
        read_log(fifo)
