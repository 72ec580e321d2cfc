"""Canonical naming: a bijection on the real tensor names of every supported family.

Real names come from tiny models that transformers builds and saves (``save_pretrained``, read back
from the safetensors file), from their in-memory ``state_dict`` (transformers-v5 fused experts), and
from literal lists of names seen on the Hugging Face hub.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modellineage.errors import IncompatibleShapes
from modellineage.reading.naming import ROLES, NameMap, Selection, TensorRef, canonicalize, role_category
from tests.tiny_models import FAMILY_IDS, MOE, tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def assert_bijection(nm: NameMap, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every source accounted for once; keys unique; the parts of each source cover it exactly once."""
    homes = [set(nm.by_source), set(nm.unknown), set(nm.scales), set(nm.buffers)]
    for name in shapes:
        assert sum(name in h for h in homes) == 1, name
    assert set().union(*homes) == set(shapes)
    all_keys = [k for keys in nm.by_source.values() for k in keys]
    assert len(all_keys) == len(set(all_keys)) == len(nm.refs)
    for source, keys in nm.by_source.items():
        shape = tuple(shapes[source])
        boxes = []
        for key in keys:
            ref = nm.refs[key]
            assert ref.key == key and ref.source == source and ref.source_shape == shape
            box = [np.arange(n) for n in shape]
            for sel in ref.selections:
                box[sel.axis] = np.concatenate([np.arange(a, b) for a, b in sel.ranges])
                assert not sel.squeeze or sel.length == 1
            boxes.append(box)
        # exact cover: the parts are pairwise disjoint, lie inside the tensor and add up to it
        assert sum(int(np.prod([len(ix) for ix in b])) for b in boxes) == int(np.prod(shape)), source
        for box in boxes:
            assert all(len(np.unique(ix)) == len(ix) and (ix.size == 0 or ix.max() < n)
                       for ix, n in zip(box, shape)), source
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert any(np.intersect1d(x, y).size == 0 for x, y in zip(a, b)), f"{source}: parts overlap"
        if int(np.prod(shape)) <= 200_000:  # small: also check apply() against the selections
            ids = np.arange(int(np.prod(shape))).reshape(shape)
            for key, box in zip(keys, boxes):
                ref = nm.refs[key]
                part = ref.apply(ids)
                assert part.shape == ref.shape
                np.testing.assert_array_equal(np.sort(part.reshape(-1)), np.sort(ids[np.ix_(*box)].reshape(-1)))


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_saved_names_are_a_bijection(family):
    t = tiny(family)
    nm = canonicalize(t.shapes, t.config)
    assert_bijection(nm, t.shapes)
    assert nm.family == t.config["model_type"]
    if family == "gemma3":
        assert nm.unknown and all(n.startswith(("vision_tower.", "multi_modal_projector.")) for n in nm.unknown)
    else:
        assert nm.unknown == (), nm.unknown
    assert not nm.notes, nm.notes
    layers = {r.layer for r in nm.refs.values() if r.layer is not None}
    assert layers == {0, 1}
    roles = {r.role for r in nm.refs.values()}
    assert "attn_qkv" not in roles and "mlp_gate_up" not in roles
    assert {"embed", "final_norm"} <= roles or family == "bert"
    if family in MOE:
        assert {"router", "expert_gate", "expert_up", "expert_down"} <= roles
        experts = {r.expert for r in nm.refs.values() if r.expert is not None}
        assert experts == {0, 1, 2, 3}


