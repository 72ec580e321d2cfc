"""Measurements more than one evidence family uses, computed once per (target, reference) pair.

The independence test's alignment (residual dimensions, neurons, heads) is also what the weight
audit undoes before its *aligned* similarity figures (:mod:`modellineage.weights.aligned`), so both audits
ask :func:`independence_test` and the second one reads it from the session's cache. The cache lives
in ``config.stash``: one per pytest session (also for in-process runs such as ``pytester``).
"""

from __future__ import annotations

import pytest

from modellineage.independence.matching import IndependenceTest, measure_independence

from .plugin import once

#: Seed of the independence test (recorded in evidence.json under seeds["independence"]).
INDEPENDENCE_SEED = 0
_CACHE = pytest.StashKey[dict]()


def pair_cache(config: pytest.Config) -> dict:
    """The session's cache of pair measurements shared across audit modules."""
    if _CACHE not in config.stash:
        config.stash[_CACHE] = {}
    return config.stash[_CACHE]


def independence_test(config: pytest.Config, target, reference, audit_session) -> IndependenceTest:
    """The independence test of ``target`` against ``reference`` (a ReferenceHandle), once per session.

    Raises the LineageError the measurement raised (kept by :func:`audits.plugin.once`), so every
    audit that needs it skips or fails with the same reason.
    """
    audit_session.seeds["independence"] = INDEPENDENCE_SEED
    return once(pair_cache(config), ("independence", reference.name),
                lambda: measure_independence(target, reference.model, seed=INDEPENDENCE_SEED))
