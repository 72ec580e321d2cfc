"""Tiny transformers models of every supported family, built once per family, saved and read back.

``FAMILIES`` holds the config keyword arguments of each family; ``tiny(family)`` builds the model with
transformers, saves it (``save_pretrained``, safetensors) and returns what came back from disk together
with the in-memory state dict. torch and transformers are imported only when a model is built, so a
test module can import this one before its ``pytest.importorskip`` calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_BASE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
    vocab_size=256, pad_token_id=0, bos_token_id=0, eos_token_id=0,
)
_MLA = dict(q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16)
_DS_MOE = dict(n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
               first_k_dense_replace=1, n_group=1, topk_group=1)
FAMILIES: dict[str, dict] = {
    "llama": dict(_BASE),
    "mistral": dict(_BASE),
    "mixtral": dict(_BASE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": dict(_BASE),
    "qwen2_moe": dict(_BASE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48),
    "qwen3": dict(_BASE, head_dim=16),
    "qwen3_moe": dict(_BASE, head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
    "deepseek_v2": dict(_BASE, **_MLA, **_DS_MOE),
    "deepseek_v3": dict(_BASE, **_MLA, **_DS_MOE),
    "glm4": dict(_BASE, head_dim=16),
    "glm4_moe": dict(_BASE, head_dim=16, use_qk_norm=True, **_DS_MOE),
    "gemma": dict(_BASE, head_dim=16),
    "gemma2": dict(_BASE, head_dim=16),
    "gemma3_text": dict(_BASE, head_dim=16),
    "gemma3": dict(
        text_config=dict(_BASE, head_dim=16),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=28, patch_size=14),
        mm_tokens_per_image=4,
    ),
    "phi3": dict(_BASE),
    "phimoe": dict(_BASE, num_local_experts=4, num_experts_per_tok=2),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0, eos_token_id=0),
    "gpt_neox": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
                     vocab_size=256, bos_token_id=0, eos_token_id=0),
    "bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=256),
}
FAMILY_IDS = sorted(FAMILIES)
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3", "glm4_moe", "phimoe"}


@dataclasses.dataclass(frozen=True, eq=False)
class Tiny:
    """A tiny model of one family: what ``save_pretrained`` wrote, and the model in memory."""

    config: dict
    """config.json as saved."""
    saved: dict[str, np.ndarray]
    """The tensors read back from the saved safetensors file(s)."""
    dtypes: dict[str, str]
    """The safetensors dtype of each saved tensor, from the file header."""
    memory: dict[str, np.ndarray]
    """The in-memory state dict as float32 numpy (transformers v5 keeps experts fused here)."""
    module: Any
    """The torch module itself (eval mode)."""
    num_parameters: int
    """Elements of the state dict (parameters and persistent buffers), tied tensors counted once."""

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.saved.items()}


@functools.lru_cache(maxsize=None)
def tiny(family: str) -> Tiny:
    """Build a tiny model with transformers (seed 0), save it, and read back config.json and the tensors."""
    import torch
    import transformers
    from safetensors import safe_open

    torch.manual_seed(0)
    cfg = transformers.AutoConfig.for_model(family, **FAMILIES[family])
    if family == "bert":
        model = transformers.AutoModel.from_config(cfg)
    elif family == "gemma3":
        model = transformers.Gemma3ForConditionalGeneration(cfg)
    else:
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model.eval()
    saved: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, safe_serialization=True)
        for path in sorted(Path(d).glob("*.safetensors")):
            with safe_open(str(path), framework="np") as f:
                for k in f.keys():
                    dtypes[k] = f.get_slice(k).get_dtype()
                    saved[k] = f.get_tensor(k)
        config = json.loads((Path(d) / "config.json").read_text())
    state = model.state_dict()
    memory = {k: v.detach().float().numpy().copy() for k, v in state.items()}
    # parameters plus persistent buffers (e.g. DeepSeek's e_score_correction_bias), tied tensors once
    num_parameters = sum({t.data_ptr(): t.numel() for t in state.values()}.values())
    return Tiny(config, saved, dtypes, memory, model, num_parameters)
