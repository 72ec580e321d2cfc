"""The fast paths of the streamed BF16 comparison against their plain numpy counterparts: the compiled sweep over
BF16 bit patterns, the rotation null's CountSketch and its k x k product, and rows read from mapped windows
(same bytes, counted, truncation refused, RSS one window per side)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from modellineage.errors import CorruptCheckpoint, NonFiniteWeights
from modellineage.reading.naming import TensorRef
from modellineage.reading.tensors import TensorStore
from modellineage.weights.metrics import (
    PairAccumulator,
    _kernels,
    accumulate_cross,
    bf16_values,
    count_sketch,
    shifted_buckets,
    similarity,
)
from modellineage.weights.similarity import ROTATION_SKETCH, _RotationNull, compare_pair

needs_numba = pytest.mark.skipif(_kernels() is None, reason="numba is not installed")


def _bits(x: np.ndarray) -> np.ndarray:
    """float values rounded to BF16, as bit patterns (uint16)."""
    return (((np.asarray(x, dtype=np.float32).view(np.uint32) + 0x8000) >> 16) & 0xFFFF).astype(np.uint16)


def _write_bf16(path, tensors: dict[str, np.ndarray], *, lead: int = 0) -> None:
    """A safetensors file of BF16 bit-pattern tensors; ``lead`` one-byte U8 elements first (odd data offsets)."""
    header, offset, blobs = {}, 0, []
    if lead:
        header["pad"] = {"dtype": "U8", "shape": [lead], "data_offsets": [0, lead]}
        blobs.append(b"\0" * lead)
        offset = lead
    for name, bits in tensors.items():
        raw = np.ascontiguousarray(bits, dtype="<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(bits.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little") + text)
        for blob in blobs:
            fh.write(blob)


# ----------------------------------------------------------------------------------------- compiled sweep
@needs_numba
@pytest.mark.parametrize("mean, spread, noise", [(0.0, 0.02, 0.1), (1.0, 0.05, 0.5), (1.0, 1e-3, 0.01),
                                                 (-3e-3, 0.02, 2.0)])
def test_bf16_bit_sweep_agrees_with_the_numpy_sweep(mean, spread, noise):
    rng = np.random.default_rng(11)
    a = _bits(mean + spread * rng.standard_normal(300_001))
    b = _bits(bf16_values(a) + noise * spread * rng.standard_normal(a.size))
    plain, fast = PairAccumulator(), PairAccumulator(fused=True)
    for x, y in zip(np.array_split(a, 3), np.array_split(b, 3)):
        plain.update(bf16_values(x).astype(np.float64), bf16_values(y).astype(np.float64))
        fast.update_bf16(x, y)
    p, f = plain.result(), fast.result()
    for field in ("cosine", "centred_cosine", "rel_l2", "mean_a", "mean_b", "std_a", "std_b"):
        x, y = getattr(p, field), getattr(f, field)
        assert abs(x - y) <= 1e-12 * max(1.0, abs(x)), (field, x, y)
    assert p.n == f.n == a.size


@needs_numba
def test_bf16_bit_sweep_copy_is_exactly_one():
    a = _bits(0.02 * np.random.default_rng(1).standard_normal(70_000))
    acc = PairAccumulator(fused=True)
    acc.update_bf16(a, a.copy())
    s = acc.result()
    assert s.cosine == 1.0 and s.centred_cosine == 1.0 and s.rel_l2 == 0.0


@pytest.mark.parametrize("fused", [True, False])
def test_bf16_bits_with_nan_or_inf_are_refused_naming_the_side(fused):
    a = _bits(np.full(10_000, 0.5))
    b = a.copy()
    b[1234] = 0x7FC0  # NaN
    acc = PairAccumulator(label_a="target t", label_b="reference r", fused=fused)
    with pytest.raises(NonFiniteWeights, match="reference r has 1 NaN/Inf") as exc:
        acc.update_bf16(a, b)
    assert "target t" not in str(exc.value)
    a[7] = 0xFF80  # -Inf
    with pytest.raises(NonFiniteWeights, match="target t has 1 NaN/Inf"):
        acc.update_bf16(a, _bits(np.full(10_000, 0.5)))
    assert acc.n == 0  # nothing was accumulated


# ----------------------------------------------------------------------------------------- rotation null
def test_count_sketch_and_cross_product_equal_their_dense_products():
    rng = np.random.default_rng(3)
    rows, width, k = 37, 300, ROTATION_SKETCH
    x = 0.02 * rng.standard_normal((rows, width))
    bits = _bits(x)
    bucket, sign = rng.integers(0, k, width), rng.choice(np.array([-1.0, 1.0]), width)
    dense = np.zeros((width, k))
    dense[np.arange(width), bucket] = sign
    want = (bf16_values(bits).astype(np.float64) - 0.001) @ dense
    for got in (count_sketch(bits, bucket, sign, k, 0.001, bits=True),
                count_sketch(bf16_values(bits), bucket, sign, k, 0.001),
                count_sketch(bf16_values(bits).astype(np.float64), bucket, sign, k, 0.001, slot="test")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    shifts = rng.integers(0, k, -(-width // k))  # the rotation null's buckets: chunks of k rotated at random
    bucket = shifted_buckets(width, k, shifts)
    assert sorted(np.bincount(bucket[:k], minlength=k)) == [1] * k  # a whole chunk fills every bucket once
    dense = np.zeros((width, k))
    dense[np.arange(width), bucket] = sign
    want = (bf16_values(bits).astype(np.float64) - 0.001) @ dense
    for got in (count_sketch(bits, bucket, sign, k, 0.001, bits=True, shifts=shifts),
                count_sketch(bf16_values(bits), bucket, sign, k, 0.001, shifts=shifts)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    sa, sb = rng.standard_normal((rows, k)), rng.standard_normal((rows, k))
    p = np.ones((k, k))
    accumulate_cross(sa, sb, p)
    np.testing.assert_allclose(p, 1.0 + sa.T @ sb, rtol=1e-12, atol=1e-12)


def _exact_null(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.linalg.norm(a.T @ b) / (math.sqrt(a.shape[1]) * np.linalg.norm(a) * np.linalg.norm(b)))


def test_sketched_rotation_null_of_bf16_bits_is_the_float_figure_and_near_exact(tmp_path):
    """Token matrices 80 % one shared frequency direction (the case the null is for), H = 640 > 2 x sketch:
    the BF16 fast path (bits sketched in registers, pivot from the moment sweep) gives the figure of the same
    sketch over the float values, and it lies within 8 % of the exact standard deviation (r.m.s. over sketch
    seeds in benchmarks/bench_speed.py --accuracy: 1.5 %)."""
    rng = np.random.default_rng(5)
    tokens, width = 3000, 640
    assert width > 2 * ROTATION_SKETCH
    freq = np.log(rng.zipf(1.3, tokens).clip(max=10**6))
    freq = (freq - freq.mean()) / freq.std()
    sides = []
    for _ in range(2):
        u = rng.standard_normal(width)
        u /= np.linalg.norm(u)
        sides.append(0.02 * (math.sqrt(0.8 * width) * np.outer(freq, u) + math.sqrt(0.2) * rng.standard_normal(
            (tokens, width))))
    a_bits, b_bits = (_bits(s) for s in sides)
    _write_bf16(tmp_path / "a.safetensors", {"e": a_bits})
    _write_bf16(tmp_path / "b.safetensors", {"e": b_bits})
    ref = TensorRef("embed.weight", "e", (tokens, width), "embed", "weight")
    pair = compare_pair(TensorStore([tmp_path / "a.safetensors"]), ref, TensorStore([tmp_path / "b.safetensors"]),
                        ref, rotation_null=True, chunk_bytes=1 << 20)
    a, b = (bf16_values(x).astype(np.float64) for x in (a_bits, b_bits))
    null = _RotationNull(width)
    for lo in range(0, tokens, 700):
        null.update(a[lo:lo + 700], b[lo:lo + 700])
    assert pair.rotation_null_sd == pytest.approx(null.sd(similarity(a, b)), rel=1e-9)
    assert pair.rotation_null_sd == pytest.approx(_exact_null(a, b), rel=0.08)


# ----------------------------------------------------------------------------------------- mapped windows
def test_mapped_rows_are_the_stored_bytes_counted_once(tmp_path):
    rng = np.random.default_rng(0)
    bits = _bits(rng.standard_normal((50, 33)))
    _write_bf16(tmp_path / "m.safetensors", {"w": bits}, lead=3)  # odd data offset: unaligned rows
    store = TensorStore([tmp_path / "m.safetensors"])
    before = store.bytes_read
    with store.map_raw_row_range("w", 7, 19) as mapped:
        got = mapped.data.copy()
    assert store.bytes_read - before == 12 * 33 * 2
    assert got.tobytes() == bytes(store.read_raw_row_range("w", 7, 19)) == bits[7:19].tobytes()
    assert store.map_raw_row_range("w", 5, 5) is None  # nothing to map


def test_a_store_with_its_own_row_order_or_a_file_truncated_since_its_header_is_not_mapped(tmp_path):
    bits = _bits(np.arange(64 * 8, dtype=np.float32).reshape(64, 8))
    _write_bf16(tmp_path / "t.safetensors", {"w": bits})

    class Permuted(TensorStore):  # as GGUF's store: rows served in another order than stored
        def read_raw_row_range(self, name, start, stop, *, into=None):
            return super().read_raw_row_range(name, start, stop, into=into)

    assert Permuted([tmp_path / "t.safetensors"]).map_raw_row_range("w", 0, 4) is None
    store = TensorStore([tmp_path / "t.safetensors"])
    size = os.path.getsize(tmp_path / "t.safetensors")
    os.truncate(tmp_path / "t.safetensors", size - 100)
    with pytest.raises(CorruptCheckpoint, match=r"t\.safetensors.*truncated"):
        store.map_raw_row_range("w", 0, 64)


def test_unaligned_bf16_pair_streams_to_the_float64_figures(tmp_path):
    rng = np.random.default_rng(2)
    a = _bits(1.0 + 0.05 * rng.standard_normal((300, 41)))
    b = _bits(bf16_values(a) + 0.01 * rng.standard_normal(a.shape))
    _write_bf16(tmp_path / "a.safetensors", {"w": a}, lead=1)
    _write_bf16(tmp_path / "b.safetensors", {"w": b}, lead=0)
    ref = TensorRef("layers.0.mlp_up.weight", "w", (300, 41), "mlp_up", "weight", 0)
    want = similarity(bf16_values(a).astype(np.float64), bf16_values(b).astype(np.float64))
    for chunk in (2048, 1 << 20):
        pair = compare_pair(TensorStore([tmp_path / "a.safetensors"]), ref, TensorStore([tmp_path / "b.safetensors"]),
                            ref, chunk_bytes=chunk)
        for field in ("cosine", "centred_cosine", "rel_l2", "mean_a", "std_b"):
            assert getattr(pair.similarity, field) == pytest.approx(getattr(want, field), rel=1e-12), field
        assert pair.bytes_read == 2 * a.nbytes


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":"))


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
def test_streaming_a_large_pair_keeps_rss_to_a_window_per_side(tmp_path):
    """2 x 96 MiB of BF16 rows streamed through mapped windows: peak RSS grows by the windows (8 MiB per side),
    not by the files."""
    rows, cols = 24 * 1024, 2048
    rng = np.random.default_rng(0)
    base = rng.integers(0x3C00, 0x3C80, (rows, cols), dtype=np.uint16)  # BF16 values in [0.0078, 0.0156)
    _write_bf16(tmp_path / "a.safetensors", {"w": base})
    base[::7] ^= np.uint16(1)
    _write_bf16(tmp_path / "b.safetensors", {"w": base})
    del base
    ref = TensorRef("layers.0.mlp_up.weight", "w", (rows, cols), "mlp_up", "weight", 0)
    sa, sb = TensorStore([tmp_path / "a.safetensors"]), TensorStore([tmp_path / "b.safetensors"])
    compare_pair(sa, ref, sb, ref, chunk_bytes=1 << 20)  # compiled, buffers allocated
    rss = _status_kib("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS: {exc}")
    pair = compare_pair(sa, ref, sb, ref)
    grown_mib = (_status_kib("VmHWM") - rss) / 1024
    assert pair.bytes_read == 2 * rows * cols * 2 and 0.99 < pair.similarity.centred_cosine < 1.0
    # 16 MiB measured (a window of 2048 rows per side); 192 MiB when every window stays mapped
    assert grown_mib < 28, f"peak RSS grew by {grown_mib:.0f} MiB streaming 192 MiB"
