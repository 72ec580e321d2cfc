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

from modellineage.reading.tensors import TensorInfo, TensorStore, row_runs
from modellineage.weights.metrics import scratch

__all__ = ["SharedReads", "can_share"]


def can_share(store) -> bool:
    """Whether :class:`SharedReads` can stand in for ``store``: a plain safetensors store (local or remote).
    Stores that read through their own primitives (GGUF dequantisation) are read directly."""
    return type(store) is TensorStore


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique rows -> (first row, row count) of each run of consecutive rows."""
    starts, counts = row_runs(rows)
    return rows[starts], counts


def _expand(firsts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Runs (first row, row count) -> every row, in order."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    shift = firsts - np.r_[0, np.cumsum(counts)[:-1]]
    return np.repeat(shift, counts) + np.arange(total, dtype=np.int64)


class _Kept:
    """The fetched bytes of one tensor: a buffer over its byte range and which of its rows (of the 2-D view
    the readers read by) are in it. Reads are row-aligned; a request that is not is widened to whole rows."""

    __slots__ = ("buf", "row_bytes", "present", "mapped")

    def __init__(self, buf: np.ndarray, row_bytes: int, mapped=None) -> None:
        self.buf = buf
        self.row_bytes = row_bytes
        self.present = np.zeros(buf.size // row_bytes, dtype=bool)
        self.mapped = mapped  # the store's mapped window of the whole tensor (every row present), or None
        if mapped is not None:
            self.present[:] = True

    def missing(self, rows: np.ndarray) -> np.ndarray:
        return rows[~self.present[rows]]

    def rows_of(self, lo: int, hi: int) -> np.ndarray:
        """Rows covering relative bytes ``[lo, hi)``."""
        rb = self.row_bytes
        return np.arange(lo // rb, -(-hi // rb), dtype=np.int64)


class _Window:
    """A window of a mapping :class:`SharedReads` keeps (a reader's ``close`` leaves the mapping to the view)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def close(self) -> None:
        self.data = None

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SharedReads(TensorStore):
    """A view of ``store`` whose reads fetch each byte of a tensor from the file once and serve
    repeats from memory (see the module docstring).

    Args:
        store: the plain :class:`TensorStore` to read through (:func:`can_share`).
        max_bytes: bytes of fetched tensors this view may hold; a tensor whose byte range does not fit
            beside those already held is read through to ``store`` on every request.

    Not thread-safe: one view per thread (the comparisons sharing it run one after another).
    """

    def __init__(self, store: TensorStore, max_bytes: int) -> None:  # not TensorStore.__init__: opens no file
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
            if size and info.rows and size % info.rows == 0 and self._held + size <= self.max_bytes:
                # the first tensor (usually the only one) in this thread's reused buffer: no page faults and
                # zero-fill per tensor; a second (an F8 tensor's scale) in a fresh one, committed where written
                buf = scratch("sharing.kept", size)[:size] if not self._kept else np.empty(size, dtype=np.uint8)
                self._kept[info.name] = _Kept(buf, size // info.rows)
                self._held += size
            else:
                self._kept[info.name] = None
                self.unshared.append(info.name)
        return self._kept[info.name]

    def _fetch(self, info: TensorInfo, kept: _Kept, rows: np.ndarray) -> None:
        """Make ``rows`` (sorted, unique) present in ``kept``, fetching only the missing ones, one run per ``pread``."""
        miss = kept.missing(rows)
        if not miss.size:
            return
        rb = kept.row_bytes
        firsts, counts = _runs(miss)
        if firsts.size == 1:
            a, b = int(firsts[0]) * rb, int(firsts[0] + counts[0]) * rb
            self._store._pread(info, info.begin + a, b - a, kept.buf[a:b])
        else:  # scattered rows: the store's run reader (announced and, remote, fetched together)
            self._store._pread_runs(info, (info.begin + firsts * rb).tolist(), (firsts * rb).tolist(),
                                    (counts * rb).tolist(), kept.buf)
        kept.present[miss] = True
        self.bytes_fetched += int(miss.size) * rb

    def _pread(self, info: TensorInfo, offset: int, length: int, into=None):
        kept = self._tensor(info)
        if kept is None:
            out = self._store._pread(info, offset, length, into)
            self.bytes_fetched += length
            self.bytes_unshared += length
        else:
            lo = offset - info.begin
            self._fetch(info, kept, kept.rows_of(lo, lo + length))
            # no copy into ``into``: the store's readers use the bytes returned (read_raw_row_range, _rows_raw,
            # iter_bytes), and read-only, so a reader that would write into them fails instead of changing
            # what the next reference reads
            out = memoryview(kept.buf[lo:lo + length]).toreadonly()
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
        elif offsets:
            rb = kept.row_bytes
            offs = np.asarray(offsets, dtype=np.int64) - info.begin
            lens = np.asarray(lengths, dtype=np.int64)
            view = np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)
            pos = np.asarray(at, dtype=np.int64)
            if np.all(offs % rb == 0) and np.all(lens % rb == 0) and np.array_equal(
                    pos, pos[0] + np.r_[0, np.cumsum(lens)[:-1]]):  # whole rows into one stretch: vectorised
                rows = _expand(offs // rb, lens // rb)
                self._fetch(info, kept, np.unique(rows))
                total = int(lens.sum())
                view[pos[0]:pos[0] + total].reshape(-1, rb)[:] = kept.buf.reshape(-1, rb)[rows]
            else:
                for o, p_, n in zip(offs.tolist(), pos.tolist(), lens.tolist()):
                    self._fetch(info, kept, kept.rows_of(o, o + n))
                    view[p_:p_ + n] = kept.buf[o:o + n]
        self._count(sum(lengths))

    def _advise(self, info: TensorInfo, offsets: list[int], lengths: list[int]) -> None:
        kept = self._tensor(info)
        if kept is None:
            self._store._advise(info, offsets, lengths)
            return
        rb = kept.row_bytes
        offs = np.asarray(offsets, dtype=np.int64) - info.begin
        lens = np.asarray(lengths, dtype=np.int64)
        if np.all(offs % rb == 0) and np.all(lens % rb == 0):
            rows = np.unique(_expand(offs // rb, lens // rb))
        else:
            rows = np.unique(np.concatenate([kept.rows_of(o, o + n) for o, n in zip(offs.tolist(), lens.tolist())]
                                            or [np.zeros(0, dtype=np.int64)]))
        firsts, counts = _runs(kept.missing(rows))
        if firsts.size:
            self._store._advise(info, (info.begin + firsts * rb).tolist(), (counts * rb).tolist())

    def map_raw_row_range(self, name: str, start: int, stop: int):
        """Rows ``start:stop`` as a mapped window, where the store maps rows (its no-copy streaming path):
        the whole tensor is mapped once, on the first request, and every reader gets windows of that one
        mapping (closing a window unmaps nothing; :meth:`release` does). ``None`` — the store does not map,
        the tensor is already kept as fetched bytes, or does not fit — sends the reader to
        :meth:`read_raw_row_range`, which is shared the same way."""
        mapper = getattr(self._store, "map_raw_row_range", None)
        info = self.info(name)
        if not (0 <= start <= stop <= info.rows):
            raise IndexError(f"{info.file}: rows {start}:{stop} out of range for tensor {name!r} with {info.rows} rows")
        kept = self._kept.get(name)
        if kept is None and name not in self._kept and mapper is not None:
            size = info.end - info.begin
            if size and info.rows and size % info.rows == 0 and self._held + size <= self.max_bytes:
                whole = mapper(name, 0, info.rows)
                if whole is not None:
                    kept = self._kept[name] = _Kept(whole.data, size // info.rows, whole)
                    self._held += size
                    self.bytes_fetched += size
        if kept is None or kept.mapped is None:
            return None
        rb = kept.row_bytes
        self._count((stop - start) * rb)
        return _Window(kept.buf[start * rb:stop * rb])

    def _fd(self, path):  # pragma: no cover - every read goes through the store above
        raise RuntimeError("SharedReads opens no files")

    def release(self) -> None:
        """Drop every kept byte (the group of comparisons sharing them is done; the thread's buffer is reused)."""
        for kept in self._kept.values():
            if kept is not None and kept.mapped is not None:
                kept.buf = None
                kept.mapped.close()
        self._kept.clear()
        self._held = 0
