"""Compute: exact parameter counts (hand counts on tiny transformers models, published counts on
synthetic headers of real shapes), 6ND arithmetic, the accelerator table and published MFU recomputed."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from modellineage.architecture.compare import count_parameters
from modellineage.compute.estimate import (
    ParameterCount,
    ambiguous_accelerator_names,
    count_active_parameters,
    find_accelerator,
    gpu_days,
    implied_utilisation,
    load_accelerators,
    plain_count,
    plain_duration,
    plain_number,
    plain_summary,
    plain_utilisation,
    training_compute,
)
from modellineage.errors import PlanError, UnsupportedFormat
from modellineage.plan import read_toml
from modellineage.reading.config import normalise_config
from modellineage.reading.naming import canonicalize

from .tiny_models import tiny


def _count(t):
    nm = canonicalize(t.shapes, t.config, dtypes=t.dtypes)
    return count_active_parameters(t.shapes, nm, normalise_config(t.config))


# ------------------------------------------------------------------------------ tiny models, by hand
def test_dense_llama_every_parameter_is_active():
    t = tiny("llama")
    c = _count(t)
    assert c.total == c.active == t.num_parameters == 94528
    assert not c.is_moe and c.dense_layers == 2 and c.experts_per_token is None


def test_mixtral_active_parameters_equal_a_hand_count():
    t = tiny("mixtral")  # hidden 64, 2 layers, 4 heads / 2 kv heads of 16, 4 experts of width 96, top-2
    attention = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64  # q, k, v, o
    norms = 2 * 64
    router = 4 * 64
    expert = 3 * 96 * 64  # w1, w3, w2
    outside = 256 * 64 * 2 + 64  # embedding, untied lm_head, final norm
    c = _count(t)
    assert c.total == t.num_parameters == 2 * (attention + norms + router + 4 * expert) + outside
    assert c.active == 2 * (attention + norms + router + 2 * expert) + outside == 131904
    assert (c.moe_layers, c.dense_layers, c.num_experts, c.experts_per_token) == (2, 0, 4, 2)


def test_deepseek_v3_active_parameters_equal_a_hand_count():
    t = tiny("deepseek_v3")  # MLA (q_lora 16, kv_lora 16, nope 8 + rope 8, v 16), layer 0 dense, layer 1 MoE
    attention = (16 * 64 + 16) + 4 * 16 * 16 + ((16 + 8) * 64 + 16) + 4 * (8 + 16) * 16 + 64 * 4 * 16
    norms = 2 * 64
    dense_mlp = 3 * 96 * 64
    router = 4 * 64 + 4  # gate weight + e_score_correction_bias
    shared = expert = 3 * 32 * 64
    outside = 256 * 64 * 2 + 64
    layer0 = attention + norms + dense_mlp
    c = _count(t)
    assert c.total == t.num_parameters == layer0 + attention + norms + router + shared + 4 * expert + outside
    assert c.active == layer0 + attention + norms + router + shared + 2 * expert + outside == 88708
    assert (c.moe_layers, c.dense_layers) == (1, 1)


def test_vision_tower_is_counted_but_not_active():
    c = _count(tiny("gemma3"))
    assert c.total == count_parameters(tiny("gemma3").shapes)
    assert c.by_category["not_active"] > 0 and c.active == c.total - c.by_category["not_active"]
    assert any("vision" in n for n in c.not_active_tensors)


def test_moe_without_experts_per_token_cannot_be_counted():
    t = tiny("mixtral")
    cfg = dict(t.config)
    del cfg["num_experts_per_tok"]
    with pytest.raises(UnsupportedFormat, match="num_experts_per_tok"):
        count_active_parameters(t.shapes, canonicalize(t.shapes, cfg), normalise_config(cfg), files=("m.safetensors",))


# ------------------------------------------------------------------------------ real shapes, published counts
def _gqa_decoder_shapes(h: int, kv: int, vocab: int, layers: int) -> dict:
    """Embeddings, untied head, norms and GQA attention of a Llama-style decoder (no MLPs)."""
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h)})
    return shapes


def _mixtral_8x7b_shapes():
    h, inter, kv, vocab = 4096, 14336, 1024, 32000
    shapes = _gqa_decoder_shapes(h, kv, vocab, 32)
    for i in range(32):
        p = f"model.layers.{i}."
        shapes[p + "block_sparse_moe.gate.weight"] = (8, h)
        for e in range(8):
            q = f"{p}block_sparse_moe.experts.{e}."
            shapes.update({q + "w1.weight": (inter, h), q + "w3.weight": (inter, h), q + "w2.weight": (h, inter)})
    config = {"model_type": "mixtral", "hidden_size": h, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": inter, "num_local_experts": 8,
              "num_experts_per_tok": 2, "vocab_size": vocab}
    return shapes, config


def _deepseek_v3_shapes():
    """DeepSeek-V3's tensor shapes (config.json of deepseek-ai/DeepSeek-V3), incl. the MTP layer 61."""
    h, vocab, inter, moe, experts = 7168, 129280, 18432, 2048, 256
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(62):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_a_proj.weight": (1536, h), p + "self_attn.q_a_layernorm.weight": (1536,),
                       p + "self_attn.q_b_proj.weight": (128 * 192, 1536),
                       p + "self_attn.kv_a_proj_with_mqa.weight": (512 + 64, h),
                       p + "self_attn.kv_a_layernorm.weight": (512,),
                       p + "self_attn.kv_b_proj.weight": (128 * (128 + 128), 512),
                       p + "self_attn.o_proj.weight": (h, 128 * 128)})
        if i < 3:
            shapes.update({p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                           p + "mlp.down_proj.weight": (h, inter)})
            continue
        shapes.update({p + "mlp.gate.weight": (experts, h), p + "mlp.gate.e_score_correction_bias": (experts,),
                       p + "mlp.shared_experts.gate_proj.weight": (moe, h),
                       p + "mlp.shared_experts.up_proj.weight": (moe, h),
                       p + "mlp.shared_experts.down_proj.weight": (h, moe)})
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            shapes.update({q + "gate_proj.weight": (moe, h), q + "up_proj.weight": (moe, h),
                           q + "down_proj.weight": (h, moe)})
    p = "model.layers.61."  # multi-token prediction module
    shapes.update({p + "eh_proj.weight": (h, 2 * h), p + "enorm.weight": (h,), p + "hnorm.weight": (h,),
                   p + "shared_head.norm.weight": (h,), p + "shared_head.head.weight": (vocab, h),
                   p + "embed_tokens.weight": (vocab, h)})
    config = {"model_type": "deepseek_v3", "hidden_size": h, "num_hidden_layers": 61, "num_attention_heads": 128,
              "num_key_value_heads": 128, "intermediate_size": inter, "moe_intermediate_size": moe,
              "n_routed_experts": experts, "n_shared_experts": 1, "num_experts_per_tok": 8,
              "first_k_dense_replace": 3, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
              "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": vocab}
    return shapes, config


