"""Config normalisation, facts from weight shapes, config-vs-weights and config-vs-config."""

from __future__ import annotations

import dataclasses
import json

import pytest

from modellineage.architecture.compare import (
    check_config_against_weights,
    compare_configs,
    count_parameters,
    facts_from_weights,
)
from modellineage.reading.config import ArchConfig, normalise_config
from modellineage.reading.naming import canonicalize
from tests.tiny_models import FAMILIES, FAMILY_IDS, MOE, tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.architecture

def _tiny_text_kwargs(family: str) -> dict:
    kw = FAMILIES[family]
    return kw.get("text_config", kw)


# ---------------------------------------------------------------- normalise_config


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_normalise_transformers_configs(family):
    raw = transformers.AutoConfig.for_model(family, **FAMILIES[family]).to_dict()
    cfg = normalise_config(raw)
    kw = _tiny_text_kwargs(family)
    assert cfg.model_type == family
    assert cfg.hidden_size == 64
    assert cfg.num_layers == 2
    assert cfg.num_heads == 4
    assert cfg.vocab_size == 256
    assert cfg.num_kv_heads == kw.get("num_key_value_heads", 4)
    assert cfg.head_dim == 16  # DeepSeek: qk_nope_head_dim + qk_rope_head_dim
    assert cfg.intermediate_size == (256 if family == "gpt2" else 96)
    assert cfg.norm_eps is not None and cfg.activation is not None
    assert isinstance(cfg.tied_embeddings, bool)
    assert cfg.max_position_embeddings is not None
    if family in MOE:
        assert cfg.num_experts == 4 and cfg.experts_per_token == 2
        assert cfg.moe_intermediate_size == (96 if family in ("mixtral", "phimoe") else 32)
    else:
        assert cfg.num_experts is None and cfg.num_shared_experts is None
    if family in ("gpt2", "bert"):
        assert cfg.rope_theta is None
    else:
        assert cfg.rope_theta and cfg.rope_theta > 0
    json.dumps(cfg.as_dict())


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_tie_default_matches_transformers(family):
    raw = transformers.AutoConfig.for_model(family).to_dict()
    expected = raw.get("tie_word_embeddings")
    raw.pop("tie_word_embeddings", None)
    if isinstance(raw.get("text_config"), dict):
        raw["text_config"].pop("tie_word_embeddings", None)
    assert normalise_config(raw).tied_embeddings == expected


LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 128000,
    "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 8192, "model_type": "llama", "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": None, "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.0.dev0", "use_cache": True, "vocab_size": 128256,
}
LLAMA31_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"}
MIXTRAL_8X7B = {
    "architectures": ["MixtralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mixtral", "num_attention_heads": 32, "num_experts_per_tok": 2,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "output_router_logits": False,
    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.02, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.36.0.dev0",
    "use_cache": True, "vocab_size": 32000,
}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001, "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3,
    "hidden_act": "silu", "hidden_size": 7168, "initializer_range": 0.02, "intermediate_size": 18432,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v3",
    "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
    "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "pretraining_tp": 1,
    "q_lora_rank": 1536, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1", "use_cache": True, "v_head_dim": 128, "vocab_size": 129280,
}
QWEN15_MOE_A27B = {
    "architectures": ["Qwen2MoeForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
    "intermediate_size": 5632, "max_position_embeddings": 8192, "max_window_layers": 21, "model_type": "qwen2_moe",
    "num_attention_heads": 16, "num_hidden_layers": 24, "num_key_value_heads": 16, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936, "decoder_sparse_step": 1,
    "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632, "num_experts_per_tok": 4,
    "num_experts": 60, "norm_topk_prob": False, "output_router_logits": False, "router_aux_loss_coef": 0.001,
}
GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12,
    "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
    "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}, "vocab_size": 50257,
}
GEMMA3_4B_IT = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                    "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                    "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304,
                      "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 27,
                      "patch_size": 14, "vision_use_head": False},
}


