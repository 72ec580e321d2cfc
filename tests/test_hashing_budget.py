"""Hashing under a read budget (--budget): tensor digests of one seeded row per tensor, the exact-reuse
check they allow (and what it cannot show), unchecked tensors with the reason, and the evidence's file
SHA-256 (not computed for local weight files under a budget; computed otherwise: principle 4)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modellineage.reading.hashing import scan_safetensors
from modellineage.reading.model import SHA_NOT_UNDER_BUDGET, DigestCache, Model, digest_row
from modellineage.reading.remote import SHA_COMPUTED
from modellineage.reading.sources import resolve_source
from modellineage.reading.tensors import read_header
from modellineage.weights.budget import parse_budget, plan_budget
from modellineage.weights.reuse import constant_replacements, measure_exact_reuse

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"


def _write(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def _model(name: str, folder: Path, budget: str | None, **kw) -> Model:
    cache = DigestCache(budget=None if budget is None else parse_budget(budget), full_read=budget is None, **kw)
    return Model(name, resolve_source(str(folder)), cache)


@pytest.fixture
def pair(tmp_path):
    """A reference, and a target that copies one of its tensors under another name, changes another in the
    digested row, a third only in a row that is not digested, and copies a 1-D tensor (digested whole)."""
    rng = np.random.default_rng(0)
    ref = {n: rng.standard_normal((64, 32)).astype(np.float32) for n in ("a.weight", "b.weight", "c.weight")}
    ref["norm.weight"] = rng.standard_normal(32).astype(np.float32)
    row = digest_row((64, 32), 64)
    tgt = {"moved.weight": ref["a.weight"].copy(), "norm.weight": ref["norm.weight"].copy()}
    tgt["b.weight"] = ref["b.weight"].copy()
    tgt["b.weight"][row] += 1.0  # differs in the digested row: certainly not a copy
    tgt["c.weight"] = ref["c.weight"].copy()
    tgt["c.weight"][(row + 1) % 64] += 1.0  # differs elsewhere only: the sample cannot see it
    return _write(tmp_path / "target", tgt), _write(tmp_path / "reference", ref), row


def test_sampled_row_digests_find_copies_under_any_name(pair):
    target_dir, reference_dir, row = pair
    target, reference = _model("t", target_dir, "100%"), _model("r", reference_dir, "100%")
    t, r = target.tensor_digests(), reference.tensor_digests()
    assert {d.name: d.rows for d in t} == {"b.weight": (row,), "c.weight": (row,), "moved.weight": (row,),
                                           "norm.weight": None}  # 1-D: whole
    reuse = measure_exact_reuse(t, r)
    assert {x.target_name: x.reference_names for x in reuse.reused} == {
        "moved.weight": ("a.weight",), "norm.weight": ("norm.weight",),
        "c.weight": ("c.weight",)}  # c differs only in a row not read: counted as reused (the documented limit)
    assert "b.weight" not in {x.target_name for x in reuse.reused}  # a differing digested row: exact
    # one row of each 64-row matrix and the whole 1-D tensor per model, nothing else
    assert target.digest_coverage.bytes_read == 3 * 32 * 4 + 32 * 4 == target.store.bytes_read
    assert not target.unchecked_tensors and target.unchecked_reason == ""
    # the same whole-tensor digest as a full scan for a tensor read whole
    full = {d.name: d for d in scan_safetensors(target_dir / "model.safetensors").tensors}
    norm = next(d for d in t if d.name == "norm.weight")
    assert norm == full["norm.weight"] and norm.as_dict() == full["norm.weight"].as_dict()
    assert next(d for d in t if d.name == "b.weight").as_dict()["rows"] == [row]


def test_sampled_digests_match_only_the_same_rows(pair):
    target_dir, reference_dir, _ = pair
    sampled = _model("t", target_dir, "100%").tensor_digests()
    whole = _model("r", reference_dir, None).tensor_digests()
    reuse = measure_exact_reuse(sampled, whole)
    assert {x.target_name for x in reuse.reused} == {"norm.weight"}  # a row never matches a whole tensor


def test_a_small_budget_leaves_tensors_unchecked_with_the_reason(pair):
    target_dir, _, _ = pair
    target = _model("t", target_dir, "1%")  # 10% of 1% of 24,704 bytes: 24 bytes, below any row
    assert target.tensor_digests() == ()
    assert target.unchecked_tensors == ("b.weight", "c.weight", "moved.weight", "norm.weight")
    assert "4 beyond the tensor digests' share of the read budget (24 bytes" in target.unchecked_reason
    assert target.store.bytes_read == 0
    coverage = target.digest_coverage.as_dict()
    assert coverage["unchecked"] == 4 and coverage["bytes_read"] == 0 and coverage["bytes_allowed"] == 24


def test_constant_rows_are_not_called_constant_tensors(tmp_path):
    """A tensor constant only in its digested row is excluded from reuse as constant, but never reported as
    a constant tensor (only whole digests say that)."""
    row = digest_row((64, 32), 64)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w[row] = 0.0
    config = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "vocab_size": 64}
    t = _write(tmp_path / "t", {"model.embed_tokens.weight": w})
    r = _write(tmp_path / "r", {"model.embed_tokens.weight": rng.standard_normal((64, 32)).astype(np.float32)})
    for d in (t, r):
        (d / "config.json").write_text(json.dumps(config))
    target, reference = _model("t", t, "100%"), _model("r", r, "100%")
    (digest,) = target.tensor_digests()
    assert digest.constant and digest.rows == (row,)
    assert constant_replacements(target, reference) == ()
    assert measure_exact_reuse(target.tensor_digests(), reference.tensor_digests()).excluded == {"constant": 1}


def test_input_records_say_where_each_sha256_came_from(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(DEMO / "finetune", folder)
    weights = folder / "model.safetensors"
    budgeted = DigestCache(budget=parse_budget("1%"), full_read=False)
    record = budgeted.input_record(weights)
    header = read_header(weights).data_start
    assert record["sha256"] is None and record["sha256_source"] == SHA_NOT_UNDER_BUDGET
    assert record["size"] == weights.stat().st_size and record["header_bytes"] == header
    assert record["header_sha256"] == hashlib.sha256(weights.read_bytes()[:header]).hexdigest()
    full = hashlib.sha256(weights.read_bytes()).hexdigest()
    config = budgeted.input_record(folder / "config.json")  # small files are read whole anyway: hashed
    assert config["sha256_source"] == SHA_COMPUTED and config["sha256"]
    for cache in (DigestCache(), DigestCache(full_read=False),  # principle 4: every run that is not budgeted
                  DigestCache(budget=parse_budget("1%"), verify=True)):  # and --verify-hashes
        record = cache.input_record(weights)
        assert (record["sha256"], record["sha256_source"]) == (full, SHA_COMPUTED)


def test_the_budget_plan_reserves_the_digests_share():
    target, reference = (Model(n, resolve_source(str(DEMO / n))) for n in ("finetune", "base"))
    budget = parse_budget("50%")
    plan = plan_budget(target, reference, budget)
    digests = plan.planned["tensor_digests"]
    assert 0 < digests <= 0.1 * plan.bytes_allowed
    assert plan.planned_total <= plan.bytes_allowed  # the rest fits beside it
    for model in (target, reference):
        model.digests.budget = budget
        model.tensor_digests()
    assert target.digest_coverage.bytes_read + reference.digest_coverage.bytes_read == digests


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (apt-get install strace): the "
                                                            "kernel's count of every read is what this test checks")
def test_a_budgeted_audit_reads_within_the_budget_plus_headers(tmp_path):
    """The whole `pytest audits/ --budget 10%` on a small synthetic BF16 MoE pair (benchmarks/bench_budget_reads.py,
    which runs the 1% figure on larger pairs): every read of a model file by any code, counted by strace."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_budget_reads as bench
    import bench_weights as bw

    t, r, _ = bw.write_pair(tmp_path, 24 << 20, 8 << 20)
    res = bench.run("budget", t, r, tmp_path, "10%")
    assert res["exit_code"] == 0, res["pytest_tail"]
    # tensor rows, read or mapped (a mapped window counts at its full length): within the budget
    assert res["weights_pread"] + res["weights_mapped"] <= 0.10 * res["pair_bytes"], res
    # by read(): only headers (parsed by the store and for the header SHA-256, in 4 KiB buffered reads), at most
    # 4 times each, nothing streamed
    files = [f for f in res["per_file"] if f.endswith(".safetensors")]
    assert res["weights_read"] <= 4 * (4096 * len(files) + res["header_bytes_sum"]), res
    sources = {i["sha256_source"] for i in res["reading_layer"]["inputs"]}
    assert sources == {SHA_NOT_UNDER_BUDGET, SHA_COMPUTED}  # weights not hashed whole; config and index hashed


def test_sampled_digests_see_through_gguf_storage(tmp_path):
    """A GGUF copy (F32, llama.cpp's names and permuted q/k rows) of a safetensors model: under a budget the row
    digests are taken in the Hugging Face row order, so every tensor matches its original — the GGUF feeder on
    rows and the safetensors feeder give the same digest for the same bytes."""
    sys.path.insert(0, str(Path(__file__).parent))
    from gguf_convert import convert

    gguf = convert(DEMO / "finetune", tmp_path / "ft.gguf", "F32")
    a = Model("gguf", resolve_source(str(gguf)), DigestCache(budget=parse_budget("100%"), full_read=False))
    b = Model("st", resolve_source(str(DEMO / "finetune")), DigestCache(budget=parse_budget("100%"), full_read=False))
    da, db = a.tensor_digests(), b.tensor_digests()
    assert [d.as_dict() for d in da] == [d.as_dict() for d in db] and len(da) == 39
    reuse = measure_exact_reuse(da, db)
    assert reuse.reused_count == reuse.counted_tensors == 39
    assert any(r.target_name.endswith("q_proj.weight") for r in reuse.reused)  # permuted on disk, same rows
