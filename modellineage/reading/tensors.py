"""Read safetensors checkpoints lazily, one bounded chunk at a time.

We parse the safetensors header ourselves (8-byte little-endian header length ``N``,
``N`` bytes of JSON, then the data section) so that every tensor's absolute byte range
in its file is known and every malformed file gets a precise error naming the file.

Memory: opening a :class:`TensorStore` reads only the headers. Tensor data is read with
``os.pread`` into buffers whose size is bounded by ``max_chunk_bytes`` / ``chunk_bytes``;
the files are never memory-mapped whole, because mapped file pages count toward the process's
resident set and would make peak RSS grow with model size. Peak memory therefore stays
flat whatever the size of the model (a 100B-parameter MoE is the design case); the only
unit that cannot be split is one row (the last axis) of one tensor. The one exception is
:meth:`TensorStore.map_raw_row_range`, the streaming fast path's read: a bounded window of rows
mapped read-only and unmapped by its reader before the next (:class:`MappedRows`), so the pages
are read where the page cache holds them instead of copied by ``pread`` (a page-cache copy is
about a third of the CPU time of the compiled BF16 comparison), and RSS stays one window per side.

Every ``pread`` is counted (:attr:`TensorStore.bytes_read`, and per thread), so a measurement can
say how many bytes it really read. Scattered row reads are announced to the kernel first
(``POSIX_FADV_WILLNEED``, :meth:`TensorStore.prefetch_rows`): fetched together, and without the
readahead a run of small sequential-looking reads would otherwise trigger around them. The
streaming fast path reads raw rows into a caller's reused buffer (:meth:`TensorStore.read_raw_row_range`)
and decodes them to their exact float32/float64 values (:func:`decode_exact`).

Nothing is ever unpickled; only the safetensors format is read.

Example:
    >>> with TensorStore(sorted(Path("model").glob("*.safetensors"))) as store:
    ...     for first_row, block in store.iter_rows("lm_head.weight"):
    ...         ...
"""

from __future__ import annotations

import math
import mmap
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modellineage.errors import (
    CorruptCheckpoint,
    IncompatibleShapes,
    NonFiniteWeights,
    SourceNotFound,
    UnsupportedFormat,
)
from modellineage.reading import confine, remote
from modellineage.reading.boundary import loads_json, quote

__all__ = [
    "row_runs",
    "DTYPE_ITEMSIZE",
    "EXACT_DTYPES",
    "decode_exact",
    "FLOAT_DTYPES",
    "MappedRows",
    "SafetensorsHeader",
    "TensorInfo",
    "TensorStore",
    "read_header",
    "F8_E4M3_TABLE",
    "F8_E5M2_TABLE",
]

# The format's own cap on the header size (safetensors refuses larger headers too).
_MAX_HEADER_BYTES = 100_000_000
#: Most tensors one model may hold. Every tensor costs ~2.7 KiB of records (header entry, canonical name,
#: digest; measured: 200,000 one-element tensors take 0.54 GB), so this keeps a model's records under
#: ~1.4 GiB; the largest real checkpoints hold ~140,000 (Kimi-K2: 384 experts x 60 MoE layers x weight +
#: scale for 3 matrices). A safety limit, not a threshold of judgement.
MAX_TENSORS = 2**19
# Most axes a tensor may declare (numpy's own limit is 64); every axis and offset is a u64 below 2**63.
_MAX_RANK = 64

#: Bytes per element of every dtype we accept.
DTYPE_ITEMSIZE: dict[str, int] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
    "C64": 8,
}

#: Dtypes that decode to float64 numbers; the others are listed and hashed only.
FLOAT_DTYPES: frozenset[str] = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})

_F8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})
_SCALE_SUFFIX = "_scale_inv"


def _minifloat_table(exp_bits: int, man_bits: int, *, ieee: bool) -> np.ndarray:
    """float64 value of each of the 256 codes of an 8-bit float (sign, exponent, mantissa).

    ``ieee=True``: the all-ones exponent holds inf (mantissa 0) and NaN (E5M2). ``ieee=False``: the
    "fn" variant with no inf, where only the all-ones exponent *and* mantissa is NaN (E4M3FN).
    """
    bias = (1 << (exp_bits - 1)) - 1
    top, full = (1 << exp_bits) - 1, (1 << man_bits) - 1
    out = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp = (code >> man_bits) & top
        man = code & full
        if exp == top and (ieee or man == full):
            out[code] = sign * math.inf if ieee and man == 0 else math.copysign(math.nan, sign)
        elif exp == 0:
            out[code] = sign * math.ldexp(man / (1 << man_bits), 1 - bias)
        else:
            out[code] = sign * math.ldexp(1.0 + man / (1 << man_bits), exp - bias)
    out.setflags(write=False)
    return out


