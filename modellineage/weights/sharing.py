"""One read of a target tensor for every reference it is compared with.

Comparing a target with several references reads each target tensor once per reference unless the
reads are shared. :class:`SharedReads` is a view of a target :class:`~modellineage.reading.tensors.TensorStore`
that keeps the bytes its first reader fetched, so the next readers of the same tensor (the same
canonical tensor compared with the next reference, :func:`modellineage.weights.similarity.compare_weights_many`)
get them without touching the file. It changes *where* bytes come from, never what is decoded: every
decoding path is the store's own (:class:`SharedReads` only replaces the two primitives every read goes
through, ``_pread`` and ``_pread_runs``), so the figures are the ones a plain store gives.

Memory is bounded: a view holds at most ``max_bytes`` of fetched bytes (one canonical tensor's group
of comparisons at a time, then :meth:`SharedReads.release`); a tensor that does not fit is read through
to the store each time it is asked for and counted in :attr:`SharedReads.bytes_unshared`, so the
evidence can say which bytes were read more than once.

Counting follows the store's convention: the view's own ``bytes_read`` / ``thread_bytes_read`` count
every byte a reader *consumed* (what a one-reference-at-a-time run reads, so per-pair records are
unchanged), the underlying store's counters only what was fetched from the file.
"""

from __future__ import annotations

import threading

import numpy as np

from modellineage.reading.tensors import TensorInfo, TensorStore

__all__ = ["SharedReads", "can_share"]


def can_share(store) -> bool:
    """Whether :class:`SharedReads` can stand in for ``store``: a plain safetensors store (local or remote).
    Stores that read through their own primitives (GGUF dequantisation) are read directly."""
    return type(store) is TensorStore


class _Kept:
    """The fetched bytes of one tensor: a buffer over its byte range and the sorted, disjoint
    ``[lo, hi)`` intervals (relative to the tensor's first byte) already in it."""

    __slots__ = ("buf", "have")

    def __init__(self, nbytes: int) -> None:
        self.buf = np.empty(nbytes, dtype=np.uint8)  # pages are committed only where bytes are written
        self.have: list[tuple[int, int]] = []

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Sub-intervals of ``[lo, hi)`` not yet fetched."""
        out, at = [], lo
        for a, b in self.have:
            if b <= at:
                continue
            if a >= hi:
                break
            if a > at:
                out.append((at, a))
            at = max(at, b)
            if at >= hi:
                break
        if at < hi:
            out.append((at, hi))
        return out

    def add(self, lo: int, hi: int) -> None:
        merged, placed = [], False
        for a, b in self.have:
            if b < lo or a > hi:
                if a > hi and not placed:
                    merged.append((lo, hi))
                    placed = True
                merged.append((a, b))
            else:
                lo, hi = min(a, lo), max(b, hi)
        if not placed:
            merged.append((lo, hi))
        self.have = sorted(merged)


class SharedReads(TensorStore):
    """A view of ``store`` whose reads fetch each byte of a tensor from the file once and serve
    repeats from memory (see the module docstring).

    Args:
        store: the plain :class:`TensorStore` to read through (:func:`can_share`).
        max_bytes: bytes of fetched tensors this view may hold; a tensor whose byte range does not fit
            beside those already held is read through to ``store`` on every request.

    Not thread-safe: one view per thread (the comparisons sharing it run one after another).
    """

    def __init__(self, store: TensorStore, max_bytes: int) -> None:  # noqa: D107 - no TensorStore.__init__: no files opened
        if not can_share(store):
            raise TypeError(f"SharedReads needs a plain TensorStore, got {type(store).__name__}")
        self._store = store
        self._files, self._headers, self._index = store._files, store._headers, store._index
        self._scale_block = store._scale_block
        self._fds: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self.bytes_read = 0
        self.max_bytes = max(0, int(max_bytes))
        self._kept: dict[str, _Kept | None] = {}  # None: did not fit, read through
        self._held = 0
        #: Bytes fetched from the file through this view (each byte of a kept tensor once).
        self.bytes_fetched = 0
        #: Of :attr:`bytes_fetched`, bytes of tensors read through because they did not fit (fetched again
        #: by every reader that asked for them).
        self.bytes_unshared = 0
        #: Tensors read through, by name.
        self.unshared: list[str] = []

    # ---- what the store's readers call -----------------------------------------------------------
    def _tensor(self, info: TensorInfo) -> _Kept | None:
        if info.name not in self._kept:
            size = info.end - info.begin
            if self._held + size <= self.max_bytes:
                self._kept[info.name] = _Kept(size)
                self._held += size
            else:
                self._kept[info.name] = None
                self.unshared.append(info.name)
        return self._kept[info.name]

    def _fetch(self, info: TensorInfo, kept: _Kept, lo: int, hi: int) -> None:
        """Make ``[lo, hi)`` (relative) present in ``kept``, fetching only what is missing."""
        for a, b in kept.missing(lo, hi):
            self._store._pread(info, info.begin + a, b - a, kept.buf[a:b])
            self.bytes_fetched += b - a
            kept.add(a, b)

    def _pread(self, info: TensorInfo, offset: int, length: int, into=None):
        kept = self._tensor(info)
        if kept is None:
            out = self._store._pread(info, offset, length, into)
            self.bytes_fetched += length
            self.bytes_unshared += length
        else:
            lo = offset - info.begin
            self._fetch(info, kept, lo, lo + length)
            # the store's contract: into ``into`` when given (readers may rely on it), else a new bytearray
            out = bytearray(length) if into is None else memoryview(into)[:length]
            np.frombuffer(memoryview(out).cast("B"), dtype=np.uint8)[:length] = kept.buf[lo:lo + length]
        self._count(length)
        return out

    def _pread_runs(self, info: TensorInfo, offsets: list[int], at: list[int], lengths: list[int], buf) -> None:
        kept = self._tensor(info)
        if kept is None:
            before = self._store.thread_bytes_read
            self._store._pread_runs(info, offsets, at, lengths, buf)
            got = self._store.thread_bytes_read - before
            self.bytes_fetched += got
            self.bytes_unshared += got
        else:
            view = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
            for offset, pos, length in zip(offsets, at, lengths):
                lo = offset - info.begin
                self._fetch(info, kept, lo, lo + length)
                view[pos:pos + length] = kept.buf[lo:lo + length]
        self._count(sum(lengths))

    def _advise(self, info: TensorInfo, offsets: list[int], lengths: list[int]) -> None:
        kept = self._tensor(info)
        if kept is None:
            self._store._advise(info, offsets, lengths)
            return
        todo = [(info.begin + a, b - a) for o, n in zip(offsets, lengths)
                for a, b in kept.missing(o - info.begin, o - info.begin + n)]
        if todo:
            self._store._advise(info, [o for o, _ in todo], [n for _, n in todo])

    def _fd(self, path):  # pragma: no cover - every read goes through the store above
        raise RuntimeError("SharedReads opens no files")

    def release(self) -> None:
        """Drop every kept byte (the group of comparisons sharing them is done)."""
        self._kept.clear()
        self._held = 0
