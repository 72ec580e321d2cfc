"""Compute evidence: exact total and active parameter counts, training FLOPs and implied utilisation.

Everything here is arithmetic on facts: tensor shapes from the safetensors headers, the
config's ``experts_per_token`` and the numbers an audit plan claims (``[claims]``). Nothing is
judged here; the audits compare the records with bounds from ``thresholds.toml``.

Conventions (stated in every record's ``as_dict``):

* **total parameters** = every stored tensor element except quantisation scales and
  non-parameter buffers (exactly :func:`modellineage.architecture.count_parameters`).
* **active parameters** (per token) = embeddings + lm_head + attention + norms + routers + dense
  MLPs + shared experts + ``experts_per_token`` routed experts of every MoE layer. Tensors the
  naming scheme does not recognise (vision towers, multi-token-prediction heads) and layers beyond
  the config's ``num_hidden_layers`` (DeepSeek/GLM multi-token-prediction layers) are in the total
  but not active: they are not part of the per-token forward pass of the text model. This is how
  the published figures are counted (DeepSeek-V3: 671B total, 37B active, MTP module excluded;
  Mixtral-8x7B: 46.7B / 12.9B), see ``tests/test_compute.py``.
* **training FLOPs** ≈ 6 · N_active · D (forward 2ND + backward 4ND; Kaplan et al. 2020, §2.1),
  which ignores attention-score FLOPs, so it *under*-estimates compute and an implied utilisation
  computed from it is a lower bound of the true one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from .architecture import ArchConfig, count_parameters
from .errors import PlanError, UnsupportedFormat
from .naming import NameMap, role_category

__all__ = [
    "ParameterCount",
    "count_active_parameters",
    "Accelerator",
    "load_accelerators",
    "find_accelerator",
    "TrainingCompute",
    "training_compute",
    "Utilisation",
    "implied_utilisation",
    "gpu_days",
    "plain_number",
]

SECONDS_PER_HOUR = 3600.0
FLOPS_PER_PARAMETER_TOKEN = 6  # 2 (forward) + 4 (backward) multiply-adds per parameter per token


def _numel(shape) -> int:
    return math.prod(int(d) for d in shape)


@dataclass(frozen=True)
class ParameterCount:
    """Total and per-token active parameters of one checkpoint, by category.

    Categories partition ``total``: ``embedding`` (token/position embeddings), ``lm_head``,
    ``attention``, ``norm``, ``router``, ``mlp`` (dense MLPs), ``shared_expert``,
    ``routed_expert`` (all experts), ``not_active`` (unrecognised tensors and layers beyond the
    config's layer count). ``routed_expert_active`` is the part of ``routed_expert`` a token uses.
    """

    total: int
    active: int
    by_category: dict[str, int]
    routed_expert_active: int
    moe_layers: int
    dense_layers: int
    num_experts: int | None
    experts_per_token: int | None
    not_active_tensors: tuple[str, ...]
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["by_category"] = dict(sorted(self.by_category.items()))
        out["not_active_tensors"] = list(self.not_active_tensors)
        out["files"] = list(self.files)
        out["notes"] = list(self.notes)
        out["convention"] = ("active = embeddings + lm_head + attention + norms + routers + dense MLPs + "
                             "shared experts + experts_per_token routed experts per MoE layer; "
                             "unrecognised tensors and layers beyond num_hidden_layers are not active")
        return out


def count_active_parameters(
    shapes: Mapping[str, tuple[int, ...]],
    name_map: NameMap,
    config: ArchConfig | None,
    *,
    files: tuple[str, ...] = (),
) -> ParameterCount:
    """Count total and per-token active parameters from tensor shapes and the config.

    Args:
        shapes: source tensor name -> shape (the safetensors headers).
        name_map: the checkpoint's canonical names (roles, layers, experts).
        config: the normalised config; ``experts_per_token`` is needed when the weights hold routed
            experts, ``num_layers`` marks layers beyond it as not active.
        files: the weight files the shapes were read from (provenance).

    Returns:
        A :class:`ParameterCount`; ``total`` equals :func:`count_parameters`.

    Raises:
        UnsupportedFormat: routed experts without ``experts_per_token`` in the config, more
            experts per token than experts, or no recognised tensor at all.
    """
    where = ", ".join(files) or "the checkpoint"
    total = count_parameters(shapes, name_map)
    if not name_map.refs:
        raise UnsupportedFormat(f"{where}: no tensor name is recognised, so active parameters cannot be counted")
    cfg_layers = config.num_layers if config is not None else None
    by_cat: dict[str, int] = {}
    experts: dict[int, dict[int, int]] = {}  # layer -> expert -> elements
    not_active: list[str] = list(name_map.unknown)
    beyond: set[str] = set()
    for ref in name_map.refs.values():
        if cfg_layers is not None and ref.layer is not None and ref.layer >= cfg_layers:
            beyond.add(ref.source)
            by_cat["not_active"] = by_cat.get("not_active", 0) + ref.numel
            continue
        cat = role_category(ref.role)
        cat = "mlp" if cat == "other" else cat  # BERT pooler: a dense layer on every input
        by_cat[cat] = by_cat.get(cat, 0) + ref.numel
        if cat == "routed_expert":
            if ref.expert is None or ref.layer is None:
                raise UnsupportedFormat(f"{where}: routed-expert tensor {ref.source} has no layer/expert index")
            layer = experts.setdefault(ref.layer, {})
            layer[ref.expert] = layer.get(ref.expert, 0) + ref.numel
    not_active.extend(sorted(beyond))
    by_cat["not_active"] = by_cat.get("not_active", 0) + sum(_numel(shapes[n]) for n in name_map.unknown)
    notes: list[str] = []
    if beyond:
        notes.append(f"{len(beyond)} tensor(s) in layers ≥ num_hidden_layers = {cfg_layers} "
                     "(multi-token prediction) are counted in the total, not as active")
    counted = sum(by_cat.values())
    if counted != total:  # a fused tensor split into parts that do not cover it: say so, never hide it
        notes.append(f"canonical parts cover {counted:,} of {total:,} elements; the rest counted as not active")
        by_cat["not_active"] += total - counted

    k = config.experts_per_token if config is not None else None
    routed_active = 0
    sizes = set()
    if experts:
        if not k:
            raise UnsupportedFormat(f"{where}: the weights hold routed experts but the config gives no "
                                    "num_experts_per_tok, so active parameters cannot be counted")
        for layer in sorted(experts):
            per_expert = sorted(experts[layer].values(), reverse=True)
            if k > len(per_expert):
                raise UnsupportedFormat(f"{where}: layer {layer} has {len(per_expert)} routed experts, "
                                        f"fewer than num_experts_per_tok = {k}")
            sizes.update(per_expert)
            routed_active += sum(per_expert[:k])  # experts of equal size: exactly k of them
        if len(sizes) > 1:
            notes.append("routed experts differ in size; the k largest per layer are counted (an upper bound)")
    layers_seen = {r.layer for r in name_map.refs.values() if r.layer is not None
                   and (cfg_layers is None or r.layer < cfg_layers)}
    n_experts = max((len(v) for v in experts.values()), default=None)
    active = total - by_cat.get("not_active", 0) - by_cat.get("routed_expert", 0) + routed_active
    return ParameterCount(
        total=total, active=active, by_category=by_cat, routed_expert_active=routed_active,
        moe_layers=len(experts), dense_layers=len(layers_seen - set(experts)), num_experts=n_experts,
        experts_per_token=k if experts else None, not_active_tensors=tuple(not_active),
        files=tuple(files), notes=tuple(notes))


# ------------------------------------------------------------------------------------- hardware
@dataclass(frozen=True)
class Accelerator:
    """One accelerator's peak dense (no sparsity) matrix throughput, with its datasheet."""

    name: str
    aliases: tuple[str, ...]
    peak_flops: float
    precision: str
    source: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": list(self.aliases), "peak_flops": self.peak_flops,
                "precision": self.precision, "source": self.source, "note": self.note}


