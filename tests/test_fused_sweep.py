"""The compiled moment sweep (metrics._fused_kernel, used for BF16/F16 pairs) against the numpy sweep:
the same figures to float64 rounding, copies exactly 1, non-finite input refused, mean-dominated norms centred."""

from __future__ import annotations

import numpy as np
import pytest

from modellineage.errors import NonFiniteWeights
from modellineage.weights.metrics import PairAccumulator, _fused_kernel

pytestmark = pytest.mark.skipif(_fused_kernel() is None, reason="numba is not installed")


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to BF16 (exact in float32)."""
    return ((x.astype(np.float32).view(np.uint32) + 0x8000) & 0xFFFF0000).view(np.float32)


def _both(a: np.ndarray, b: np.ndarray, chunks: int = 3):
    out = []
    for fused in (False, True):
        acc = PairAccumulator(fused=fused)
        for x, y in zip(np.array_split(a, chunks), np.array_split(b, chunks)):
            acc.update(x, y)
        out.append(acc.result())
    return out


@pytest.mark.parametrize("mean, spread, noise", [(0.0, 0.02, 0.1), (1.0, 0.05, 0.5), (1.0, 1e-3, 0.01),
                                                 (-3e-3, 0.02, 2.0)])
def test_fused_agrees_with_numpy_to_float64_rounding(mean, spread, noise):
    rng = np.random.default_rng(7)
    a = _bf16(mean + spread * rng.standard_normal(300_001))
    b = _bf16(a + noise * spread * rng.standard_normal(a.size))
    plain, fused = _both(a, b)
    for field in ("cosine", "centred_cosine", "rel_l2", "mean_a", "mean_b", "std_a", "std_b"):
        x, y = getattr(plain, field), getattr(fused, field)
        assert abs(x - y) <= 1e-12 * max(1.0, abs(x)), (field, x, y)
    assert plain.n == fused.n


def test_fused_copy_is_exactly_one_and_constant_is_undefined():
    a = _bf16(np.random.default_rng(1).standard_normal(70_000) * 0.02)
    _, fused = _both(a, a.copy())
    assert fused.cosine == 1.0 and fused.centred_cosine == 1.0 and fused.rel_l2 == 0.0
    ones = np.ones(5000, dtype=np.float32)
    _, fused = _both(ones, ones)
    assert np.isnan(fused.centred_cosine) and fused.cosine == 1.0


def test_fused_refuses_non_finite():
    a = np.zeros(10_000, dtype=np.float32) + 0.5
    b = a.copy()
    b[1234] = np.nan
    acc = PairAccumulator(label_a="t", label_b="r", fused=True)
    with pytest.raises(NonFiniteWeights, match="r has 1 NaN/Inf"):
        acc.update(a, b)
