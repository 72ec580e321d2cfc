"""Byte-exact fingerprints of files and of the tensors in them.

:func:`scan_file` is the one streaming core: one sequential pass over a file through one reusable
buffer of ``chunk_bytes``; every byte feeds the file's SHA-256, each byte inside a tensor's range
also feeds that tensor's :class:`TensorFeeder` (SHA-256, constant check, non-finite count; partial
elements are carried across chunk boundaries). Each format only says which feeders a file has:
:func:`scan_safetensors` element-wise feeders, GGUF (``gguf_weights.scan_gguf``) feeders that know
GGML blocks. The same feeders digest a few sampled rows of a tensor under a read budget
(:func:`modellineage.reading.model.DigestCache`: ``TensorDigest.rows``). Memory stays flat whatever
the file size. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modellineage.errors import CorruptCheckpoint, SourceNotFound
from modellineage.reading import confine, remote
from modellineage.reading.tensors import TensorInfo, read_header

__all__ = ["FileDigest", "TensorDigest", "TensorFeeder", "feeder_for", "scan_file", "scan_safetensors", "sha256_file",
           "header_sha256", "digest_cached_tensors"]

Progress = Callable[[int], object]

# Unsigned view per item size, used to compare byte patterns and test exponent bits.
_UINT = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}

# dtype -> (mask, value): an element is NaN/Inf when (bits & mask) == value.
_NONFINITE_BITS: dict[str, tuple[int, int]] = {
    "F64": (0x7FF0_0000_0000_0000, 0x7FF0_0000_0000_0000),
    "F32": (0x7F80_0000, 0x7F80_0000),
    "F16": (0x7C00, 0x7C00),
    "BF16": (0x7F80, 0x7F80),
    "F8_E4M3": (0x7F, 0x7F),
    "F8_E5M2": (0x7C, 0x7C),
    "F8_E8M0": (0xFF, 0xFF),
}


@dataclass(frozen=True)
class TensorDigest:
    """SHA-256 and simple byte facts of one tensor's byte range.

    ``constant``: every element has the identical byte pattern (empty tensors count as constant).
    ``nonfinite``: NaN/Inf element count read from bit patterns (0 for non-float dtypes).
    ``rows``: None for a digest of the whole tensor; under a read budget, the rows (of the tensor's 2-D
    view, ascending) whose bytes alone were digested — ``sha256``, ``constant`` and ``nonfinite`` then
    describe those rows only, and ``nbytes`` is still the whole tensor's size.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    sha256: str
    constant: bool
    nonfinite: int
    rows: tuple[int, ...] | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if self.rows is None:  # whole-tensor digests keep the record they always had
            del d["rows"]
        else:
            d["rows"] = list(self.rows)
        return d


@dataclass(frozen=True)
class FileDigest:
    """SHA-256 of a whole file, plus one :class:`TensorDigest` per tensor for safetensors files."""

    path: str
    size: int
    sha256: str
    tensors: tuple[TensorDigest, ...] = ()

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "tensors": [t.as_dict() for t in self.tensors],
        }


class TensorFeeder:
    """Running digest of one tensor fed with consecutive byte pieces (its range, or its sampled rows).

    Subclasses say how a format's bytes are checked (:meth:`feed`); :meth:`digest` gives the record.
    ``info`` carries the byte range :func:`scan_file` routes to it (``info.begin``, ``info.end``).
    """

    info: TensorInfo

    def feed(self, piece: memoryview) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def digest(self, rows: tuple[int, ...] | None = None) -> TensorDigest:  # pragma: no cover - interface
        raise NotImplementedError


