"""Checkpoint chains: do disclosed intermediate checkpoints show a training run from initialisation?

A developer who claims to have trained from scratch can disclose checkpoints in training order. The
chain is measured with the streamed weight comparison of :func:`modellineage.weights.similarity.compare_weights`
(one pair of models at a time, float64 accumulators, optional seeded row sampling), so the cost is a
fixed number of comparisons per checkpoint (its predecessor, the first checkpoint, each reference) and
memory stays that of one pair:

- **initialisation**: the earliest checkpoint's tensors, per canonical role: matrices' standard deviation
  against the init scheme's (``normal(0, initializer_range)`` of config.json, the scheme of the Hugging
  Face Llama/Mistral/Qwen families; output projections also against the depth-scaled
  ``initializer_range / sqrt(2 · layers)`` of GPT-NeoX/Megatron), norm gains against 1; its similarity to
  each reference;
- **drift**: per later checkpoint, the centred similarity to its predecessor and to the first checkpoint;
- **descent**: the released target against the last checkpoint;
- **jumps**: every checkpoint's similarity to each reference (a spliced-in copy of a reference, or of a
  model trained from one, shows as a jump).

Every similarity figure here is the *matrix mean*: the unweighted mean centred cosine over the compared
tensors with two or more axes (norm gains are constant at initialisation, where their centred similarity
is undefined). A checkpoint that cannot be read (missing, corrupt, refused) is recorded with the reason
and its links bridge to the next readable one. Nothing here judges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modellineage.errors import LineageError, UnsupportedFormat
from modellineage.reading.naming import role_category
from modellineage.weights.similarity import WeightComparison, compare_weights

__all__ = ["Checkpoint", "RoleStats", "InitCheck", "ChainComparison", "Link", "ChainEvidence", "measure_chain",
           "DEFAULT_INITIALIZER_RANGE"]

#: ``initializer_range`` assumed when config.json has none (the Hugging Face PretrainedConfig default).
DEFAULT_INITIALIZER_RANGE = 0.02
#: Roles whose depth-scaled init (GPT-NeoX, Megatron-LM: std / sqrt(2 · layers)) is also accepted.
_SCALED_ROLES = frozenset({"attn_o", "mlp_down", "expert_down", "shared_down"})


@dataclass(frozen=True)
class Checkpoint:
    """One entry of a chain, in training order: a model handle, or why there is none."""

    name: str
    step: int | None = None
    model: Any = None
    """A :class:`modellineage.reading.model.Model` (anything with name, store, name_map, config)."""
    error: str | None = None
    """Why the checkpoint cannot be read (its source is missing or refused)."""


@dataclass(frozen=True)
class RoleStats:
    """The earliest checkpoint's tensors of one canonical role."""

    role: str
    category: str
    kind: str
    """``matrix`` (2+ axes), ``gain`` (a norm's 1-axis weight) or ``vector`` (other 1-axis tensors: recorded)."""
    tensors: int
    mean: float
    """Mean over the role's tensors of each tensor's mean."""
    std: float
    """Mean over the role's tensors of each tensor's standard deviation."""
    expected_std: float | None
    """The init scheme's standard deviation closest to ``std`` (matrices), 0 for gains."""
    scheme: str
    deviation: float
    """Matrices: ``|std / expected_std - 1|`` (worst tensor); gains: ``max(|mean - 1|, std)`` (worst tensor)."""

    def as_dict(self) -> dict:
        return {"role": self.role, "category": self.category, "kind": self.kind, "tensors": self.tensors,
                "mean": self.mean, "std": self.std, "expected_std": self.expected_std, "scheme": self.scheme,
                "deviation": self.deviation}


@dataclass(frozen=True)
class InitCheck:
    """How close the earliest readable checkpoint is to an initialisation distribution."""

    checkpoint: str
    initializer_range: float
    range_source: str
    roles: tuple[RoleStats, ...]

    def worst(self, kind: str) -> RoleStats | None:
        found = [r for r in self.roles if r.kind == kind and math.isfinite(r.deviation)]
        return max(found, key=lambda r: r.deviation) if found else None

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "initializer_range": self.initializer_range,
                "range_source": self.range_source, "roles": [r.as_dict() for r in self.roles]}


@dataclass(frozen=True)
class ChainComparison:
    """One comparison of two models of the chain (``a`` against ``b``): the matrix mean and per category."""

    a: str
    b: str
    matrix_centred: float
    """Unweighted mean centred cosine over compared tensors with 2+ axes (NaN figures left out)."""
    by_category: Mapping[str, float]
    tensors: int
    skipped: int
    bytes_read: int

    @property
    def max_category(self) -> tuple[str, float] | None:
        found = [(c, v) for c, v in sorted(self.by_category.items()) if math.isfinite(v)]
        return max(found, key=lambda cv: cv[1]) if found else None

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "matrix_centred": self.matrix_centred,
                "by_category": dict(sorted(self.by_category.items())), "tensors": self.tensors,
                "skipped": self.skipped, "bytes_read": self.bytes_read}