EXPECTED_ROLES = {
    "deepseek_v3": {"attn_q_a", "attn_q_b", "attn_q_a_norm", "attn_kv_a", "attn_kv_b", "attn_kv_a_norm",
                    "router_bias", "shared_gate", "shared_up", "shared_down", "mlp_gate"},
    "qwen2_moe": {"shared_expert_router", "shared_up", "attn_q"},
    "gemma2": {"post_attn_norm", "mlp_norm", "post_mlp_norm", "attn_norm"},
    "gemma3": {"q_norm", "k_norm", "post_attn_norm", "post_mlp_norm", "mlp_norm"},
    "glm4": {"post_attn_norm", "mlp_norm", "post_mlp_norm", "mlp_gate", "mlp_up"},
    "glm4_moe": {"q_norm", "router_bias", "shared_up"},
    "gpt2": {"pos_embed", "attn_q", "attn_k", "attn_v", "mlp_up"},
    "bert": {"pos_embed", "token_type_embed", "embed_norm", "post_attn_norm", "post_mlp_norm", "pooler"},
    "phi3": {"attn_q", "attn_k", "attn_v", "mlp_gate", "mlp_up"},
    "gpt_neox": {"attn_q", "attn_k", "attn_v", "lm_head"},
}


@pytest.mark.parametrize("family", sorted(EXPECTED_ROLES))
def test_family_specific_roles(family):
    t = tiny(family)
    nm = canonicalize(t.shapes, t.config)
    assert EXPECTED_ROLES[family] <= {r.role for r in nm.refs.values()}


def test_llama_post_attention_layernorm_is_pre_mlp_but_gemma2_is_sandwich():
    llama = canonicalize(tiny("llama").shapes)
    gemma2 = canonicalize(tiny("gemma2").shapes)
    assert llama.by_source["model.layers.0.post_attention_layernorm.weight"] == ("layers.0.mlp_norm.weight",)
    assert gemma2.by_source["model.layers.0.post_attention_layernorm.weight"] == ("layers.0.post_attn_norm.weight",)
    assert gemma2.by_source["model.layers.0.pre_feedforward_layernorm.weight"] == ("layers.0.mlp_norm.weight",)


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_in_memory_layout_gives_the_same_canonical_tensors(family):
    """transformers v5 fuses experts in memory ((E, 2I, H)) and unfuses on save; both must agree."""
    t = tiny(family)
    mem_shapes = {k: tuple(v.shape) for k, v in t.memory.items()}
    saved_nm = canonicalize(t.shapes, t.config)
    mem_nm = canonicalize(mem_shapes, t.config)
    assert_bijection(mem_nm, mem_shapes)
    extra = set(mem_nm.refs) - set(saved_nm.refs)
    assert extra <= {"lm_head.weight"}  # tied lm_head is in the state dict but not saved
    assert set(saved_nm.refs) <= set(mem_nm.refs)
    for key, ref in saved_nm.refs.items():
        mref = mem_nm.refs[key]
        np.testing.assert_array_equal(mref.apply(t.memory[mref.source]), ref.apply(t.saved[ref.source]), err_msg=key)
    if family in ("mixtral", "qwen2_moe", "deepseek_v3", "phimoe"):
        assert any(r.source.endswith("experts.gate_up_proj") and r.selections for r in mem_nm.refs.values())


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_without_config_only_attention_that_needs_heads_stays_fused(family):
    t = tiny(family)
    with_cfg = canonicalize(t.shapes, t.config)
    without = canonicalize(t.shapes)
    assert_bijection(without, t.shapes)
    if family in ("phi3", "gpt_neox"):
        assert {r.role for r in without.refs.values()} >= {"attn_qkv"}
        assert any("attn_qkv" in n for n in without.notes)
        assert set(with_cfg.refs) - set(without.refs) == {
            k for k in with_cfg.refs if any(f".{r}." in k for r in ("attn_q", "attn_k", "attn_v"))
        }
    else:
        assert list(without.refs) == list(with_cfg.refs)
        assert without.refs == with_cfg.refs


