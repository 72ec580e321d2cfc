"""Canonical tensor names: one scheme for the checkpoints of many model families.

Every tensor of a checkpoint is mapped to canonical entries of the form::

    embed.weight                              # outside the layer stack
    layers.3.attn_q.weight                    # layer 3, role attn_q, parameter kind weight
    layers.3.attn_q.bias
    layers.3.experts.7.expert_up.weight       # routed expert 7 of layer 3
    final_norm.weight
    lm_head.weight

i.e. ``[layers.<i>.][experts.<e>.]<role>.<kind>`` with ``kind`` in ``weight`` / ``bias``.
Canonical views of linear weights are always ``(out_features, in_features)``: GPT-2's Conv1D
weights, stored ``(in, out)``, are transposed.

Fused source tensors are split into their roles. Each canonical entry is a :class:`TensorRef`
that names its source tensor and the explicit part of it (axis + half-open row ranges, optional
squeeze and transpose), so later code can read only the rows it needs:

* Phi-3 ``qkv_proj``: rows ``q | k | v`` (needs heads, kv heads and head dim from the config);
* GPT-NeoX ``query_key_value``: rows interleaved per head ``[h0 q,k,v, h1 q,k,v, ...]``
  (needs the number of heads); the bias likewise;
* GPT-2 ``c_attn``: Conv1D, columns ``q | k | v`` in equal thirds (shapes suffice);
* ``gate_up_proj`` (Phi-3, GLM-4): rows ``gate | up`` halves (shapes suffice);
* transformers-v5 fused experts ``mlp.experts.gate_up_proj`` ``(E, 2I, H)`` and
  ``mlp.experts.down_proj`` ``(E, H, I)``: one entry per expert along axis 0.

Without the needed head counts a fused attention tensor is kept whole under role ``attn_qkv``
(and the reason is written to :attr:`NameMap.notes`); nothing is guessed.

Roles that are not a per-layer projection or norm of the text model are never dropped: vision
towers, multimodal projectors, multi-token-prediction layers (DeepSeek/GLM ``eh_proj``, ``enorm``,
``hnorm``, ``shared_head``) and any unrecognised name go to :attr:`NameMap.unknown` verbatim;
quantisation scales (``*_scale_inv``, ``*.weight_scale``) go to :attr:`NameMap.scales`;
non-parameter buffers (rotary ``inv_freq``, GPT-2/GPT-NeoX causal-mask ``attn.bias``) go to
:attr:`NameMap.buffers`.

Norm roles: ``attn_norm`` / ``mlp_norm`` are the pre-attention / pre-MLP norms of pre-norm models
(Llama's ``post_attention_layernorm`` is the pre-MLP norm). ``post_attn_norm`` / ``post_mlp_norm``
are norms applied to the sublayer output (Gemma-2/3 and GLM-4 sandwich norms) and BERT's post-LN
``attention.output.LayerNorm`` / ``output.LayerNorm``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from modellineage.errors import IncompatibleShapes
from modellineage.reading.config import normalise_config

__all__ = [
    "ROLES",
    "Selection",
    "TensorRef",
    "NameMap",
    "canonicalize",
    "canonical_key",
    "role_category",
]

# Order matters: it is the order of canonical keys inside a layer.
_ROLE_CATEGORIES: dict[str, str] = {
    "embed": "embedding",
    "pos_embed": "embedding",
    "token_type_embed": "embedding",
    "embed_norm": "norm",
    "attn_norm": "norm",
    "attn_q": "attention",
    "attn_k": "attention",
    "attn_v": "attention",
    "attn_qkv": "attention",
    "attn_q_a": "attention",
    "attn_q_a_norm": "norm",
    "attn_q_b": "attention",
    "attn_kv_a": "attention",
    "attn_kv_a_norm": "norm",
    "attn_kv_b": "attention",
    "q_norm": "norm",
    "k_norm": "norm",
    "attn_o": "attention",
    "post_attn_norm": "norm",
    "mlp_norm": "norm",
    "mlp_gate": "mlp",
    "mlp_up": "mlp",
    "mlp_gate_up": "mlp",
    "mlp_down": "mlp",
    "router": "router",
    "router_bias": "router",
    "shared_expert_router": "router",
    "shared_gate": "shared_expert",
    "shared_up": "shared_expert",
    "shared_down": "shared_expert",
    "expert_gate": "routed_expert",
    "expert_up": "routed_expert",
    "expert_gate_up": "routed_expert",
    "expert_down": "routed_expert",
    "post_mlp_norm": "norm",
    "final_norm": "norm",
    "lm_head": "lm_head",
    "pooler": "other",
}

ROLES: tuple[str, ...] = tuple(_ROLE_CATEGORIES)
"""Every canonical role, in canonical order."""

_ROLE_ORDER = {role: i for i, role in enumerate(ROLES)}
_PRE_ROLES = frozenset({"embed", "pos_embed", "token_type_embed", "embed_norm"})
_KIND_ORDER = {"weight": 0, "bias": 1}


def role_category(role: str) -> str:
    """Map a canonical role to its report category.

    Args:
        role: a canonical role, one of :data:`ROLES`.

    Returns:
        One of ``embedding``, ``attention``, ``mlp``, ``norm``, ``router``, ``routed_expert``,
        ``shared_expert``, ``lm_head``, ``other``.

    Raises:
        ValueError: ``role`` is not a canonical role.
    """
    try:
        return _ROLE_CATEGORIES[role]
    except KeyError:
        raise ValueError(f"unknown canonical role {role!r}; known roles: {', '.join(ROLES)}") from None


@dataclass(frozen=True)
class Selection:
    """A part of one axis of a source tensor: half-open ranges, concatenated in order."""

    axis: int
    ranges: tuple[tuple[int, int], ...]
    squeeze: bool = False
    """Drop this axis after selecting (the ranges then cover exactly one index)."""

    @property
    def length(self) -> int:
        """Number of indices selected along ``axis``."""
        return sum(stop - start for start, stop in self.ranges)

    def as_dict(self) -> dict[str, Any]:
        return {"axis": self.axis, "ranges": [list(r) for r in self.ranges], "squeeze": self.squeeze}


@dataclass(frozen=True)
class TensorRef:
    """One canonical tensor: a whole source tensor or an explicit part of a fused one."""

    key: str
    source: str
    source_shape: tuple[int, ...]
    role: str
    kind: str
    layer: int | None = None
    expert: int | None = None
    selections: tuple[Selection, ...] = ()
    """Parts of source axes to keep; axes refer to the source array; at most one per axis."""
    transpose: bool = False
    """Swap the last two axes after selecting (GPT-2 Conv1D weights are stored ``(in, out)``)."""

    @property
    def is_whole(self) -> bool:
        """True when the canonical tensor is the source tensor unchanged."""
        return not self.selections and not self.transpose

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the canonical tensor (after selection, squeeze and transpose)."""
        dims = list(self.source_shape)
        for sel in self.selections:
            dims[sel.axis] = sel.length
        squeezed = {sel.axis for sel in self.selections if sel.squeeze}
        out = [d for axis, d in enumerate(dims) if axis not in squeezed]
        if self.transpose and len(out) >= 2:
            out[-1], out[-2] = out[-2], out[-1]
        return tuple(out)

    @property
    def numel(self) -> int:
        """Number of elements of the canonical tensor."""
        return int(np.prod(self.shape, dtype=np.int64))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Cut this canonical tensor out of the full source array.

        Args:
            array: the whole source tensor, of shape :attr:`source_shape`.

        Returns:
            The canonical tensor (a view where numpy allows it), of shape :attr:`shape`.

        Raises:
            IncompatibleShapes: ``array`` does not have the source shape.
        """
        if tuple(array.shape) != tuple(self.source_shape):
            raise IncompatibleShapes(
                f"tensor {self.source!r}: expected shape {tuple(self.source_shape)} for {self.key!r}, "
                f"got {tuple(array.shape)}"
            )
        out = array
        for sel in self.selections:
            parts = [
                out[(slice(None),) * sel.axis + (slice(start, stop),)] for start, stop in sel.ranges
            ]
            out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=sel.axis)
        squeezed = sorted((sel.axis for sel in self.selections if sel.squeeze), reverse=True)
        for axis in squeezed:
            out = np.squeeze(out, axis=axis)
        if self.transpose and out.ndim >= 2:
            out = np.swapaxes(out, -1, -2)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source": self.source,
            "source_shape": list(self.source_shape),
            "shape": list(self.shape),
            "role": self.role,
            "category": role_category(self.role),
            "kind": self.kind,
            "layer": self.layer,
            "expert": self.expert,
            "selections": [s.as_dict() for s in self.selections],
            "transpose": self.transpose,
        }


@dataclass(frozen=True)
class NameMap:
    """The canonical view of one checkpoint's tensor names; every source name is accounted for.

    Each source name appears in exactly one of :attr:`by_source`, :attr:`unknown`,
    :attr:`scales` or :attr:`buffers`.
    """

    family: str
    """``model_type`` of the config when given, else the layout detected from the names."""
    refs: dict[str, TensorRef]
    """Canonical key -> reference, in canonical order."""
    unknown: tuple[str, ...]
    """Source names not mapped (vision tower, MTP layers, unrecognised), verbatim, sorted."""
    by_source: dict[str, tuple[str, ...]]
    """Source name -> the canonical keys cut from it."""
    scales: dict[str, str] = field(default_factory=dict)
    """Quantisation scale tensor -> the source weight it scales."""
    buffers: tuple[str, ...] = ()
    """Non-parameter buffers stored in the checkpoint (rotary ``inv_freq``, causal masks)."""
    source_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Every source name -> its shape, as given to :func:`canonicalize`."""
    source_dtypes: dict[str, str] = field(default_factory=dict)
    """Source name -> dtype string, where the caller gave them."""
    notes: tuple[str, ...] = ()
    """Why something was left unsplit, duplicated or set aside."""

    def layer_of(self, source: str) -> int | None:
        """The layer index of a source tensor (None for embeddings, head, final norm, unknown names)."""
        keys = self.by_source.get(source, ())
        return self.refs[keys[0]].layer if keys else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "refs": {k: r.as_dict() for k, r in self.refs.items()},
            "unknown": list(self.unknown),
            "by_source": {k: list(v) for k, v in self.by_source.items()},
            "scales": dict(self.scales),
            "buffers": list(self.buffers),
            "source_shapes": {k: list(v) for k, v in self.source_shapes.items()},
            "source_dtypes": dict(self.source_dtypes),
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------
# Name tables
# --------------------------------------------------------------------------------------------

