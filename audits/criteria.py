"""Judging: compare a measurement with a bound from thresholds.toml.

Each criterion returns a ``Judgement`` whose message states the observed value, the bound and where
the bound comes from, so a failing test reads like
``"target reuses 3 non-constant tensors of 'base' (> 0 allowed; thresholds.toml [reuse].independent_max_reused_tensors)"``.
The library measures; only this module (and the tests calling it) decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modellineage.errors import PlanError
from modellineage.plan import read_toml

# Every bound the audits use: (family, key) -> type. thresholds.toml must define exactly these,
# each as a table with `value` and `source`.
THRESHOLD_SPEC: dict[tuple[str, str], type] = {
    ("architecture", "parameter_claim_rel_tol"): float,
    ("reuse", "independent_max_reused_tensors"): int,
}


@dataclass(frozen=True)
class Bound:
    """One threshold with the citation that justifies it."""

    family: str
    key: str
    value: Any
    source: str

    @property
    def where(self) -> str:
        return f"thresholds.toml [{self.family}].{self.key}"

    def as_dict(self) -> dict:
        return {"family": self.family, "key": self.key, "value": self.value, "source": self.source}


@dataclass(frozen=True)
class Thresholds:
    path: Path
    bounds: dict

    def __getitem__(self, family_key: tuple[str, str]) -> Bound:
        return self.bounds[family_key]

    def as_dict(self) -> dict:
        return {"file": str(self.path),
                "bounds": [self.bounds[k].as_dict() for k in sorted(self.bounds)]}


def load_thresholds(path: Path) -> Thresholds:
    """Read thresholds.toml; unknown, missing or mistyped keys and missing sources are errors."""
    path = Path(path)
    data = read_toml(path, "thresholds file")
    found = {(fam, key) for fam, table in data.items() if isinstance(table, dict) for key in table}
    unknown = sorted(found - set(THRESHOLD_SPEC)) + sorted(f for f, t in data.items() if not isinstance(t, dict))
    if unknown:
        raise PlanError(f"{path}: unknown threshold(s) {unknown}; known: {sorted(THRESHOLD_SPEC)}")
    missing = sorted(set(THRESHOLD_SPEC) - found)
    if missing:
        raise PlanError(f"{path}: missing threshold(s) {[f'[{f}].{k}' for f, k in missing]}")
    bounds = {}
    for (family, key), kind in THRESHOLD_SPEC.items():
        entry = data[family][key]
        where = f"{path}: [{family}].{key}"
        if not isinstance(entry, dict) or set(entry) != {"value", "source"}:
            raise PlanError(f"{where} must be a table with exactly 'value' and 'source'")
        value, source = entry["value"], entry["source"]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise PlanError(f"{where}.value must be {kind.__name__}, found {value!r}")
        if not isinstance(source, str) or not source.strip():
            raise PlanError(f"{where}.source must say where the value comes from")
        bounds[(family, key)] = Bound(family, key, value, source.strip())
    return Thresholds(path=path, bounds=bounds)


@dataclass(frozen=True)
class Judgement:
    """The outcome of comparing one measured value with one bound."""

    claim: str
    measured: Any
    bound: str
    source: str
    failed: bool
    message: str

    def as_dict(self) -> dict:
        return {"claim": self.claim, "measured": self.measured, "bound": self.bound,
                "source": self.source, "failed": self.failed, "message": self.message}


def no_exact_reuse(reuse, bound: Bound, reference: str) -> Judgement:
    """Under `independent`: at most `bound` non-constant target tensors may have exact twins."""
    count = reuse.reused_count
    failed = count > bound.value
    names = ", ".join(r.target_name for r in reuse.reused[:8]) + (" ..." if count > 8 else "")
    if failed:
        message = (f"target reuses {count} of {reuse.counted_tensors} non-constant tensors of {reference!r} "
                   f"byte for byte (> {bound.value} allowed; {bound.where}): {names}")
    else:
        message = (f"target reuses {count} of {reuse.counted_tensors} non-constant tensors of {reference!r} "
                   f"(≤ {bound.value} allowed; {bound.where})")
    return Judgement("no exact tensor reuse", count, f"≤ {bound.value}", bound.where, failed, message)


def config_matches_weights(model: str, agreements) -> Judgement:
    """Every config field that can be read off the tensor shapes agrees with them."""
    checked = [a for a in agreements if a.agrees is not None]
    bad = [a for a in checked if not a.agrees]
    detail = "; ".join(f"{a.field}: config {a.config_value} vs weights {a.weights_value}" for a in bad)
    message = (f"{model}: config disagrees with the weights in {len(bad)} of {len(checked)} fields ({detail})"
               if bad else f"{model}: config agrees with the weights in all {len(checked)} checkable fields")
    return Judgement("config agrees with weights", f"{len(checked) - len(bad)}/{len(checked)}",
                     "all agree", "exact (shapes are facts)", bool(bad), message)


def parameter_claim(model: str, claimed: float, counted: int, bound: Bound) -> Judgement:
    """A claimed parameter count must match the count from the safetensors headers within a tolerance."""
    rel = abs(counted - claimed) / claimed if claimed else float("inf")
    failed = rel > bound.value
    message = (f"{model}: claimed {claimed:,.0f} parameters, headers count {counted:,} "
               f"(off by {rel:.2%}; {'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where})")
    return Judgement("claimed parameter count", rel, f"≤ {bound.value}", bound.where, failed, message)


def weights_finite(model: str, files: str, nonfinite: dict, total: int) -> Judgement:
    """No tensor may hold NaN or Inf: they make every similarity statistic undefined."""
    listing = ", ".join(f"{name} ({count})" for name, count in list(nonfinite.items())[:10])
    message = (f"{model} ({files}): {len(nonfinite)} of {total} tensors hold NaN/Inf values: {listing}" if nonfinite
               else f"{model}: all {total} tensors are finite")
    return Judgement("weights are finite", len(nonfinite), "0 tensors with NaN/Inf",
                     "exact (a checkpoint defect)", bool(nonfinite), message)
