"""GGUF as a model source: the demo models converted to GGUF (F16 and Q8_0, llama.cpp's names and q/k
row order, written with the ``gguf`` package by tests/gguf_convert.py) read back as their safetensors
originals, audit as derived from their safetensors base and independent of ``scratch``; hostile GGUF
headers fail naming the file."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from modellineage.errors import CorruptCheckpoint, UnsupportedFormat
from modellineage.reading.gguf_weights import (
    GGUFStore,
    config_from_gguf,
    dequantisable_types,
    read_gguf_header,
    scan_gguf,
    unpermute_rows,
)
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.reading.tensors import TensorStore
from modellineage.weights.pipeline import measure

sys.path.insert(0, str(Path(__file__).parent))
from gguf_convert import convert, permute_qk  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> dict[tuple[str, str], Path]:
    tmp = tmp_path_factory.mktemp("gguf")
    return {(name, q): convert(DEMO / name, tmp / f"{name}-{q}.gguf", q)
            for name in ("finetune", "scratch") for q in ("F16", "Q8_0")}


def test_unpermute_rows_inverts_llama_cpp_permutation():
    w = np.arange(48 * 3, dtype=np.float32).reshape(48, 3)
    for heads in (1, 2, 3, 6):
        stored = permute_qk(w, heads)
        assert not np.array_equal(stored, w)
        np.testing.assert_array_equal(stored[unpermute_rows(48, heads)], w)
    with pytest.raises(CorruptCheckpoint):
        unpermute_rows(10, 4)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_gguf_reads_back_as_the_safetensors_original(ggufs, qtype):
    path = ggufs[("finetune", qtype)]
    with GGUFStore([path]) as g, TensorStore([DEMO / "finetune" / "model.safetensors"]) as s:
        assert g.names() == s.names()  # llama.cpp names mapped back to the Hugging Face ones
        for name in s.names():
            a = s.read_row_range(name, 0, s.info(name).rows)
            b = g.read_row_range(name, 0, g.info(name).rows)
            assert b.shape == a.shape and g.info(name).shape == s.info(name).shape
            tol = 2e-3 * np.abs(a).max() if g.info(name).dtype == "F16" or a.ndim == 1 else \
                np.abs(a).max() / 100  # Q8_0: one step of 127 levels per block
            assert np.abs(a - b).max() <= tol, name
        # q rows come back in the Hugging Face order, however they are asked for
        q = "model.layers.2.self_attn.q_proj.weight"
        rows = [17, 3, 3, 60, 0]
        np.testing.assert_allclose(g.read_rows(q, rows), s.read_rows(q, rows), atol=np.abs(a).max())
        assert np.corrcoef(g.read_rows(q, rows).ravel(), s.read_rows(q, rows).ravel())[0, 1] > 0.999
        stored = g.header.tensors["blk.2.attn_q.weight"]
        assert g.info(q).row_map is not None and stored.shape == (64, 64)
        assert g.bytes_read > 0
    if qtype == "Q8_0":
        assert {"Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K", "F16", "BF16", "F32"} <= dequantisable_types()


def test_gguf_config_and_digests(ggufs):
    path = ggufs[("finetune", "Q8_0")]
    cfg = config_from_gguf(read_gguf_header(path))
    demo = json.loads((DEMO / "finetune" / "config.json").read_text())
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "head_dim", "tie_word_embeddings", "max_position_embeddings"):
        assert cfg[key] == demo[key], key
    digest = scan_gguf(path)
    assert digest.size == path.stat().st_size and len(digest.tensors) == 39
    assert scan_gguf(path) == digest
    assert {t.dtype for t in digest.tensors} == {"F32", "F16", "Q8_0"}  # down_proj rows of 172 stay F16
    source = resolve_source(str(path))
    assert source.weight_files == (path,) and source.tokenizer_files == (path,)


@pytest.mark.parametrize("qtype", ["F16", "Q8_0"])
def test_gguf_finetune_is_derived_from_base_and_independent_of_scratch(ggufs, qtype):
    target = Model("finetune", resolve_source(str(ggufs[("finetune", qtype)])))
    base = Model("base", resolve_source(str(DEMO / "base")))
    scratch = Model("scratch", resolve_source(str(DEMO / "scratch")))
    original = Model("finetune-st", resolve_source(str(DEMO / "finetune")))
    derived = {g.group: g.mean_centred for g in measure(target, base, min_layer_match=0.5).comparison.by_category}
    independent = {g.group: g.mean_centred
                   for g in measure(target, scratch, min_layer_match=0.5).comparison.by_category}
    same = {g.group: g.mean_centred for g in measure(target, original, min_layer_match=0.5).comparison.by_category}
    assert min(derived.values()) > 0.9, derived  # calibrated fine-tunes: >= 0.946 (thresholds.toml)
    assert max(v for k, v in independent.items() if k != "lm_head") < 0.2, independent
    assert min(same.values()) > 0.999, same  # its own safetensors: only the storage's rounding


def test_gguf_audit_end_to_end(ggufs, tmp_path):
    """The whole audit with a Q8_0 GGUF target against the safetensors base and scratch: exit 0."""
    from test_audit_runs import outcomes, run_audit

    plan = tmp_path / "audit.toml"
    plan.write_text(f"""
