"""A read budget: what the weight and independence measurements of one pair read when they may read only so much.

``--budget 0.01`` (a share of the pair's float-tensor bytes) or ``--budget 4GB`` (bytes) caps what the
weight family and the independence test read for one (target, reference) pair. :func:`plan_budget`
splits the budget between the measurements from the headers alone (no tensor data is read to plan),
and each measurement then reads less in the way its statistics tolerate:

* **signatures** (layer correspondence, moved tensors): fewer grid rows per tensor (16 by default, down
  to 1), each read in full, so the grid keeps about :data:`~modellineage.weights.signatures.SAMPLE_ELEMENTS`
  elements;
* **comparison** (per-tensor centred similarity): a seeded share of rows per tensor with bootstrap 95 %
  intervals (as ``--sample``), with fewer rows guaranteed per tensor (16 by default, down to 2);
* **independence test**: the residual alignment through shared-token embedding rows as always, then
  the MLP blocks (or a seeded choice of routed experts) of a few layers spread over the depth instead of
  every layer; attention heads are not aligned. Fewer units give a larger p-value under derivation, never
  a smaller one under independence: the Fisher combination of fewer exact p-values is still exact.

The tensor digests of exact-reuse detection and the finiteness check take their share first
(``planned["tensor_digests"]``: one seeded row per tensor within
:data:`modellineage.reading.model.DIGEST_SHARE` of the budget), and a budgeted run computes no whole-file
SHA-256 of local weights (:class:`modellineage.reading.model.DigestCache`), so the whole run, not only
these families, stays within the budget plus headers and the small non-weight files.

The planned bytes per measurement (:attr:`BudgetPlan.planned`) are estimates from the headers; what was
really read is counted by the stores and recorded beside them. The aligned weight figures are not computed
under a budget (they read every tensor of the tested layers in full).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modellineage.independence.matching import EXPERTS_PER_LAYER

from modellineage.errors import UnsupportedFormat
from modellineage.reading.model import digest_allowance, plan_digests
from modellineage.weights.sampling import MIN_SAMPLED_ROWS
from modellineage.weights.signatures import GRID_MIN_ROWS, SAMPLE_ELEMENTS
from modellineage.weights.similarity import row_plan

__all__ = ["ReadBudget", "BudgetPlan", "parse_budget", "plan_budget", "SHARES"]

#: How a budget is split when every measurement fits: signatures, embedding statistics + comparison,
#: independence test. Unused shares pass on (the independence test's leftover goes to the comparison).
SHARES = {"signatures": 0.2, "comparison": 0.4, "independence": 0.4}
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: Shared tokens the independence test aligns residual dimensions on (its default ``max_tokens``).
_ALIGN_TOKENS = 4096


@dataclass(frozen=True)
class ReadBudget:
    """A budget as given: a share of the pair's bytes (``fraction``) or a number of bytes."""

    text: str
    fraction: float | None = None
    nbytes: int | None = None

    def allowed(self, present: int) -> int:
        return int(self.nbytes) if self.nbytes is not None else int(math.floor(self.fraction * present))


def parse_budget(text: str | float | int) -> ReadBudget:
    """``0.01`` / ``1%`` (a share in (0, 1]) or ``4e9`` / ``4GB`` / ``512MiB`` (bytes, > 1).

    Raises:
        ValueError: anything else (the message says what is accepted).
    """
    raw = str(text).strip()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(%|[kKmMgGtT]?i?[bB])?", raw)
    if not m:
        raise ValueError(f"a budget is a share of the bytes (0.01, 1%) or a number of bytes (4e9, 4GB, 512MiB), "
                         f"not {raw!r}")
    value, unit = float(m.group(1)), (m.group(2) or "")
    if unit == "%":
        value /= 100.0
        unit = ""
        if not 0 < value <= 1:
            raise ValueError(f"a budget share must be in (0, 100%], got {raw!r}")
        return ReadBudget(raw, fraction=value)
    if not unit and 0 < value <= 1:
        return ReadBudget(raw, fraction=value)
    nbytes = value * _UNITS[unit.lower()]
    if nbytes <= 1:
        raise ValueError(f"a budget of bytes must be more than 1 byte, got {raw!r}")
    return ReadBudget(raw, nbytes=int(nbytes))


@dataclass(frozen=True)
class _Tensor:
    key: str
    rows: int
    cols: int
    row_bytes: int
    layer: int | None
    expert: int | None
    role: str


def _tensors(model) -> list[_Tensor]:
    out = []
    for key, ref in model.name_map.refs.items():
        info = model.store.info(ref.source)
        if not info.is_float:
            continue
        plan = row_plan(ref, info)
        rows = int(plan.rows.size)
        out.append(_Tensor(key, rows, int(info.cols), int(math.ceil(info.cols * info.itemsize)), ref.layer, ref.expert, ref.role))
    return out


def _present(model) -> int:
    store = model.store
    return sum(store.info(n).nbytes for n in store.names() if store.info(n).is_float)


def _grid_rows(t: _Tensor, min_rows: int, elements: int) -> int:
    return min(t.rows, max(min_rows, math.ceil(elements / max(1, t.cols))))