#: Lookup tables code -> float64 for the two float8 formats.
F8_E4M3_TABLE: np.ndarray = _minifloat_table(4, 3, ieee=False)
F8_E5M2_TABLE: np.ndarray = _minifloat_table(5, 2, ieee=True)


def row_runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive values in sorted unique ``rows``: where each run starts (an index into ``rows``) and
    how many rows it holds. Every reader that coalesces rows into one read per run uses it."""
    if not rows.size:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(rows) != 1) + 1]
    return starts, np.diff(np.r_[starts, rows.size])


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file and absolute byte range ``[begin, end)`` in it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        return DTYPE_ITEMSIZE[self.dtype]

    @property
    def is_float(self) -> bool:
        """True when the dtype decodes to numbers (see :data:`FLOAT_DTYPES`)."""
        return self.dtype in FLOAT_DTYPES

    @property
    def rows(self) -> int:
        """Rows of the 2-D view: product of all axes but the last (1 for 0-D and 1-D)."""
        return math.prod(self.shape[:-1]) if len(self.shape) >= 1 else 1

    @property
    def cols(self) -> int:
        """Columns of the 2-D view: the last axis (1 for a 0-D tensor)."""
        return self.shape[-1] if self.shape else 1


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed header of one safetensors file.

    ``header_bytes`` is ``N``, the JSON length; the data section starts at ``8 + N``.
    ``tensors`` is ordered by name.
    """

    path: Path
    size: int
    header_bytes: int
    tensors: dict[str, TensorInfo] = field(repr=False)
    metadata: dict[str, str] = field(repr=False)

    @property
    def data_start(self) -> int:
        return 8 + self.header_bytes


