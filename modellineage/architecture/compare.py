"""Architecture evidence: normalised configs, facts read from weight shapes, and their agreement.

Nothing here decides pass/fail: :func:`check_config_against_weights` and :func:`compare_configs`
return records; the audits judge them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from modellineage.reading.config import ArchConfig
from modellineage.reading.naming import NameMap, canonicalize

__all__ = [
    "ArchitectureEvidence",
    "measure",
    "WeightFacts",
    "facts_from_weights",
    "Agreement",
    "check_config_against_weights",
    "FieldComparison",
    "ConfigComparison",
    "compare_configs",
    "count_parameters",
]


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


@dataclass(frozen=True)
class ArchitectureEvidence:
    """The architecture measurements of one model, and of its pair with a reference when one is given."""

    config: ArchConfig | None
    weight_facts: WeightFacts
    agreements: tuple[Agreement, ...]
    comparison: ConfigComparison | None

    def as_dict(self) -> dict:
        return {"config": None if self.config is None else self.config.as_dict(),
                "weight_facts": self.weight_facts.as_dict(),
                "agreements": [a.as_dict() for a in self.agreements],
                "comparison": None if self.comparison is None else self.comparison.as_dict()}


def measure(target, reference=None) -> ArchitectureEvidence:
    """Normalise ``target``'s config, read the facts its weight shapes state, check one against the other,
    and compare its config with ``reference``'s (both opened models, :class:`modellineage.reading.model.Model`)."""
    facts = target.weight_facts
    agreements = check_config_against_weights(target.arch, facts) if target.arch is not None else ()
    comparison = None
    if reference is not None and target.arch is not None and reference.arch is not None:
        comparison = compare_configs(target.arch, reference.arch)
    return ArchitectureEvidence(target.arch, facts, tuple(agreements), comparison)