def _signature_cost(ts: list[_Tensor], grid: tuple[int, int]) -> int:
    return sum(_grid_rows(t, *grid) * t.row_bytes for t in ts)


#: Signature grids a budget tries, richest first: (least rows, elements).
_GRIDS = tuple((m, SAMPLE_ELEMENTS) for m in (GRID_MIN_ROWS, 8, 4, 2, 1)) + tuple(
    (1, e) for e in (1024, 512, 256, 128, 64))


def _sample_rows(rows: int, fraction: float, min_rows: int) -> int:
    if rows <= min_rows:
        return rows
    return min(rows, max(min_rows, 2, math.ceil(fraction * rows)))


def _comparison_cost(ts: list[_Tensor], fraction: float, min_rows: int) -> int:
    return sum(_sample_rows(t.rows, fraction, min_rows) * t.row_bytes for t in ts)


def _embedding_cost(ts: list[_Tensor], fraction: float) -> int:
    return sum(_sample_rows(t.rows, fraction, MIN_SAMPLED_ROWS) * t.row_bytes for t in ts
               if t.key in ("embed.weight", "lm_head.weight"))


@dataclass(frozen=True)
class BudgetPlan:
    """What one pair's measurements read under a budget, decided from the headers.

    ``independence_layers`` is ``None`` when not even one layer's MLP block fits (``independence_reason``
    says why); ``experts_per_layer`` is ``None`` for dense models or when every expert fits, and never
    above the full read's :data:`~modellineage.independence.matching.EXPERTS_PER_LAYER`.
    ``planned``: estimated bytes per measurement, both models together.
    """

    budget: str
    bytes_present: int
    bytes_allowed: int
    signature_min_rows: int
    sample: float
    sample_min_rows: int
    independence_layers: tuple[int, ...] | None
    experts_per_layer: int | None
    independence_reason: str
    planned: dict[str, int] = field(default_factory=dict)
    signature_elements: int = SAMPLE_ELEMENTS
    align_tokens: int = _ALIGN_TOKENS
    shared_units: bool = True

    @property
    def planned_total(self) -> int:
        return sum(self.planned.values())

    @property
    def over_budget(self) -> bool:
        return self.planned_total > self.bytes_allowed

    def as_dict(self) -> dict[str, Any]:
        return {"budget": self.budget, "bytes_present": self.bytes_present, "bytes_allowed": self.bytes_allowed,
                "share_allowed": self.bytes_allowed / self.bytes_present if self.bytes_present else None,
                "signature_min_rows": self.signature_min_rows, "signature_elements": self.signature_elements,
                "sample": self.sample,
                "sample_min_rows": self.sample_min_rows,
                "independence_layers": None if self.independence_layers is None else list(self.independence_layers),
                "experts_per_layer": self.experts_per_layer, "align_tokens": self.align_tokens,
                "shared_expert_units": self.shared_units,
                "independence_reason": self.independence_reason,
                "planned_bytes": dict(self.planned), "planned_total": self.planned_total,
                "over_budget": self.over_budget}

    def check_independence(self) -> None:
        """Raise UnsupportedFormat with the reason when the budget holds no independence test."""
        if self.independence_layers is None:
            raise UnsupportedFormat(self.independence_reason)


def _independence(target_ts, reference_ts, share, allowed, present):
    """The richest independence test within ``share``: as many shared tokens for the residual alignment as
    fit (4096 down to 512: the alignment needs far fewer than its default to match dimensions of a
    derivative), then layers and experts (see :func:`_independence_units`)."""
    found = None
    for tokens in (_ALIGN_TOKENS, 2048, 1024, 512):
        found = _independence_units(target_ts, reference_ts, share, allowed, present, tokens)
        if found[0] is not None:
            return found + (tokens,)
    return found + (_ALIGN_TOKENS,)


