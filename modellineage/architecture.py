"""Architecture evidence: normalised configs, facts read from weight shapes, and their agreement.

Nothing here decides pass/fail: :func:`check_config_against_weights` and :func:`compare_configs`
return records; the audits judge them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from .boundary import count_value, quote, real_value
from .naming import NameMap, canonicalize

__all__ = [
    "ArchConfig",
    "normalise_config",
    "WeightFacts",
    "facts_from_weights",
    "Agreement",
    "check_config_against_weights",
    "FieldComparison",
    "ConfigComparison",
    "compare_configs",
    "count_parameters",
]

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


# --------------------------------------------------------------------------------------------
# Facts from weights
# --------------------------------------------------------------------------------------------

_DTYPE_BYTES: dict[str, float] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 0.5, "F6_E2M3": 0.75, "F6_E3M2": 0.75,
    "C64": 8,
}
_DTYPE_ALIASES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def _dtype_name(dtype: str) -> str:
    d = str(dtype).removeprefix("torch.")
    return _DTYPE_ALIASES.get(d, d.upper() if d.upper() in _DTYPE_BYTES else d)


@dataclass(frozen=True)
class WeightFacts:
    """What the tensor shapes alone say about the architecture; ``None`` where they cannot say.

    ``head_dim_source`` tells where ``head_dim`` came from: ``"weights"`` (q/k norm widths),
    ``"config"`` (then ``num_heads`` / ``num_kv_heads`` are the q/k rows divided by the config's
    head dim, i.e. they test the config's heads against the shapes) or ``None``.
    """

    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    lm_head_rows: int | None
    intermediate_size: int | None
    moe_intermediate_size: int | None
    shared_intermediate_size: int | None
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None
    head_dim_source: str | None
    num_experts: int | None
    has_shared_experts: bool
    tied_embeddings: bool
    total_parameters: int
    canonical_parameters: int
    unknown_parameters: int
    parameters_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["notes"] = list(self.notes)
        return out


def numel(shape: tuple[int, ...]) -> int:
    """Elements of a tensor of this shape."""
    return math.prod(int(d) for d in shape)


def _first_shape(name_map: NameMap, role: str, kind: str = "weight") -> tuple[int, ...] | None:
    for ref in name_map.refs.values():
        if ref.role == role and ref.kind == kind:
            return ref.shape
    return None


def facts_from_weights(name_map: NameMap, config: ArchConfig | None = None) -> WeightFacts:
    """Read architecture facts from tensor shapes.

    Args:
        name_map: the checkpoint's canonical names (with source shapes and, optionally, dtypes).
        config: optional normalised config; only its ``head_dim`` is used, and only when the
            weights have no q/k norm to give the head width (see ``head_dim_source``).

    Returns:
        A :class:`WeightFacts`. Parameter counts exclude quantisation scales and buffers;
        ``total_parameters`` includes unknown tensors (e.g. a vision tower).
    """
    notes: list[str] = []
    embed = _first_shape(name_map, "embed")
    lm_head = _first_shape(name_map, "lm_head")
    final_norm = _first_shape(name_map, "final_norm")

    hidden = vocab = None
    if embed is not None and len(embed) == 2:
        vocab, hidden = embed
    elif lm_head is not None and len(lm_head) == 2:
        vocab, hidden = lm_head
    elif final_norm is not None:
        hidden = final_norm[0]
    lm_rows = lm_head[0] if lm_head is not None else None
    if embed is not None and lm_head is not None and embed[0] != lm_head[0]:
        notes.append(f"embedding has {embed[0]} rows, lm_head {lm_head[0]}")

    layers = sorted({r.layer for r in name_map.refs.values() if r.layer is not None})
    num_layers = layers[-1] + 1 if layers else None
    if layers and layers[-1] + 1 != len(layers):
        # The first missing indices, found by walking the indices present (never range(max): a tensor
        # named model.layers.1000000000.* must not cost a billion steps).
        missing, expect = [], 0
        for layer in layers:
            missing.extend(range(expect, min(layer, expect + 10 - len(missing))))
            expect = layer + 1
            if len(missing) >= 10:
                break
        notes.append(f"layer indices have gaps: {missing[:10]} missing")

    dense_up = _first_shape(name_map, "mlp_up") or _first_shape(name_map, "mlp_gate")
    expert_up = _first_shape(name_map, "expert_up") or _first_shape(name_map, "expert_gate")
    shared_up = _first_shape(name_map, "shared_up") or _first_shape(name_map, "shared_gate")

    experts_per_layer: dict[int, set[int]] = {}
    for r in name_map.refs.values():
        if r.expert is not None and r.layer is not None:
            experts_per_layer.setdefault(r.layer, set()).add(r.expert)
    counts = {len(v) for v in experts_per_layer.values()}
    num_experts = max(counts) if counts else None
    if len(counts) > 1:
        notes.append(f"layers differ in their number of routed experts: {sorted(counts)}")

    head_dim, head_src = None, None
    qn = _first_shape(name_map, "q_norm")
    if qn is not None and len(qn) == 1:
        head_dim, head_src = qn[0], "weights"
    elif config is not None and config.head_dim:
        head_dim, head_src = config.head_dim, "config"
    num_heads = num_kv = None
    q = _first_shape(name_map, "attn_q")
    k = _first_shape(name_map, "attn_k")
    if head_dim and q is not None and k is not None:
        if q[0] % head_dim == 0:
            num_heads = q[0] // head_dim
        else:
            notes.append(f"attn_q has {q[0]} rows, not a multiple of head dim {head_dim}")
        if k[0] % head_dim == 0:
            num_kv = k[0] // head_dim
        else:
            notes.append(f"attn_k has {k[0]} rows, not a multiple of head dim {head_dim}")
    elif _first_shape(name_map, "attn_q_b") is not None or _first_shape(name_map, "attn_kv_a") is not None:
        notes.append("multi-head latent attention: head counts are not read from shapes")
    elif _first_shape(name_map, "attn_qkv") is not None:
        notes.append("fused q,k,v kept whole (no head counts): heads not read from shapes")

    excluded = set(name_map.scales) | set(name_map.buffers)
    by_dtype: dict[str, int] = {}
    bytes_by_dtype: dict[str, int] = {}
    total = canonical = unknown = 0
    unknown_set = set(name_map.unknown)
    for name, shape in name_map.source_shapes.items():
        if name in excluded:
            continue
        n = numel(shape)
        total += n
        if name in unknown_set:
            unknown += n
        else:
            canonical += n
        if name in name_map.source_dtypes:
            d = _dtype_name(name_map.source_dtypes[name])
            by_dtype[d] = by_dtype.get(d, 0) + n
            if d in _DTYPE_BYTES:
                bytes_by_dtype[d] = bytes_by_dtype.get(d, 0) + int(math.ceil(n * _DTYPE_BYTES[d]))
            else:
                notes.append(f"unknown dtype {d!r} ({name}): bytes not counted")
    for scale in name_map.scales:
        if scale in name_map.source_dtypes:
            d = _dtype_name(name_map.source_dtypes[scale])
            if d in _DTYPE_BYTES:
                key = f"{d} (scales)"
                bytes_by_dtype[key] = bytes_by_dtype.get(key, 0) + int(
                    math.ceil(numel(name_map.source_shapes[scale]) * _DTYPE_BYTES[d])
                )

    return WeightFacts(
        hidden_size=hidden,
        num_layers=num_layers,
        vocab_size=vocab,
        lm_head_rows=lm_rows,
        intermediate_size=dense_up[0] if dense_up is not None else None,
        moe_intermediate_size=expert_up[0] if expert_up is not None else None,
        shared_intermediate_size=shared_up[0] if shared_up is not None else None,
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        head_dim_source=head_src,
        num_experts=num_experts,
        has_shared_experts=shared_up is not None,
        tied_embeddings=lm_head is None,
        total_parameters=total,
        canonical_parameters=canonical,
        unknown_parameters=unknown,
        parameters_by_dtype=dict(sorted(by_dtype.items())),
        bytes_by_dtype=dict(sorted(bytes_by_dtype.items())),
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# Config vs weights
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """One config field checked against the weights. ``agrees`` is None when it cannot be told."""

    field: str
    config_value: Any
    weights_value: Any
    agrees: bool | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _agree(name: str, cfg_value: Any, w_value: Any, what: str = "") -> Agreement:
    if w_value is None:
        return Agreement(name, cfg_value, None, None, f"cannot be inferred from weights{what}")
    if cfg_value is None:
        return Agreement(name, None, w_value, None, "config does not say")
    ok = cfg_value == w_value
    note = "" if ok else f"config says {cfg_value}, weights show {w_value}{what}"
    return Agreement(name, cfg_value, w_value, ok, note)


def check_config_against_weights(cfg: ArchConfig, facts: WeightFacts) -> tuple[Agreement, ...]:
    """Compare a normalised config with what the weight shapes show, field by field.

    Args:
        cfg: the normalised config.
        facts: facts read from the same checkpoint's weights.

    Returns:
        One :class:`Agreement` per field, in a fixed order: ``hidden_size``, ``num_layers``,
        ``vocab_size``, ``intermediate_size``, ``moe_intermediate_size``,
        ``shared_intermediate_size``, ``num_experts``, ``num_shared_experts``, ``num_heads``,
        ``num_kv_heads``, ``head_dim``, ``tied_embeddings``. Values are reported as they are: a
        config ``vocab_size`` must equal the embedding rows exactly in a Hugging Face checkpoint.
    """
    out = [Agreement(key, value, None, False, f"config.json gives {value}, not a valid value for {key}")
           for key, value in cfg.invalid]
    out += [
        _agree("hidden_size", cfg.hidden_size, facts.hidden_size),
        _agree("num_layers", cfg.num_layers, facts.num_layers),
    ]
    if cfg.embedding_rows is not None:
        vocab = _agree("vocab_size", cfg.embedding_rows, facts.vocab_size,
                       f" (embedding rows; config pads vocab_size {cfg.vocab_size} to {cfg.embedding_rows})")
    else:
        vocab = _agree("vocab_size", cfg.vocab_size, facts.vocab_size, " (embedding rows)")
    if facts.lm_head_rows is not None and facts.vocab_size is not None and facts.lm_head_rows != facts.vocab_size:
        vocab = Agreement(vocab.field, vocab.config_value, vocab.weights_value, vocab.agrees,
                          (vocab.note + "; " if vocab.note else "") + f"lm_head has {facts.lm_head_rows} rows")
    out.append(vocab)

    if facts.intermediate_size is None and cfg.intermediate_size is not None and facts.moe_intermediate_size is not None:
        out.append(Agreement("intermediate_size", cfg.intermediate_size, None, None, "no dense MLP in the weights"))
    else:
        out.append(_agree("intermediate_size", cfg.intermediate_size, facts.intermediate_size))
    out.append(_moe_field("moe_intermediate_size", cfg.moe_intermediate_size, facts.moe_intermediate_size,
                          present=facts.num_experts is not None))
    out.append(_moe_field("shared_intermediate_size", cfg.shared_intermediate_size, facts.shared_intermediate_size,
                          present=facts.has_shared_experts))
    out.append(_moe_field("num_experts", cfg.num_experts, facts.num_experts, present=facts.num_experts is not None))

    cfg_shared = cfg.num_shared_experts
    if facts.has_shared_experts:
        if cfg_shared is None:
            shared = Agreement("num_shared_experts", None, None, None, "weights have a shared expert; config does not say")
        elif cfg_shared == 0:
            shared = Agreement("num_shared_experts", 0, None, False, "config says 0 but the weights have a shared expert")
        else:
            shared = Agreement("num_shared_experts", cfg_shared, None, None,
                               f"shared-expert MLP of width {facts.shared_intermediate_size}; the count is not in shapes")
    else:
        ok = cfg_shared in (None, 0)
        shared = Agreement("num_shared_experts", cfg_shared, 0, ok,
                           "" if ok else f"config says {cfg_shared}, weights have no shared expert")
    out.append(shared)

    via = f" (via head dim {facts.head_dim} from {facts.head_dim_source})" if facts.head_dim_source else ""
    out.append(_agree("num_heads", cfg.num_heads, facts.num_heads, via))
    out.append(_agree("num_kv_heads", cfg.num_kv_heads, facts.num_kv_heads, via))
    if facts.head_dim_source == "weights":
        out.append(_agree("head_dim", cfg.head_dim, facts.head_dim, " (q_norm width)"))
    else:
        out.append(Agreement("head_dim", cfg.head_dim, None, None, "no q/k norm in the weights to show the head width"))

    if cfg.tied_embeddings is None:
        out.append(Agreement("tied_embeddings", None, facts.tied_embeddings, None, "config does not say"))
    else:
        ok: bool | None = cfg.tied_embeddings == facts.tied_embeddings
        note = ""
        if not ok and cfg.tied_embeddings:
            # Loaders tie the head to the embedding and ignore the stored copy: odd, but harmless,
            # and common in real exports, so it is reported without counting as a disagreement.
            ok, note = None, "config ties embeddings but an lm_head tensor is stored (ignored when tied)"
        elif not ok:
            note = "config does not tie embeddings but no lm_head tensor is stored"
        out.append(Agreement("tied_embeddings", cfg.tied_embeddings, facts.tied_embeddings, ok, note))
    return tuple(out)


def _moe_field(name: str, cfg_value: Any, w_value: Any, present: bool) -> Agreement:
    if not present:
        if cfg_value in (None, 0):
            return Agreement(name, cfg_value, None, True, "absent in config and weights")
        return Agreement(name, cfg_value, None, False, f"config says {cfg_value}, weights have none")
    return _agree(name, cfg_value, w_value)


# --------------------------------------------------------------------------------------------
# Config vs config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldComparison:
    """One normalised config field on both sides."""

    field: str
    target: Any
    reference: Any
    equal: bool

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ConfigComparison:
    """Field-by-field comparison of two normalised configs."""

    fields: tuple[FieldComparison, ...]

    @property
    def identical(self) -> bool:
        """True when every field is equal."""
        return all(f.equal for f in self.fields)

    @property
    def differing(self) -> tuple[str, ...]:
        """Names of the fields that differ."""
        return tuple(f.field for f in self.fields if not f.equal)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fields": [f.as_dict() for f in self.fields],
            "identical": self.identical,
            "differing": list(self.differing),
        }


_REL_TOL = 1e-9


def _equal(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, float) or isinstance(b, float):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(float(a), float(b), rel_tol=_REL_TOL, abs_tol=0.0)
        return False
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return set(a) == set(b) and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def compare_configs(target: ArchConfig, reference: ArchConfig) -> ConfigComparison:
    """Compare two normalised configs field by field.

    Args:
        target: the config under audit.
        reference: the config it is compared with.

    Returns:
        A :class:`ConfigComparison`. Integers, strings and booleans are compared exactly, floats
        with relative tolerance 1e-9 (also inside ``rope_scaling``); a field ``None`` on both sides
        counts as equal, ``None`` on one side as different.
    """
    out = []
    for f in fields(ArchConfig):
        if f.name == "invalid":
            continue
        a, b = getattr(target, f.name), getattr(reference, f.name)
        out.append(FieldComparison(f.name, a, b, _equal(a, b)))
    return ConfigComparison(tuple(out))


def count_parameters(shapes: Mapping[str, tuple[int, ...]], name_map: NameMap | None = None) -> int:
    """Count the parameters of a checkpoint from its tensor shapes.

    Args:
        shapes: source tensor name -> shape.
        name_map: the checkpoint's :class:`NameMap`; built from ``shapes`` when omitted.

    Returns:
        The number of elements of every tensor except quantisation scales (``*_scale_inv``,
        ``*.weight_scale``) and non-parameter buffers (rotary ``inv_freq``, causal masks); unknown
        tensors (e.g. a vision tower) are counted.
    """
    nm = name_map if name_map is not None else canonicalize(shapes)
    excluded = set(nm.scales) | set(nm.buffers)
    return sum(numel(tuple(shape)) for name, shape in shapes.items() if name not in excluded)