def test_llama3_8b():
    c = normalise_config(LLAMA3_8B)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (4096, 32, 32, 8, 128)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.rope_scaling) == (14336, 128256, 500000.0, None)
    assert (c.norm_eps, c.activation, c.tied_embeddings, c.max_position_embeddings) == (1e-5, "silu", False, 8192)
    assert c.num_experts is None and c.moe_intermediate_size is None


def test_llama31_rope_scaling_is_the_same_from_v4_json_and_v5_config():
    raw = dict(LLAMA3_8B, rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072)
    v4 = normalise_config(raw)
    v5 = normalise_config(transformers.LlamaConfig(**{k: v for k, v in raw.items() if k != "model_type"}).to_dict())
    assert v4.rope_scaling == {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    assert list(v4.rope_scaling) == sorted(v4.rope_scaling)
    comparison = compare_configs(v4, v5)
    assert comparison.identical, comparison.differing


def test_mixtral_8x7b():
    c = normalise_config(MIXTRAL_8X7B)
    assert (c.num_experts, c.experts_per_token, c.num_shared_experts) == (8, 2, 0)
    assert c.moe_intermediate_size == c.intermediate_size == 14336
    assert c.rope_theta == 1e6 and c.tied_embeddings is False


def test_deepseek_v3():
    c = normalise_config(DEEPSEEK_V3)
    assert (c.hidden_size, c.num_layers, c.vocab_size) == (7168, 61, 129280)
    assert (c.num_experts, c.experts_per_token, c.num_shared_experts) == (256, 8, 1)
    assert (c.intermediate_size, c.moe_intermediate_size, c.shared_intermediate_size) == (18432, 2048, 2048)
    assert c.head_dim == 192 and c.num_heads == 128
    assert c.rope_theta == 10000.0
    assert c.rope_scaling == {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                              "original_max_position_embeddings": 4096, "rope_type": "yarn"}


def test_qwen2_moe_has_one_shared_expert():
    c = normalise_config(QWEN15_MOE_A27B)
    assert (c.num_experts, c.experts_per_token, c.num_shared_experts) == (60, 4, 1)
    assert (c.moe_intermediate_size, c.shared_intermediate_size, c.intermediate_size) == (1408, 5632, 5632)


def test_gpt2():
    c = normalise_config(GPT2)
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.head_dim) == (768, 12, 12, 12, 64)
    assert c.intermediate_size == 3072  # n_inner absent -> 4 * n_embd
    assert (c.activation, c.norm_eps, c.tied_embeddings, c.max_position_embeddings) == ("gelu_new", 1e-5, True, 1024)
    assert c.rope_theta is None and c.rope_scaling is None


def test_gemma3_multimodal_reads_text_config():
    c = normalise_config(GEMMA3_4B_IT)
    assert c.model_type == "gemma3"
    assert (c.hidden_size, c.num_layers, c.intermediate_size) == (2560, 34, 10240)
    assert c.rope_scaling == {"factor": 8.0, "rope_type": "linear"}
    assert c.tied_embeddings is True  # family default
    assert c.num_heads is None and c.vocab_size is None  # the hub file omits them: not invented


def test_gemma3_v5_per_layer_rope_parameters_describe_full_attention():
    c = normalise_config(transformers.AutoConfig.for_model("gemma3_text").to_dict())
    assert c.rope_theta == 1_000_000.0