DETECTED = {
    "llama": "llama", "mistral": "llama", "gemma": "llama", "mixtral": "mixtral", "qwen2": "qwen2",
    "qwen2_moe": "qwen2_moe", "qwen3": "qwen3", "qwen3_moe": "qwen3_moe", "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek_v3", "glm4": "glm4", "glm4_moe": "glm4_moe", "gemma2": "gemma2",
    "gemma3_text": "gemma3_text", "gemma3": "gemma3", "phi3": "phi3", "phimoe": "phimoe", "gpt2": "gpt2",
    "gpt_neox": "gpt_neox", "bert": "bert",
}


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_family_detected_from_names(family):
    assert canonicalize(tiny(family).shapes).family == DETECTED[family]


# ---------------------------------------------------------------- fused splits vs the modelling code


def _x(hidden: int) -> torch.Tensor:
    return torch.randn(3, hidden, generator=torch.Generator().manual_seed(1))


def test_gpt_neox_split_matches_attention_code():
    t = tiny("gpt_neox")
    nm = canonicalize(t.shapes, t.config)
    attn = t.module.gpt_neox.layers[0].attention
    x = _x(64)
    with torch.no_grad():
        qkv = attn.query_key_value(x)
    # GPTNeoXAttention.forward: qkv.view(*input_shape, -1, 3 * head_size) ... chunk(3, dim=-1)
    q, k, v = qkv.view(3, -1, 3 * attn.head_size).chunk(3, dim=-1)
    src = "gpt_neox.layers.0.attention.query_key_value"
    for role, expected in (("attn_q", q), ("attn_k", k), ("attn_v", v)):
        w = nm.refs[f"layers.0.{role}.weight"].apply(t.saved[f"{src}.weight"])
        b = nm.refs[f"layers.0.{role}.bias"].apply(t.saved[f"{src}.bias"])
        got = x.numpy() @ w.T + b
        np.testing.assert_allclose(got, expected.reshape(3, -1).numpy(), rtol=1e-5, atol=1e-6)


def test_phi3_qkv_and_gate_up_split_match_modelling_code():
    t = tiny("phi3")
    nm = canonicalize(t.shapes, t.config)
    layer = t.module.model.layers[0]
    x = _x(64)
    with torch.no_grad():
        qkv = layer.self_attn.qkv_proj(x)
        gate_up = layer.mlp.gate_up_proj(x)
    hd, nh, nkv = 16, 4, 2
    expected = {
        "attn_q": qkv[..., : nh * hd],
        "attn_k": qkv[..., nh * hd: nh * hd + nkv * hd],
        "attn_v": qkv[..., nh * hd + nkv * hd:],
    }
    gate, up = gate_up.chunk(2, dim=-1)
    expected.update(mlp_gate=gate, mlp_up=up)
    for role, want in expected.items():
        ref = nm.refs[f"layers.0.{role}.weight"]
        got = x.numpy() @ ref.apply(t.saved[ref.source]).T
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_gpt2_conv1d_split_and_transpose_match_modelling_code():
    t = tiny("gpt2")
    nm = canonicalize(t.shapes, t.config)
    block = t.module.transformer.h[0]
    x = _x(64)
    with torch.no_grad():
        q, k, v = block.attn.c_attn(x).split(64, dim=-1)
        up = block.mlp.c_fc(x)
    for role, want in (("attn_q", q), ("attn_k", k), ("attn_v", v), ("mlp_up", up)):
        w = nm.refs[f"layers.0.{role}.weight"]
        b = nm.refs[f"layers.0.{role}.bias"]
        assert w.transpose and w.shape == (want.shape[-1], 64)
        got = x.numpy() @ w.apply(t.saved[w.source]).T + b.apply(t.saved[b.source])
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)


def test_v5_fused_expert_slice_equals_saved_expert():
    t = tiny("mixtral")
    nm = canonicalize({k: v.shape for k, v in t.memory.items()}, t.config)
    ref = nm.refs["layers.1.experts.2.expert_up.weight"]
    assert ref.source == "model.layers.1.mlp.experts.gate_up_proj"
    assert ref.shape == (96, 64)
    np.testing.assert_array_equal(
        ref.apply(t.memory[ref.source]), t.saved["model.layers.1.block_sparse_moe.experts.2.w3.weight"]
    )


