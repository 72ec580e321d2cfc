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
* **training FLOPs** ≈ 6 · N_active · D (forward 2ND + backward 4ND; Kaplan et al. 2020, §2.1). It is an
  approximation with errors of both signs, so an implied utilisation computed from it is neither a lower
  nor an upper bound of the true one: it leaves out attention-score FLOPs (2 · n_layer · n_ctx · d_attn
  per token forward, Kaplan et al. Table 1: +13% of 2N for Llama-3-8B at an 8,192-token context) but
  counts untied input-embedding rows in N, which cost a lookup and no matrix multiply (128,256 × 4,096
  = 6.5% of Llama-3-8B's 8.03B parameters; a tied embedding is also the output head, which does
  multiply, and is rightly counted). Which error wins depends on context length and vocabulary share.
  6·N·D is the convention of the published utilisation figures the thresholds are calibrated on
  (tests/test_compute.py).
* **tokens per parameter** is reported per active and per total parameter; the compute-optimal
  comparison (~20 tokens per parameter, Hoffmann et al. 2022) uses the active count, the N of
  C ≈ 6·N·D that the rule balances against D (for a dense model active = total).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping

from modellineage.architecture.compare import count_parameters, numel
from modellineage.errors import PlanError, UnsupportedFormat
from modellineage.reading.config import ArchConfig
from modellineage.reading.naming import NameMap, role_category

__all__ = [
    "ParameterCount",
    "count_active_parameters",
    "Accelerator",
    "load_accelerators",
    "find_accelerator",
    "ambiguous_accelerator_names",
    "TrainingCompute",
    "training_compute",
    "Utilisation",
    "implied_utilisation",
    "gpu_days",
    "plain_number",
    "plain_count",
    "plain_duration",
    "plain_claim",
    "plain_flops",
    "plain_summary",
    "plain_utilisation",
]

SECONDS_PER_HOUR = 3600.0
FLOPS_PER_PARAMETER_TOKEN = 6  # 2 (forward) + 4 (backward) multiply-adds per parameter per token


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
    by_cat["not_active"] = by_cat.get("not_active", 0) + sum(numel(shapes[n]) for n in name_map.unknown)
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
    raw = _table()
    return tuple(Accelerator(name=a["name"], aliases=tuple(a.get("aliases", ())), peak_flops=float(a["peak_flops"]),
                             precision=a["precision"], source=a["source"], note=a.get("note", ""))
                 for a in raw["accelerators"])


@lru_cache(maxsize=None)
def _table() -> dict[str, Any]:
    return json.loads(resources.files("modellineage.data").joinpath("accelerators.json").read_text("utf-8"))


def reference_accelerator() -> Accelerator:
    """The accelerator plain-language sentences convert FLOPs into (named in accelerators.json)."""
    return find_accelerator(_table()["sentence_unit"])


def ambiguous_accelerator_names() -> dict[str, tuple[tuple[str, ...], str]]:
    """Names that fit more than one accelerator of the table ("H100-80GB": SXM or PCIe), with a hint."""
    return {name: (tuple(v["candidates"]), v.get("hint", "")) for name, v in _table().get("ambiguous", {}).items()
            if not name.startswith("_")}


def find_accelerator(name: str) -> Accelerator:
    """Look an accelerator up by name or alias (case, spaces and punctuation ignored).

    Raises:
        PlanError: the name is not in the table (the message lists the known names), or it names more than
            one accelerator ("H100-80GB": the SXM and the PCIe card both have 80 GB; the message asks which).
    """
    key = _norm_name(str(name))
    for ambiguous, (candidates, hint) in ambiguous_accelerator_names().items():
        if key == _norm_name(ambiguous):
            peaks = ", ".join(f"{c} ({find_accelerator(c).peak_flops / 1e12:,.0f} TFLOP/s dense BF16)"
                              for c in candidates)
            raise PlanError(f"[claims].gpu_type = {name!r} is ambiguous: it fits {peaks}; name one of them"
                            + (f" ({hint})" if hint else ""))
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
    moe: bool = False
    """Routed experts: only part of the total is active per token."""

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
        tokens_per_active_parameter=d / params.active, tokens_per_total_parameter=d / params.total,
        moe=params.is_moe)


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
    for div, suffix, bigger in ((1e12, "T", None), (1e9, "B", "T"), (1e6, "M", "B"), (1e3, "K", "M")):
        if abs(x) >= div:
            text = plain_count(x / div)
            if bigger and abs(float(text.replace(",", ""))) >= 1000:  # 999.7B reads as 1T, not 1,000B
                return plain_count(x / (div * 1000)) + bigger
            return text + suffix
    return plain_count(x)