class _TensorState(TensorFeeder):
    """Element-wise running digest (safetensors dtypes): SHA-256, constant check, non-finite bit patterns."""

    __slots__ = ("info", "hasher", "itemsize", "uint", "first", "constant", "nonfinite", "carry", "bits")

    def __init__(self, info: TensorInfo) -> None:
        self.info = info
        self.hasher = hashlib.sha256()
        self.itemsize = info.itemsize
        self.uint = _UINT[info.itemsize]
        self.first: int | None = None
        self.constant = True
        self.nonfinite = 0
        self.carry = b""
        self.bits = _NONFINITE_BITS.get(info.dtype)

    def _elements(self, data: memoryview) -> None:
        """Account for whole elements (``len(data)`` is a multiple of the item size)."""
        if not len(data):
            return
        arr = np.frombuffer(data, dtype=self.uint)
        if self.first is None:
            self.first = int(arr[0])
        if self.constant and not np.all(arr == self.first):
            self.constant = False
        if self.bits is not None:
            mask, value = self.bits
            self.nonfinite += int(np.count_nonzero((arr & self.uint.type(mask)) == self.uint.type(value)))

    def feed(self, piece: memoryview) -> None:
        self.hasher.update(piece)
        size = self.itemsize
        if self.carry:
            need = size - len(self.carry)
            head = self.carry + bytes(piece[:need])
            piece = piece[need:]
            if len(head) < size:
                self.carry = head
                return
            self.carry = b""
            self._elements(memoryview(head))
        whole = len(piece) - len(piece) % size
        self._elements(piece[:whole])
        if whole < len(piece):
            self.carry = bytes(piece[whole:])

    def digest(self, rows: tuple[int, ...] | None = None) -> TensorDigest:
        if self.carry:  # pragma: no cover - impossible: read_header checks nbytes == numel * itemsize
            raise CorruptCheckpoint(f"{self.info.file}: tensor {self.info.name!r} ends inside an element")
        i = self.info
        return TensorDigest(i.name, i.dtype, i.shape, i.nbytes, self.hasher.hexdigest(), self.constant, self.nonfinite,
                            rows)


def _check_file(path: Path) -> None:
    if remote.lookup(path) is not None:  # a remote file: read through its range cache
        return
    if not path.exists():
        raise SourceNotFound(f"{path}: no such file")
    if not path.is_file():
        raise SourceNotFound(f"{path}: not a regular file")


def _stream(path: Path, expected_size: int | None, chunk_bytes: int, sink: Callable[[int, memoryview], None]) -> int:
    """Read ``path`` front to back through one reused buffer, calling ``sink(offset, chunk)``."""
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    buf = bytearray(chunk_bytes)
    view = memoryview(buf)
    offset = 0
    far = remote.lookup(path)
    with (far.stream() if far is not None else confine.open_file(path)) as fh:
        while True:
            n = fh.readinto(view)
            if not n:
                break
            sink(offset, view[:n])
            offset += n
    if expected_size is not None and offset != expected_size:
        raise CorruptCheckpoint(f"{path}: file changed size while being read ({expected_size} -> {offset} bytes)")
    return offset


def feeder_for(info: TensorInfo) -> TensorFeeder:
    """The running digest of one tensor in its format: a GGUF tensor's own (GGML blocks, dequantised
    non-finite counts) when its info provides one, else element-wise (:class:`_TensorState`)."""
    make = getattr(info, "feeder", None)
    return make() if make is not None else _TensorState(info)


def scan_file(path: str | os.PathLike[str], feeders: Sequence[TensorFeeder], *, expected_size: int | None = None,
              chunk_bytes: int = 16 << 20, progress: Progress | None = None) -> tuple[int, str]:
    """The one streaming core: one sequential pass over ``path`` that feeds every byte to the file's
    SHA-256 and each byte inside a feeder's ``[info.begin, info.end)`` to that feeder.

    Every format hashes through it (:func:`scan_safetensors`; GGUF's ``scan_gguf`` with its own
    feeders); ranges must not overlap (the header readers check it).

    Returns:
        The bytes read and the file's SHA-256 (hex).
    """
    path = Path(path)
    _check_file(path)
    queue = sorted((f for f in feeders if f.info.end > f.info.begin), key=lambda f: f.info.begin)
    hasher = hashlib.sha256()
    pos = 0  # index of the first feeder not yet fully fed

    def sink(offset: int, chunk: memoryview) -> None:
        nonlocal pos
        hasher.update(chunk)
        end = offset + len(chunk)
        i = pos
        while i < len(queue) and queue[i].info.begin < end:
            info = queue[i].info
            lo, hi = max(info.begin, offset), min(info.end, end)
            if lo < hi:
                queue[i].feed(chunk[lo - offset : hi - offset])
            if info.end <= end:
                i += 1
                pos = i
            else:
                break
        if progress is not None:
            progress(len(chunk))

    size = _stream(path, expected_size, chunk_bytes, sink)
    return size, hasher.hexdigest()


