"""Measurements more than one evidence family uses, computed once per (target, reference) pair.

The independence test's alignment (residual dimensions, neurons, heads) is also what the weight
audit undoes before its *aligned* similarity figures (:mod:`modellineage.weights.aligned`), so both audits
ask :func:`independence_test` and the second one reads it from the session's cache. The cache lives
in ``config.stash``: one per pytest session (also for in-process runs such as ``pytester``).
"""

from __future__ import annotations

import contextlib

import pytest

from modellineage.independence.matching import (
    EXPERTS_PER_LAYER,
    IndependenceTest,
    depth_layer_map,
    measure_independence,
)
from modellineage.reading import progress
from modellineage.weights.budget import plan_budget

from .plugin import once

#: Seed of the independence test (recorded in evidence.json under seeds["independence"]).
INDEPENDENCE_SEED = 0
_CACHE = pytest.StashKey[dict]()


def pair_cache(config: pytest.Config) -> dict:
    """The session's cache of pair measurements shared across audit modules."""
    if _CACHE not in config.stash:
        config.stash[_CACHE] = {}
    return config.stash[_CACHE]


def budget_plan(config: pytest.Config, target, reference, audit_session):
    """The read budget's plan for (target, reference) (None without --budget), once per session."""
    if audit_session.budget is None:
        return None
    return once(pair_cache(config), ("budget", reference.name),
                lambda: plan_budget(target, reference.model, audit_session.budget))


def independence_test(config: pytest.Config, target, reference, audit_session) -> IndependenceTest:
    """The independence test of ``target`` against ``reference`` (a ReferenceHandle), once per session.

    Under a read budget it tests the layers (and experts) the budget's plan chose, without head
    alignment; a budget too small for one layer raises UnsupportedFormat saying so.

    Raises the LineageError the measurement raised (kept by :func:`audits.plugin.once`), so every
    audit that needs it skips or fails with the same reason.
    """
    audit_session.seeds["independence"] = INDEPENDENCE_SEED

    def compute():
        plan = budget_plan(config, target, reference, audit_session)
        stores = (target.store, reference.model.store)
        before = sum(s.bytes_read for s in stores)
        with _LayerBar(f"independence vs {reference.name}") as bar:
            if plan is None:  # a depth-changed pair: layers paired as the weight audits' layer correspondence
                layer_map = depth_layer_map(target, reference.model, seed=INDEPENDENCE_SEED,
                                            min_match=audit_session.thresholds["weights", "derived_min_centred"].value)
                test = measure_independence(target, reference.model, seed=INDEPENDENCE_SEED, progress=bar,
                                            layer_map=layer_map,
                                            experts_per_layer=None if audit_session.all_experts else EXPERTS_PER_LAYER)
            else:
                plan.check_independence()
                test = measure_independence(target, reference.model, seed=INDEPENDENCE_SEED, progress=bar,
                                            layers=plan.independence_layers,
                                            experts_per_layer=plan.experts_per_layer, heads=False,
                                            max_tokens=plan.align_tokens, shared_units=plan.shared_units)
        read = sum(s.bytes_read for s in stores) - before
        present = sum(s.info(n).nbytes for s in stores for n in s.names())
        reading = {"bytes_read": int(read), "bytes_present": int(present), "share_read": read / present if present
                   else None, "note": "bytes the independence test of this pair read, against every tensor byte "
                                      "of both models"}
        if plan is not None:
            reading.update(budget=plan.as_dict(), within_budget=read <= plan.bytes_allowed)
        pair_cache(config)[("independence-reading", reference.name)] = reading
        return test

    return once(pair_cache(config), ("independence", reference.name), compute)


class _LayerBar:
    """``progress(done, total)`` for :func:`measure_independence` drawn as a layer bar
    (:func:`modellineage.reading.progress.count_bar`: only on a terminal, off under ``-q``)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.done, self._stack = desc, 0, contextlib.ExitStack()
        self._update = None

    def __enter__(self) -> "_LayerBar":
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._update is None:
            self._update = self._stack.enter_context(progress.count_bar(total, self.desc, unit="layer"))
        self._update(done - self.done)
        self.done = done

    def __exit__(self, *exc) -> None:
        self._stack.close()


def independence_reading(config: pytest.Config, reference) -> dict | None:
    """What the independence test of ``reference`` read (bytes read and present, the budget's plan)."""
    return pair_cache(config).get(("independence-reading", reference.name))
