"""Streaming similarity: exact cases, invariants, numerical stability, the norm-gain trap, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save

from modellineage.errors import IncompatibleShapes, NonFiniteWeights
from modellineage.reading.tensors import TensorStore
from modellineage.weights.metrics import PairAccumulator, Similarity, similarity

PROPS = settings(max_examples=60, deadline=None)
TOL = 1e-12


def close(x: float, y: float, tol: float = TOL) -> bool:
    return math.isclose(x, y, rel_tol=tol, abs_tol=tol)


def reference(a: np.ndarray, b: np.ndarray) -> dict:
    """One-shot numpy figures: explicit two-pass centring in float64."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    da, db = a - a.mean(), b - b.mean()
    return {
        "cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        "centred_cosine": float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db))),
        "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(b)),
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "std_a": float(a.std()),
        "std_b": float(b.std()),
    }


def pair(seed: int, rows: int, cols: int, rho: float, offset_a: float, offset_b: float):
    """Correlated normal pair (correlation rho) with the given mean offsets."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, rows, cols))
    return offset_a + x, offset_b + rho * x + math.sqrt(1 - rho * rho) * y


# ---- exact small cases -------------------------------------------------------------------


def test_orthogonal_identical_negated():
    e1, e2 = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    assert similarity(e1, e2).cosine == 0.0
    v = np.array([3.0, -1.0, 2.0, 0.5])
    same = similarity(v, v)
    assert same.cosine == pytest.approx(1.0, abs=1e-15)
    assert same.centred_cosine == pytest.approx(1.0, abs=1e-15)
    assert same.rel_l2 == 0.0
    neg = similarity(-v, v)
    assert neg.cosine == pytest.approx(-1.0, abs=1e-15)
    assert neg.centred_cosine == pytest.approx(-1.0, abs=1e-15)
    assert neg.rel_l2 == pytest.approx(2.0, abs=1e-15)


def test_centred_orthogonal_by_hand():
    # a - mean = [-1, 1, -1, 1], b - mean = [-1, -1, 1, 1]: centred dot = 0
    a = np.array([0.0, 2.0, 0.0, 2.0])
    b = np.array([4.0, 4.0, 6.0, 6.0])
    sim = similarity(a, b)
    assert sim.centred_cosine == 0.0
    # raw: a.b = 8 + 12 = 20; |a| = sqrt(8); |b| = sqrt(104)
    assert sim.cosine == pytest.approx(20 / math.sqrt(8 * 104), rel=1e-15)
    assert (sim.mean_a, sim.mean_b, sim.std_a, sim.std_b) == (1.0, 5.0, 1.0, 1.0)
    assert sim.rel_l2 == pytest.approx(math.sqrt(16 + 4 + 36 + 16) / math.sqrt(104), rel=1e-15)


def test_shifted_copy_centred_one_raw_below_one():
    a = np.array([0.3, -1.2, 2.5, 0.0, 0.7])
    sim = similarity(a + 5.0, a)
    assert sim.centred_cosine == pytest.approx(1.0, abs=1e-14)
    assert sim.cosine < 0.9
    assert sim.mean_a - sim.mean_b == pytest.approx(5.0, abs=1e-14)


def test_as_dict_has_every_field():
    sim = similarity(np.arange(6.0).reshape(2, 3), np.ones((2, 3)) + np.arange(6.0).reshape(2, 3) ** 2)
    d = sim.as_dict()
    assert set(d) == {"n", "cosine", "centred_cosine", "rel_l2", "mean_a", "mean_b", "std_a", "std_b"}
    assert d["n"] == 6 and d["cosine"] == sim.cosine
    assert isinstance(sim, Similarity)


# ---- documented edge cases ----------------------------------------------------------------


def test_zero_variance_side_gives_nan_centred_not_zero():
    a = np.full(7, 0.1)  # 0.1 is inexact: a naive mean would leave tiny nonzero deviations
    b = np.linspace(-1, 1, 7)
    acc = PairAccumulator()
    acc.update(a[:3], b[:3])
    acc.update(a[3:], b[3:])
    sim = acc.result()
    assert math.isnan(sim.centred_cosine)
    assert sim.std_a == 0.0 and sim.mean_a == 0.1
    assert not math.isnan(sim.cosine)


def test_zero_norm_gives_nan_cosine_and_rel_l2():
    z, v = np.zeros(4), np.array([1.0, 2.0, 3.0, 4.0])
    sim = similarity(z, v)
    assert math.isnan(sim.cosine) and math.isnan(sim.centred_cosine)
    assert sim.rel_l2 == 1.0
    back = similarity(v, z)
    assert math.isnan(back.cosine) and math.isnan(back.rel_l2)


def test_empty_raises_value_error():
    with pytest.raises(ValueError, match="no elements"):
        PairAccumulator().result()
    acc = PairAccumulator()
    acc.update(np.empty((0, 4)), np.empty((0, 4)))  # empty chunks are allowed and add nothing
    with pytest.raises(ValueError):
        acc.result()
    with pytest.raises(ValueError):
        similarity(np.empty(0), np.empty(0))


# ---- errors -------------------------------------------------------------------------------


def test_shape_mismatch():
    acc = PairAccumulator(label_a="t:w", label_b="r:w")
    with pytest.raises(IncompatibleShapes, match=r"t:w \(2, 3\) vs r:w \(3, 2\)"):
        acc.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(IncompatibleShapes):
        similarity(np.zeros(4), np.zeros(5))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_chunk_names_the_side(bad):
    acc = PairAccumulator(label_a="target:norm", label_b="reference:norm")
    acc.update(np.ones(3), np.arange(3.0))
    poisoned = np.array([1.0, bad, 2.0, 3.0])
    with pytest.raises(NonFiniteWeights, match="reference:norm has 1 NaN/Inf of 4") as err:
        acc.update(np.ones(4), poisoned)
    assert "target:norm" not in str(err.value)
    with pytest.raises(NonFiniteWeights, match="target:norm has 1") as err:
        acc.update(poisoned, np.ones(4))
    assert "reference:norm" not in str(err.value)
    with pytest.raises(NonFiniteWeights, match="target:norm.*reference:norm"):
        acc.update(poisoned, poisoned)
    assert acc.n == 3  # a rejected chunk leaves the accumulator unchanged
    with pytest.raises(NonFiniteWeights, match="b has"):
        similarity(np.ones(2), np.array([0.0, np.nan]))


def test_merge_rejects_other_types():
    with pytest.raises(TypeError):
        PairAccumulator().merge(object())  # type: ignore[arg-type]


# ---- properties ---------------------------------------------------------------------------

pairs = st.builds(
    pair,
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(2, 40),
    cols=st.integers(1, 6),
    rho=st.floats(-0.99, 0.99),
    offset_a=st.floats(-50, 50),
    offset_b=st.floats(-50, 50),
)


@PROPS
@given(ab=pairs, data=st.data())
def test_any_chunking_and_merge_order_equals_one_shot(ab, data):
    a, b = ab
    rows = a.shape[0]
    cuts = sorted(data.draw(st.sets(st.integers(1, rows - 1), max_size=min(8, rows - 1)), label="cuts"))
    bounds = [0, *cuts, rows]
    parts = []
    for lo, hi in zip(bounds, bounds[1:]):
        acc = PairAccumulator()
        # each part may itself be fed in several updates
        split = data.draw(st.integers(lo, hi), label="split")
        acc.update(a[lo:split], b[lo:split])
        acc.update(a[split:hi], b[split:hi])
        parts.append(acc)
    order = data.draw(st.permutations(range(len(parts))), label="order")
    pool = [parts[i] for i in order]
    while len(pool) > 1:  # random merge tree
        i = data.draw(st.integers(0, len(pool) - 2), label="merge at")
        pool[i : i + 2] = [pool[i].merge(pool[i + 1])]
    got = pool[0].result().as_dict()
    want = reference(a, b)
    assert got["n"] == a.size
    for key, value in want.items():
        assert close(got[key], value), (key, got[key], value)


@PROPS
@given(ab=pairs, k=st.floats(1e-3, 1e3), negative=st.booleans())
def test_scale_invariance_and_sign(ab, k, negative):
    a, b = ab
    base = similarity(a, b)
    sign = -1.0 if negative else 1.0
    scaled = similarity(sign * k * a, b)
    assert close(scaled.cosine, sign * base.cosine)
    assert close(scaled.centred_cosine, sign * base.centred_cosine)
    other = similarity(a, sign * k * b)
    assert close(other.cosine, sign * base.cosine)
    assert close(other.centred_cosine, sign * base.centred_cosine)


@PROPS
@given(ab=pairs, ca=st.floats(-100, 100), cb=st.floats(-100, 100))
def test_centred_invariant_to_added_constants(ab, ca, cb):
    a, b = ab
    base = similarity(a, b).centred_cosine
    assert close(similarity(a + ca, b).centred_cosine, base)
    assert close(similarity(a, b + cb).centred_cosine, base)
    assert close(similarity(a + ca, b + cb).centred_cosine, base)


@PROPS
@given(ab=pairs)
def test_symmetric_in_a_and_b(ab):
    a, b = ab
    ab_, ba = similarity(a, b), similarity(b, a)
    assert close(ab_.cosine, ba.cosine)
    assert close(ab_.centred_cosine, ba.centred_cosine)
    assert (ab_.mean_a, ab_.std_a) == (ba.mean_b, ba.std_b)


@PROPS
@given(ab=pairs)
def test_merge_leaves_parts_unchanged_and_empty_is_neutral(ab):
    a, b = ab
    left, right = PairAccumulator(), PairAccumulator()
    left.update(a[:1], b[:1])
    right.update(a[1:], b[1:])
    before = left.result(), right.result()
    merged = left.merge(right)
    assert (left.result(), right.result()) == before
    assert merged.n == a.size
    assert merged.merge(PairAccumulator()).result() == merged.result()
    assert PairAccumulator().merge(merged).result() == merged.result()


def test_low_precision_dtypes_are_widened():
    a = np.array([1.0, 2.0, 3.5], dtype=np.float16)
    b = np.array([1, 2, 3], dtype=np.int32)
    sim = similarity(a, b)
    want = reference(a.astype(np.float64), b.astype(np.float64))
    assert close(sim.cosine, want["cosine"]) and close(sim.centred_cosine, want["centred_cosine"])


# ---- numerical stability -------------------------------------------------------------------


def naive_streaming_centred(a: np.ndarray, b: np.ndarray, chunk: int) -> float:
    """The textbook one-pass formula over float64 running sums: cancels when the mean dominates."""
    n = s_a = s_b = s_aa = s_bb = s_ab = 0.0
    for lo in range(0, a.size, chunk):
        x, y = a[lo : lo + chunk], b[lo : lo + chunk]
        n += x.size
        s_a += float(x.sum())
        s_b += float(y.sum())
        s_aa += float(x @ x)
        s_bb += float(y @ y)
        s_ab += float(x @ y)
    mean_a, mean_b = s_a / n, s_b / n
    cov = s_ab - n * mean_a * mean_b
    var_a = s_aa - n * mean_a * mean_a
    var_b = s_bb - n * mean_b * mean_b
    return cov / math.sqrt(var_a * var_b)


def test_centred_cosine_stable_when_mean_dominates():
    rng = np.random.default_rng(20240611)
    n, chunk = 10**6, 1000
    x, y = rng.standard_normal((2, n))
    a = 1.0 + 1e-4 * x
    b = 1.0 + 1e-4 * (0.6 * x + 0.8 * y)  # true correlation 0.6
    want = float(np.corrcoef(a - a.mean(), b - b.mean())[0, 1])
    acc = PairAccumulator()
    for lo in range(0, n, chunk):
        acc.update(a[lo : lo + chunk], b[lo : lo + chunk])
    got = acc.result().centred_cosine
    naive = naive_streaming_centred(a, b, chunk)
    pairwise_err, naive_err = abs(got - want), abs(naive - want)
    print(f"pairwise error {pairwise_err:.3e}, naive error {naive_err:.3e}, corr {want:.6f}")
    assert pairwise_err < 1e-9
    assert naive_err > 1e-8 and naive_err > 1000 * max(pairwise_err, 1e-15)


# ---- the norm-gain trap --------------------------------------------------------------------


def test_norm_gains_raw_cosine_high_centred_near_zero():
    rng = np.random.default_rng(4096)
    a = 1.0 + 0.1 * rng.standard_normal(4096)
    b = 1.0 + 0.1 * rng.standard_normal(4096)
    independent = similarity(a, b)
    assert independent.cosine > 0.98  # ≈ 1 / (1 + 0.1²) = 0.990: looks like a copy
    assert abs(independent.centred_cosine) < 0.1  # but the spread is unrelated
    copy = similarity(a + 0.005 * rng.standard_normal(4096), a)
    assert copy.cosine > 0.999
    assert copy.centred_cosine > 0.99


# ---- streaming from files ------------------------------------------------------------------


def test_streams_from_tensor_store(tmp_path):
    rng = np.random.default_rng(7)
    w_t = (1.0 + 0.02 * rng.standard_normal((37, 11))).astype(np.float32)
    w_r = (w_t + 0.01 * rng.standard_normal((37, 11))).astype(np.float32)
    np_save({"w": w_t}, str(tmp_path / "t.safetensors"))
    np_save({"w": w_r}, str(tmp_path / "r.safetensors"))
    acc = PairAccumulator(label_a="target:w", label_b="reference:w")
    with TensorStore([tmp_path / "t.safetensors"]) as t, TensorStore([tmp_path / "r.safetensors"]) as r:
        chunks = zip(t.iter_rows("w", max_chunk_bytes=200), r.iter_rows("w", max_chunk_bytes=200))
        for (row_t, a), (row_r, b) in chunks:
            assert row_t == row_r
            acc.update(a, b)
    got = acc.result().as_dict()
    want = reference(w_t, w_r)
    for key, value in want.items():
        assert close(got[key], value), key


# ---- the blocked sweep ---------------------------------------------------------------------


def test_float32_input_widens_exactly_across_blocks():
    """More elements than one block; float32 input (as the streamed BF16/F32 readers pass it) gives exactly
    the figures of its float64 copy, and both match the one-shot reference."""
    from modellineage.weights.metrics import BLOCK_ELEMENTS

    rng = np.random.default_rng(11)
    n = 2 * BLOCK_ELEMENTS + 17
    a = (1.0 + 1e-3 * rng.standard_normal(n)).astype(np.float32)  # norm-gain-like: the mean dominates
    b = (a + 1e-4 * rng.standard_normal(n)).astype(np.float32)
    wide = similarity(a.astype(np.float64), b.astype(np.float64))
    assert similarity(a, b) == wide
    for key, value in reference(a, b).items():
        assert close(wide.as_dict()[key], value, 1e-11), key