def sha256_file(path: str | os.PathLike[str], *, chunk_bytes: int = 16 << 20, progress: Progress | None = None) -> FileDigest:
    """SHA-256 of any file, streamed.

    Args:
        path: the file.
        chunk_bytes: read buffer size.
        progress: optional callable receiving the number of bytes just processed.

    Returns:
        A :class:`FileDigest` with no tensors.
    """
    size, sha = scan_file(path, (), chunk_bytes=chunk_bytes, progress=progress)
    return FileDigest(str(Path(path)), size, sha, ())


def scan_safetensors(
    path: str | os.PathLike[str], *, chunk_bytes: int = 16 << 20, progress: Progress | None = None
) -> FileDigest:
    """SHA-256 of a safetensors file and of each of its tensors, in one sequential pass.

    Args:
        path: the ``.safetensors`` file.
        chunk_bytes: read buffer size (any positive size; smaller than an element works).
        progress: optional callable receiving the number of bytes just processed.

    Returns:
        A :class:`FileDigest` whose ``tensors`` follow the header's name order.

    Raises:
        SourceNotFound, CorruptCheckpoint, UnsupportedFormat: as :func:`modellineage.reading.tensors.read_header`.
    """
    path = Path(path)
    _check_file(path)
    header = read_header(path)
    states = [_TensorState(info) for info in header.tensors.values()]
    _, sha = scan_file(path, states, expected_size=header.size, chunk_bytes=chunk_bytes, progress=progress)
    return FileDigest(str(path), header.size, sha, tuple(s.digest() for s in states))


def header_sha256(path: str | os.PathLike[str], header_bytes: int) -> str:
    """SHA-256 of a file's first ``header_bytes`` bytes (its header: the identity a budgeted run records
    beside the size when it does not read the whole file)."""
    path = Path(path)
    _check_file(path)
    far = remote.lookup(path)
    hasher = hashlib.sha256()
    left = header_bytes
    with (far.stream() if far is not None else confine.open_file(path)) as fh:
        while left > 0:
            piece = fh.read(min(left, 1 << 20))
            if not piece:
                raise CorruptCheckpoint(f"{path}: ends inside its header ({header_bytes} bytes declared)")
            hasher.update(piece)
            left -= len(piece)
    return hasher.hexdigest()


def digest_cached_tensors(path: str | os.PathLike[str], *, chunk_bytes: int = 16 << 20, fetch_below: int = 0
                          ) -> tuple[tuple[TensorDigest, ...], tuple[str, ...]]:
    """Per-tensor digests of the tensors of a remote file whose bytes are already in its range cache.

    For an audit that reads only part of a remote model (``--sample``): exact-reuse detection then works on
    the tensors actually read and names the others, rather than fetching every byte to hash them.

    Args:
        fetch_below: tensors of at most this many bytes are fetched first when missing (norm gains, biases,
            routers: a few MiB of a 100B model, and copied norm gains are reuse evidence), where downloads
            are allowed.

    Returns:
        The digests (header order) and the names of the tensors that could not be checked (not fetched).
    """
    path = Path(path)
    far = remote.lookup(path)
    if far is None:  # a local file: every tensor, in one pass
        return scan_safetensors(path, chunk_bytes=chunk_bytes).tensors, ()
    header = read_header(path)
    small = [(i.begin, i.end) for i in header.tensors.values() if 0 < i.nbytes <= fetch_below]
    if small and far.allow_network:
        far.ensure(small)  # coalesced: adjacent small tensors are one request
    digests, unchecked = [], []
    for name, info in header.tensors.items():
        if info.nbytes and not far.is_cached(info.begin, info.end):
            unchecked.append(name)
            continue
        state = _TensorState(info)
        for offset in range(info.begin, info.end, chunk_bytes):
            state.feed(memoryview(far.read_cached(offset, min(chunk_bytes, info.end - offset))))
        digests.append(state.digest())
    return tuple(digests), tuple(unchecked)