# ---------------------------------------------------------------- config vs weights


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_config_agrees_with_saved_weights(family):
    s = tiny(family)
    cfg = normalise_config(s.config)
    nm = canonicalize(s.shapes, s.config, s.dtypes)
    facts = facts_from_weights(nm, cfg)
    agreements = {a.field: a for a in check_config_against_weights(cfg, facts)}
    assert not [a for a in agreements.values() if a.agrees is False], agreements
    for name in ("hidden_size", "num_layers", "vocab_size", "tied_embeddings", "num_experts"):
        assert agreements[name].agrees is True, agreements[name]
    if family not in ("deepseek_v2", "deepseek_v3"):
        assert agreements["num_heads"].agrees is True and agreements["num_kv_heads"].agrees is True
    if family in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text", "glm4_moe"):
        assert facts.head_dim_source == "weights" and agreements["head_dim"].agrees is True
    if family in MOE:
        assert agreements["moe_intermediate_size"].agrees is True
    assert facts.total_parameters == s.num_parameters
    assert facts.parameters_by_dtype == {"F32": s.num_parameters}
    assert facts.bytes_by_dtype == {"F32": 4 * s.num_parameters}
    json.dumps(facts.as_dict())
    json.dumps([a.as_dict() for a in agreements.values()])


@pytest.mark.parametrize("family", ["llama", "deepseek_v3", "gpt2", "bert", "gemma3"])
@pytest.mark.parametrize(("field", "delta"), [("hidden_size", 8), ("num_layers", 1), ("vocab_size", 3)])
def test_wrong_config_is_caught(family, field, delta):
    s = tiny(family)
    good = normalise_config(s.config)
    bad = dataclasses.replace(good, **{field: getattr(good, field) + delta})
    facts = facts_from_weights(canonicalize(s.shapes, s.config), good)
    by_field = {a.field: a for a in check_config_against_weights(bad, facts)}
    assert by_field[field].agrees is False
    assert str(getattr(bad, field)) in by_field[field].note


def test_wrong_kv_heads_caught_via_config_head_dim():
    s = tiny("llama")
    good = normalise_config(s.config)
    bad = dataclasses.replace(good, num_kv_heads=4)
    facts = facts_from_weights(canonicalize(s.shapes, s.config), bad)
    by_field = {a.field: a for a in check_config_against_weights(bad, facts)}
    assert facts.head_dim_source == "config"
    assert by_field["num_kv_heads"].agrees is False and by_field["num_heads"].agrees is True


def test_wrong_expert_count_and_tie_caught():
    s = tiny("mixtral")
    good = normalise_config(s.config)
    facts = facts_from_weights(canonicalize(s.shapes, s.config), good)
    by_field = {a.field: a for a in check_config_against_weights(
        dataclasses.replace(good, num_experts=8, tied_embeddings=True), facts)}
    assert by_field["num_experts"].agrees is False
    # A tying config beside a stored lm_head is harmless (loaders ignore the copy): reported, not a disagreement.
    assert by_field["tied_embeddings"].agrees is None and "lm_head tensor is stored" in by_field["tied_embeddings"].note
    assert by_field["intermediate_size"].agrees is None  # no dense MLP in Mixtral weights


def test_untied_config_without_lm_head_is_caught():
    s = tiny("gpt2")  # ties embeddings: no lm_head tensor is saved
    good = normalise_config(s.config)
    facts = facts_from_weights(canonicalize(s.shapes, s.config), good)
    by_field = {a.field: a for a in check_config_against_weights(
        dataclasses.replace(good, tied_embeddings=False), facts)}
    assert by_field["tied_embeddings"].agrees is False


def test_shared_experts_checked():
    s = tiny("qwen2_moe")
    good = normalise_config(s.config)
    facts = facts_from_weights(canonicalize(s.shapes, s.config), good)
    assert facts.has_shared_experts and facts.shared_intermediate_size == 48
    by_field = {a.field: a for a in check_config_against_weights(good, facts)}
    assert by_field["shared_intermediate_size"].agrees is True
    assert by_field["num_shared_experts"].agrees is None
    by_field = {a.field: a for a in check_config_against_weights(dataclasses.replace(good, num_shared_experts=0), facts)}
    assert by_field["num_shared_experts"].agrees is False