@dataclass(frozen=True)
class Link:
    """A checkpoint after the first, against its readable predecessor, the first checkpoint and the references."""

    checkpoint: str
    step: int | None
    previous: str | None
    bridged: tuple[str, ...] = ()
    """Unreadable checkpoints between ``previous`` and this one."""
    neighbour: ChainComparison | None = None
    to_first: ChainComparison | None = None
    to_references: Mapping[str, ChainComparison] = field(default_factory=dict)
    skipped: str | None = None
    """Why this link was not measured (the checkpoint cannot be read or compared)."""

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "step": self.step, "previous": self.previous,
                "bridged": list(self.bridged),
                "neighbour": self.neighbour.as_dict() if self.neighbour else None,
                "to_first": self.to_first.as_dict() if self.to_first else None,
                "to_references": {k: v.as_dict() for k, v in sorted(self.to_references.items())},
                "skipped": self.skipped}


@dataclass(frozen=True)
class ChainEvidence:
    """Everything measured about one checkpoint chain."""

    checkpoints: tuple[tuple[str, int | None, str | None], ...]
    """(name, step, why unreadable or None), in training order."""
    first: str
    init: InitCheck | None
    init_error: str | None
    first_to_references: Mapping[str, ChainComparison]
    reference_errors: Mapping[str, str]
    links: tuple[Link, ...]
    last: str
    target: str | None
    target_to_last: ChainComparison | None
    target_error: str | None
    fraction: float | None
    seed: int

    def reference_profile(self, reference: str) -> list[tuple[str, float]]:
        """(checkpoint, matrix mean similarity to ``reference``) in training order, measured links only."""
        out = []
        if reference in self.first_to_references:
            out.append((self.first, self.first_to_references[reference].matrix_centred))
        for link in self.links:
            if link.skipped is None and reference in link.to_references:
                out.append((link.checkpoint, link.to_references[reference].matrix_centred))
        return out

    def as_dict(self) -> dict:
        return {"checkpoints": [{"name": n, "step": s, "unreadable": e} for n, s, e in self.checkpoints],
                "first": self.first, "init": self.init.as_dict() if self.init else None,
                "init_error": self.init_error,
                "first_to_references": {k: v.as_dict() for k, v in sorted(self.first_to_references.items())},
                "reference_errors": dict(sorted(self.reference_errors.items())),
                "links": [link.as_dict() for link in self.links], "last": self.last, "target": self.target,
                "target_to_last": self.target_to_last.as_dict() if self.target_to_last else None,
                "target_error": self.target_error, "sample_fraction": self.fraction, "seed": self.seed}


def _summary(cmp: WeightComparison) -> ChainComparison:
    values = np.array([p.similarity.centred_cosine for p in cmp.pairs if len(p.shape) >= 2], dtype=np.float64)
    values = values[np.isfinite(values)]
    return ChainComparison(a=cmp.target, b=cmp.reference,
                           matrix_centred=float(values.mean()) if values.size else math.nan,
                           by_category={g.group: g.mean_centred for g in cmp.by_category},
                           tensors=len(cmp.pairs), skipped=len(cmp.skipped), bytes_read=cmp.bytes_read)


def _initializer_range(model) -> tuple[float, str]:
    try:
        config = model.config or {}
    except LineageError:
        config = {}
    value = config.get("initializer_range") if isinstance(config, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value), "config.json initializer_range"
    return DEFAULT_INITIALIZER_RANGE, (f"config.json has no usable initializer_range: {DEFAULT_INITIALIZER_RANGE} "
                                       "assumed (the Hugging Face default)")


def _layers(model) -> int:
    layers = {ref.layer for ref in model.name_map.refs.values() if getattr(ref, "layer", None) is not None}
    return max(1, len(layers))