def test_llama_3_8b_count_and_the_embedding_share_the_flops_docstring_cites():
    h, inter, kv, vocab = 4096, 14336, 1024, 128256
    shapes = _gqa_decoder_shapes(h, kv, vocab, 32)
    for i in range(32):
        p = f"model.layers.{i}.mlp."
        shapes.update({p + "gate_proj.weight": (inter, h), p + "up_proj.weight": (inter, h),
                       p + "down_proj.weight": (h, inter)})
    config = {"model_type": "llama", "hidden_size": h, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "intermediate_size": inter, "vocab_size": vocab, "tie_word_embeddings": False}
    c = count_active_parameters(shapes, canonicalize(shapes, config), normalise_config(config))
    assert c.total == c.active == 8_030_261_248  # Meta-Llama-3-8B
    assert round(c.by_category["embedding"] / c.total, 3) == 0.065  # input rows: a lookup, no matmul FLOPs
    assert round(2 * 32 * 8192 * h / (2 * c.total), 3) == 0.134  # attention scores at 8K context (Kaplan Table 1)


def test_mixtral_8x7b_counts_match_the_published_46_7b_and_12_9b():
    shapes, config = _mixtral_8x7b_shapes()
    c = count_active_parameters(shapes, canonicalize(shapes, config), normalise_config(config))
    assert c.total == 46_702_792_704  # Mixtral-8x7B, as transformers reports it
    assert c.active == 12_879_925_248  # "12.9B active parameters" (Jiang et al. 2024)