[target]
name = "finetune-q8"
source = "{ggufs[('finetune', 'Q8_0')]}"
[[reference]]
name = "base"
source = "{DEMO / 'base'}"
expect = "derived"
[[reference]]
name = "scratch"
source = "{DEMO / 'scratch'}"
expect = "independent"
tokenizer = "derived"
[claims]
parameters = 312896
""")
    proc, evidence = run_audit(tmp_path, "--audit", str(plan), name="gguf")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    results = outcomes(evidence)
    for test in ("test_weight_similarity[base]", "test_weight_similarity[scratch]", "test_independence_pvalue[base]",
                 "test_independence_pvalue[scratch]", "test_config_matches_weights[finetune-q8]",
                 "test_parameter_count_matches_claim", "test_vocabulary_overlap[base]"):
        assert results[test] == "passed", test


# ---- hostile files ---------------------------------------------------------------------------
def _tiny(tmp: Path, *, ne=(32, 2), ggml_type=0, offset=0, data=256, n_tensors=1, version=3) -> Path:
    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x)) + x.encode()

    out = b"GGUF" + struct.pack("<IQQ", version, n_tensors, 1)
    out += s("general.architecture") + struct.pack("<I", 8) + s("llama")
    out += s("blk.0.ffn_up.weight") + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
    out += struct.pack("<IQ", ggml_type, offset)
    out += b"\0" * (-len(out) % 32) + b"\0" * data
    path = tmp / "m.gguf"
    path.write_bytes(out)
    return path


def test_hostile_gguf_headers_fail_naming_the_file(tmp_path):
    assert GGUFStore([_tiny(tmp_path)]).info("model.layers.0.mlp.up_proj.weight").shape == (2, 32)
    cases = {
        "past the end": dict(data=100),
        "not aligned": dict(offset=4),
        "more elements": dict(ne=(32, 2**40)),
        "tensors, more than": dict(n_tensors=2**40),
        "not a multiple": dict(ggml_type=8, ne=(31, 2)),
    }
    for why, kwargs in cases.items():
        with pytest.raises(CorruptCheckpoint, match=why) as err:
            read_gguf_header(_tiny(tmp_path, **kwargs))
        assert "m.gguf" in str(err.value)
    with pytest.raises(UnsupportedFormat, match="GGML type 99"):
        read_gguf_header(_tiny(tmp_path, ggml_type=99))
    path = _tiny(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CorruptCheckpoint, match="m.gguf"):
        read_gguf_header(path)


def test_undecodable_gguf_type_is_listed_not_decoded(tmp_path):
    store = GGUFStore([_tiny(tmp_path, ggml_type=26, ne=(8, 2), data=64)])  # I32
    info = store.info("model.layers.0.mlp.up_proj.weight")
    assert info.dtype == "I32" and not info.is_float
    with pytest.raises(UnsupportedFormat, match="I32"):
        store.read_row_range(info.name, 0, 1)


def test_gguf_reuse_sees_quantised_copies(ggufs, tmp_path):
    """A re-published copy of a Q8_0 file reuses every non-constant tensor byte for byte."""
    import shutil

    from modellineage.weights.reuse import measure_exact_reuse

    copy = tmp_path / "copy.gguf"
    shutil.copyfile(ggufs[("finetune", "Q8_0")], copy)
    a = Model("a", resolve_source(str(copy)))
    b = Model("b", resolve_source(str(ggufs[("finetune", "Q8_0")])))
    found = measure_exact_reuse(a.tensor_digests(), b.tensor_digests())
    assert found.counted_tensors >= 30 and len(found.reused) == found.counted_tensors and any(r.target_name.endswith("q_proj.weight") for r in found.reused)


def test_stacked_experts_split_per_expert_and_are_bounded(tmp_path):
    def s(x: str) -> bytes:
        return struct.pack("<Q", len(x)) + x.encode()

    def write(experts: int, data: int) -> Path:
        out = b"GGUF" + struct.pack("<IQQ", 3, 1, 1) + s("general.architecture") + struct.pack("<I", 8) + s("qwen3moe")
        out += s("blk.0.ffn_up_exps.weight") + struct.pack("<I", 3) + struct.pack("<QQQ", 8, 2, experts)
        out += struct.pack("<IQ", 24, 0)  # I8: one byte per element
        out += b"\0" * (-len(out) % 32) + bytes(range(256)) * (data // 256)
        path = tmp_path / "e.gguf"
        path.write_bytes(out)
        return path

    store = GGUFStore([write(4, 256)])
    names = [n for n in store.names() if ".experts." in n]
    assert names == [f"model.layers.0.mlp.experts.{e}.up_proj.weight" for e in range(4)]
    infos = [store.info(n) for n in names]
    assert all(i.shape == (2, 8) and i.nbytes == 16 for i in infos) and infos[1].begin == infos[0].end
    with pytest.raises(CorruptCheckpoint, match="safety limit"):
        GGUFStore([write(2**20, 2**24)])