def plain_count(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separators, no trailing zeros and never an exponent, for
    sentences: 41_472.6 -> '41,500', 81.93 -> '81.9', 14.0 -> '14', 0.003168 -> '0.00317'."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    shift = digits - 1 - math.floor(math.log10(abs(x)))
    if shift <= 0:  # integer part only: round in integers, so 1.4e24 prints its digits, not binary noise
        return f"{round(x / 10 ** -shift) * 10 ** -shift:,}"
    text = f"{round(x, shift):,.{shift}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


_UNITS = ((365.25 * 86400, "years"), (86400, "days"), (3600, "hours"), (60, "minutes"))


def plain_duration(seconds: float) -> str:
    """A duration in the largest unit of which it is at least 2: '113 years', '14 days', '36 hours',
    '3.2 seconds' (three significant digits, two for seconds; never an exponent)."""
    for size, unit in _UNITS:
        if seconds >= 2 * size:
            return f"{plain_count(seconds / size)} {unit}"
    return f"{plain_count(seconds, 2)} seconds"


def plain_flops(x: float, digits: int = 2) -> str:
    """1.418e24 -> '1.4e24' (FLOPs keep the scientific notation the literature writes them in)."""
    return f"{x:.{digits}g}".replace("e+", "e")


def plain_claim(x: float) -> str:
    """A claimed figure as given: 2788000 -> '2,788,000', 8.77e-7 -> '0.000000877' (4 significant digits)."""
    return f"{int(x):,}" if x >= 1 and x == int(x) else plain_count(x, 4)


def _accelerator_time(days: float, unit: str) -> str:
    if days < 1:
        return f"{plain_duration(days * 86400)} of one {unit}"
    text = f"{plain_count(days)} {unit}-days: {plain_duration(days * 86400)} on one {unit}"
    if days >= 60:  # beyond two months on one accelerator, say what a cluster needs for a month
        text += f", or about a month on {plain_count(days / 30, 2)} of them"
    return text


def plain_summary(compute: TrainingCompute, unit: Accelerator, utilisation: float,
                  optimal_tokens_per_parameter: float) -> str:
    """The training compute in sentences a non-specialist can follow (for the report, not for evidence).

    ``utilisation`` converts FLOPs into accelerator time; ``optimal_tokens_per_parameter`` is the
    compute-optimal ratio it is compared with, per *active* parameter: the N of C ≈ 6·N·D, which is
    what that rule balances against D (for a dense model active = total; a MoE's total is also given).

    Example:
        "19.7T tokens × 12B active parameters × 6 ≈ 1.4e24 FLOPs ≈ 41,500 H100-SXM-days: 113 years on one
        H100-SXM, or about a month on 1,400 of them at 40% utilisation. That is 1,640 training tokens per ..."
    """
    days = gpu_days(compute.flops, unit, utilisation)
    per_active = compute.tokens_per_active_parameter
    which = ("active parameter (the parameters each token actually uses, the N in 6 · N · D; "
             f"{plain_count(compute.tokens_per_total_parameter)} per total parameter)") if compute.moe else "parameter"
    return (f"{plain_number(compute.training_tokens)} tokens × {plain_number(compute.active_parameters)} active "
            f"parameters × 6 ≈ {plain_flops(compute.flops)} FLOPs ≈ {_accelerator_time(days, unit.name)} at "
            f"{utilisation:.0%} utilisation. That is {plain_count(per_active)} training tokens per {which}, "
            f"{plain_count(per_active / optimal_tokens_per_parameter, 2)} times the ~{optimal_tokens_per_parameter:g} "
            "tokens per parameter that give the best model for a fixed compute budget (informational).")


def plain_utilisation(util: Utilisation) -> str:
    """'The claimed 2,788,000 H800-SXM hours (318 years of one) imply 33% utilisation.'"""
    hours = util.gpu_hours
    claimed = plain_claim(hours)
    share = f"{util.mfu:.0%}" if util.mfu >= 0.01 else f"{plain_count(util.mfu * 100, 2)}%"
    return (f"The claimed {claimed} {util.accelerator.name} hours ({plain_duration(hours * 3600)} of one) imply "
            f"{share} utilisation.")
