"""A small Hugging Face llama -> GGUF converter for the tests (our own, written for the demo's architecture).

It does what llama.cpp's ``convert_hf_to_gguf.py`` does for ``LlamaForCausalLM``, in the few lines a
tiny dense llama needs: llama.cpp's tensor names, the q/k row permutation its rotary embedding expects
(per head, rows ``(2, D/2)`` stored as ``(D/2, 2)``), 1-D tensors kept F32, the other weights at the
chosen type (Q8_0/Q4_0/... fall back to F16 for a tensor whose row does not tile into the type's blocks,
as llama.cpp does), the hyper-parameters as ``llama.*`` metadata and a byte-level BPE tokenizer as
``tokenizer.ggml.*`` (model ``gpt2``). Values are written through the ``gguf`` package's
``GGUFWriter`` and ``gguf.quants.quantize``; nothing of llama.cpp is vendored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import gguf

_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's storage order of a q or k projection: per head, rows (2, D/2) -> (D/2, 2)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    if hf in _TOP:
        return _TOP[hf]
    parts = hf.split(".")
    assert parts[:2] == ["model", "layers"], hf
    layer, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    return f"blk.{layer}.{_BLOCK[module]}.{kind}"


def convert(model_dir: Path, out: Path, qtype: str = "F16", *, split_max_tensors: int = 0) -> Path:
    """Write ``model_dir`` (config.json, model.safetensors, tokenizer.json) as one GGUF file at ``out``.

    ``split_max_tensors``: write a split GGUF instead, as llama.cpp's gguf-split does (``GGUFWriter``'s own
    splitting: shards ``{stem}-00001-of-0000n.gguf`` of at most this many tensors, each with ``split.no``,
    ``split.count``, ``split.tensors.count``; metadata and tokenizer in the first); returns the first shard.
    """
    cfg = json.loads((model_dir / "config.json").read_text())
    tensors = load_file(str(model_dir / "model.safetensors"))
    want = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[want][0]
    writer = gguf.GGUFWriter(str(out), "llama", split_max_tensors=split_max_tensors)
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    writer.add_name(model_dir.name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_rope_freq_base(float(cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)))
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type({"F32": 0, "F16": 1, "Q8_0": 7, "Q4_0": 2, "BF16": 32}.get(qtype, 1))
    _tokenizer(writer, model_dir)
    for name in sorted(tensors):
        w = tensors[name].astype(np.float32)
        if name.endswith("self_attn.q_proj.weight"):
            w = permute_qk(w, heads)
        elif name.endswith("self_attn.k_proj.weight"):
            w = permute_qk(w, kv)
        if w.ndim == 1 or qtype == "F32":
            writer.add_tensor(gguf_name(name), w)
        elif want == gguf.GGMLQuantizationType.F16 or w.shape[-1] % block:
            writer.add_tensor(gguf_name(name), w.astype(np.float16))
        else:
            q = gguf.quants.quantize(w, want)
            writer.add_tensor(gguf_name(name), q, raw_shape=q.shape, raw_dtype=want)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return writer.format_shard_names(out)[0]


def _tokenizer(writer: gguf.GGUFWriter, model_dir: Path) -> None:
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    size = max(max(vocab.values()), max(added, default=-1)) + 1
    tokens = [""] * size
    types = [gguf.TokenType.NORMAL] * size
    for piece, i in vocab.items():
        tokens[i] = piece
    for i, a in added.items():
        tokens[i] = a["content"]
        types[i] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    ids = {a["content"]: i for i, a in added.items()}
    for role, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("pad", writer.add_pad_token_id)):
        content = cfg.get(f"{role}_token")
        if content in ids:
            add(ids[content])
