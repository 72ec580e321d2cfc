"""Helpers for tests that write safetensors files: dtype table, random bit-pattern tensors, raw files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, settings

# safetensors dtype -> (torch dtype, signed int of the same width used for random bit patterns)
TORCH_DTYPES = {
    "F64": (torch.float64, np.int64),
    "F32": (torch.float32, np.int32),
    "F16": (torch.float16, np.int16),
    "BF16": (torch.bfloat16, np.int16),
    "F8_E4M3": (torch.float8_e4m3fn, np.int8),
    "F8_E5M2": (torch.float8_e5m2, np.int8),
    "I64": (torch.int64, np.int64),
    "I32": (torch.int32, np.int32),
    "I16": (torch.int16, np.int16),
    "I8": (torch.int8, np.int8),
    "U8": (torch.uint8, np.int8),
    "BOOL": (torch.bool, None),
}
TORCH_FLOATS = {k: v for k, v in TORCH_DTYPES.items() if v[0].is_floating_point}

# hypothesis settings for tests that write files under the function-scoped tmp_path
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def random_tensor(dtype: str, shape: tuple[int, ...], seed: int, *, constant: bool = False) -> torch.Tensor:
    """Random bit patterns of ``dtype`` (NaN/Inf/subnormals included for floats); ``constant`` repeats one pattern."""
    tdtype, itype = TORCH_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    if itype is None:
        return torch.from_numpy(np.asarray(rng.integers(0, 2, size=shape).astype(bool) | constant))
    info = np.iinfo(itype)
    bits = np.asarray(rng.integers(info.min, info.max, size=shape, dtype=itype, endpoint=True))
    if constant:
        bits = np.full(shape, bits.flat[0] if bits.size else 0, dtype=itype)
    return torch.from_numpy(np.ascontiguousarray(bits)).view(tdtype)


def write_raw(path: Path, entries: dict, data: bytes, *, header: bytes | None = None, length: int | None = None) -> Path:
    """Write a safetensors-like file byte by byte: 8-byte length, JSON header, data."""
    blob = header if header is not None else json.dumps(entries).encode()
    n = len(blob) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + blob + data)
    return path