# Prefixes in front of the text model, tried in order (longest first).
_PREFIXES = (
    "model.language_model.",
    "language_model.model.",
    "language_model.",
    "model.",
    "transformer.",
    "gpt_neox.",
    "bert.",
    "",
)

_TOP_MODULES: dict[str, str] = {
    "embed_tokens": "embed",
    "wte": "embed",
    "embed_in": "embed",
    "embeddings.word_embeddings": "embed",
    "wpe": "pos_embed",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.token_type_embeddings": "token_type_embed",
    "embeddings.LayerNorm": "embed_norm",
    "norm": "final_norm",
    "ln_f": "final_norm",
    "final_layer_norm": "final_norm",
    "lm_head": "lm_head",
    "embed_out": "lm_head",
    "pooler.dense": "pooler",
}

_LAYER_MODULES: dict[str, str] = {
    # llama-style attention (llama, mistral, qwen, gemma, glm, phi3 o_proj, ...)
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_o",
    "self_attn.q_norm": "q_norm",
    "self_attn.k_norm": "k_norm",
    # DeepSeek multi-head latent attention
    "self_attn.q_a_proj": "attn_q_a",
    "self_attn.q_b_proj": "attn_q_b",
    "self_attn.q_a_layernorm": "attn_q_a_norm",
    "self_attn.kv_a_proj_with_mqa": "attn_kv_a",
    "self_attn.kv_b_proj": "attn_kv_b",
    "self_attn.kv_a_layernorm": "attn_kv_a_norm",
    # norms
    "input_layernorm": "attn_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "post_mlp_norm",
    "post_self_attn_layernorm": "post_attn_norm",
    "post_mlp_layernorm": "post_mlp_norm",
    # dense MLP
    "mlp.gate_proj": "mlp_gate",
    "mlp.up_proj": "mlp_up",
    "mlp.down_proj": "mlp_down",
    # MoE routers and shared experts
    "mlp.gate": "router",
    "mlp.router": "router",
    "block_sparse_moe.gate": "router",
    "block_sparse_moe.router": "router",
    "mlp.shared_expert.gate_proj": "shared_gate",
    "mlp.shared_expert.up_proj": "shared_up",
    "mlp.shared_expert.down_proj": "shared_down",
    "mlp.shared_experts.gate_proj": "shared_gate",
    "mlp.shared_experts.up_proj": "shared_up",
    "mlp.shared_experts.down_proj": "shared_down",
    "mlp.shared_expert_gate": "shared_expert_router",
    # GPT-2 (Conv1D weights are transposed, see _CONV1D)
    "ln_1": "attn_norm",
    "ln_2": "mlp_norm",
    "attn.c_proj": "attn_o",
    "mlp.c_fc": "mlp_up",
    "mlp.c_proj": "mlp_down",
    # GPT-NeoX
    "attention.dense": "attn_o",
    "mlp.dense_h_to_4h": "mlp_up",
    "mlp.dense_4h_to_h": "mlp_down",
    # BERT (post-LN)
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_o",
    "attention.output.LayerNorm": "post_attn_norm",
    "intermediate.dense": "mlp_up",
    "output.dense": "mlp_down",
    "output.LayerNorm": "post_mlp_norm",
}

