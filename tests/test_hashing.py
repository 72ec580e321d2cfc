"""modellineage.reading.hashing and modellineage.reading.progress on real files."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file as np_save
from safetensors.torch import load_file as torch_load
from safetensors.torch import save_file as torch_save

from modellineage.errors import CorruptCheckpoint, SourceNotFound
from modellineage.reading import progress
from modellineage.reading.hashing import FileDigest, TensorDigest, scan_safetensors, sha256_file
from modellineage.reading.tensors import read_header
from tests.st_files import FAST, TORCH_DTYPES, random_tensor, write_raw


def hash_range(path: Path, begin: int, end: int) -> str:
    return hashlib.sha256(path.read_bytes()[begin:end]).hexdigest()


def torch_nonfinite(t: torch.Tensor) -> int:
    if not t.is_floating_point():
        return 0
    return int((~torch.isfinite(t.to(torch.float64))).sum())


tensor_specs = st.lists(
    st.tuples(st.sampled_from(sorted(TORCH_DTYPES)), st.lists(st.integers(0, 6), max_size=3).map(tuple), st.booleans()),
    min_size=1,
    max_size=5,
)


@FAST
@given(specs=tensor_specs, chunk=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_streamed_hashes_equal_hashlib_over_byte_ranges(tmp_path, specs, chunk, seed):
    tensors = {f"t{i}": random_tensor(d, s, seed + i, constant=c) for i, (d, s, c) in enumerate(specs)}
    path = tmp_path / "m.safetensors"
    torch_save(tensors, str(path))
    digest = scan_safetensors(path, chunk_bytes=chunk)
    raw = path.read_bytes()
    assert (digest.path, digest.size, digest.sha256) == (str(path), len(raw), hashlib.sha256(raw).hexdigest())
    assert digest.sha256 == sha256_file(path, chunk_bytes=chunk).sha256
    infos = read_header(path).tensors
    loaded = torch_load(str(path))
    assert [t.name for t in digest.tensors] == sorted(tensors)
    for td in digest.tensors:
        info = infos[td.name]
        assert td.sha256 == hashlib.sha256(raw[info.begin : info.end]).hexdigest()
        assert (td.dtype, td.shape, td.nbytes) == (info.dtype, info.shape, info.nbytes)
        flat = loaded[td.name].reshape(-1)
        byte_rows = {bytes(raw[info.begin + k * info.itemsize : info.begin + (k + 1) * info.itemsize]) for k in range(info.numel)}
        assert td.constant == (len(byte_rows) <= 1)
        assert td.nonfinite == torch_nonfinite(flat)


def _raw_with_gaps(path: Path) -> tuple[Path, dict]:
    """A valid file whose tensors are stored out of name order with gaps and trailing bytes."""
    a = np.arange(10, dtype="<f4").tobytes()  # 40 bytes
    b = np.full(3, 7, dtype="<i2").tobytes()  # 6 bytes
    entries = {
        "a": {"dtype": "F32", "shape": [10], "data_offsets": [13, 53]},
        "b": {"dtype": "I16", "shape": [3], "data_offsets": [1, 7]},
        "e": {"dtype": "F16", "shape": [0, 4], "data_offsets": [53, 53]},
    }
    data = b"\xaa" + b + b"gap!ga" + a + b"trailing"
    return write_raw(path, entries, data), entries


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_gaps_only_feed_the_file_hash(tmp_path, chunk):
    path, _ = _raw_with_gaps(tmp_path / "gappy.safetensors")
    digest = scan_safetensors(path, chunk_bytes=chunk)
    raw = path.read_bytes()
    assert digest.sha256 == hashlib.sha256(raw).hexdigest()
    by_name = {t.name: t for t in digest.tensors}
    assert by_name["a"].sha256 == hashlib.sha256(np.arange(10, dtype="<f4").tobytes()).hexdigest()
    assert by_name["b"].sha256 == hashlib.sha256(np.full(3, 7, dtype="<i2").tobytes()).hexdigest()
    assert by_name["e"].sha256 == hashlib.sha256(b"").hexdigest()
    assert (by_name["a"].constant, by_name["b"].constant, by_name["e"].constant) == (False, True, True)


@pytest.mark.parametrize(
    "array, constant",
    [
        (np.zeros((5, 3), np.float32), True),
        (np.ones((5, 3), np.float16), True),
        (np.full((7,), 3.7, np.float64), True),
        (np.full((1,), -2.0, np.float32), True),
        (np.zeros((0,), np.float32), True),
        (np.array([0.0, -0.0], np.float32), False),  # equal numbers, different bytes
        (np.array([1, 1, 1, 2], np.int64), False),
        (np.array([True, True]), True),
    ],
)
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_constant_flag(tmp_path, array, constant, chunk):
    path = tmp_path / "c.safetensors"
    np_save({"x": array}, str(path))
    (td,) = scan_safetensors(path, chunk_bytes=chunk).tensors
    assert td.constant is constant


@pytest.mark.parametrize("dtype", ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"])
def test_nonfinite_count_from_bit_patterns(tmp_path, dtype):
    tdtype = TORCH_DTYPES[dtype][0]
    values = torch.tensor([1.0, float("nan"), -2.0, float("inf"), float("-inf"), 0.5, float("nan")], dtype=torch.float64)
    t = values.to(tdtype)  # e4m3fn has no inf: torch saturates +-inf to +-448
    path = tmp_path / f"nan_{dtype}.safetensors"
    torch_save({"w": t, "ok": torch.ones(3, dtype=tdtype)}, str(path))
    by_name = {d.name: d for d in scan_safetensors(path, chunk_bytes=3).tensors}
    assert by_name["w"].nonfinite == torch_nonfinite(t) == (2 if dtype == "F8_E4M3" else 4)
    assert by_name["ok"].nonfinite == 0


def test_sha256_file_any_file_and_progress(tmp_path):
    path = tmp_path / "notes.txt"
    data = b"hello provenance\n" * 1000
    path.write_bytes(data)
    seen: list[int] = []
    digest = sha256_file(path, chunk_bytes=4096, progress=seen.append)
    assert digest == FileDigest(str(path), len(data), hashlib.sha256(data).hexdigest(), ())
    assert sum(seen) == len(data) and max(seen) <= 4096


def test_scan_progress_counts_every_byte(tmp_path):
    path = tmp_path / "m.safetensors"
    np_save({"w": np.ones((100, 10), np.float32)}, str(path))
    seen: list[int] = []
    scan_safetensors(path, chunk_bytes=1000, progress=seen.append)
    assert sum(seen) == path.stat().st_size


def test_as_dict_is_json_ready(tmp_path):
    path = tmp_path / "m.safetensors"
    np_save({"w": np.ones((2, 3), np.float32)}, str(path))
    d = scan_safetensors(path).as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["tensors"][0]["shape"] == [2, 3] and d["tensors"][0]["constant"] is True
    assert TensorDigest(**{**d["tensors"][0], "shape": (2, 3)}).as_dict() == d["tensors"][0]


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(SourceNotFound, match=r"absent\.bin"):
        sha256_file(tmp_path / "absent.bin")
    with pytest.raises(SourceNotFound, match=r"absent\.safetensors"):
        scan_safetensors(tmp_path / "absent.safetensors")
    with pytest.raises(SourceNotFound, match="not a regular file"):
        sha256_file(tmp_path)
    path = tmp_path / "cut.safetensors"
    np_save({"w": np.ones((16, 16), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CorruptCheckpoint, match=r"cut\.safetensors.*'w'"):
        scan_safetensors(path)


# ---- progress -------------------------------------------------------------------------------


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_disabled_is_a_noop(capsys):
    with progress.progress_bar(100, "x", enabled=False) as update:
        update(50)
    assert capsys.readouterr().err == ""


def test_progress_enabled_draws_on_stderr(monkeypatch):
    fake = _Tty()
    monkeypatch.setattr("sys.stderr", fake)
    monkeypatch.setattr(progress, "_flag", True)
    with progress.progress_bar(2048, "hashing", enabled=True) as update:
        update(1024)
        update(1024)
    assert "hashing" in fake.getvalue()


def test_enabled_needs_flag_and_tty(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    progress.set_enabled(True)
    assert progress.enabled() is False  # not a terminal
    monkeypatch.setattr("sys.stderr", _Tty())
    try:
        assert progress.enabled() is True
        progress.set_enabled(False)
        assert progress.enabled() is False
        with progress.progress_bar(10, "x") as update:  # follows the setting
            update(10)
        with progress.progress_bar(10, "x", enabled=True) as update:  # the setting wins over the caller
            update(10)
        assert sys_stderr_text() == ""
    finally:
        progress.set_enabled(True)


def sys_stderr_text() -> str:
    import sys

    return sys.stderr.getvalue()