def _no_duplicate_keys(path: Path):
    def hook(pairs: list[tuple[str, object]]) -> dict:
        out: dict = {}
        for key, value in pairs:
            if key in out:
                raise CorruptCheckpoint(f"{path}: header names {quote(key)} twice")
            out[key] = value
        return out

    return hook


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_entry(path: Path, name: str, entry: object, data_start: int, size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise CorruptCheckpoint(f"{path}: header entry for tensor {quote(name)} is not an object")
    for key in ("dtype", "shape", "data_offsets"):
        if key not in entry:
            raise CorruptCheckpoint(f"{path}: header entry for tensor {quote(name)} has no {key!r}")
    dtype = entry["dtype"]
    if not isinstance(dtype, str) or dtype not in DTYPE_ITEMSIZE:
        raise UnsupportedFormat(
            f"{path}: tensor {quote(name)} has unknown dtype {quote(dtype)} (known: {', '.join(sorted(DTYPE_ITEMSIZE))})"
        )
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_RANK or not all(_is_int(d) and 0 <= d < 2**63 for d in shape):
        raise CorruptCheckpoint(f"{path}: tensor {quote(name)} has invalid shape {quote(shape)}")
    offsets = entry["data_offsets"]
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) and 0 <= o < 2**63 for o in offsets)):
        raise CorruptCheckpoint(f"{path}: tensor {quote(name)} has invalid data_offsets {quote(offsets)}")
    begin, end = offsets
    if end < begin:
        raise CorruptCheckpoint(f"{path}: tensor {quote(name)} has data_offsets {offsets!r} that end before they begin")
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if expected == 0 and math.prod(d for d in shape if d) > max(size, 1):
        # A zero-size tensor holds no bytes, so its other axes are only declared: bounded by the file's
        # size like every stored tensor's, so no consumer loops over rows that are not there.
        raise CorruptCheckpoint(
            f"{path}: tensor {quote(name)} is empty but declares shape {quote(tuple(shape))}, whose other axes "
            f"span more elements than the file has bytes ({size})"
        )
    if end - begin != expected:
        raise CorruptCheckpoint(
            f"{path}: tensor {quote(name)} ({dtype} {quote(tuple(shape))}) needs {expected} bytes "
            f"but data_offsets {offsets!r} span {end - begin}"
        )
    if data_start + end > size:
        raise CorruptCheckpoint(
            f"{path}: tensor {quote(name)} data_offsets {offsets!r} run past the end of the file "
            f"(data section is {size - data_start} bytes, file size {size} bytes)"
        )
    return TensorInfo(name, dtype, tuple(shape), path, data_start + begin, data_start + end)


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file, without touching tensor data.

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The header with absolute byte ranges of every tensor.

    Raises:
        SourceNotFound: the file does not exist.
        CorruptCheckpoint: truncated file, bad JSON, bad entries, offsets out of range or overlapping.
        UnsupportedFormat: a tensor has a dtype we do not know.
    """
    path = Path(path)
    far = remote.lookup(path)
    if far is not None:  # a remote file: the first bytes by one range request, the rest of a long header by another
        size = far.size
        if size < 8:
            raise CorruptCheckpoint(f"{path}: file is {size} bytes, too short for a safetensors header (8 bytes)")
        far.ensure([(0, min(size, remote.HEADER_PROBE_BYTES))])
        n = int.from_bytes(far.pread(0, 8), "little")
        if 8 + n > size:
            raise CorruptCheckpoint(f"{path}: header length {n} runs past the end of the file (size {size} bytes)")
        if n > _MAX_HEADER_BYTES:
            raise CorruptCheckpoint(f"{path}: header length {n} exceeds the format's limit of {_MAX_HEADER_BYTES}")
        raw = bytes(far.pread(8, n))
    elif not path.is_file():
        raise SourceNotFound(f"{path}: no such file")
    else:
        with confine.open_file(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise CorruptCheckpoint(f"{path}: file is {size} bytes, too short for a safetensors header (8 bytes)")
            n = int.from_bytes(fh.read(8), "little")
            if 8 + n > size:
                raise CorruptCheckpoint(f"{path}: header length {n} runs past the end of the file (size {size} bytes)")
            if n > _MAX_HEADER_BYTES:
                raise CorruptCheckpoint(f"{path}: header length {n} exceeds the format's limit of {_MAX_HEADER_BYTES}")
            raw = fh.read(n)
    if len(raw) != n:
        raise CorruptCheckpoint(f"{path}: file shrank while reading its header")
    # Any parser failure (a 5,000-digit number, 100,000 nested brackets, bad UTF-8) names the file.
    header = loads_json(raw, path, "header", object_pairs_hook=_no_duplicate_keys(path))

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CorruptCheckpoint(f"{path}: __metadata__ must be an object mapping strings to strings")

    if len(header) > MAX_TENSORS:
        raise CorruptCheckpoint(f"{path}: header declares {len(header):,} tensors, above the safety limit of "
                                f"{MAX_TENSORS:,} (MAX_TENSORS, modellineage.reading.tensors)")
    data_start = 8 + n
    infos = {name: _parse_entry(path, name, header[name], data_start, size) for name in sorted(header)}

    # Non-empty tensors must not share bytes.
    ranges = sorted((i for i in infos.values() if i.nbytes), key=lambda i: (i.begin, i.end))
    for prev, cur in zip(ranges, ranges[1:]):
        if cur.begin < prev.end:
            raise CorruptCheckpoint(
                f"{path}: tensors {quote(prev.name)} and {quote(cur.name)} overlap "
                f"(bytes {prev.begin}-{prev.end} and {cur.begin}-{cur.end})"
            )
    return SafetensorsHeader(path=path, size=size, header_bytes=n, tensors=infos, metadata=dict(metadata))


def _decode(info: TensorInfo, raw: bytes | bytearray | memoryview, shape: tuple[int, int]) -> np.ndarray:
    """Decode raw little-endian bytes of ``info``'s dtype into a fresh float64 array of ``shape``."""
    dt = info.dtype
    if dt == "F64":
        out = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    elif dt == "F32":
        with np.errstate(invalid="ignore"):
            out = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif dt == "F16":
        with np.errstate(invalid="ignore"):
            out = np.frombuffer(raw, dtype="<f2").astype(np.float64)
    elif dt == "BF16":
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        bits <<= 16
        with np.errstate(invalid="ignore"):  # signalling NaNs become quiet NaNs
            out = bits.view(np.float32).astype(np.float64)
    elif dt == "F8_E4M3":
        out = F8_E4M3_TABLE[np.frombuffer(raw, dtype=np.uint8)]
    elif dt == "F8_E5M2":
        out = F8_E5M2_TABLE[np.frombuffer(raw, dtype=np.uint8)]
    else:
        raise _not_decodable(info)
    return out.reshape(shape)


#: Dtypes :func:`decode_exact` decodes without a float64 copy (every value exact in float32 / float64).
EXACT_DTYPES: frozenset[str] = frozenset({"F64", "F32", "F16", "BF16"})