def test_padded_vocab_reported_as_is():
    s = tiny("llama")
    shapes = dict(s.shapes, **{"model.embed_tokens.weight": (260, 64), "lm_head.weight": (260, 64)})
    cfg = normalise_config(s.config)
    facts = facts_from_weights(canonicalize(shapes), cfg)
    vocab = {a.field: a for a in check_config_against_weights(cfg, facts)}["vocab_size"]
    assert (vocab.config_value, vocab.weights_value, vocab.agrees) == (256, 260, False)


# ---------------------------------------------------------------- config vs config


def test_compare_identical_and_differing():
    a = normalise_config(LLAMA3_8B)
    same = compare_configs(a, normalise_config(json.loads(json.dumps(LLAMA3_8B))))
    assert same.identical and same.differing == ()
    b = normalise_config(dict(LLAMA3_8B, rope_theta=500000.0 * (1 + 1e-12), rms_norm_eps=1e-6, num_hidden_layers=40))
    diff = compare_configs(a, b)
    assert not diff.identical
    assert diff.differing == ("num_layers", "norm_eps")
    d = json.loads(json.dumps(diff.as_dict()))
    # every field but `invalid` (which values the config got wrong, not an architecture field)
    assert d["differing"] == ["num_layers", "norm_eps"] and len(d["fields"]) == len(dataclasses.fields(ArchConfig)) - 1


def test_compare_none_semantics():
    a, b = ArchConfig(model_type="x"), ArchConfig(model_type="x", hidden_size=8)
    assert compare_configs(a, a).identical
    assert compare_configs(a, b).differing == ("hidden_size",)
    assert compare_configs(ArchConfig(tied_embeddings=True), ArchConfig(tied_embeddings=False)).differing == (
        "tied_embeddings",)


def test_compare_across_families():
    diff = compare_configs(normalise_config(MIXTRAL_8X7B), normalise_config(LLAMA3_8B))
    assert {"model_type", "num_experts", "rope_theta", "vocab_size"} <= set(diff.differing)
    assert "hidden_size" not in diff.differing


# ---------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_count_parameters_matches_torch(family):
    s = tiny(family)
    assert count_parameters(s.shapes) == s.num_parameters


def test_count_parameters_excludes_scales_and_buffers():
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (256, 128),
        "model.layers.0.self_attn.q_proj.weight_scale_inv": (2, 1),
        "model.layers.0.self_attn.rotary_emb.inv_freq": (8,),
        "vision_tower.patch.weight": (4, 4),
    }
    assert count_parameters(shapes) == 256 * 128 + 16
    nm = canonicalize(shapes, dtypes={"model.layers.0.self_attn.q_proj.weight": "F8_E4M3",
                                      "model.layers.0.self_attn.q_proj.weight_scale_inv": "F32",
                                      "vision_tower.patch.weight": "BF16"})
    assert count_parameters(shapes, nm) == 256 * 128 + 16
    facts = facts_from_weights(nm)
    assert facts.unknown_parameters == 16 and facts.canonical_parameters == 256 * 128
    assert facts.bytes_by_dtype == {"BF16": 32, "F32 (scales)": 8, "F8_E4M3": 256 * 128}


def test_padded_embedding_declared_by_the_config_agrees():
    """OLMo declares embedding_size 50304 beside vocab_size 50280; the weights have 50304 rows."""
    raw = {"model_type": "olmo", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 96, "vocab_size": 50280, "embedding_size": 50304, "tie_word_embeddings": False}
    shapes = {"model.embed_tokens.weight": (50304, 64), "lm_head.weight": (50304, 64),
              "model.norm.weight": (64,), "model.layers.0.self_attn.q_proj.weight": (64, 64)}
    cfg = normalise_config(raw)
    by_field = {a.field: a for a in check_config_against_weights(cfg, facts_from_weights(canonicalize(shapes, raw), cfg))}
    assert cfg.embedding_rows == 50304
    assert by_field["vocab_size"].agrees is True and by_field["vocab_size"].config_value == 50304
