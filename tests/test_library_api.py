"""The library without pytest's audit layer: open two models, measure each family, run the audits by command.

Real demo models (fixtures/demo, trained on CPU by fixtures/build_demo.py); the numbers must be the ones
the audits judge (the audits call the same entry points).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modellineage import architecture, independence, open_model, tokenizer, weights

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"


@pytest.fixture(scope="module")
def demo():
    return {name: open_model(DEMO / name) for name in ("base", "finetune", "scratch")}


def test_weights_measure_separates_the_fine_tune_from_the_scratch_model(demo):
    tuned = weights.measure(demo["finetune"], demo["base"], min_layer_match=0.3)
    scratch = weights.measure(demo["scratch"], demo["base"], min_layer_match=0.3)
    top = {g.group: g.mean_centred for g in tuned.comparison.by_category}
    low = {g.group: g.mean_centred for g in scratch.comparison.by_category}
    assert top["mlp"] > 0.9 and low["mlp"] < 0.2
    assert tuned.seeds == {"weights.signatures": weights.pipeline.SIGNATURE_SEED}


def test_weights_measure_reuses_the_target_side_and_samples_with_intervals(demo):
    side = weights.measure_target(demo["finetune"], sample=0.25)
    m = weights.measure(demo["finetune"], demo["base"], min_layer_match=0.3, sample=0.25, seed=3, target_side=side)
    assert m.seeds["weights.sample"] == 3
    assert all(g.centred_ci is not None for g in m.comparison.by_category)


def test_every_family_has_a_measure_entry_point(demo):
    tok = tokenizer.measure(demo["finetune"], demo["base"], ROOT / "fixtures" / "probes")
    assert tok.overlap.share_of_target == 1.0
    arch = architecture.measure(demo["finetune"], demo["base"])
    assert arch.comparison is not None and not arch.comparison.differing
    assert all(a.agrees for a in arch.agreements if a.agrees is not None)
    test = independence.measure(demo["finetune"], demo["base"])
    assert test.combined.log10_p < -6
    json.dumps(arch.as_dict())  # plain records


def test_the_console_script_runs_the_audits_as_pytest_does(tmp_path):
    """`modellineage ...` is `pytest audits/ ...`: same exit code, same evidence."""
    out = tmp_path / "evidence.json"
    run = subprocess.run([sys.executable, "-m", "modellineage.cli", "-q", "-m", "architecture",
                          "--evidence", str(out), "-p", "no:cacheprovider"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    evidence = json.loads(out.read_text())
    assert evidence["complete"] is True
    assert {a["nodeid"].split("::")[0] for a in evidence["audits"]} >= {"audits/test_architecture.py"}