def test_deepseek_v3_counts_match_the_published_671b_685b_and_37b():
    shapes, config = _deepseek_v3_shapes()
    c = count_active_parameters(shapes, canonicalize(shapes, config), normalise_config(config))
    # DeepSeek-V3 README: 685B on the Hub = 671B main model + 14B multi-token-prediction module; 37B activated.
    assert abs(c.total / 685e9 - 1) < 0.01
    assert abs((c.total - c.by_category["not_active"]) / 671e9 - 1) < 0.01
    assert abs(c.active / 37e9 - 1) < 0.02
    assert c.moe_layers == 58 and c.dense_layers == 3
    assert "model.layers.61.mlp.experts.0.up_proj.weight" in c.not_active_tensors  # the MTP layer


# ------------------------------------------------------------------------------ 6ND and utilisation
def _dense(n: int) -> ParameterCount:
    return ParameterCount(total=n, active=n, by_category={"mlp": n}, routed_expert_active=0, moe_layers=0,
                          dense_layers=1, num_experts=None, experts_per_token=None, not_active_tensors=())


def test_training_flops_are_six_n_d_exactly():
    c = training_compute(_dense(1_000_000), 2_000_000)
    assert c.flops == 6 * 1_000_000 * 2_000_000 == 1.2e13
    assert c.tokens_per_total_parameter == c.tokens_per_active_parameter == 2.0


def test_utilisation_hand_case():
    # 1e9 params x 1e12 tokens = 6e21 FLOPs; in 10,000 H100-SXM hours: 6e21 / 3.6e7 s = 1.667e14 FLOP/s
    u = implied_utilisation(training_compute(_dense(10**9), 1e12), 10_000, "h100")
    assert u.accelerator.name == "H100-SXM"
    assert math.isclose(u.achieved_flops_per_gpu, 6e21 / 3.6e7)
    assert math.isclose(u.mfu, 6e21 / 3.6e7 / 989.4e12)
    assert math.isclose(gpu_days(6e21, u.accelerator, u.mfu), 10_000 / 24)


@pytest.mark.parametrize("claim", [{"training_tokens": -5}, {"training_tokens": float("nan")}])
def test_nonsense_token_claims_are_plan_errors(claim):
    with pytest.raises(PlanError, match="training_tokens"):
        training_compute(_dense(10), claim["training_tokens"])


def test_unknown_accelerator_lists_the_known_ones():
    with pytest.raises(PlanError, match="known: .*H100-SXM"):
        find_accelerator("RTX-9999")


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())  # how find_accelerator compares names


def test_accelerator_table_is_sourced_and_sane():
    raw = json.loads(resources.files("modellineage.data").joinpath("accelerators.json").read_text())
    assert find_accelerator(raw["sentence_unit"])
    names = set()
    for acc in load_accelerators():
        assert acc.source.strip() and 50e12 < acc.peak_flops < 1e16, acc
        keys = {_key(acc.name), *(_key(a) for a in acc.aliases)}
        assert not keys & names, f"alias used twice: {keys & names}"
        names |= keys
    ambiguous = ambiguous_accelerator_names()
    assert "H100-80GB" in ambiguous
    for name, (candidates, hint) in ambiguous.items():
        assert _key(name) not in names, f"{name} is both ambiguous and an alias"
        assert len(candidates) >= 2 and all(find_accelerator(c) for c in candidates) and hint


@pytest.mark.parametrize("name", ["H100-80GB", "h100 80gb", "H100 80GB"])
def test_a_name_that_fits_two_cards_is_refused_with_both(name):
    # The H100 SXM and PCIe cards both have 80 GB but differ by 31% in peak (989 vs 756 TFLOP/s dense BF16).
    with pytest.raises(PlanError, match=r"ambiguous: it fits H100-SXM \(989 TFLOP/s.*H100-PCIe \(756 TFLOP/s.*700 W"):
        find_accelerator(name)


def test_l40s_uses_the_dense_datasheet_figure():
    acc = find_accelerator("L40S")
    assert acc.peak_flops == 362.05e12 and "362.05" in acc.source and "733 with sparsity" in acc.source


# Published training runs recomputed with 6·N·D (model cards / papers): the sources of
# thresholds.toml [compute].mfu_min / mfu_max. Each must land inside the bounds.
PUBLISHED = [
    # name, active params, tokens, accelerator hours, accelerator, expected MFU
    ("Llama-2-7B", 6.74e9, 2e12, 184_320, "A100", 0.39),
    ("Llama-2-70B", 68.98e9, 2e12, 1_720_320, "A100", 0.43),
    ("Llama-3.1-8B", 8.03e9, 15e12, 1.46e6, "H100", 0.14),
    ("Llama-3.1-405B", 405.9e9, 15e12, 30.84e6, "H100", 0.33),
    ("BLOOM-176B", 176.2e9, 366e9, 1_082_990, "A100", 0.32),
    ("DeepSeek-V3", 37e9, 14.8e12, 2.788e6, "H800", 0.33),
]