def init_stats(model, self_comparison: WeightComparison) -> InitCheck:
    """Per-role statistics of ``model`` from a comparison of it with itself (its std/mean per tensor)."""
    sigma, where = _initializer_range(model)
    scaled = sigma / math.sqrt(2 * _layers(model))
    by_role: dict[str, list] = {}
    for p in self_comparison.pairs:
        by_role.setdefault(p.role, []).append(p)
    roles = []
    for role, pairs in by_role.items():
        category = role_category(role)
        matrices = [p for p in pairs if len(p.shape) >= 2]
        vectors = [p for p in pairs if len(p.shape) < 2]
        for kind, members in (("matrix", matrices), ("gain" if category == "norm" else "vector", vectors)):
            if not members:
                continue
            means = [p.similarity.mean_a for p in members]
            stds = [p.similarity.std_a for p in members]
            if kind == "matrix":
                schemes = [(sigma, f"normal(0, {sigma:g})")]
                if role in _SCALED_ROLES:
                    schemes.append((scaled, f"normal(0, {sigma:g} / sqrt(2 · {_layers(model)} layers))"))
                expected, scheme = min(schemes, key=lambda s: abs(float(np.mean(stds)) / s[0] - 1))
                deviation = max(abs(s / expected - 1) for s in stds)
            elif kind == "gain":
                expected, scheme = 0.0, "ones"
                deviation = max(max(abs(m - 1), s) for m, s in zip(means, stds))
            else:
                expected, scheme, deviation = None, "recorded", math.nan
            roles.append(RoleStats(role, category, kind, len(members), float(np.mean(means)), float(np.mean(stds)),
                                   expected, scheme, float(deviation)))
    return InitCheck(self_comparison.target, sigma, where, tuple(roles))


def measure_chain(
    checkpoints: Sequence[Checkpoint],
    *,
    target=None,
    references: Mapping[str, Any] | None = None,
    fraction: float | None = None,
    seed: int = 0,
    workers: int | None = None,
) -> ChainEvidence:
    """Measure a checkpoint chain (see the module docstring).

    Args:
        checkpoints: the chain in training order.
        target: the released model (a Model handle) that should descend from the last checkpoint, or None.
        references: name -> Model handle; each checkpoint is compared with each.
        fraction, seed, workers: as :func:`modellineage.weights.similarity.compare_weights` (sampled rows
            with bootstrap intervals; the same seed for every comparison).

    Returns:
        A :class:`ChainEvidence`; unreadable checkpoints and failed comparisons are recorded with the reason.

    Raises:
        UnsupportedFormat: no checkpoint of the chain can be read.
    """
    references = dict(references or {})

    def compare(a, b) -> ChainComparison:
        return _summary(compare_weights(a, b, fraction=fraction, seed=seed, workers=workers))

    status: list[tuple[str, int | None, str | None]] = []
    readable: list[Checkpoint] = []
    for c in checkpoints:
        error = c.error
        if error is None:
            try:
                c.model.name_map  # noqa: B018 - reads and validates the headers
            except LineageError as exc:
                error = str(exc)
        status.append((c.name, c.step, error))
        if error is None:
            readable.append(c)
    if not readable:
        raise UnsupportedFormat("no checkpoint of the chain can be read: "
                                + "; ".join(f"{n}: {e}" for n, _, e in status))
    first = readable[0]
    init, init_error = None, None
    try:
        init = init_stats(first.model, compare_weights(first.model, first.model, fraction=fraction, seed=seed,
                                                       workers=workers))
    except LineageError as exc:
        init_error = str(exc)
    first_refs, ref_errors = {}, {}
    for name, ref in references.items():
        try:
            first_refs[name] = compare(first.model, ref)
        except LineageError as exc:
            ref_errors[name] = str(exc)
    links: list[Link] = []
    previous, bridged = first, []
    unreadable = {n: e for n, _, e in status if e is not None}
    started = False
    for c in checkpoints:
        if c is first:
            started = True
            continue
        if not started:
            continue  # unreadable checkpoints before the first readable one: recorded in ``checkpoints``
        if c.name in unreadable:
            links.append(Link(c.name, c.step, previous.name, skipped=unreadable[c.name]))
            bridged.append(c.name)
            continue
        try:
            neighbour = compare(c.model, previous.model)
            to_first = compare(c.model, first.model)
            to_refs = {name: compare(c.model, ref) for name, ref in references.items() if name not in ref_errors}
        except LineageError as exc:
            links.append(Link(c.name, c.step, previous.name, skipped=str(exc)))
            bridged.append(c.name)
            continue
        links.append(Link(c.name, c.step, previous.name, tuple(bridged), neighbour, to_first, to_refs))
        previous, bridged = c, []
    target_cmp, target_error = None, None
    if target is not None:
        try:
            target_cmp = compare(target, previous.model)
        except LineageError as exc:
            target_error = str(exc)
    return ChainEvidence(
        checkpoints=tuple(status), first=first.name, init=init, init_error=init_error,
        first_to_references=first_refs, reference_errors=ref_errors, links=tuple(links), last=previous.name,
        target=getattr(target, "name", None), target_to_last=target_cmp, target_error=target_error,
        fraction=fraction, seed=seed)
