"""Fine-grained experts cut from a dense MLP: each routed expert against a slice of the reference's neurons.

Sparse upcycling copies a dense MLP into every expert slot (same shape: :func:`modellineage.weights.alignment.
detect_upcycling` compares them). Fine-grained upcycling (DeepSeekMoE, Qwen1.5-MoE-A2.7B from Qwen-1.8B) splits
the dense MLP's ``n`` neurons into experts of ``n_e < n`` neurons each — a block of neurons per expert, in any
order — so no expert tensor has the dense tensor's shape. Per MoE layer of the target whose corresponding
reference layer is dense (same hidden size):

1. **Match** every routed expert's neurons to distinct dense neurons by the cosine of their gate rows
   (rectangular assignment, :func:`modellineage.independence.matching.match_rows`; rows sketched to
   ``max_features`` seeded Gaussian directions when the hidden size is larger).
2. **Compare** the expert's down projection with the dense down projection's matched columns (centred
   similarity, streamed in float64). The matching was fitted on the gate rows only, so the down figure is not
   selection (as for o/down in :mod:`modellineage.weights.aligned`); the matched gate cosine is recorded
   and never judged. ``contiguous_share`` records how much of each expert came from one block of
   consecutive dense neurons.

Memory: the dense gate rows of one layer (sketched) and one expert at a time; down projections in row blocks.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from modellineage.weights.metrics import PairAccumulator
from modellineage.weights.similarity import read_canonical_rows, row_plan

__all__ = ["ExpertSlice", "match_expert_slices"]

_CHUNK = 16 << 20


@dataclass(frozen=True)
class ExpertSlice:
    """One routed expert of the target matched to a subset of the reference layer's dense neurons."""

    layer: int
    reference_layer: int
    expert: int
    neurons: int
    reference_neurons: int
    gate_matched_cos: float
    """Mean cosine of the matched gate rows (fitted by the matching: recorded, never judged)."""
    down_centred: float
    """Centred similarity of the expert's down projection and the dense down's matched columns (not fitted)."""
    contiguous_share: float
    """Share of the expert's neurons inside the longest run of consecutive dense neurons it matched."""
    tensors: tuple[str, str, str, str]

    def as_dict(self) -> dict:
        return {"layer": self.layer, "reference_layer": self.reference_layer, "expert": self.expert,
                "neurons": self.neurons, "reference_neurons": self.reference_neurons,
                "gate_matched_cos": round(self.gate_matched_cos, 6), "down_centred": round(self.down_centred, 6),
                "contiguous_share": round(self.contiguous_share, 6), "tensors": list(self.tensors)}


def _rows(model, ref, sketch: np.ndarray | None) -> np.ndarray:
    """Unit-norm canonical rows of ``ref`` (sketched when ``sketch`` is given), read in bounded blocks."""
    plan = row_plan(ref, model.store.info(ref.source))
    n, cols = plan.shape
    step = max(1, _CHUNK // max(1, cols * 8))
    parts = []
    for i in range(0, n, step):
        block = read_canonical_rows(model.store, plan, np.arange(i, min(n, i + step)))
        parts.append(block @ sketch if sketch is not None else block)
    x = np.concatenate(parts)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _down_similarity(target, t_ref, reference, r_ref, columns: np.ndarray) -> float:
    """Centred similarity of the target's down (H × n_e) and the reference down's ``columns`` (H × n)."""
    tplan = row_plan(t_ref, target.store.info(t_ref.source))
    rplan = row_plan(r_ref, reference.store.info(r_ref.source))
    acc = PairAccumulator(label_a=f"target tensor {t_ref.source!r}", label_b=f"reference tensor {r_ref.source!r}")
    h = tplan.shape[0]
    step = max(1, _CHUNK // max(1, rplan.shape[1] * 8))
    for i in range(0, h, step):
        rows = np.arange(i, min(h, i + step))
        a = read_canonical_rows(target.store, tplan, rows)
        b = read_canonical_rows(reference.store, rplan, rows)[:, columns]
        acc.update(a, b)
    return acc.result().centred_cosine


def _longest_run(values: np.ndarray) -> int:
    s = np.sort(values)
    best = run = 1
    for a, b in zip(s[:-1], s[1:]):
        run = run + 1 if b == a + 1 else 1
        best = max(best, run)
    return best if s.size else 0


def match_expert_slices(target, reference, layer_map=None, *, max_features: int = 256,
                        seed: int = 0) -> tuple[ExpertSlice, ...]:
    """Every routed expert narrower than the corresponding reference layer's dense MLP, matched to a slice of it.

    Args:
        target, reference: :class:`modellineage.reading.model.Model` handles.
        layer_map: target layer -> reference layer (default: the same index).
        max_features: gate rows longer than this are sketched to this many seeded Gaussian directions.
        seed: seeds the sketch and the matcher.
    """
    from modellineage.independence.matching import match_rows

    t_refs, r_refs = target.name_map.refs, reference.name_map.refs
    experts: dict[int, dict[int, dict[str, object]]] = defaultdict(lambda: defaultdict(dict))
    for ref in t_refs.values():
        if ref.layer is not None and ref.expert is not None and ref.role in ("expert_gate", "expert_down"):
            experts[ref.layer][ref.expert][ref.role] = ref
    out = []
    for layer in sorted(experts):
        rl = layer if layer_map is None else layer_map.get(layer)
        dense_gate = r_refs.get(f"layers.{rl}.mlp_gate.weight")
        dense_down = r_refs.get(f"layers.{rl}.mlp_down.weight")
        if rl is None or dense_gate is None or dense_down is None or len(dense_gate.shape) != 2:
            continue
        n, hidden = dense_gate.shape
        sketch = None
        if hidden > max_features:
            sketch = (np.random.default_rng([seed, hidden]).standard_normal((hidden, max_features))
                      / math.sqrt(max_features))
        dense_rows = None
        for e in sorted(experts[layer]):
            gate, down = experts[layer][e].get("expert_gate"), experts[layer][e].get("expert_down")
            if gate is None or down is None or len(gate.shape) != 2 or gate.shape[1] != hidden \
                    or not gate.shape[0] < n or tuple(down.shape) != (hidden, gate.shape[0]):
                continue
            if dense_rows is None:
                dense_rows = _rows(reference, dense_gate, sketch)
            perm, sims, _ = match_rows(_rows(target, gate, sketch), dense_rows, seed=seed * 1_000_003 + layer * 1009 + e)
            out.append(ExpertSlice(layer, rl, e, int(gate.shape[0]), int(n), float(np.mean(sims)),
                                   _down_similarity(target, down, reference, dense_down, perm),
                                   _longest_run(perm) / perm.size,
                                   (gate.source, down.source, dense_gate.source, dense_down.source)))
    return tuple(out)