_CONV1D = frozenset({"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})

# Fused modules: module path -> split rule.
_FUSED = {
    "self_attn.qkv_proj": "qkv_blocks",
    "attention.query_key_value": "qkv_per_head",
    "attn.c_attn": "qkv_thirds",
    "mlp.gate_up_proj": "gate_up",
}

_EXPERT_RE = re.compile(
    r"^(?:mlp|block_sparse_moe)\.experts\.([0-9]{1,18})\.(gate_proj|up_proj|down_proj|w1|w2|w3)$"
)
_EXPERT_ROLES = {
    "gate_proj": "expert_gate",
    "w1": "expert_gate",
    "up_proj": "expert_up",
    "w3": "expert_up",
    "down_proj": "expert_down",
    "w2": "expert_down",
}
# transformers-v5 fused expert parameters (no ".weight" suffix): (E, 2I, H) and (E, H, I).
_FUSED_EXPERTS = {
    "mlp.experts.gate_up_proj": "expert_gate_up",
    "mlp.experts.down_proj": "expert_down",
    "block_sparse_moe.experts.gate_up_proj": "expert_gate_up",
    "block_sparse_moe.experts.down_proj": "expert_down",
}

# Layer and expert indices: ASCII digits, at most 18 (below 2**63; a longer run is no index and the
# name stays unknown). Work never loops up to an index: only the indices present are walked.
_LAYER_RE = re.compile(r"^(?:layers|h|encoder\.layer)\.([0-9]{1,18})\.(.+)$")
#: Most experts one fused expert tensor (E, ., .) is cut into; real MoE models have at most a few hundred.
#: A safety limit (every expert becomes a record), not a threshold of judgement.
MAX_FUSED_EXPERTS = 4096
_MTP_MARKERS = ("eh_proj.", "enorm.", "hnorm.", "shared_head.")
# Non-parameter tensors computed from the config (never trained): rotary frequencies, fairseq's
# placeholder, BERT's position/token-type id ranges, and per-layer causal masks.
_BUFFER_PARAMS = frozenset({"inv_freq", "_float_tensor", "position_ids", "token_type_ids"})
_BUFFER_RESTS = frozenset({"attn.bias", "attn.masked_bias", "attention.bias", "attention.masked_bias"})
_KIND_ALIASES = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_SCALE_SUFFIXES = (("_scale_inv", ""), (".weight_scale", ".weight"))


@dataclass(frozen=True)
class _Parsed:
    """One source name, parsed: where it sits and which module/param it is."""

    name: str
    layer: int | None
    module: str
    param: str


@dataclass(frozen=True)
class _Heads:
    num_heads: int | None
    num_kv_heads: int | None
    head_dim: int | None


def _parse(name: str) -> _Parsed | None:
    """Strip a known prefix and split into layer / module / parameter, or None if not ours."""
    for prefix in _PREFIXES:
        if not name.startswith(prefix):
            continue
        tail = name[len(prefix):]
        m = _LAYER_RE.match(tail)
        if m:
            layer, rest = int(m.group(1)), m.group(2)
            if rest in _FUSED_EXPERTS:
                return _Parsed(name, layer, rest, "weight")
            module, _, param = rest.rpartition(".")
            return _Parsed(name, layer, module, param)
        module, _, param = tail.rpartition(".")
        if module in _TOP_MODULES or param in _BUFFER_PARAMS:
            return _Parsed(name, None, module, param)
    return None


def _detect_family(names: list[str]) -> str:
    """Guess the tensor layout from names alone; llama-style layouts are reported as 'llama'."""
    joined = "\n".join(names)

    def has(fragment: str) -> bool:
        return fragment in joined

    if re.search(r"(^|\.)h\.\d+\.attn\.c_attn\.", joined, re.M):
        return "gpt2"
    if has(".attention.query_key_value."):
        return "gpt_neox"
    if re.search(r"(^|\.)encoder\.layer\.\d+\.attention\.self\.", joined, re.M):
        return "bert"
    if has(".block_sparse_moe.") or has(".mlp.router."):
        return "phimoe" if has("input_layernorm.bias") else "mixtral"
    if has(".self_attn.qkv_proj."):
        return "phi3"
    if has(".kv_a_proj_with_mqa."):
        return "deepseek_v3" if has("e_score_correction_bias") else "deepseek_v2"
    if has(".mlp.shared_expert_gate."):
        return "qwen2_moe"
    if has(".post_self_attn_layernorm."):
        return "glm4"
    if has(".mlp.experts."):
        if has("e_score_correction_bias"):
            return "glm4_moe"
        if has(".self_attn.q_norm."):
            return "qwen3_moe"
        return "mixtral"
    if has(".pre_feedforward_layernorm."):
        if has("vision_tower.") or has("language_model."):
            return "gemma3"
        return "gemma3_text" if has(".self_attn.q_norm.") else "gemma2"
    if has(".self_attn.q_norm."):
        return "qwen3"
    if has(".self_attn.q_proj.bias"):
        return "qwen2"
    return "llama"


def _heads_from_config(config: Mapping | None) -> tuple[_Heads, str | None]:
    """Head counts and ``model_type`` of a config, each validated (``None`` where the config is unusable)."""
    if config is None:
        return _Heads(None, None, None), None
    cfg = normalise_config(config)
    return _Heads(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim), cfg.model_type


def _ranges_split(total: int, sizes: list[int]) -> list[tuple[tuple[int, int], ...]]:
    out, start = [], 0
    for size in sizes:
        out.append(((start, start + size),))
        start += size
    assert start == total
    return out


def _split_fused(
    p: _Parsed, shape: tuple[int, ...], heads: _Heads, notes: list[str]
) -> list[tuple[str, tuple[Selection, ...], bool]] | None:
    """Split rules for a fused module: list of (role, selections, transpose), or None to keep whole."""
    rule = _FUSED[p.module]
    kind = _KIND_ALIASES[p.param]
    conv = p.module in _CONV1D and kind == "weight" and len(shape) == 2
    # The axis along which roles are stacked: Conv1D weights are (in, out), so columns.
    axis = 1 if conv else 0
    rows = shape[axis]

    if rule == "gate_up":
        if rows % 2:
            notes.append(f"{p.name}: {rows} rows cannot be halved into gate | up; kept whole as mlp_gate_up")
            return None
        parts = _ranges_split(rows, [rows // 2, rows // 2])
        return [(role, (Selection(axis, r),), False) for role, r in zip(("mlp_gate", "mlp_up"), parts)]

    if rule == "qkv_thirds":
        if rows % 3:
            notes.append(f"{p.name}: {rows} columns cannot be cut into equal q | k | v; kept whole as attn_qkv")
            return None
        parts = _ranges_split(rows, [rows // 3] * 3)
        return [(role, (Selection(axis, r),), conv) for role, r in zip(("attn_q", "attn_k", "attn_v"), parts)]

    if rule == "qkv_blocks":
        nh, nkv, hd = heads.num_heads, heads.num_kv_heads, heads.head_dim
        if nh is None or nkv is None or hd is None:
            notes.append(f"{p.name}: no head counts in the config; q | k | v kept whole as attn_qkv")
            return None
        sizes = [nh * hd, nkv * hd, nkv * hd]
        if sum(sizes) != rows:
            notes.append(
                f"{p.name}: {rows} rows != (heads {nh} + 2 x kv heads {nkv}) x head dim {hd}; kept whole as attn_qkv"
            )
            return None
        parts = _ranges_split(rows, sizes)
        return [(role, (Selection(axis, r),), False) for role, r in zip(("attn_q", "attn_k", "attn_v"), parts)]

    if rule == "qkv_per_head":
        nh = heads.num_heads
        if nh is None:
            notes.append(f"{p.name}: no head count in the config; interleaved q,k,v kept whole as attn_qkv")
            return None
        if not rows or rows % (3 * nh):  # (every head needs its rows: no loop over heads an empty tensor lacks)
            notes.append(f"{p.name}: {rows} rows are not 3 x {nh} heads x head dim; kept whole as attn_qkv")
            return None
        d = rows // (3 * nh)
        out = []
        for j, role in enumerate(("attn_q", "attn_k", "attn_v")):
            ranges = tuple((h * 3 * d + j * d, h * 3 * d + (j + 1) * d) for h in range(nh))
            out.append((role, (Selection(axis, ranges),), False))
        return out

    raise AssertionError(rule)  # pragma: no cover


def canonical_key(layer: int | None, expert: int | None, role: str, kind: str) -> str:
    """The canonical name of a tensor: ``layers.{layer}.experts.{expert}.{role}.{kind}`` (parts optional)."""
    parts = []
    if layer is not None:
        parts.append(f"layers.{layer}")
    if expert is not None:
        parts.append(f"experts.{expert}")
    parts += [role, kind]
    return ".".join(parts)


def _sort_key(ref: TensorRef) -> tuple:
    if ref.layer is None:
        section = 0 if ref.role in _PRE_ROLES else 2
        return (section, 0, 0, 0, _ROLE_ORDER[ref.role], _KIND_ORDER[ref.kind])
    in_expert = 0 if ref.expert is None else 1
    return (1, ref.layer, in_expert, ref.expert or 0, _ROLE_ORDER[ref.role], _KIND_ORDER[ref.kind])


def _refs_for(
    p: _Parsed, shape: tuple[int, ...], sandwich_layers: set[int], heads: _Heads, notes: list[str]
) -> list[TensorRef] | None:
    """Canonical refs for one parsed source tensor, or None when it is not a canonical tensor."""
    shape = tuple(int(d) for d in shape)
    layer = p.layer

    # transformers-v5 fused experts: (E, 2I, H) / (E, H, I), one entry per expert.
    if p.module in _FUSED_EXPERTS and p.param == "weight" and layer is not None:
        role = _FUSED_EXPERTS[p.module]
        if len(shape) != 3:
            return None
        if shape[0] > MAX_FUSED_EXPERTS or math.prod(shape) == 0:
            notes.append(f"{p.name}: {shape[0]} experts of shape {shape[1:]} are not cut per expert (empty, or "
                         f"above MAX_FUSED_EXPERTS = {MAX_FUSED_EXPERTS}); kept as unknown")
            return None
        refs = []
        for e in range(shape[0]):
            pick = Selection(0, ((e, e + 1),), squeeze=True)
            if role == "expert_gate_up" and shape[1] % 2 == 0:
                half = shape[1] // 2
                for r, rng in (("expert_gate", (0, half)), ("expert_up", (half, shape[1]))):
                    refs.append(TensorRef(canonical_key(layer, e, r, "weight"), p.name, shape, r, "weight", layer, e,
                                          (pick, Selection(1, (rng,)))))
            else:
                if role == "expert_gate_up":
                    notes.append(f"{p.name}: {shape[1]} rows cannot be halved; kept per expert as expert_gate_up")
                refs.append(TensorRef(canonical_key(layer, e, role, "weight"), p.name, shape, role, "weight", layer, e, (pick,)))
        return refs

    if layer is not None and p.module == "mlp.gate" and p.param == "e_score_correction_bias":
        return [TensorRef(canonical_key(layer, None, "router_bias", "bias"), p.name, shape, "router_bias", "bias", layer)]

    kind = _KIND_ALIASES.get(p.param)
    if kind is None:
        return None

    if layer is None:
        role = _TOP_MODULES.get(p.module)
        if role is None:
            return None
        return [TensorRef(canonical_key(None, None, role, kind), p.name, shape, role, kind)]

    m = _EXPERT_RE.match(p.module)
    if m:
        expert, role = int(m.group(1)), _EXPERT_ROLES[m.group(2)]
        return [TensorRef(canonical_key(layer, expert, role, kind), p.name, shape, role, kind, layer, expert)]

    if p.module in _FUSED:
        split = _split_fused(p, shape, heads, notes)
        if split is None:
            role = "mlp_gate_up" if _FUSED[p.module] == "gate_up" else "attn_qkv"
            transpose = p.module in _CONV1D and kind == "weight" and len(shape) == 2
            return [TensorRef(canonical_key(layer, None, role, kind), p.name, shape, role, kind, layer, None, (), transpose)]
        return [
            TensorRef(canonical_key(layer, None, role, kind), p.name, shape, role, kind, layer, None, sels, transpose)
            for role, sels, transpose in split
        ]

    if p.module == "post_attention_layernorm":
        role = "post_attn_norm" if layer in sandwich_layers else "mlp_norm"
    else:
        role = _LAYER_MODULES.get(p.module)
        if role is None:
            return None
    transpose = p.module in _CONV1D and kind == "weight" and len(shape) == 2
    return [TensorRef(canonical_key(layer, None, role, kind), p.name, shape, role, kind, layer, None, (), transpose)]


def canonicalize(
    shapes: Mapping[str, tuple[int, ...]],
    config: Mapping | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> NameMap:
    """Map a checkpoint's tensor names to canonical keys.

    Args:
        shapes: source tensor name -> shape, e.g. read from safetensors headers.
        config: the model's ``config.json`` as a mapping (multimodal configs with a nested
            ``text_config`` are accepted). Gives the family and the head counts needed to split
            fused attention tensors; without it those stay whole under ``attn_qkv``.
        dtypes: optional source name -> dtype string (e.g. safetensors ``"BF16"``), kept on the
            result for byte counts.

    Returns:
        A :class:`NameMap` in which every source name is mapped, or listed as unknown, scale or
        buffer.

    Example:
        >>> nm = canonicalize({"model.layers.0.self_attn.q_proj.weight": (64, 64)})
        >>> list(nm.refs)
        ['layers.0.attn_q.weight']
    """
    if config is not None and not isinstance(config, Mapping) and hasattr(config, "to_dict"):
        config = config.to_dict()  # a transformers PretrainedConfig
    names = sorted(shapes)
    source_shapes = {n: tuple(int(d) for d in shapes[n]) for n in names}
    heads, family = _heads_from_config(config)
    if not family:
        family = _detect_family(names)

    notes: list[str] = []
    unknown: list[str] = []
    buffers: list[str] = []
    scales: dict[str, str] = {}
    parsed: dict[str, _Parsed] = {}

    for name in names:
        base = None
        for suffix, replacement in _SCALE_SUFFIXES:
            if name.endswith(suffix):
                base = name[: -len(suffix)] + replacement
                break
        if base is not None:
            if base in shapes:
                scales[name] = base
            else:
                unknown.append(name)
                notes.append(f"{name}: looks like a quantisation scale but {base!r} is not in the checkpoint")
            continue
        p = _parse(name)
        if p is None:
            unknown.append(name)
            continue
        rest = f"{p.module}.{p.param}" if p.module else p.param
        if p.param in _BUFFER_PARAMS or (p.layer is not None and rest in _BUFFER_RESTS):
            buffers.append(name)
            continue
        parsed[name] = p

    # Multi-token-prediction layers (DeepSeek-V3, GLM-4.5): a layer holding eh_proj/enorm/hnorm.
    mtp_layers = {
        p.layer for p in parsed.values() if p.layer is not None and f"{p.module}.".startswith(_MTP_MARKERS)
    }
    for layer in sorted(mtp_layers):
        members = [n for n, p in parsed.items() if p.layer == layer]
        notes.append(
            f"layer {layer} holds eh_proj/enorm/hnorm: a multi-token-prediction module; "
            f"its {len(members)} tensors are listed as unknown"
        )
    sandwich = {p.layer for p in parsed.values() if p.module == "pre_feedforward_layernorm"}

    refs: dict[str, TensorRef] = {}
    by_source: dict[str, tuple[str, ...]] = {}
    for name, p in parsed.items():
        if p.layer in mtp_layers:
            unknown.append(name)
            continue
        made = _refs_for(p, source_shapes[name], sandwich, heads, notes)
        if not made:
            unknown.append(name)
            continue
        clash = [r.key for r in made if r.key in refs]
        if clash:
            unknown.append(name)
            notes.append(f"{name}: canonical key {clash[0]!r} already taken by {refs[clash[0]].source!r}; kept as unknown")
            continue
        for r in made:
            refs[r.key] = r
        by_source[name] = tuple(r.key for r in made)

    ordered = dict(sorted(refs.items(), key=lambda kv: _sort_key(kv[1])))
    return NameMap(
        family=str(family),
        refs=ordered,
        unknown=tuple(sorted(unknown)),
        by_source=dict(sorted(by_source.items())),
        scales=dict(sorted(scales.items())),
        buffers=tuple(sorted(buffers)),
        source_shapes=source_shapes,
        source_dtypes={n: str(dtypes[n]) for n in names if dtypes and n in dtypes},
        notes=tuple(notes),
    )
