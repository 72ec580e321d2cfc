"""The audit plan: TOML and command-line forms, and errors that name file, key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from modellineage.errors import PlanError
from modellineage.plan import load_plan, override_plan

PLAN = """
[target]
name = "mine"
source = "models/mine"

[[reference]]
name = "llama-3"
source = "models/llama"
expect = "independent"
tokenizer = "derived"

[[reference]]
name = "base"
source = "/abs/base"
expect = "derived"

[claims]
parameters = 1000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text(text)
    return path


def test_plan_reads_targets_references_refinements_and_claims(tmp_path):
    plan = load_plan(write(tmp_path, PLAN))

    assert plan.target_name == "mine" and plan.target_source == "models/mine"
    assert plan.base_dir == tmp_path.resolve()
    llama, base = plan.references
    assert (llama.name, llama.expect, llama.expectation("tokenizer"), llama.expectation("weights")) == (
        "llama-3", "independent", "derived", "independent")
    assert base.expectation("tokenizer") == "derived"
    assert plan.claims == {"parameters": 1000}


@pytest.mark.parametrize(
    "text, fragment",
    [
        (PLAN.replace('expect = "derived"', 'expect = "copied"'), "'copied' is not allowed"),
        (PLAN.replace('tokenizer = "derived"', 'tokenizer = "maybe"'), "llama-3).tokenizer"),
        (PLAN.replace('tokenizer = "derived"', 'colour = "blue"'), "unknown key(s) ['colour']"),
        (PLAN.replace('name = "base"', 'name = "llama-3"'), "repeated: ['llama-3']"),
        (PLAN.replace('name = "base"', 'name = "a b"'), "not a valid name"),
        (PLAN.replace('source = "/abs/base"\n', ""), "missing required key 'source'"),
        (PLAN + "\n[extra]\n", "unknown top-level key(s) ['extra']"),
        ("[target\n", "not a readable TOML file"),
        (PLAN + "gpu_hour = 10\n", "unknown key(s) ['gpu_hour'] that no audit checks"),
        (PLAN + 'training_tokens = "19.7T"\n', "[claims].training_tokens = '19.7T' must be a positive number"),
        (PLAN + "active_parameters = -5\n", "[claims].active_parameters = -5 must be a positive number"),
        (PLAN + "parameters_ = true\n", "unknown key(s) ['parameters_']"),
        (PLAN + "gpu_hours = 10\n", "gpu_hours and gpu_type go together"),
        (PLAN + 'gpu_hours = 10\ngpu_type = "RTX-9999"\n', "'RTX-9999' is not in modellineage/data/accelerators.json"),
    ],
)
def test_invalid_plans_name_the_file_and_the_key(tmp_path, text, fragment):
    path = write(tmp_path, text)

    with pytest.raises(PlanError) as err:
        load_plan(path)

    assert str(path) in str(err.value) and fragment in str(err.value)


def test_valid_claims_are_kept(tmp_path):
    plan = load_plan(write(tmp_path, PLAN + 'training_tokens = 19.7e12\ngpu_hours = 1e6\ngpu_type = "H100-SXM"\n'))

    assert plan.claims == {"parameters": 1000, "training_tokens": 19.7e12, "gpu_hours": 1e6, "gpu_type": "H100-SXM"}


def test_against_catalog_sets_the_catalog_claim(tmp_path):
    plan = override_plan(load_plan(write(tmp_path, PLAN)), against_catalog="independent")

    assert plan.catalog == {"expect": "independent"}
    with pytest.raises(PlanError, match="--against-catalog"):
        override_plan(plan, against_catalog="derived")


def test_missing_plan_file_is_named(tmp_path):
    with pytest.raises(PlanError, match="audit plan not found"):
        load_plan(tmp_path / "nope.toml")


def test_command_line_references_need_an_expectation(tmp_path):
    with pytest.raises(PlanError, match="--reference needs --expect"):
        override_plan(None, target="x", references=["a=b"])


def test_command_line_builds_a_plan(tmp_path):
    (tmp_path / "my-model").mkdir()
    plan = override_plan(None, target=str(tmp_path / "my-model"), references=["llama=org/llama", "mix=./m"],
                         expect="independent", base_dir=tmp_path)

    assert plan.target_name == "my-model"
    assert [(r.name, r.source, r.expect) for r in plan.references] == [
        ("llama", "org/llama", "independent"), ("mix", "./m", "independent")]


def test_expect_overrides_every_reference_and_drops_refinements(tmp_path):
    plan = override_plan(load_plan(write(tmp_path, PLAN)), expect="independent")

    assert all(r.expect == "independent" and not r.family_expect for r in plan.references)


@pytest.mark.parametrize("bad", ["noequals", "=src", "name="])
def test_malformed_reference_option(bad):
    with pytest.raises(PlanError, match="NAME=SOURCE|not a valid name"):
        override_plan(None, target="t", references=[bad], expect="derived")