def decode_exact(dtype: str, raw: bytes | bytearray | memoryview, shape: tuple[int, int], *,
                 scratch: np.ndarray | None = None) -> np.ndarray:
    """Raw little-endian bytes of a float tensor as an array holding exactly the stored values, in the
    narrowest numpy float that does: float32 for F32, F16 and BF16, float64 for F64.

    The fast path of the streaming readers: half the memory traffic of a float64 decode, and the
    consumer widens to float64 block by block inside its own arithmetic (:mod:`modellineage.weights.metrics`).
    F32 and F64 are views of ``raw`` (valid while ``raw`` is); BF16 is written into ``scratch`` (a
    uint32 array of at least the element count) when given.

    Args:
        dtype: one of :data:`EXACT_DTYPES`.
        raw: exactly ``rows * cols`` elements of bytes.
        shape: ``(rows, cols)`` of the result.
        scratch: optional reusable uint32 buffer for BF16.

    Raises:
        ValueError: ``dtype`` is not in :data:`EXACT_DTYPES`.
    """
    if dtype == "F32":
        out = np.frombuffer(raw, dtype="<f4")
    elif dtype == "F64":
        out = np.frombuffer(raw, dtype="<f8")
    elif dtype == "F16":
        with np.errstate(invalid="ignore"):  # signalling NaNs become quiet NaNs
            out = np.frombuffer(raw, dtype="<f2").astype(np.float32)
    elif dtype == "BF16":
        bits = np.frombuffer(raw, dtype="<u2")
        wide = np.empty(bits.size, dtype=np.uint32) if scratch is None or scratch.size < bits.size \
            else scratch[:bits.size]
        np.copyto(wide, bits)
        wide <<= 16
        out = wide.view(np.float32)
    else:
        raise ValueError(f"decode_exact decodes {', '.join(sorted(EXACT_DTYPES))}, not {dtype}")
    return out.reshape(shape)