# ---------------------------------------------------------------- literal hub names


def test_mixtral_hub_names():
    names = {
        "model.embed_tokens.weight": (32000, 4096),
        "model.layers.0.block_sparse_moe.experts.3.w1.weight": (14336, 4096),
        "model.layers.0.block_sparse_moe.experts.3.w2.weight": (4096, 14336),
        "model.layers.0.block_sparse_moe.experts.3.w3.weight": (14336, 4096),
        "model.layers.0.block_sparse_moe.gate.weight": (8, 4096),
        "model.layers.0.input_layernorm.weight": (4096,),
        "model.layers.0.post_attention_layernorm.weight": (4096,),
        "model.layers.0.self_attn.k_proj.weight": (1024, 4096),
        "model.norm.weight": (4096,),
        "lm_head.weight": (32000, 4096),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "mixtral"
    assert nm.by_source["model.layers.0.block_sparse_moe.experts.3.w1.weight"] == ("layers.0.experts.3.expert_gate.weight",)
    assert nm.by_source["model.layers.0.block_sparse_moe.experts.3.w3.weight"] == ("layers.0.experts.3.expert_up.weight",)
    assert nm.by_source["model.layers.0.block_sparse_moe.experts.3.w2.weight"] == ("layers.0.experts.3.expert_down.weight",)
    assert nm.by_source["model.layers.0.block_sparse_moe.gate.weight"] == ("layers.0.router.weight",)
    assert list(nm.refs)[0] == "embed.weight" and list(nm.refs)[-1] == "lm_head.weight"


def test_deepseek_v3_hub_names_with_fp8_scales_and_mtp_layer():
    base = "model.layers.3"
    names = {
        "model.embed_tokens.weight": (129280, 7168),
        f"{base}.mlp.experts.5.gate_proj.weight": (2048, 7168),
        f"{base}.mlp.experts.5.gate_proj.weight_scale_inv": (16, 56),
        f"{base}.mlp.gate.weight": (256, 7168),
        f"{base}.mlp.gate.e_score_correction_bias": (256,),
        f"{base}.mlp.shared_experts.up_proj.weight": (2048, 7168),
        f"{base}.mlp.shared_experts.up_proj.weight_scale_inv": (16, 56),
        f"{base}.self_attn.kv_a_proj_with_mqa.weight": (576, 7168),
        f"{base}.self_attn.kv_a_proj_with_mqa.weight_scale_inv": (5, 56),
        f"{base}.self_attn.kv_a_layernorm.weight": (512,),
        f"{base}.self_attn.kv_b_proj.weight": (32768, 512),
        f"{base}.self_attn.q_a_proj.weight": (1536, 7168),
        f"{base}.self_attn.q_a_layernorm.weight": (1536,),
        f"{base}.self_attn.q_b_proj.weight": (24576, 1536),
        f"{base}.self_attn.o_proj.weight": (7168, 16384),
        f"{base}.input_layernorm.weight": (7168,),
        f"{base}.post_attention_layernorm.weight": (7168,),
        "model.layers.61.eh_proj.weight": (7168, 14336),
        "model.layers.61.enorm.weight": (7168,),
        "model.layers.61.hnorm.weight": (7168,),
        "model.layers.61.embed_tokens.weight": (129280, 7168),
        "model.layers.61.shared_head.head.weight": (129280, 7168),
        "model.layers.61.shared_head.norm.weight": (7168,),
        "model.layers.61.self_attn.q_a_proj.weight": (1536, 7168),
        "model.layers.61.mlp.experts.0.up_proj.weight": (2048, 7168),
        "model.norm.weight": (7168,),
        "lm_head.weight": (129280, 7168),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "deepseek_v3"
    r = nm.by_source
    assert r[f"{base}.mlp.experts.5.gate_proj.weight"] == ("layers.3.experts.5.expert_gate.weight",)
    assert r[f"{base}.mlp.gate.weight"] == ("layers.3.router.weight",)
    assert r[f"{base}.mlp.gate.e_score_correction_bias"] == ("layers.3.router_bias.bias",)
    assert r[f"{base}.mlp.shared_experts.up_proj.weight"] == ("layers.3.shared_up.weight",)
    assert r[f"{base}.self_attn.kv_a_proj_with_mqa.weight"] == ("layers.3.attn_kv_a.weight",)
    assert r[f"{base}.self_attn.kv_a_layernorm.weight"] == ("layers.3.attn_kv_a_norm.weight",)
    assert r[f"{base}.self_attn.q_a_layernorm.weight"] == ("layers.3.attn_q_a_norm.weight",)
    assert nm.scales == {
        f"{base}.mlp.experts.5.gate_proj.weight_scale_inv": f"{base}.mlp.experts.5.gate_proj.weight",
        f"{base}.mlp.shared_experts.up_proj.weight_scale_inv": f"{base}.mlp.shared_experts.up_proj.weight",
        f"{base}.self_attn.kv_a_proj_with_mqa.weight_scale_inv": f"{base}.self_attn.kv_a_proj_with_mqa.weight",
    }
    assert set(nm.unknown) == {n for n in names if n.startswith("model.layers.61.")}
    assert all(r.layer in (None, 3) for r in nm.refs.values())
    assert any("multi-token-prediction" in n for n in nm.notes)


def test_orphan_scale_is_unknown_not_dropped():
    names = {"model.layers.0.self_attn.q_proj.weight_scale_inv": (1, 1)}
    nm = canonicalize(names)
    assert nm.unknown == tuple(names) and not nm.scales and nm.notes


def test_qwen2_moe_hub_names():
    b = "model.layers.0.mlp"
    names = {
        f"{b}.shared_expert.gate_proj.weight": (5632, 2048),
        f"{b}.shared_expert.up_proj.weight": (5632, 2048),
        f"{b}.shared_expert.down_proj.weight": (2048, 5632),
        f"{b}.shared_expert_gate.weight": (1, 2048),
        f"{b}.gate.weight": (60, 2048),
        f"{b}.experts.59.down_proj.weight": (2048, 1408),
        "model.layers.0.self_attn.q_proj.bias": (2048,),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "qwen2_moe"
    assert nm.by_source[f"{b}.shared_expert.gate_proj.weight"] == ("layers.0.shared_gate.weight",)
    assert nm.by_source[f"{b}.shared_expert_gate.weight"] == ("layers.0.shared_expert_router.weight",)
    assert nm.by_source[f"{b}.experts.59.down_proj.weight"] == ("layers.0.experts.59.expert_down.weight",)
    assert nm.by_source["model.layers.0.self_attn.q_proj.bias"] == ("layers.0.attn_q.bias",)


def test_original_gpt2_names_without_prefix_and_mask_buffers():
    names = {
        "wte.weight": (50257, 768),
        "wpe.weight": (1024, 768),
        "h.0.attn.c_attn.weight": (768, 2304),
        "h.0.attn.c_attn.bias": (2304,),
        "h.0.attn.c_proj.weight": (768, 768),
        "h.0.attn.bias": (1, 1, 1024, 1024),
        "h.0.attn.masked_bias": (),
        "h.0.ln_1.weight": (768,),
        "h.0.mlp.c_fc.weight": (768, 3072),
        "h.0.mlp.c_proj.weight": (3072, 768),
        "ln_f.weight": (768,),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "gpt2"
    assert nm.buffers == ("h.0.attn.bias", "h.0.attn.masked_bias")
    assert nm.by_source["h.0.attn.c_attn.weight"] == ("layers.0.attn_q.weight", "layers.0.attn_k.weight",
                                                      "layers.0.attn_v.weight")
    assert nm.refs["layers.0.attn_k.weight"].shape == (768, 768)
    assert nm.refs["layers.0.attn_k.weight"].selections == (Selection(1, ((768, 1536),)),)
    assert nm.refs["layers.0.mlp_up.weight"].shape == (3072, 768)
    assert nm.refs["layers.0.mlp_down.weight"].shape == (768, 3072)
    assert "lm_head.weight" not in nm.refs


def test_sentence_transformers_minilm_names():
    names = {
        "embeddings.word_embeddings.weight": (30522, 384),
        "embeddings.position_embeddings.weight": (512, 384),
        "embeddings.token_type_embeddings.weight": (2, 384),
        "embeddings.LayerNorm.weight": (384,),
        "embeddings.LayerNorm.bias": (384,),
        "encoder.layer.0.attention.self.query.weight": (384, 384),
        "encoder.layer.0.attention.self.query.bias": (384,),
        "encoder.layer.0.attention.output.LayerNorm.weight": (384,),
        "encoder.layer.0.intermediate.dense.weight": (1536, 384),
        "encoder.layer.0.output.dense.weight": (384, 1536),
        "encoder.layer.5.output.LayerNorm.bias": (384,),
        "pooler.dense.weight": (384, 384),
        "embeddings.position_ids": (1, 512),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "bert"
    assert nm.by_source["embeddings.word_embeddings.weight"] == ("embed.weight",)
    assert nm.by_source["encoder.layer.0.attention.self.query.weight"] == ("layers.0.attn_q.weight",)
    assert nm.by_source["encoder.layer.5.output.LayerNorm.bias"] == ("layers.5.post_mlp_norm.bias",)
    assert nm.unknown == () and nm.buffers == ("embeddings.position_ids",)  # an id range, not a weight
    # prefixed (bert-base style) and legacy gamma/beta names
    nm2 = canonicalize({"bert.encoder.layer.0.attention.output.LayerNorm.gamma": (768,),
                        "bert.embeddings.LayerNorm.beta": (768,), "cls.predictions.bias": (30522,)})
    assert set(nm2.refs) == {"layers.0.post_attn_norm.weight", "embed_norm.bias"}
    assert nm2.unknown == ("cls.predictions.bias",)


def test_gemma3_multimodal_hub_names():
    names = {
        "language_model.model.embed_tokens.weight": (262208, 2560),
        "language_model.model.layers.0.self_attn.q_norm.weight": (256,),
        "language_model.model.layers.0.pre_feedforward_layernorm.weight": (2560,),
        "language_model.model.layers.0.post_attention_layernorm.weight": (2560,),
        "language_model.model.norm.weight": (2560,),
        "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": (1152, 1152),
        "vision_tower.vision_model.embeddings.position_embedding.weight": (4096, 1152),
        "multi_modal_projector.mm_input_projection_weight": (1152, 2560),
    }
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert nm.family == "gemma3"
    assert set(nm.refs) == {"embed.weight", "layers.0.q_norm.weight", "layers.0.mlp_norm.weight",
                            "layers.0.post_attn_norm.weight", "final_norm.weight"}
    assert len(nm.unknown) == 3


def test_pythia_rotary_buffers_and_interleaved_qkv():
    names = {
        "gpt_neox.layers.0.attention.query_key_value.weight": (3 * 512, 512),
        "gpt_neox.layers.0.attention.query_key_value.bias": (3 * 512,),
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq": (16,),
        "gpt_neox.layers.0.attention.bias": (1, 1, 2048, 2048),
        "gpt_neox.layers.0.attention.masked_bias": (),
        "embed_out.weight": (50304, 512),
    }
    nm = canonicalize(names, {"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8})
    assert_bijection(nm, names)
    assert len(nm.buffers) == 3
    q = nm.refs["layers.0.attn_q.weight"]
    assert q.selections[0].ranges[:2] == ((0, 64), (192, 256))
    assert q.shape == (512, 512)
    assert nm.refs["lm_head.weight"].source == "embed_out.weight"


def test_phi3_qkv_split_needs_consistent_head_counts():
    names = {"model.layers.0.self_attn.qkv_proj.weight": (3072 + 2 * 1024, 3072)}
    cfg = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 24, "num_key_value_heads": 8}
    nm = canonicalize(names, cfg)
    assert [nm.refs[k].shape for k in nm.by_source[next(iter(names))]] == [(3072, 3072), (1024, 3072), (1024, 3072)]
    wrong = canonicalize(names, dict(cfg, num_key_value_heads=24))
    assert list(wrong.refs) == ["layers.0.attn_qkv.weight"] and wrong.notes


def test_duplicate_canonical_key_is_kept_as_unknown():
    names = {"model.layers.0.self_attn.q_proj.weight": (8, 8), "layers.0.self_attn.q_proj.weight": (8, 8)}
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert len(nm.refs) == 1 and len(nm.unknown) == 1 and nm.notes


# ---------------------------------------------------------------- TensorRef, roles, serialisation


def test_apply_rejects_wrong_shape():
    ref = TensorRef("layers.0.attn_q.weight", "x", (6, 4), "attn_q", "weight", 0, None, (Selection(0, ((0, 2),)),))
    with pytest.raises(IncompatibleShapes, match="'x'"):
        ref.apply(np.zeros((4, 6)))


def test_role_categories():
    cats = {role_category(r) for r in ROLES}
    assert cats == {"embedding", "attention", "mlp", "norm", "router", "routed_expert", "shared_expert",
                    "lm_head", "other"}
    assert role_category("shared_expert_router") == "router"
    assert role_category("router_bias") == "router"
    assert role_category("expert_down") == "routed_expert"
    with pytest.raises(ValueError):
        role_category("nonsense")


@pytest.mark.parametrize("family", ["deepseek_v3", "gpt2", "gemma3"])
def test_as_dict_is_json(family):
    t = tiny(family)
    nm = canonicalize(t.shapes, t.config, dtypes={k: "F32" for k in t.shapes})
    d = json.loads(json.dumps(nm.as_dict()))
    assert set(d["refs"]) == set(nm.refs)
    assert all(v["category"] in {"embedding", "attention", "mlp", "norm", "router", "routed_expert",
                                 "shared_expert", "lm_head", "other"} for v in d["refs"].values())


@settings(max_examples=60, deadline=None)
@given(nh=st.integers(1, 8), d=st.integers(1, 6), group=st.integers(1, 4), hidden=st.integers(1, 5))
def test_fused_attention_splits_partition_rows(nh, d, group, hidden):
    nkv = max(1, nh // group)
    phi = {"model.layers.0.self_attn.qkv_proj.weight": ((nh + 2 * nkv) * d, hidden)}
    nm = canonicalize(phi, {"num_attention_heads": nh, "num_key_value_heads": nkv, "head_dim": d})
    assert_bijection(nm, phi)
    assert [r.role for r in nm.refs.values()] == ["attn_q", "attn_k", "attn_v"]
    neox = {"layers.0.attention.query_key_value.weight": (3 * nh * d, hidden),
            "layers.0.attention.query_key_value.bias": (3 * nh * d,)}
    nm = canonicalize(neox, {"num_attention_heads": nh, "hidden_size": nh * d})
    assert_bijection(nm, neox)
    assert nm.refs["layers.0.attn_v.bias"].shape == (nh * d,)


@settings(max_examples=30, deadline=None)
@given(e=st.integers(1, 6), i=st.integers(1, 5), h=st.integers(1, 5))
def test_v5_expert_splits_partition(e, i, h):
    names = {"model.layers.2.mlp.experts.gate_up_proj": (e, 2 * i, h), "model.layers.2.mlp.experts.down_proj": (e, h, i)}
    nm = canonicalize(names)
    assert_bijection(nm, names)
    assert len(nm.refs) == 3 * e
    assert nm.refs[f"layers.2.experts.{e - 1}.expert_down.weight"].shape == (h, i)
