"""Normalised ``config.json``: one :class:`ArchConfig` for every supported family.

Part of the reading layer: naming needs head counts from it, architecture compares them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from modellineage.reading.boundary import count_value, quote, real_value

__all__ = ["ArchConfig", "normalise_config"]

# What transformers assumes when a config omits tie_word_embeddings (checked against the installed
# transformers in tests/test_architecture.py). Families not listed get None.
_TIE_DEFAULTS: dict[str, bool] = {
    "llama": False,
    "mistral": False,
    "mixtral": False,
    "qwen2": False,
    "qwen2_moe": False,
    "qwen3": False,
    "qwen3_moe": False,
    "deepseek_v2": False,
    "deepseek_v3": False,
    "glm4": False,
    "glm4_moe": False,
    "gemma": True,
    "gemma2": True,
    "gemma3": True,
    "gemma3_text": True,
    "phi3": False,
    "phimoe": False,
    "gpt2": True,
    "gpt_neox": False,
    "bert": True,
}

# Keys of rope_scaling / rope_parameters that are not scaling.
_ROPE_NON_SCALING = frozenset({"rope_theta", "partial_rotary_factor"})


@dataclass(frozen=True)
class ArchConfig:
    """A model config normalised across families; ``None`` where the config does not say.

    ``head_dim`` is the query/key head width: ``head_dim`` when given, else
    ``hidden_size / num_heads``; for multi-head latent attention (DeepSeek) it is
    ``qk_nope_head_dim + qk_rope_head_dim``. ``moe_intermediate_size`` is the width of one routed
    expert (Mixtral/PhiMoE: ``intermediate_size``); ``shared_intermediate_size`` the total width
    of the shared-expert MLP. ``rope_scaling`` is a dict with sorted keys and ``rope_type`` (never
    ``type``), without ``rope_theta``; ``None`` for plain RoPE. For per-layer-type rope parameters
    (Gemma-3) ``rope_theta`` and ``rope_scaling`` describe the full-attention layers.
    """

    model_type: str | None = None
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    moe_intermediate_size: int | None = None
    shared_intermediate_size: int | None = None
    vocab_size: int | None = None
    embedding_rows: int | None = None
    """Rows of the embedding matrix when the config declares them padded beyond ``vocab_size``
    (``embedding_size`` in OLMo, ``padded_vocab_size`` in GLM/ChatGLM); else ``None``."""
    num_experts: int | None = None
    experts_per_token: int | None = None
    num_shared_experts: int | None = None
    rope_theta: float | None = None
    rope_scaling: dict[str, Any] | None = None
    partial_rotary_factor: float | None = None
    norm_eps: float | None = None
    activation: str | None = None
    tied_embeddings: bool | None = None
    max_position_embeddings: int | None = None
    invalid: tuple[tuple[str, str], ...] = ()
    """(config key, short escaped value) of every value that is not what its field needs (a count that is
    not a non-negative integer up to :data:`MAX_CONFIG_COUNT`, a non-finite number, a non-string name...);
    such a field is ``None`` here, and :func:`check_config_against_weights` reports it as a disagreement."""

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "invalid"}
        if self.invalid:
            out["invalid"] = [list(item) for item in self.invalid]
        return out


#: Largest count a config field may state (sizes, layers, heads, experts, positions): a signed 32-bit
#: integer holds every value real configs give (the largest, max_position_embeddings, is ~10^7). A safety
#: limit against overflow and allocation by declared counts, not a threshold of judgement.
MAX_CONFIG_COUNT = 2**31 - 1
#: Longest string kept from a config (model_type, activation); longer ones are invalid.
_MAX_NAME = 64


class _Reader:
    """Typed reads of a config mapping; every value of the wrong type is recorded in ``invalid``."""

    def __init__(self, src: Mapping) -> None:
        self.src = src
        self.invalid: list[tuple[str, str]] = []

    def first(self, *keys: str) -> tuple[str | None, Any]:
        for key in keys:
            value = self.src.get(key)
            if value is not None:
                return key, value
        return None, None

    def _bad(self, key: str, value: Any) -> None:
        if all(k != key for k, _ in self.invalid):
            self.invalid.append((key, quote(value)))

    def count(self, *keys: str) -> int | None:
        key, value = self.first(*keys)
        if key is None:
            return None
        out = count_value(value, limit=MAX_CONFIG_COUNT)
        if out is None:
            self._bad(key, value)
        return out

    def real(self, *keys: str, src: Mapping | None = None) -> float | None:
        key, value = _Reader(src).first(*keys) if src is not None else self.first(*keys)
        if key is None:
            return None
        out = real_value(value)
        if out is None:
            self._bad(key, value)
        return out

    def name(self, *keys: str) -> str | None:
        key, value = self.first(*keys)
        if key is None:
            return None
        if not isinstance(value, str) or len(value) > _MAX_NAME:
            self._bad(key, value)
            return None
        return value

    def flag(self, key: str, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        self._bad(key, value)
        return None


def _first(raw: Mapping, *keys: str) -> Any:
    for key in keys:
        value = raw.get(key)
        if value is not None:
            return value
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _rope(raw: Mapping, read: _Reader) -> tuple[float | None, dict[str, Any] | None, float | None]:
    """(rope_theta, normalised rope_scaling, partial_rotary_factor) from v4 or v5 style configs."""
    params = raw.get("rope_parameters")
    if isinstance(params, Mapping) and params and all(isinstance(v, Mapping) for v in params.values()):
        # per layer type (Gemma-3 in transformers v5): describe the full-attention layers
        params = params.get("full_attention") or params[sorted(params)[0]]
    scaling = raw.get("rope_scaling")
    merged: dict[str, Any] = {}
    if isinstance(params, Mapping):
        merged.update(params)
    if isinstance(scaling, Mapping):
        merged.update(scaling)
    if "type" in merged:
        merged.setdefault("rope_type", merged["type"])
        del merged["type"]
    theta = read.real("rope_theta", "rotary_emb_base")
    if theta is None:
        theta = read.real("rope_theta", src=merged)
    partial = read.real("partial_rotary_factor", "rotary_pct")
    if partial is None:
        partial = read.real("partial_rotary_factor", src=merged)
    rest = {k: v for k, v in merged.items() if k not in _ROPE_NON_SCALING}
    if not rest or rest == {"rope_type": "default"}:
        rest_norm = None
    else:
        rest_norm = _jsonable(rest)
    return theta, rest_norm, partial


def normalise_config(raw: Mapping) -> ArchConfig:
    """Normalise a ``config.json`` mapping of any supported family.

    Args:
        raw: the config as a mapping (``json.load`` of ``config.json`` or
            ``PretrainedConfig.to_dict()``); a nested ``text_config`` (multimodal checkpoints)
            supplies the text-model fields, ``model_type`` stays the checkpoint's.

    Returns:
        An :class:`ArchConfig`. Fields the config does not give are ``None``, except documented
        family conventions: ``num_kv_heads`` defaults to ``num_heads`` (no GQA), GPT-2's
        ``n_inner: null`` means ``4 * n_embd``, ``tied_embeddings`` falls back to the family's
        transformers default, MoE configs without shared experts get ``num_shared_experts = 0``.
    """
    read = _Reader(raw)
    model_type = read.name("model_type")
    text = raw.get("text_config")
    src: dict[str, Any] = dict(raw)
    if isinstance(text, Mapping):
        src = {k: v for k, v in raw.items() if k not in ("text_config", "vision_config")}
        src.update(text)
    read.src = src
    text_type = read.name("model_type") if isinstance(text, Mapping) else model_type

    hidden = read.count("hidden_size", "n_embd", "d_model")
    heads = read.count("num_attention_heads", "n_head")
    kv_heads = read.count("num_key_value_heads", "multi_query_group_num")
    if kv_heads is None:
        kv_heads = heads
    nope, rope_dim = read.count("qk_nope_head_dim"), read.count("qk_rope_head_dim")
    if nope is not None and rope_dim is not None:
        head_dim = nope + rope_dim
    else:
        head_dim = read.count("head_dim")
        if head_dim is None and hidden is not None and heads:
            head_dim = hidden // heads if hidden % heads == 0 else None

    intermediate = read.count("intermediate_size", "n_inner", "ffn_dim")
    if intermediate is None and "gpt2" in (model_type, text_type) and hidden is not None:
        intermediate = 4 * hidden

    num_experts = read.count("num_local_experts", "n_routed_experts", "num_experts")
    if num_experts == 0:
        num_experts = None
    moe_intermediate = read.count("moe_intermediate_size")
    if moe_intermediate is None and num_experts and src.get("num_local_experts") is not None:
        moe_intermediate = intermediate  # Mixtral / PhiMoE: experts have intermediate_size

    shared_intermediate = read.count("shared_expert_intermediate_size")
    n_shared = read.count("n_shared_experts")
    if n_shared is None and shared_intermediate is not None:
        n_shared = 1 if shared_intermediate > 0 else 0
    if n_shared is not None and shared_intermediate is None and moe_intermediate is not None:
        shared_intermediate = n_shared * moe_intermediate
    if n_shared is None and num_experts:
        n_shared = 0

    tied = read.flag("tie_word_embeddings", raw.get("tie_word_embeddings"))
    if tied is None and isinstance(text, Mapping):
        tied = read.flag("tie_word_embeddings", text.get("tie_word_embeddings"))
    if tied is None:
        tied = _TIE_DEFAULTS.get(str(model_type), _TIE_DEFAULTS.get(str(text_type)))

    theta, scaling, partial = _rope(src, read)
    activation = read.name("hidden_activation", "hidden_act", "activation_function")

    return ArchConfig(
        model_type=model_type,
        hidden_size=hidden,
        num_layers=read.count("num_hidden_layers", "n_layer", "num_layers"),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        moe_intermediate_size=moe_intermediate,
        shared_intermediate_size=shared_intermediate,
        vocab_size=read.count("vocab_size"),
        embedding_rows=read.count("embedding_size", "padded_vocab_size"),
        num_experts=num_experts,
        experts_per_token=read.count("num_experts_per_tok", "num_experts_per_token"),
        num_shared_experts=n_shared,
        rope_theta=theta,
        rope_scaling=scaling,
        partial_rotary_factor=partial,
        norm_eps=read.real("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"),
        activation=activation,
        tied_embeddings=None if tied is None else bool(tied),
        max_position_embeddings=read.count("max_position_embeddings", "n_positions", "n_ctx"),
        invalid=tuple(read.invalid),
    )