def _independence_units(target_ts: list[_Tensor], reference_ts: list[_Tensor], share: int, allowed: int,
                        present: int, tokens: int) -> tuple[tuple[int, ...] | None, int | None, int, str, bool]:
    """Layers (spread over the depth) and experts per layer the independence test reads within ``share``."""
    def by_key(ts):
        return {t.key: t for t in ts}

    tk, rk = by_key(target_ts), by_key(reference_ts)
    embed = [m.get("embed.weight") for m in (tk, rk)]
    if any(e is None for e in embed):
        return None, None, 0, "no input embedding on both sides: the independence test cannot run", True
    fixed = sum(min(tokens, e.rows) * e.row_bytes for e in embed)
    layers = sorted({t.layer for t in target_ts if t.layer is not None} & {t.layer for t in reference_ts
                                                                              if t.layer is not None})

    def cost(keys: list[str]) -> int:
        return sum(m[k].rows * m[k].row_bytes for m in (tk, rk) for k in keys if k in m)

    dense, shared, expert_cost, router, experts = {}, {}, {}, {}, {}
    for layer in layers:
        p = f"layers.{layer}."
        dense[layer] = cost([p + r + ".weight" for r in ("mlp_gate", "mlp_up", "mlp_norm")])
        shared[layer] = cost([p + r + ".weight" for r in ("shared_gate", "shared_up")])
        ex = sorted({t.expert for t in target_ts if t.layer == layer and t.expert is not None
                     and t.role == "expert_gate"})
        experts[layer] = ex
        router[layer] = cost([p + "router.weight"]) if ex else 0
        expert_cost[layer] = (cost([f"{p}experts.{e}.expert_gate.weight" for e in ex])
                              + cost([f"{p}experts.{e}.expert_up.weight" for e in ex])) / max(1, len(ex))
    if not layers:
        return None, None, fixed, "no layer both models have: the independence test cannot run", True
    any_experts = any(experts.values())
    # with the shared experts first; MoE layers may drop them (a routed expert is a unit too, and cheaper)
    for with_shared in ((True, False) if any_experts else (True,)):
        for k in range(len(layers), 0, -1):
            chosen = tuple(layers[i] for i in sorted({int(round(x)) for x in np.linspace(0, len(layers) - 1, k)}))
            base = fixed + sum(dense[x] + router[x] + (shared[x] if with_shared or not experts[x] else 0)
                               for x in chosen)
            per_expert = sum(expert_cost[x] for x in chosen)
            if not any_experts or per_expert <= 0:
                if base <= share:
                    return chosen, None, base, "", with_shared
                continue
            most = max(len(experts[x]) for x in chosen)
            n = int((share - base) // per_expert)
            if n >= 1:
                n = min(n, most, EXPERTS_PER_LAYER)  # never more than the full read's default cap
                return chosen, (None if n >= most else n), int(base + n * per_expert), "", with_shared
    smallest = int(fixed + min(dense[x] + router[x] + (expert_cost[x] if experts[x] else shared[x]) for x in layers))
    return None, None, 0, (f"the read budget ({allowed:,} bytes, {allowed / present:.2%} of this pair) leaves "
                           f"{share:,} bytes for the independence test, below its smallest form ({smallest:,} bytes, "
                           f"{smallest / present:.1%} of this pair: up to {tokens} shared-token embedding rows "
                           f"per side and one layer's MLP block); give a larger --budget"), True


def plan_budget(target, reference, budget: ReadBudget) -> BudgetPlan:
    """Split ``budget`` between the measurements of (target, reference), from their headers alone.

    Args:
        target, reference: :class:`modellineage.reading.model.Model` handles.
        budget: from :func:`parse_budget`.
    """
    tt, rt = _tensors(target), _tensors(reference)
    both = tt + rt
    present = _present(target) + _present(reference)
    allowed = max(1, budget.allowed(present))
    planned: dict[str, int] = {}
    # 0. the tensor digests (exact reuse, finiteness) take their share first, read once per model
    #    (modellineage.reading.model.DIGEST_SHARE; one seeded row per tensor)
    planned["tensor_digests"] = sum(plan_digests(m.store, digest_allowance(m.store, budget))[2]
                                    for m in (target, reference))
    whole, allowed = allowed, max(1, allowed - planned["tensor_digests"])
    # 1. signatures: the most grid rows (16, 8, ... 1) within their share
    grid = next((g for g in _GRIDS if _signature_cost(both, g) <= SHARES["signatures"] * allowed), _GRIDS[-1])
    planned["signatures"] = _signature_cost(both, grid)
    # 2. independence: a few layers' MLP blocks within its share (or what the others leave)
    comparison_floor = _comparison_cost(both, 1e-9, 2) + _embedding_cost(both, 1e-9)
    share = max(int(SHARES["independence"] * allowed), allowed - planned["signatures"] - comparison_floor)
    share = min(share, allowed - planned["signatures"] - comparison_floor) if share > 0 else 0
    layers, experts, indep_cost, reason, shared_units, tokens = _independence(tt, rt, max(0, share), whole,
                                                                              present)
    planned["independence"] = indep_cost
    # 3. the comparison (and embedding statistics): the largest row share that fits the rest
    rest = allowed - planned["signatures"] - indep_cost
    min_rows = next((m for m in (MIN_SAMPLED_ROWS, 8, 4, 2)
                     if _comparison_cost(both, 1e-9, m) + _embedding_cost(both, 1e-9) <= rest), 2)
    lo, hi = 1e-9, 1.0
    if _comparison_cost(both, hi, min_rows) + _embedding_cost(both, hi) <= rest:
        lo = hi
    else:
        for _ in range(50):
            mid = math.sqrt(lo * hi)
            if _comparison_cost(both, mid, min_rows) + _embedding_cost(both, mid) <= rest:
                lo = mid
            else:
                hi = mid
    sample = float(f"{lo:.3g}")  # a readable share for the evidence; the cost is monotone in it
    while sample > lo:
        sample = float(f"{sample * 0.99:.3g}")
    planned["comparison"] = _comparison_cost(both, sample, min_rows)
    planned["embedding_stats"] = _embedding_cost(both, sample)
    return BudgetPlan(budget.text, present, whole, grid[0], sample, min_rows, layers, experts, reason, planned,
                      grid[1], tokens, shared_units)


