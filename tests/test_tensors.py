"""modellineage.reading.tensors on real safetensors files written by the safetensors library (and raw bytes for bad files)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save
from safetensors.torch import load_file as torch_load
from safetensors.torch import save_file as torch_save

from modellineage.errors import (
    CorruptCheckpoint,
    IncompatibleShapes,
    NonFiniteWeights,
    SourceNotFound,
    UnsupportedFormat,
)
from modellineage.reading.tensors import (
    EXACT_DTYPES,
    F8_E4M3_TABLE,
    F8_E5M2_TABLE,
    TensorStore,
    decode_exact,
    read_header,
)
from tests.st_files import FAST, TORCH_FLOATS, random_tensor, write_raw


def as_f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def view2d(a: np.ndarray) -> np.ndarray:
    """The (rows, cols) view TensorStore uses: 0-D and 1-D tensors are one row."""
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1])


# ---- float8 tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table, tdtype", [(F8_E4M3_TABLE, torch.float8_e4m3fn), (F8_E5M2_TABLE, torch.float8_e5m2)]
)
def test_f8_tables_match_torch_for_all_256_codes(table, tdtype):
    expected = torch.arange(256, dtype=torch.uint8).view(tdtype).to(torch.float64).numpy()
    np.testing.assert_array_equal(np.isnan(table), np.isnan(expected))
    np.testing.assert_array_equal(table, expected)  # NaN positions compare equal
    assert np.array_equal(np.signbit(table), np.signbit(expected))


def test_f8_e4m3_known_values():
    assert F8_E4M3_TABLE[0x7E] == 448.0
    assert np.isnan(F8_E4M3_TABLE[0x7F]) and np.isnan(F8_E4M3_TABLE[0xFF])
    assert F8_E4M3_TABLE[0x01] == 2.0**-9
    assert not np.isinf(F8_E4M3_TABLE).any()
    assert F8_E5M2_TABLE[0x7C] == np.inf and F8_E5M2_TABLE[0xFC] == -np.inf


# ---- headers --------------------------------------------------------------------------------


def test_read_header_gives_absolute_offsets_and_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    np_save({"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.ones(4, np.int64)}, str(path), {"k": "v"})
    header = read_header(path)
    raw = path.read_bytes()
    assert list(header.tensors) == ["a", "b"]
    assert header.metadata == {"k": "v"}
    assert header.size == len(raw)
    assert header.data_start == 8 + header.header_bytes
    b = header.tensors["b"]
    assert (b.dtype, b.shape, b.file, b.nbytes, b.numel, b.itemsize) == ("F32", (2, 3), path, 24, 6, 4)
    assert np.frombuffer(raw[b.begin : b.end], "<f4").tolist() == [0, 1, 2, 3, 4, 5]
    assert header.tensors["a"].is_float is False and b.is_float is True


@pytest.mark.parametrize(
    "shape, rows, cols", [((), 1, 1), ((5,), 1, 5), ((2, 3), 2, 3), ((2, 3, 4), 6, 4), ((3, 0), 3, 0), ((0, 4), 0, 4)]
)
def test_rows_cols_of_the_2d_view(tmp_path, shape, rows, cols):
    path = tmp_path / "m.safetensors"
    np_save({"t": np.zeros(shape, np.float32)}, str(path))
    info = read_header(path).tensors["t"]
    assert (info.rows, info.cols) == (rows, cols)


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFound, match="nope.safetensors"):
        read_header(tmp_path / "nope.safetensors")


def test_file_shorter_than_8_bytes(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CorruptCheckpoint, match=r"short\.safetensors.*3 bytes"):
        read_header(path)


def test_header_length_past_end_of_file(tmp_path):
    path = write_raw(tmp_path / "long.safetensors", {}, b"", header=b"{}" + b" " * 90, length=123)
    with pytest.raises(CorruptCheckpoint) as err:
        read_header(path)
    assert str(path) in str(err.value)
    assert "header length 123 runs past the end of the file (size 100 bytes)" in str(err.value)


def test_truncated_real_file(tmp_path):
    path = tmp_path / "cut.safetensors"
    np_save({"w": np.ones((64, 64), np.float32)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptCheckpoint, match=r"cut\.safetensors.*'w'.*past the end"):
        read_header(path)
    path.write_bytes(data[:20])
    with pytest.raises(CorruptCheckpoint, match=r"cut\.safetensors.*header length"):
        read_header(path)


@pytest.mark.parametrize("blob, what", [(b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"), (b"[1, 2]", "not an object")])
def test_header_not_a_json_object(tmp_path, blob, what):
    path = write_raw(tmp_path / "bad.safetensors", {}, b"", header=blob)
    with pytest.raises(CorruptCheckpoint, match=rf"bad\.safetensors.*{what}"):
        read_header(path)


@pytest.mark.parametrize("missing", ["dtype", "shape", "data_offsets"])
def test_entry_missing_a_key(tmp_path, missing):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    del entry[missing]
    path = write_raw(tmp_path / "bad.safetensors", {"w": entry}, bytes(8))
    with pytest.raises(CorruptCheckpoint, match=rf"bad\.safetensors.*'w'.*'{missing}'"):
        read_header(path)


@pytest.mark.parametrize(
    "entry, size, error, match",
    [
        pytest.param({"dtype": "F12", "shape": [2], "data_offsets": [0, 3]}, 3,
                     UnsupportedFormat, r"bad\.safetensors.*'w'.*'F12'", id="unknown_dtype"),
        pytest.param({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, 12,
                     CorruptCheckpoint, r"bad\.safetensors.*'w'.*needs 12 bytes.*span 8", id="offsets_do_not_match_shape"),
        pytest.param({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, 12,
                     CorruptCheckpoint, r"bad\.safetensors.*'w'.*past the end", id="offsets_past_end_of_file"),
    ],
)
def test_bad_entry(tmp_path, entry, size, error, match):
    path = write_raw(tmp_path / "bad.safetensors", {"w": entry}, bytes(size))
    with pytest.raises(error, match=match):
        read_header(path)


def test_overlapping_tensors(tmp_path):
    entries = {
        "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
    }
    path = write_raw(tmp_path / "bad.safetensors", entries, bytes(16))
    with pytest.raises(CorruptCheckpoint, match=r"bad\.safetensors.*'a' and 'b' overlap"):
        read_header(path)


def test_duplicate_key_in_header(tmp_path):
    blob = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}'
    path = write_raw(tmp_path / "bad.safetensors", {}, bytes(2), header=blob)
    with pytest.raises(CorruptCheckpoint, match=r"bad\.safetensors.*'w' twice"):
        read_header(path)


def test_duplicate_tensor_across_shards_names_both_files(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    np_save({"w": np.ones(2, np.float32), "x": np.ones(1, np.float32)}, str(a))
    np_save({"w": np.zeros(2, np.float32)}, str(b))
    with pytest.raises(CorruptCheckpoint) as err:
        TensorStore([a, b])
    assert str(a) in str(err.value) and str(b) in str(err.value) and "'w'" in str(err.value)


# ---- store ----------------------------------------------------------------------------------


def test_store_over_shards(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    np_save({"z": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.arange(3, dtype=np.int64)}, str(a))
    np_save({"m": np.full((4,), 2.5, np.float16)}, str(b))
    with TensorStore([a, b]) as store:
        assert store.names() == ["ids", "m", "z"]
        assert len(store) == 3 and "m" in store and "q" not in store
        assert store.info("m").file == b
        assert store.files == (a, b) and [h.path for h in store.headers] == [a, b]
        np.testing.assert_array_equal(store.read_row_range("z", 1, 2), [[3, 4, 5]])
        np.testing.assert_array_equal(store.read_rows("m", [0]), [[2.5, 2.5, 2.5, 2.5]])
        assert b"".join(store.iter_bytes("ids", chunk_bytes=5)) == np.arange(3, dtype="<i8").tobytes()
        with pytest.raises(UnsupportedFormat, match=r"a\.safetensors.*'ids'.*I64"):
            store.read_rows("ids", [0])
        with pytest.raises(KeyError, match="'q'"):
            store.info("q")
        with pytest.raises(KeyError, match="'q'"):
            store.iter_rows("q")
        with pytest.raises(UnsupportedFormat, match="'ids'"):
            store.iter_rows("ids")
        with pytest.raises(IndexError, match="'z'"):
            store.read_rows("z", [2])
        assert len(store._fds) == 2
    assert store._fds == {}


def test_file_truncated_after_open(tmp_path):
    path = tmp_path / "m.safetensors"
    np_save({"w": np.ones((8, 8), np.float32)}, str(path))
    store = TensorStore([path])
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) - 10)
    with pytest.raises(CorruptCheckpoint, match=r"m\.safetensors.*'w'.*truncated"):
        list(store.iter_rows("w"))
    store.close()


shapes = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)


@FAST
@given(dtype=st.sampled_from(sorted(TORCH_FLOATS)), shape=shapes, chunk=st.integers(1, 400), seed=st.integers(0, 2**16))
def test_iter_rows_reassembles_to_torch_values(tmp_path, dtype, shape, chunk, seed):
    path = tmp_path / f"{dtype}.safetensors"
    torch_save({"t": random_tensor(dtype, shape, seed), "pad": torch.ones(3, dtype=torch.float16)}, str(path))
    expected = view2d(as_f64(torch_load(str(path))["t"]))
    with TensorStore([path]) as store:
        blocks = list(store.iter_rows("t", max_chunk_bytes=chunk))
    info = read_header(path).tensors["t"]
    starts = [s for s, _ in blocks]
    assert starts == sorted(starts) and all(b.dtype == np.float64 for _, b in blocks)
    assert all(b.nbytes <= chunk or b.shape[0] == 1 for _, b in blocks)
    got = np.concatenate([b for _, b in blocks]) if blocks else np.empty((0, info.cols))
    assert got.shape == expected.shape == (info.rows, info.cols)
    np.testing.assert_array_equal(got, expected)


@FAST
@given(
    dtype=st.sampled_from(sorted(TORCH_FLOATS)),
    rows=st.integers(1, 12),
    cols=st.integers(1, 6),
    picks=st.lists(st.integers(0, 10**6), max_size=15),
    seed=st.integers(0, 2**16),
)
def test_read_rows_equals_slice(tmp_path, dtype, rows, cols, picks, seed):
    path = tmp_path / f"{dtype}.safetensors"
    torch_save({"t": random_tensor(dtype, (rows, cols), seed)}, str(path))
    full = as_f64(torch_load(str(path))["t"])
    idx = [p % rows for p in picks]
    with TensorStore([path]) as store:
        np.testing.assert_array_equal(store.read_rows("t", idx), full[idx].reshape(len(idx), cols))
        np.testing.assert_array_equal(store.read_rows("t", np.array(idx)), full[idx].reshape(len(idx), cols))
        lo = idx[0] if idx else 0
        np.testing.assert_array_equal(store.read_row_range("t", lo, rows), full[lo:rows])


# ---- block-scale dequantisation -------------------------------------------------------------


def _blockwise(scale: torch.Tensor, rows: int, cols: int, br: int, bc: int) -> np.ndarray:
    s = scale.to(torch.float64).repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return s[:rows, :cols].numpy()


@pytest.mark.parametrize("f8", [torch.float8_e4m3fn, torch.float8_e5m2])
@pytest.mark.parametrize("rows, cols, block", [(300, 260, 128), (200, 384, 128), (128, 128, 128), (7, 5, 2), (1, 3, 128)])
def test_block_scale_dequantisation(tmp_path, f8, rows, cols, block):
    gen = torch.Generator().manual_seed(0)
    weight = (torch.randn(rows, cols, generator=gen) * 4).to(f8)
    srows, scols = math.ceil(rows / block), math.ceil(cols / block)
    scale = torch.rand(srows, scols, generator=gen) + 0.5
    path = tmp_path / "ds.safetensors"
    torch_save({"l.weight": weight, "l.weight_scale_inv": scale, "l.bias": torch.zeros(cols)}, str(path))
    expected = as_f64(weight) * _blockwise(scale, rows, cols, block, block)
    with TensorStore([path]) as store:
        assert store.scale_for("l.weight") == "l.weight_scale_inv"
        assert store.scale_for("l.bias") is None and store.scale_for("l.weight_scale_inv") is None
        got = np.concatenate([b for _, b in store.iter_rows("l.weight", max_chunk_bytes=cols * 8 * 3)])
        np.testing.assert_allclose(got, expected, rtol=0, atol=0)
        idx = [rows - 1, 0, rows // 2, rows - 1]
        np.testing.assert_array_equal(store.read_rows("l.weight", idx), expected[idx])
        np.testing.assert_array_equal(store.read_row_range("l.weight", 0, rows, dequantize=False), as_f64(weight))


def test_explicit_scale_block_for_ambiguous_tiling(tmp_path):
    # 9 rows in 3 blocks tiles with blocks of 3 or 4; inference prefers 4, the caller knows it is 3.
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(9, 9, generator=gen).to(torch.float8_e4m3fn)
    scale = torch.tensor([[1.0, 2.0, 4.0], [8.0, 16.0, 32.0], [64.0, 128.0, 256.0]])
    path = tmp_path / "ds.safetensors"
    torch_save({"w": weight, "w_scale_inv": scale}, str(path))
    with TensorStore([path], scale_block=(3, 3)) as store:
        np.testing.assert_array_equal(store.read_row_range("w", 0, 9), as_f64(weight) * _blockwise(scale, 9, 9, 3, 3))
    with TensorStore([path]) as store:
        np.testing.assert_array_equal(store.read_row_range("w", 0, 9), as_f64(weight) * _blockwise(scale, 9, 9, 4, 4))
    with TensorStore([path], scale_block=(2, 2)) as store, pytest.raises(IncompatibleShapes, match="2x2 blocks"):
        store.read_rows("w", [0])


def test_block_scale_shape_mismatch(tmp_path):
    path = tmp_path / "ds.safetensors"
    torch_save(
        {"w": torch.ones(4, 4).to(torch.float8_e4m3fn), "w_scale_inv": torch.ones(5, 1)}, str(path)
    )
    with TensorStore([path]) as store:
        with pytest.raises(IncompatibleShapes, match=r"ds\.safetensors.*'w'.*'w_scale_inv'"):
            store.read_rows("w", [0])
        with pytest.raises(IncompatibleShapes, match=r"ds\.safetensors.*'w'.*'w_scale_inv'"):
            store.iter_rows("w")  # fails on the call, before streaming
        assert len(list(store.iter_rows("w", dequantize=False))) == 1


# ---- non-finite values ----------------------------------------------------------------------


def test_check_finite_names_file_tensor_and_count(tmp_path):
    path = tmp_path / "nan.safetensors"
    w = np.ones((6, 4), np.float32)
    w[1, 2], w[1, 3], w[4, 0] = np.nan, np.inf, -np.inf
    np_save({"w": w}, str(path))
    with TensorStore([path]) as store:
        assert np.isnan(store.read_rows("w", [1])).sum() == 1  # off by default
        with pytest.raises(NonFiniteWeights, match=r"nan\.safetensors.*'w'.* 2 non-finite"):
            store.read_rows("w", [1], check_finite=True)
        with pytest.raises(NonFiniteWeights, match=r"nan\.safetensors.*'w'.* 3 non-finite"):
            list(store.iter_rows("w", check_finite=True))
        chunks = store.iter_rows("w", max_chunk_bytes=2 * 4 * 8)  # two rows per chunk
        assert [int(np.isnan(b).sum() + np.isinf(b).sum()) for _, b in chunks] == [2, 0, 1]
        with pytest.raises(NonFiniteWeights, match=r"nan\.safetensors.*'w'.* 1 non-finite.*rows 2-5"):
            store.read_row_range("w", 2, 6, check_finite=True)
        store.read_row_range("w", 2, 4, check_finite=True)  # clean rows pass


# ---- raw rows, exact decoding, measured bytes -------------------------------------------------


@FAST
@given(dtype=st.sampled_from(sorted(EXACT_DTYPES)), rows=st.integers(1, 9), cols=st.integers(1, 6),
       cut=st.integers(0, 10**6), seed=st.integers(0, 2**16))
def test_raw_rows_decode_to_the_stored_values(tmp_path, dtype, rows, cols, cut, seed):
    path = tmp_path / f"{dtype}.safetensors"
    torch_save({"t": random_tensor(dtype, (rows, cols), seed)}, str(path))
    full = as_f64(torch_load(str(path))["t"])
    lo = cut % rows
    with TensorStore([path]) as store:
        info = store.info("t")
        raw = store.read_raw_row_range("t", lo, rows, into=bytearray(3))  # too short: replaced
        assert raw.nbytes == (rows - lo) * cols * info.itemsize == store.bytes_read
        got = decode_exact(dtype, raw, (rows - lo, cols), scratch=np.empty(64, np.uint32))
        assert got.dtype == (np.float64 if dtype == "F64" else np.float32)
        with np.errstate(invalid="ignore"):  # signalling NaN bit patterns widen to quiet NaNs
            np.testing.assert_array_equal(got.astype(np.float64), full[lo:])
        with pytest.raises(IndexError, match="'t'"):
            store.read_raw_row_range("t", 0, rows + 1)
    with pytest.raises(ValueError, match="BF16"):
        decode_exact("F8_E4M3", b"\0", (1, 1))


def test_bytes_read_are_counted_as_read_per_thread(tmp_path):
    import threading

    path = tmp_path / "m.safetensors"
    np_save({"w": np.arange(40 * 6, dtype=np.float32).reshape(40, 6)}, str(path))
    with TensorStore([path]) as store:
        store.prefetch_rows("w", [1, 2, 30])  # a hint: nothing read, nothing counted
        assert store.bytes_read == store.thread_bytes_read == 0
        np.testing.assert_array_equal(store.read_rows("w", [10, 3, 9, 3])[:, 0], [60, 18, 54, 18])
        assert store.bytes_read == 3 * 24  # rows 3, 9 and 10, each once
        store.read_row_range("w", 0, 5)
        seen = []
        worker = threading.Thread(target=lambda: (store.read_rows("w", [0]), seen.append(store.thread_bytes_read)))
        worker.start()
        worker.join()
        assert seen == [24] and store.thread_bytes_read == 3 * 24 + 5 * 24
        assert store.bytes_read == 3 * 24 + 5 * 24 + 24