def _infer_block(n: int, s: int) -> int:
    """Block length along an axis of ``n`` elements split into ``s`` scale blocks.

    Any ``b`` with ``ceil(n / b) == s`` tiles; when ``n`` is not a multiple of the block
    several do (300 rows in 3 blocks: 100..149). Quantisers use power-of-two blocks
    (DeepSeek-V3: 128), so the power of two in that range wins (there is at most one
    for ``s >= 2``); otherwise ``ceil(n / s)``.
    """
    if n == 0 or s <= 1:
        return max(n, 1)
    lo, hi = -(-n // s), -(-n // (s - 1)) - 1
    b = 1 << (lo - 1).bit_length()  # smallest power of two >= lo
    return b if b <= hi else lo


def _not_decodable(info: TensorInfo) -> UnsupportedFormat:
    return UnsupportedFormat(
        f"{info.file}: tensor {info.name!r} has dtype {info.dtype}, which is listed and hashed but not decoded "
        f"as numbers (decodable: {', '.join(sorted(FLOAT_DTYPES))})"
    )


class MappedRows:
    """Rows of one tensor mapped read-only from its file (:meth:`TensorStore.map_raw_row_range`).

    ``data`` is a read-only uint8 array of exactly the rows' stored bytes. :meth:`close` unmaps them;
    views of ``data`` still alive at that moment keep the mapping until the last of them is gone
    (``mmap`` refuses to unmap exported memory, so no view ever outlives its pages).
    """

    def __init__(self, mapped: mmap.mmap, skip: int, length: int) -> None:
        self._map = mapped
        self.data = np.frombuffer(mapped, dtype=np.uint8, count=length, offset=skip)

    def close(self) -> None:
        """Unmap the rows (views of :attr:`data` are invalid afterwards, unless they keep the mapping)."""
        self.data = None
        mapped, self._map = self._map, None
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a view is still alive: the mapping goes with its last view
                pass

    def __enter__(self) -> MappedRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorStore:
    """Tensors of one model spread over one or more shards; only headers are read on open.

    Data is read on demand with ``os.pread`` into bounded buffers (or one bounded mapped window per
    streamed reader, :meth:`map_raw_row_range`), so memory does not grow with model size. File handles open lazily; call :meth:`close` or use the
    store as a context manager.

    Args:
        files: the ``.safetensors`` shards of one model.
        scale_block: ``(rows, cols)`` of the F8 scale blocks, e.g. a config's
            ``quantization_config.weight_block_size``; ``None`` infers it per tensor
            (see :meth:`scale_for`).

    Raises:
        SourceNotFound, CorruptCheckpoint, UnsupportedFormat: as :func:`read_header`;
        CorruptCheckpoint also when two shards hold a tensor of the same name.
    """

    def __init__(
        self, files: Sequence[str | os.PathLike[str]], *, scale_block: tuple[int, int] | None = None
    ) -> None:
        if scale_block is not None and (len(scale_block) != 2 or min(scale_block) < 1):
            raise ValueError(f"scale_block must be two positive ints, got {scale_block!r}")
        self._scale_block = None if scale_block is None else (int(scale_block[0]), int(scale_block[1]))
        paths = tuple(Path(f) for f in files)
        if not paths:
            raise ValueError("TensorStore needs at least one safetensors file")
        headers = []
        index: dict[str, TensorInfo] = {}
        for path in paths:
            header = read_header(path)
            headers.append(header)
            for name, info in header.tensors.items():
                if name in index:
                    raise CorruptCheckpoint(
                        f"tensor {quote(name)} appears in two shards: {index[name].file} and {header.path}"
                    )
                index[name] = info
            if len(index) > MAX_TENSORS:
                raise CorruptCheckpoint(f"{path}: the shards up to this one hold {len(index):,} tensors, above "
                                        f"the safety limit of {MAX_TENSORS:,} (MAX_TENSORS, modellineage.reading.tensors)")
        headers = tuple(headers)
        self._files = paths
        self._headers = headers
        self._index = dict(sorted(index.items()))
        self._fds: dict[Path, int] = {}
        # readers may run on several threads (compare_weights): opening files and counting bytes are locked
        self._lock = threading.Lock()
        self._local = threading.local()
        #: Bytes read from the files by every read of this store so far (each ``pread`` counted as it
        #: happens, headers excluded): what a measurement really read, not what it planned to.
        self.bytes_read = 0

    # ---- listing -------------------------------------------------------------------------

    @property
    def files(self) -> tuple[Path, ...]:
        return self._files

    @property
    def headers(self) -> tuple[SafetensorsHeader, ...]:
        """One header per file, in the order of :attr:`files`."""
        return self._headers

    def names(self) -> list[str]:
        """All tensor names, sorted."""
        return list(self._index)

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` lives. Raises KeyError naming the tensor when absent."""
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in {', '.join(map(str, self._files))}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self._index)

    def scale_for(self, name: str) -> str | None:
        """Name of the block-scale companion of an F8 tensor, if any.

        DeepSeek-V3 style: an F8 tensor ``X.weight`` with a tensor ``X.weight_scale_inv``
        of shape ``(ceil(rows/br), ceil(cols/bc))``; dequantised = fp8 value * scale_inv.
        The block size is the store's ``scale_block`` or, when not given, inferred: the
        power of two ``b`` with ``ceil(n / b)`` equal to the scale's extent if there is
        one, else ``ceil(n / extent)``.

        Args:
            name: a tensor name.

        Returns:
            The companion's name, or ``None`` when ``name`` is not F8 or has none.
        """
        info = self.info(name)
        companion = name + _SCALE_SUFFIX
        if info.dtype in _F8_DTYPES and companion in self._index:
            return companion
        return None

    # ---- file access ---------------------------------------------------------------------

    def close(self) -> None:
        """Close every file handle this store opened (it can be used again afterwards)."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    far = remote.lookup(path)  # a remote file: its range cache (read after RemoteFile.ensure)
                    fd = os.dup(far.fd) if far is not None else confine.open_fd(path)  # else the file vetted
                    self._fds[path] = fd
        return fd

    @property
    def thread_bytes_read(self) -> int:
        """Bytes read so far by this store's reads on the calling thread (one measurement's share when
        several run at once; :attr:`bytes_read` is the total)."""
        return getattr(self._local, "bytes_read", 0)

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n
        self._local.bytes_read = getattr(self._local, "bytes_read", 0) + n

    def _pread(self, info: TensorInfo, offset: int, length: int, into=None):
        """Read exactly ``length`` bytes at absolute ``offset`` of ``info.file``.

        Into a new ``bytearray``, or into the first ``length`` bytes of ``into`` (then a memoryview of them
        is returned: a reused buffer skips the allocation and zero-fill of a fresh one).
        """
        far = remote.lookup(info.file)
        if far is not None:  # fetched first when missing; a sequential read fetches ahead within the tensor
            out = far.pread(offset, length, into, limit=info.end)
            self._count(length)
            return out
        buf = bytearray(length) if into is None else into
        view = memoryview(buf)[:length]
        fd = self._fd(info.file)
        got = 0
        while got < length:
            n = os.preadv(fd, [view[got:]], offset + got)
            if n == 0:
                raise CorruptCheckpoint(
                    f"{info.file}: tensor {info.name!r} is truncated: wanted bytes {offset}-{offset + length}, "
                    f"file ends at {offset + got}"
                )
            got += n
        self._count(length)
        return buf if into is None else view

    def _pread_runs(self, info: TensorInfo, offsets: list[int], at: list[int], lengths: list[int],
                    buf) -> None:
        """Read runs (absolute file ``offsets``, ``lengths``) into ``buf`` at positions ``at``: one ``preadv``
        per run, counted once (the loop of a scattered read: no per-run Python beyond the call)."""
        far = remote.lookup(info.file)
        if far is not None:  # every run fetched at once (coalesced into large range requests), then read
            far.ensure([(o, o + n) for o, n in zip(offsets, lengths)])
            for offset, n in zip(offsets, lengths):
                far.note_read(offset, n)
        fd = self._fd(info.file)
        view = memoryview(buf)
        short = 0
        for offset, pos, length in zip(offsets, at, lengths):
            got = os.preadv(fd, [view[pos:pos + length]], offset)
            if got != length:  # the rest by _pread (which counts it), or its error naming where the file ends
                self._pread(info, offset + got, length - got, view[pos + got:pos + length])
                short += length - got
        self._count(sum(lengths) - short)

    # ---- raw bytes -----------------------------------------------------------------------

    def iter_bytes(self, name: str, chunk_bytes: int = 16 << 20) -> Iterator[bytes]:
        """Stream the raw bytes of a tensor.

        Args:
            name: the tensor.
            chunk_bytes: at most this many bytes per piece.

        Returns:
            An iterator of ``bytes`` pieces that together are the tensor's byte range.
        """
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        info = self.info(name)  # bad names fail here, not at the first next()
        return (
            bytes(self._pread(info, offset, min(chunk_bytes, info.end - offset)))
            for offset in range(info.begin, info.end, chunk_bytes)
        )

    # ---- decoded rows --------------------------------------------------------------------

    def _check_float(self, info: TensorInfo) -> None:
        if not info.is_float:
            raise _not_decodable(info)

    def _block_scale(self, info: TensorInfo) -> tuple[TensorInfo, int, int] | None:
        scale_name = self.scale_for(info.name)
        if scale_name is None:
            return None
        scale = self._index[scale_name]
        if not scale.is_float or scale.dtype in _F8_DTYPES:
            raise UnsupportedFormat(
                f"{scale.file}: scale tensor {scale_name!r} has dtype {scale.dtype}; expected F64/F32/F16/BF16"
            )
        if scale.rows == 0 or scale.cols == 0:
            raise IncompatibleShapes(f"{scale.file}: scale tensor {scale_name!r} is empty (shape {scale.shape})")
        if self._scale_block is not None:
            br, bc = self._scale_block
        else:
            br, bc = _infer_block(info.rows, scale.rows), _infer_block(info.cols, scale.cols)
        rows_ok = -(-info.rows // br) == scale.rows or info.rows == 0
        cols_ok = -(-info.cols // bc) == scale.cols or info.cols == 0
        if not (rows_ok and cols_ok):
            raise IncompatibleShapes(
                f"{info.file}: tensor {info.name!r} of shape {info.shape} does not tile into {br}x{bc} blocks "
                f"matching scale {scale_name!r} of shape {scale.shape} (in {scale.file})"
            )
        return scale, br, bc

    def _rows_raw(self, info: TensorInfo, start: int, stop: int) -> np.ndarray:
        row_bytes = info.cols * info.itemsize
        raw = self._pread(info, info.begin + start * row_bytes, (stop - start) * row_bytes)
        return _decode(info, raw, (stop - start, info.cols))

    def _apply_scale(self, info: TensorInfo, values: np.ndarray, rows: np.ndarray, scaling) -> None:
        """Multiply ``values`` (rows ``rows`` of ``info``) in place by their block scales."""
        scale, br, bc = scaling
        blocks = rows // br
        lo, hi = int(blocks.min()), int(blocks.max()) + 1
        s = self._rows_raw(scale, lo, hi)  # (hi-lo, scale.cols), small
        per_row = s[blocks - lo]  # (k, scale.cols)
        values *= np.repeat(per_row, bc, axis=1)[:, : info.cols]

    def _finish(self, info: TensorInfo, values: np.ndarray, rows: np.ndarray, dequantize: bool, check_finite: bool):
        if dequantize and values.size:
            scaling = self._block_scale(info)
            if scaling is not None:
                self._apply_scale(info, values, rows, scaling)
        if check_finite:
            bad = values.size - int(np.count_nonzero(np.isfinite(values)))
            if bad:
                first, last = int(rows.min()), int(rows.max())
                raise NonFiniteWeights(
                    f"{info.file}: tensor {info.name!r} has {bad} non-finite values (NaN/Inf) "
                    f"in rows {first}-{last}"
                )
        return values

    def read_row_range(
        self, name: str, start: int, stop: int, *, dequantize: bool = True, check_finite: bool = False
    ) -> np.ndarray:
        """Rows ``start:stop`` of a float tensor viewed as 2-D ``(rows, cols)``.

        Args:
            name: the tensor.
            start, stop: row range, ``0 <= start <= stop <= rows``.
            dequantize: multiply F8 values by their block scale when a companion exists.
            check_finite: raise NonFiniteWeights if a value is NaN or Inf.

        Returns:
            float64 array of shape ``(stop - start, cols)``.
        """
        info = self.info(name)
        self._check_float(info)
        if not (0 <= start <= stop <= info.rows):
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for tensor {name!r} with {info.rows} rows")
        values = self._rows_raw(info, start, stop)
        return self._finish(info, values, np.arange(start, stop), dequantize, check_finite)

    def read_raw_row_range(self, name: str, start: int, stop: int, *, into=None) -> memoryview:
        """The stored bytes of rows ``start:stop`` of a tensor's 2-D view, in one ``pread``.

        Args:
            name: the tensor.
            start, stop: row range, ``0 <= start <= stop <= rows``.
            into: a reusable writable buffer (``bytearray``, uint8 array); replaced when shorter than the range.

        Returns:
            A memoryview of exactly ``(stop - start) * cols * itemsize`` bytes (of ``into`` when it was
            long enough); decode it with :func:`decode_exact`.
        """
        info = self.info(name)
        if not (0 <= start <= stop <= info.rows):
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for tensor {name!r} with {info.rows} rows")
        row_bytes = info.cols * info.itemsize
        length = (stop - start) * row_bytes
        if into is None or memoryview(into).nbytes < length:
            into = bytearray(length)
        return self._pread(info, info.begin + start * row_bytes, length, into)

    def map_raw_row_range(self, name: str, start: int, stop: int) -> MappedRows | None:
        """The stored bytes of rows ``start:stop`` of a tensor's 2-D view, mapped read-only (no copy).

        The fast path of a streamed comparison: where the page cache holds the rows, they are read in
        place instead of copied by ``pread``. The caller reads every byte (they are counted as read
        here) and closes the window before mapping the next, so RSS holds one window, never the file.
        The mapping is populated at once (``MAP_POPULATE``: one call, no page fault per 4 KiB).

        Returns:
            A :class:`MappedRows`, or None where rows cannot be mapped: a remote file (read through its
            range cache), a store whose rows are not stored in their tensor's order (GGUF's permuted
            q/k rows), or a platform without POSIX ``mmap``. Then read with :meth:`read_raw_row_range`.

        Raises:
            CorruptCheckpoint: the file no longer holds the rows (truncated since its header was read).
        """
        info = self.info(name)
        if not (0 <= start <= stop <= info.rows):
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for tensor {name!r} with {info.rows} rows")
        if (type(self).read_raw_row_range is not TensorStore.read_raw_row_range or not hasattr(mmap, "MAP_SHARED")
                or remote.lookup(info.file) is not None):
            return None
        row_bytes = info.cols * info.itemsize
        offset, length = info.begin + start * row_bytes, (stop - start) * row_bytes
        if length == 0:
            return None
        fd = self._fd(info.file)
        size = os.fstat(fd).st_size
        if offset + length > size:  # checked now: a mapped page past the end would kill the process (SIGBUS)
            raise CorruptCheckpoint(
                f"{info.file}: tensor {info.name!r} is truncated: wanted bytes {offset}-{offset + length}, "
                f"file ends at {size}"
            )
        skip = offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(fd, skip + length, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                           prot=mmap.PROT_READ, offset=offset - skip)
        self._count(length)
        return MappedRows(mapped, skip, length)

    def prefetch_rows(self, name: str, rows: Sequence[int] | np.ndarray) -> None:
        """Ask the kernel to start reading rows of a tensor in the background (``POSIX_FADV_WILLNEED``).

        Scattered small reads (signature rows, sampled rows) wait for the disk one at a time; announced
        ahead, they are fetched together. A hint only: nothing is read into this process, nothing is
        counted, and where the platform has no ``posix_fadvise`` it does nothing.
        """
        info = self.info(name)
        idx = np.unique(np.asarray(rows, dtype=np.int64).reshape(-1))
        if not idx.size or idx[0] < 0 or idx[-1] >= info.rows:
            return
        offsets, _, lengths = self._runs(info, idx)
        self._advise(info, offsets, lengths)

    @staticmethod
    def _runs(info: TensorInfo, uniq: np.ndarray) -> tuple[list[int], list[int], list[int]]:
        """Runs of consecutive rows among sorted unique ``uniq``: absolute file offsets, byte positions in a
        buffer of those rows, byte lengths."""
        row_bytes = info.cols * info.itemsize
        starts, counts = row_runs(uniq)
        return ((info.begin + uniq[starts] * row_bytes).tolist(), (starts * row_bytes).tolist(),
                (counts * row_bytes).tolist())

    def _advise(self, info: TensorInfo, offsets: list[int], lengths: list[int]) -> None:
        far = remote.lookup(info.file)
        if far is not None:  # a remote file: announced rows are fetched now, together
            far.ensure([(o, o + n) for o, n in zip(offsets, lengths)])
            return
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None:
            fd = self._fd(info.file)
            for offset, length in zip(offsets, lengths):
                advise(fd, offset, length, os.POSIX_FADV_WILLNEED)

    def read_rows(
        self,
        name: str,
        rows: Sequence[int] | np.ndarray,
        *,
        dequantize: bool = True,
        check_finite: bool = False,
    ) -> np.ndarray:
        """Selected rows of a float tensor, reading only those rows from disk.

        Args:
            name: the tensor.
            rows: row indices in any order, repeats allowed.
            dequantize: multiply F8 values by their block scale when a companion exists.
            check_finite: raise NonFiniteWeights if a value is NaN or Inf.

        Returns:
            float64 array of shape ``(len(rows), cols)``, row ``i`` being tensor row ``rows[i]``.
        """
        info = self.info(name)
        self._check_float(info)
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= info.rows):
            raise IndexError(f"{info.file}: row indices out of range for tensor {name!r} with {info.rows} rows")
        if idx.size == 0:
            return np.empty((0, info.cols), dtype=np.float64)
        ascending = idx.size == 1 or bool(np.all(idx[1:] > idx[:-1]))  # sorted samples: no unique, no gather
        uniq, inverse = (idx, None) if ascending else np.unique(idx, return_inverse=True)
        # Coalesce consecutive rows into runs, one pread each, all into one buffer decoded at once.
        offsets, at, lengths = self._runs(info, uniq)
        if len(offsets) > 1:  # scattered runs: announced together, fetched together (and no readahead around them)
            self._advise(info, offsets, lengths)
        raw = np.empty(uniq.size * info.cols * info.itemsize, dtype=np.uint8)  # every byte is read into
        self._pread_runs(info, offsets, at, lengths, raw)
        decoded = _decode(info, raw, (uniq.size, info.cols))
        self._finish(info, decoded, uniq, dequantize, check_finite)
        return decoded if inverse is None else decoded[inverse.reshape(-1)]

    def iter_rows(
        self,
        name: str,
        *,
        max_chunk_bytes: int = 32 << 20,
        dequantize: bool = True,
        check_finite: bool = False,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Stream a float tensor as blocks of rows of its 2-D view ``(rows, cols)``.

        0-D and 1-D tensors are one row.

        Args:
            name: the tensor.
            max_chunk_bytes: each float64 block holds at most this many bytes (but at least one row).
            dequantize: multiply F8 values by their block scale when a companion exists.
            check_finite: raise NonFiniteWeights (file, tensor, count in the chunk) on NaN or Inf.

        Returns:
            An iterator of ``(first_row, block)``, ``block`` float64 of shape ``(k, cols)``.
        """
        info = self.info(name)
        self._check_float(info)
        if max_chunk_bytes < 1:
            raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
        if dequantize and info.rows and info.cols:
            self._block_scale(info)  # shape or dtype problems of the scale fail here, not mid-stream
        step = max(1, max_chunk_bytes // max(1, info.cols * 8))
        return (
            (start, self.read_row_range(name, start, min(info.rows, start + step), dequantize=dequantize,
                                        check_finite=check_finite))
            for start in range(0, info.rows, step)
        )