def _norm_name(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


@lru_cache(maxsize=None)
def load_accelerators() -> tuple[Accelerator, ...]:
    """The peak-throughput table shipped in ``modellineage/data/accelerators.json``."""
    raw = json.loads(resources.files("modellineage.data").joinpath("accelerators.json").read_text("utf-8"))
    return tuple(Accelerator(name=a["name"], aliases=tuple(a.get("aliases", ())), peak_flops=float(a["peak_flops"]),
                             precision=a["precision"], source=a["source"], note=a.get("note", ""))
                 for a in raw["accelerators"])


def reference_accelerator() -> Accelerator:
    """The accelerator plain-language sentences convert FLOPs into (named in accelerators.json)."""
    raw = json.loads(resources.files("modellineage.data").joinpath("accelerators.json").read_text("utf-8"))
    return find_accelerator(raw["sentence_unit"])


def find_accelerator(name: str) -> Accelerator:
    """Look an accelerator up by name or alias (case, spaces and punctuation ignored).

    Raises:
        PlanError: the name is not in the table (the message lists the known names).
    """
    key = _norm_name(str(name))
    for acc in load_accelerators():
        if key in {_norm_name(acc.name), *(_norm_name(a) for a in acc.aliases)}:
            return acc
    known = ", ".join(a.name for a in load_accelerators())
    raise PlanError(f"[claims].gpu_type = {name!r} is not in modellineage/data/accelerators.json; known: {known}")


# ------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingCompute:
    """Training compute implied by a claimed token count: 6 · N_active · D."""

    active_parameters: int
    total_parameters: int
    training_tokens: float
    flops: float
    tokens_per_active_parameter: float
    tokens_per_total_parameter: float

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["formula"] = "flops = 6 * active_parameters * training_tokens (Kaplan et al. 2020)"
        return out


def training_compute(params: ParameterCount, training_tokens: float) -> TrainingCompute:
    """Training FLOPs ≈ 6 · N_active · D for the claimed number of training tokens D."""
    d = float(training_tokens)
    if not math.isfinite(d) or d <= 0:
        raise PlanError(f"[claims].training_tokens must be a positive number, found {training_tokens!r}")
    return TrainingCompute(
        active_parameters=params.active, total_parameters=params.total, training_tokens=d,
        flops=FLOPS_PER_PARAMETER_TOKEN * params.active * d,
        tokens_per_active_parameter=d / params.active, tokens_per_total_parameter=d / params.total)


@dataclass(frozen=True)
class Utilisation:
    """Model FLOPs utilisation implied by claimed accelerator hours: achieved / peak throughput."""

    accelerator: Accelerator
    gpu_hours: float
    flops: float
    achieved_flops_per_gpu: float
    mfu: float

    def as_dict(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator.as_dict(), "gpu_hours": self.gpu_hours, "flops": self.flops,
                "achieved_flops_per_gpu": self.achieved_flops_per_gpu, "mfu": self.mfu,
                "formula": "mfu = flops / (gpu_hours * 3600 * peak_flops)"}


def implied_utilisation(compute: TrainingCompute, gpu_hours: float, gpu_type: str) -> Utilisation:
    """The utilisation the claimed accelerator hours imply for the estimated training FLOPs.

    Raises:
        PlanError: ``gpu_hours`` is not a positive number or ``gpu_type`` is unknown.
    """
    hours = float(gpu_hours)
    if not math.isfinite(hours) or hours <= 0:
        raise PlanError(f"[claims].gpu_hours must be a positive number, found {gpu_hours!r}")
    acc = find_accelerator(gpu_type)
    achieved = compute.flops / (hours * SECONDS_PER_HOUR)
    return Utilisation(acc, hours, compute.flops, achieved, achieved / acc.peak_flops)


def gpu_days(flops: float, accelerator: Accelerator, utilisation: float) -> float:
    """Accelerator-days needed for ``flops`` at the given utilisation of its peak."""
    return flops / (accelerator.peak_flops * utilisation * 86400.0)


def plain_number(x: float) -> str:
    """1.97e13 -> '19.7T', 1.2e10 -> '12B', 312896 -> '313K': for sentences, not for evidence."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"