@pytest.mark.parametrize("name,n,d,hours,gpu,expected", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_runs_land_inside_the_mfu_bounds(name, n, d, hours, gpu, expected):
    from pathlib import Path

    bounds = read_toml(Path(__file__).resolve().parents[1] / "thresholds.toml", "thresholds")["compute"]
    u = implied_utilisation(training_compute(_dense(int(n)), d), hours, gpu)
    assert abs(u.mfu - expected) < 0.01, f"{name}: {u.mfu:.3f}"
    assert bounds["mfu_min"]["value"] <= u.mfu <= bounds["mfu_max"]["value"]


def test_plain_numbers():
    assert plain_number(19.7e12) == "19.7T" and plain_number(12e9) == "12B" and plain_number(312896) == "313K"
    assert plain_number(999.7e9) == "1T"  # not '1,000B'


@pytest.mark.parametrize("x,text", [(41_482.3, "41,500"), (81.93, "81.9"), (14.0, "14"), (99.96, "100"),
                                    (0.003168, "0.00317"), (8.77e-7, "0.000000877"), (1.4e24, f"{14 * 10**23:,}"),
                                    (-41_482.3, "-41,500")])
def test_plain_counts_never_use_an_exponent(x, text):
    assert plain_count(x) == text


@pytest.mark.parametrize("seconds,text", [(3.584e9, "114 years"), (14 * 86400, "14 days"), (36 * 3600, "36 hours"),
                                          (130, "2.17 minutes"), (0.003157, "0.0032 seconds")])
def test_plain_durations_pick_a_readable_unit(seconds, text):
    assert plain_duration(seconds) == text


def _moe(total: int, active: int) -> ParameterCount:
    return ParameterCount(total=total, active=active, by_category={"routed_expert": total - active, "mlp": active},
                          routed_expert_active=0, moe_layers=1, dense_layers=0, num_experts=8, experts_per_token=1,
                          not_active_tensors=())


def test_the_issue_example_reads_without_exponents_and_says_which_parameter_count():
    """The issue's sentence: 19.7T tokens x 12B active parameters (a ~100B MoE) at 40% of an H100."""
    compute = training_compute(_moe(100 * 10**9, 12 * 10**9), 19.7e12)
    text = plain_summary(compute, find_accelerator("H100-SXM"), 0.40, 20.0)
    assert text == ("19.7T tokens × 12B active parameters × 6 ≈ 1.4e24 FLOPs ≈ 41,500 H100-SXM-days: 114 years "
                    "on one H100-SXM, or about a month on 1,400 of them at 40% utilisation. That is 1,640 training "
                    "tokens per active parameter (the parameters each token actually uses, the N in 6 · N · D; 197 "
                    "per total parameter), 82 times the ~20 tokens per parameter that give the best model for a "
                    "fixed compute budget (informational).")
    # 6 x 12e9 x 19.7e12 = 1.418e24 FLOPs; 0.4 x 989.4 TFLOP/s = 395.8 TFLOP/s;
    # 1.418e24 / 395.8e12 / 86400 = 41,482 days
    assert math.isclose(gpu_days(compute.flops, find_accelerator("H100"), 0.40), 41_482, rel_tol=1e-4)


def test_a_dense_model_says_tokens_per_parameter_and_small_runs_read_in_seconds():
    text = plain_summary(training_compute(_dense(312_896), 665_600), find_accelerator("H100-SXM"), 0.40, 20.0)
    assert text.startswith("666K tokens × 313K active parameters × 6 ≈ 1.2e12 FLOPs ≈ 0.0032 seconds of one "
                           "H100-SXM")
    assert "That is 2.13 training tokens per parameter, 0.11 times the ~20" in text
    assert "per active parameter" not in text


def test_published_run_reads_in_plain_hours():
    u = implied_utilisation(training_compute(_moe(671 * 10**9, 37 * 10**9), 14.8e12), 2_788_000, "H800")
    assert plain_utilisation(u) == "The claimed 2,788,000 H800-SXM hours (318 years of one) imply 33% utilisation."
