"""[[checkpoint]] and [[log]] in the audit plan: read in order, every error names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from modellineage.errors import PlanError
from modellineage.plan import FAMILIES, CheckpointSpec, LogClaim, LogSpec, load_plan

PLAN = '[target]\nsource = "m"\n\n[[reference]]\nname = "base"\nsource = "b"\nexpect = "derived"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_chain_and_logs_are_read_in_order(tmp_path):
    plan = load_plan(write(tmp_path, PLAN + """
[[checkpoint]]
name = "s0"
source = "c/0"
step = 0
[[checkpoint]]
name = "s1"
source = "c/1"
[[log]]
name = "pre"
source = "pre.jsonl"
batch_size = 8
sequence_length = 128
lr = 3e-4
warmup_steps = 0
schedule = "linear"
[[log]]
name = "ft"
source = "ft.csv"
start = "pre"
"""))
    assert plan.checkpoints == (CheckpointSpec("s0", "c/0", 0), CheckpointSpec("s1", "c/1", None))
    assert plan.logs[0] == LogSpec("pre", "pre.jsonl", LogClaim("scratch", 8, 128, 3e-4, 0, "linear", 0.0, None))
    assert plan.logs[1].claim.start == "pre" and "training" in FAMILIES
    assert plan.as_dict()["logs"][1]["source"] == "ft.csv"


@pytest.mark.parametrize("text, fragment", [
    ('[[checkpoint]]\nname = "a"\n', "[[checkpoint]] #1: missing required key 'source'"),
    ('[[checkpoint]]\nname = "a"\nsource = "x"\nstep = -1\n', "(a).step = -1 must be a non-negative integer"),
    ('[[checkpoint]]\nname = "a"\nsource = "x"\nstep = 5\n[[checkpoint]]\nname = "b"\nsource = "y"\nstep = 1\n',
     "must be in training order; steps [5, 1]"),
    ('[[checkpoint]]\nname = "a"\nsource = "x"\n[[checkpoint]]\nname = "a"\nsource = "y"\n', "repeated: ['a']"),
    ('[[checkpoint]]\nname = "a"\nsource = "x"\nshape = 1\n', "unknown key(s) ['shape']"),
    ('[[log]]\nname = "l"\nsource = "x.jsonl"\nstart = "nowhere"\n', "(l).start = 'nowhere' is not allowed"),
    ('[[log]]\nname = "l"\nsource = "x.jsonl"\nbatch_size = "16"\n', "(l).batch_size = '16' must be a positive"),
    ('[[log]]\nname = "l"\nsource = "x.jsonl"\nschedule = "step"\n', "(l).schedule = 'step' is not allowed"),
    ('[[log]]\nname = "l"\nsource = "x.jsonl"\nlr = -1\n', "(l).lr = -1 must be a non-negative number"),
    ('[[log]]\nname = "l"\nsource = "x.jsonl"\ntokens = 5\n', "unknown key(s) ['tokens']"),
    ('checkpoint = 3\n', "'checkpoint' must be an array of tables"),
])
def test_invalid_chain_or_log_entries_name_the_key(tmp_path, text, fragment):
    path = write(tmp_path, PLAN + "\n" + text if text.startswith("[[") else text + PLAN)  # a bare key belongs at the top
    with pytest.raises(PlanError) as exc:
        load_plan(path)
    assert str(path) in str(exc.value) and fragment in str(exc.value)
