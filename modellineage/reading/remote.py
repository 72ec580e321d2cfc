"""Remote model sources: ``hf://org/name[@revision]`` and ``https://…`` read by HTTP range requests.

A remote source is resolved into a :class:`modellineage.reading.sources.ModelSource` like a local folder, so
every evidence family reads it unchanged:

- **small files** (``config.json``, the safetensors index, tokenizer files) are fetched whole (bounded by the
  reading layer's own size limits) into a local folder of the cache and read from there like any folder's;
- **safetensors files** are *not* downloaded: each is listed under a path inside that folder that is
  registered here (:func:`lookup`) with a :class:`RemoteFile`. The reading layer (safetensors headers,
  :class:`modellineage.reading.tensors.TensorStore`, :mod:`modellineage.reading.hashing`) asks it for byte
  ranges; only the ranges a measurement reads are fetched, coalesced into large requests, written into an
  on-disk range cache and read back from it.

Network rules (a remote server is as hostile as a model folder):

- nothing is fetched unless ``allow_download`` (``--allow-download``); without it a source whose listing
  and bytes are in the cache is audited from the cache alone, anything else is a clear error;
- every range response must be ``206`` with a ``Content-Range`` naming exactly the bytes asked for and the
  file's known total size, a matching ``Content-Length`` and (``https://`` sources) the same ``ETag`` as
  when the file was listed; a ``200`` to a range request (a server ignoring ``Range``) is refused rather
  than downloading the whole file; a connection dropped mid-range or a short body is retried from the
  first missing byte (:data:`RETRIES` times). A range is recorded as cached only when all its bytes have
  arrived, so a wrong byte count can never be read as tensor data;
- redirects are followed for ``https://`` sources only on the same host and scheme; ``hf://`` sources
  follow the hub's redirects to its storage hosts (that is how the hub serves LFS/Xet files) but send the
  hub token only to the hub's own host;
- a file larger than the reading layer's limits is refused before its body is read; every error names the URL.

Cache (``$HF_HOME/modellineage/``, next to the Hugging Face hub cache): ``sources/`` holds per source its
listing (``listing.json``) and small files; ``ranges/<key>/`` holds per safetensors file a sparse ``data``
file and ``ranges.json`` (the byte intervals present), keyed by the file's content identity (hub LFS
SHA-256, or URL + size + ETag). A second audit of the same source fetches nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import re
import stat
import threading
import time
from bisect import bisect_right
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import quote as url_quote
from urllib.parse import urljoin, urlsplit

from modellineage.errors import CorruptCheckpoint, LineageError, SourceNotFound

__all__ = ["RemoteError", "RemoteFile", "is_remote", "lookup", "cache_root", "resolve_remote", "network_stats",
           "SHA_HUB", "SHA_COMPUTED", "SHA_BLOB"]

#: Where a reported SHA-256 came from (evidence ``inputs[].sha256_source``).
SHA_HUB = "hub LFS metadata"
SHA_COMPUTED = "computed over the full file"
SHA_BLOB = "HF cache blob name"

#: Largest single range request. Big enough that a full read is a few requests per GiB, small enough that a
#: dropped connection loses little (the rest is resumed from the first missing byte anyway).
MAX_RANGE_BYTES = 256 << 20
#: Wanted ranges closer than this are fetched as one request (the gap is fetched too): a request costs a
#: round trip (~1 ms on a LAN, ~50 ms across the internet ≈ 5 MB at 100 MB/s), so merging gaps of up to
#: 128 KiB trades < 13% extra bytes on 1 MiB reads for far fewer requests.
COALESCE_GAP = 128 << 10
#: Sequential reads (a tensor streamed in chunks) fetch ahead up to this many bytes within the tensor.
READAHEAD_BYTES = 64 << 20
#: First bytes fetched of a safetensors file: its 8-byte length and, for most files, the whole header.
HEADER_PROBE_BYTES = 256 << 10
#: Attempts after a failure (dropped connection, short body, timeout, 5xx) for one range, with backoff.
RETRIES = 5
#: Most failed attempts per range in all, progress or not (a server trickling a few bytes per connection).
MAX_FAILURES = 4 * RETRIES
TIMEOUT_S = 30.0
MAX_REDIRECTS = 5
#: Largest small file (config, index, tokenizer) fetched whole: the reading layer's own JSON limit.
MAX_SMALL_FILE_BYTES = 64 << 20
_BODY_PIECE = 4 << 20  # received range bodies go to the cache file in pieces of this size

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHARD_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,250}\.safetensors$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class RemoteError(SourceNotFound):
    """A remote file could not be listed or read (network, server or protocol error); names the URL."""


def is_remote(spec: str) -> bool:
    """True for the source specs this module resolves: ``hf://…``, ``https://…`` and ``http://…``."""
    return spec.startswith(("hf://", "https://", "http://"))


def cache_root() -> Path:
    """``$HF_HOME/modellineage`` (``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface``, ``~/.cache/huggingface``)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(os.path.expanduser(home)) / "modellineage"


# ------------------------------------------------------------------------------------------ counters
@dataclass
class NetworkStats:
    """What this process sent over the network (all remote files together)."""

    connections: int = 0
    requests: int = 0
    bytes_received: int = 0
    retries: int = 0

    def as_dict(self) -> dict:
        return {"connections": self.connections, "requests": self.requests,
                "bytes_received": self.bytes_received, "retries": self.retries}


_STATS = NetworkStats()
_STATS_LOCK = threading.Lock()


def network_stats() -> NetworkStats:
    return _STATS


def _count(**kw: int) -> None:
    with _STATS_LOCK:
        for k, v in kw.items():
            setattr(_STATS, k, getattr(_STATS, k) + v)


# ------------------------------------------------------------------------------------------ HTTP
class _Http:
    """Minimal HTTP/1.1 client over :mod:`http.client`: one kept-alive connection per host and thread,
    redirects vetted, bodies bounded."""

    def __init__(self, *, any_host_redirects: bool = False, token: str | None = None,
                 token_host: str | None = None) -> None:
        self.any_host_redirects = any_host_redirects
        self.token, self.token_host = token, token_host
        self._local = threading.local()

    def _conn(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conns = self._local.__dict__.setdefault("conns", {})
        conn = conns.get((scheme, netloc))
        if conn is None:
            cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
            conn = cls(netloc, timeout=TIMEOUT_S)
            conns[(scheme, netloc)] = conn
            _count(connections=1)
        return conn

    def drop(self, url: str) -> None:
        parts = urlsplit(url)
        conn = self._local.__dict__.setdefault("conns", {}).pop((parts.scheme, parts.netloc), None)
        if conn is not None:
            conn.close()

    def request(self, method: str, url: str, headers: dict[str, str] | None = None
                ) -> tuple[http.client.HTTPResponse, str]:
        """Send one request, following vetted redirects; returns the response (body unread) and its URL."""
        first = urlsplit(url)
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise RemoteError(f"{url}: unsupported URL scheme {parts.scheme!r}")
            send = {"User-Agent": "modellineage", "Accept-Encoding": "identity", **(headers or {})}
            if self.token and parts.hostname == self.token_host:
                send["Authorization"] = f"Bearer {self.token}"
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            conn = self._conn(parts.scheme, parts.netloc)
            try:
                conn.request(method, path, headers=send)
                resp = conn.getresponse()
            except BaseException:
                self.drop(url)
                raise
            _count(requests=1)
            if resp.status in (301, 302, 303, 307, 308):
                location = resp.getheader("Location")
                _discard(resp)
                if resp.will_close:
                    self.drop(url)
                if not location:
                    raise RemoteError(f"{url}: HTTP {resp.status} redirect without a Location")
                target = urljoin(url, location)
                tparts = urlsplit(target)
                same = tparts.hostname == first.hostname and tparts.port == first.port
                if not same and not self.any_host_redirects:
                    raise RemoteError(f"{url}: redirected to another host ({tparts.hostname}); refused: a URL source "
                                      "is read from its own host only")
                if first.scheme == "https" and tparts.scheme != "https":
                    raise RemoteError(f"{url}: redirected from https to {tparts.scheme}; refused")
                url = target
                continue
            return resp, url
        raise RemoteError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def get_small(self, url: str, what: str, limit: int = MAX_SMALL_FILE_BYTES) -> tuple[bytes | None, dict]:
        """A whole small file (None when the server says 404), refused above ``limit`` bytes."""
        last: Exception | None = None
        for attempt in range(RETRIES + 1):
            try:
                resp, final = self.request("GET", url)
                if resp.status == 404:
                    _discard(resp)
                    return None, {}
                if resp.status != 200:
                    _discard(resp)
                    raise RemoteError(f"{url}: HTTP {resp.status} {resp.reason} for {what}")
                length = resp.getheader("Content-Length")
                if length is not None and (not length.isdigit() or int(length) > limit):
                    self.drop(final)
                    raise RemoteError(f"{url}: {what} declares {length} bytes, above the limit of {limit}")
                body = resp.read(limit + 1)
                if len(body) > limit:
                    self.drop(final)
                    raise RemoteError(f"{url}: {what} is larger than the limit of {limit} bytes")
                if length is not None and len(body) != int(length):
                    raise _Short(f"body of {len(body)} bytes, Content-Length {length}")
                _count(bytes_received=len(body))
                if resp.will_close:
                    self.drop(final)
                return body, {"etag": resp.getheader("ETag"), "size": len(body)}
            except RemoteError:
                raise
            except (OSError, http.client.HTTPException, _Short) as exc:
                self.drop(url)
                last = exc
                _count(retries=1)
                _backoff(attempt + 1)
        raise RemoteError(f"{url}: {what} could not be fetched after {RETRIES} retries ({_why(last)})")


def _backoff(failures: int) -> None:
    """Wait before retrying: 0.1, 0.2, 0.4 ... s, at most 2 s."""
    time.sleep(min(2.0, 0.05 * 2 ** failures))


class _Short(Exception):
    """A response body ended before the bytes it announced."""


def _why(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:200] if exc is not None else "no response"


def _discard(resp: http.client.HTTPResponse) -> None:
    try:
        resp.read(64 << 10)
    except (OSError, http.client.HTTPException):
        pass


# ------------------------------------------------------------------------------------------ intervals
class _Intervals:
    """A set of half-open byte intervals, kept merged and sorted."""

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        for lo, hi in sorted(spans):
            self.add(lo, hi)

    def add(self, lo: int, hi: int) -> None:
        if hi <= lo:
            return
        i = bisect_right(self.ends, lo - 1)  # first interval ending at or after lo
        j = bisect_right(self.starts, hi)    # intervals starting at or before hi
        if i < j:
            lo, hi = min(lo, self.starts[i]), max(hi, self.ends[j - 1])
        self.starts[i:j] = [lo]
        self.ends[i:j] = [hi]

    def covers(self, lo: int, hi: int) -> bool:
        if hi <= lo:
            return True
        i = bisect_right(self.starts, lo) - 1
        return i >= 0 and self.ends[i] >= hi

    def missing(self, lo: int, hi: int) -> list[tuple[int, int]]:
        out, pos = [], lo
        i = max(0, bisect_right(self.starts, lo) - 1)
        while pos < hi and i < len(self.starts):
            s, e = self.starts[i], self.ends[i]
            if e <= pos:
                i += 1
                continue
            if s >= hi:
                break
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
            i += 1
        if pos < hi:
            out.append((pos, hi))
        return out

    @property
    def total(self) -> int:
        return sum(e - s for s, e in zip(self.starts, self.ends))

    def as_list(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self.starts, self.ends)]


def coalesce(spans: Iterable[tuple[int, int]], gap: int = COALESCE_GAP,
             limit: int = MAX_RANGE_BYTES) -> list[tuple[int, int]]:
    """Sorted spans merged when closer than ``gap`` bytes, then split into pieces of at most ``limit``."""
    merged: list[list[int]] = []
    for lo, hi in sorted(s for s in spans if s[1] > s[0]):
        if merged and lo - merged[-1][1] <= gap:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(a, min(a + limit, hi)) for lo, hi in merged for a in range(lo, hi, limit)]


# ------------------------------------------------------------------------------------------ range cache
class _RangeCache:
    """The bytes of one remote file present on disk: a sparse ``data`` file and the intervals it holds."""

    def __init__(self, folder: Path, size: int, identity: dict) -> None:
        self.folder, self.size, self.identity = folder, size, identity
        folder.mkdir(parents=True, exist_ok=True)
        self.meta = folder / "ranges.json"
        self.data = folder / "data"
        # Another audit may use the same cache at the same time: the data file is reset and ranges are
        # fetched and recorded only under an exclusive lock, and the recorded ranges are re-read under it.
        self.lock_fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        with self.locked():
            self.present = self._saved()
            self.fd = os.open(self.data, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            if not self.present.starts:
                os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, size)  # sparse: only fetched bytes take disk space

    def _saved(self) -> _Intervals:
        try:
            saved = json.loads(self.meta.read_text())
            if saved.get("identity") == self.identity and saved.get("size") == self.size \
                    and self.data.stat().st_size == self.size:
                return _Intervals((int(a), int(b)) for a, b in saved.get("ranges", []))
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        return _Intervals()

    def refresh(self) -> None:
        """Add the ranges another process recorded since (call under :meth:`locked`)."""
        for lo, hi in self._saved().as_list():
            self.present.add(lo, hi)

    @contextmanager
    def locked(self):
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def save(self) -> None:
        tmp = self.meta.with_name(f".ranges.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "size": self.size, "ranges": self.present.as_list()}))
        os.replace(tmp, self.meta)

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class _BlobCache:
    """A hub file already whole in the local Hugging Face hub cache (``blobs/<sha256>``): every byte present,
    read from there, nothing fetched. Its name is the hub's LFS SHA-256 (checked by ``--verify-hashes``)."""

    def __init__(self, blob: Path, size: int) -> None:
        self.folder, self.size = blob, size
        self.fd = os.open(blob, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            os.close(self.fd)
            raise OSError(f"{blob}: not a regular file of {size} bytes")
        self.present = _Intervals([(0, size)])

    @contextmanager
    def locked(self):
        yield

    def refresh(self) -> None:
        pass

    def save(self) -> None:
        pass

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def _hub_blob(repo: str, sha256: str | None, size: int) -> Path | None:
    """``$HF_HUB_CACHE/models--org--name/blobs/<sha256>`` when it holds the whole file, else None."""
    if not sha256 or not re.fullmatch(r"[0-9a-f]{64}", sha256):
        return None
    hub = os.environ.get("HF_HUB_CACHE") or str(cache_root().parent / "hub")
    org, name = repo.split("/")
    blob = Path(os.path.expanduser(hub)) / f"models--{org}--{name}" / "blobs" / sha256
    try:
        st = os.lstat(blob)
    except OSError:
        return None
    return blob if stat.S_ISREG(st.st_mode) and st.st_size == size else None


# ------------------------------------------------------------------------------------------ remote file
@dataclass
class RemoteFile:
    """One remote safetensors file, read by byte ranges through the range cache.

    ``display`` names it in messages and evidence (``hf://org/name@commit/model.safetensors`` or the URL);
    ``sha256`` is the hub's LFS SHA-256 when the hub gave one.
    """

    name: str
    url: str
    display: str
    size: int
    etag: str | None
    sha256: str | None
    cache_key: str
    check_etag: bool
    allow_network: bool
    http: _Http = field(repr=False)
    local_blob: Path | None = None  # the whole file in the local HF hub cache: read from there
    fetched: int = 0       # bytes received for this file by this process
    requests: int = 0
    _cache: _RangeCache | None = field(default=None, repr=False)
    _read: _Intervals = field(default_factory=_Intervals, repr=False)
    _last_end: int = -1
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # ---- cache ------------------------------------------------------------------------------
    @property
    def cache(self) -> _RangeCache:
        if self._cache is None:
            with self._lock:
                if self._cache is None and self.local_blob is not None:
                    try:
                        self._cache = _BlobCache(self.local_blob, self.size)  # type: ignore[assignment]
                    except OSError:
                        self.local_blob = None
                if self._cache is None:
                    identity = {"sha256": self.sha256} if self.sha256 else {"url": self.url, "etag": self.etag}
                    self._cache = _RangeCache(cache_root() / "ranges" / self.cache_key, self.size, identity)
        return self._cache

    @property
    def fd(self) -> int:
        """Descriptor of the cache's data file (read only after :meth:`ensure`)."""
        return self.cache.fd

    def cached_bytes(self) -> int:
        return self.cache.present.total

    def bytes_read(self) -> int:
        """Distinct bytes of this file the audit read (deterministic: the same for a cold or warm cache)."""
        with self._lock:
            return self._read.total

    def is_cached(self, lo: int = 0, hi: int | None = None) -> bool:
        return self.cache.present.covers(lo, self.size if hi is None else hi)

    # ---- fetching -----------------------------------------------------------------------------
    def ensure(self, spans: Iterable[tuple[int, int]]) -> None:
        """Make every byte of ``spans`` present in the range cache, fetching what is missing (coalesced)."""
        spans = [(max(0, lo), min(self.size, hi)) for lo, hi in spans]
        for lo, hi in spans:
            if hi < lo or lo > self.size:
                raise CorruptCheckpoint(f"{self.display}: bytes {lo}-{hi} lie outside the file ({self.size} bytes)")
        with self._lock:
            cache = self.cache
            missing = [m for lo, hi in spans for m in cache.present.missing(lo, hi)]
            if not missing:
                return
            with cache.locked():
                cache.refresh()
                missing = [m for lo, hi in spans for m in cache.present.missing(lo, hi)]
                if missing and not self.allow_network:
                    lo, hi = missing[0]
                    raise RemoteError(f"{self.display}: bytes {lo}-{hi} are not in the range cache ({cache.folder}) "
                                      "and downloads are off; pass --allow-download to fetch them")
                for lo, hi in coalesce(missing):
                    for a, b in cache.present.missing(lo, hi) or []:
                        self._fetch(a, b)
                        cache.present.add(a, b)
                    cache.save()

    def _fetch(self, lo: int, hi: int) -> None:
        """Fetch bytes ``[lo, hi)`` into the cache's data file, resuming after failures.

        A failure after some bytes arrived resumes from the first missing byte; at most :data:`RETRIES`
        failures in a row without progress, and :data:`MAX_FAILURES` in all, per range.
        """
        got, failures, total_failures = 0, 0, 0
        buf = bytearray(min(_BODY_PIECE, hi - lo))
        view = memoryview(buf)
        while lo + got < hi:
            a, b = lo + got, hi - 1
            try:
                resp, final = self.http.request("GET", self.url, {"Range": f"bytes={a}-{b}"})
                self.requests += 1
                if resp.status == 200:
                    self.http.drop(final)
                    raise RemoteError(f"{self.display}: the server ignores HTTP Range (answered 200 with the whole "
                                      f"file to a request for bytes {a}-{b}); refused rather than downloading "
                                      f"{self.size:,} bytes")
                if resp.status in (500, 502, 503, 504, 429):
                    _discard(resp)
                    raise _Short(f"HTTP {resp.status}")
                if resp.status != 206:
                    _discard(resp)
                    raise RemoteError(f"{self.display}: HTTP {resp.status} {resp.reason} for bytes {a}-{b}")
                first, last = self._check_range(resp, a, b)
                n = last - first + 1
                received = 0
                while received < n:
                    k = resp.readinto(view[:min(len(view), n - received)])
                    if not k:
                        break
                    os.pwrite(self.cache.fd, view[:k], a + received)
                    received += k
                    got += k
                    if received >= min(n, 1 << 20):
                        failures = 0  # real progress: the retry budget is per stall
                self.fetched += received
                _count(bytes_received=received)
                if received < n:
                    raise _Short(f"body ended after {received} of {n} bytes")
                if resp.will_close:
                    self.http.drop(final)
            except RemoteError:
                raise
            except (OSError, http.client.HTTPException, _Short) as exc:
                self.http.drop(self.url)
                failures += 1
                total_failures += 1
                _count(retries=1)
                if failures > RETRIES or total_failures > MAX_FAILURES:
                    raise RemoteError(f"{self.display}: bytes {a}-{b} could not be fetched after {total_failures} "
                                      f"failed attempts ({_why(exc)}); nothing of this range was used") from None
                _backoff(failures)

    def _check_range(self, resp: http.client.HTTPResponse, a: int, b: int) -> tuple[int, int]:
        """The (first, last) byte of a 206 response, checked against the request and the listed file."""
        found = _CONTENT_RANGE.match((resp.getheader("Content-Range") or "").strip())
        if not found:
            self.http.drop(self.url)
            raise RemoteError(f"{self.display}: 206 response without a valid Content-Range for bytes {a}-{b}")
        first, last = int(found.group(1)), int(found.group(2))
        total = found.group(3)
        if total != "*" and int(total) != self.size:
            self.http.drop(self.url)
            raise RemoteError(f"{self.display}: the file is now {total} bytes, it was {self.size} when listed "
                              "(changed on the server); refused")
        if first != a or last > b or last < first:
            self.http.drop(self.url)
            raise RemoteError(f"{self.display}: asked for bytes {a}-{b}, the server sent {first}-{last}; refused")
        length = resp.getheader("Content-Length")
        if length is not None and (not length.isdigit() or int(length) != last - first + 1):
            self.http.drop(self.url)
            raise RemoteError(f"{self.display}: Content-Length {length} does not match Content-Range "
                              f"{first}-{last}; refused")
        etag = resp.getheader("ETag")
        if self.check_etag and self.etag and etag and etag != self.etag:
            self.http.drop(self.url)
            raise RemoteError(f"{self.display}: ETag changed from {self.etag} to {etag} (the file changed on the "
                              "server since it was listed); refused")
        return first, last

    # ---- reading ------------------------------------------------------------------------------
    def pread(self, offset: int, length: int, into=None, *, limit: int | None = None):
        """``length`` bytes at ``offset`` (from the cache, fetched first when missing).

        ``limit``: a sequential reader may fetch ahead up to this offset (the end of the tensor being read).
        """
        if offset < 0 or offset + length > self.size:
            raise CorruptCheckpoint(f"{self.display}: bytes {offset}-{offset + length} run past the end of the file "
                                    f"({self.size} bytes)")
        hi = offset + length
        if limit is not None and (length >= (1 << 20) or offset == self._last_end):
            hi = max(hi, min(limit, self.size, offset + max(length, READAHEAD_BYTES)))
        self.ensure([(offset, hi)])
        buf = bytearray(length) if into is None else into
        view = memoryview(buf)[:length]
        got = 0
        while got < length:
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n <= 0:  # pragma: no cover - the data file is sized to the remote file
                raise CorruptCheckpoint(f"{self.display}: range cache {self.cache.folder} is truncated")
            got += n
        with self._lock:
            self._read.add(offset, offset + length)
            self._last_end = offset + length
        return buf if into is None else view

    def read_cached(self, offset: int, length: int) -> bytes:
        """Bytes already in the range cache (never fetched, not counted as read by the audit)."""
        if not self.cache.present.covers(offset, offset + length):
            raise RemoteError(f"{self.display}: bytes {offset}-{offset + length} are not in the range cache")
        return os.pread(self.fd, length, offset)

    def note_read(self, offset: int, length: int) -> None:
        with self._lock:
            self._read.add(offset, offset + length)

    def stream(self, chunk: int = READAHEAD_BYTES) -> "_Stream":
        """A file-like object reading the whole file front to back (for hashing)."""
        return _Stream(self, chunk)

    def evidence(self) -> dict:
        return {"url": self.display, "size": self.size, "bytes_read": self.bytes_read(),
                "bytes_in_cache": self.cached_bytes()}

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None


class _Stream:
    def __init__(self, remote: RemoteFile, chunk: int) -> None:
        self.remote, self.chunk, self.pos = remote, chunk, 0

    def readinto(self, view) -> int:
        n = min(len(view), self.remote.size - self.pos)
        if n <= 0:
            return 0
        self.remote.ensure([(self.pos, min(self.remote.size, self.pos + max(n, self.chunk)))])
        self.remote.pread(self.pos, n, view)
        self.pos += n
        return n

    def read(self, n: int) -> bytes:
        buf = bytearray(n)
        k = self.readinto(memoryview(buf))
        return bytes(buf[:k])

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


# ------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, RemoteFile] = {}
_REGISTRY_LOCK = threading.Lock()


def lookup(path: str | os.PathLike[str]) -> RemoteFile | None:
    """The :class:`RemoteFile` behind a path a remote source listed, or None for a local file."""
    if not _REGISTRY:
        return None
    return _REGISTRY.get(os.path.abspath(path))


def _register(path: Path, remote: RemoteFile) -> None:
    with _REGISTRY_LOCK:
        old = _REGISTRY.get(os.path.abspath(path))
        if old is not None:
            old.close()
        _REGISTRY[os.path.abspath(path)] = remote


def registered() -> dict[str, RemoteFile]:
    return dict(_REGISTRY)


# ------------------------------------------------------------------------------------------ resolving
@dataclass(frozen=True)
class _Listed:
    name: str
    size: int | None
    sha256: str | None = None
    etag: str | None = None


def resolve_remote(spec: str, *, allow_download: bool):
    """A :class:`~modellineage.reading.sources.ModelSource` for ``hf://…`` or ``http(s)://…``.

    Raises:
        SourceNotFound: not cached and downloads are off, or the server has no model there.
        RemoteError: network, protocol or size errors (naming the URL).
    """
    if spec.startswith("hf://"):
        return _resolve_hf(spec, allow_download)
    return _resolve_url(spec, allow_download)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:80]


def _save_listing(folder: Path, listing: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".listing.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(listing, indent=1, sort_keys=True))
    os.replace(tmp, folder / "listing.json")


def _load_listing(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / "listing.json").read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _resolve_url(spec: str, allow_download: bool):
    parts = urlsplit(spec)
    if not parts.hostname:
        raise SourceNotFound(f"{spec}: not a URL with a host")
    single = parts.path.endswith(".safetensors")
    base = spec.rsplit("/", 1)[0] + "/" if single else (spec if spec.endswith("/") else spec + "/")
    folder = cache_root() / "sources" / "url" / _slug(f"{parts.hostname}_{parts.port or ''}") / \
        hashlib.sha256(spec.encode()).hexdigest()[:20]
    http_ = _Http()
    listing = _load_listing(folder)
    if listing is None or listing.get("spec") != spec:
        if not allow_download:
            raise SourceNotFound(f"{spec}: a remote source not in the cache ({folder}); pass --allow-download to "
                                 "fetch its listing, headers and the byte ranges the audits read")
        listing = _list_url(spec, base, single, folder, http_)
        _save_listing(folder, listing)
    files = {f["name"]: _Listed(f["name"], f.get("size"), f.get("sha256"), f.get("etag")) for f in listing["files"]}
    return _build_source(spec, folder, base, files, kind="url", revision=None, http_=http_, sha_from_hub=False,
                         allow_download=allow_download)


def _list_url(spec: str, base: str, single: bool, folder: Path, http_: _Http) -> dict:
    from modellineage.reading.sources import INDEX_FILE, TOKENIZER_FILES

    files: list[dict] = []
    names = [spec.rsplit("/", 1)[1]] if single else []
    if not single:
        for small in ("config.json", INDEX_FILE, *TOKENIZER_FILES):
            body, meta = http_.get_small(base + url_quote(small), small)
            if body is not None:
                _write_small(folder, small, body)
                files.append({"name": small, "size": len(body), "etag": meta.get("etag")})
        index = next((f for f in files if f["name"] == INDEX_FILE), None)
        if index is not None:
            try:
                names = _index_shards(folder / INDEX_FILE)
            except LineageError:  # the source's weight audits fail with it (see _build_source), the rest run
                names = []
        else:
            names = ["model.safetensors"]
    for name in names:
        size, etag = _probe_size(http_, base + url_quote(name), name)
        if size is None:
            if single or not files:
                raise SourceNotFound(f"{base + name}: not found on the server (HTTP 404)")
            continue
        files.append({"name": name, "size": size, "etag": etag})
    if not files:
        raise SourceNotFound(f"{spec}: the server holds no config.json, safetensors or tokenizer files there")
    return {"spec": spec, "files": files}


def _index_shards(index: Path) -> list[str]:
    """The shard names a (hostile) remote index names: plain ``*.safetensors`` names in the same folder."""
    from modellineage.reading.boundary import read_json
    from modellineage.reading.confine import shown

    weight_map = read_json(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptCheckpoint(f"{index}: not a valid safetensors index (no weight_map of file names)")
    names = sorted(set(weight_map.values()))
    bad = [n for n in names if not _SHARD_NAME.match(n)]
    if bad:
        raise CorruptCheckpoint(f"{index}: names shards that are not plain *.safetensors file names in the same "
                                f"folder ({shown(bad[0])}); a remote index is read only for such names")
    return names


def _probe_size(http_: _Http, url: str, what: str) -> tuple[int | None, str | None]:
    """Size and ETag of a remote file from a one-byte range request (None when 404)."""
    last: Exception | None = None
    for attempt in range(RETRIES + 1):
        try:
            resp, final = http_.request("GET", url, {"Range": "bytes=0-0"})
            if resp.status == 404:
                _discard(resp)
                return None, None
            if resp.status == 200:
                http_.drop(final)
                raise RemoteError(f"{url}: the server ignores HTTP Range (answered 200 to a one-byte range request); "
                                  "range reads are needed to audit without downloading whole files")
            if resp.status != 206:
                _discard(resp)
                raise RemoteError(f"{url}: HTTP {resp.status} {resp.reason} for {what}")
            found = _CONTENT_RANGE.match((resp.getheader("Content-Range") or "").strip())
            body = resp.read(2)
            if resp.will_close:
                http_.drop(final)
            if not found or found.group(3) == "*" or found.group(1) != "0" or len(body) != 1:
                raise RemoteError(f"{url}: invalid answer to a one-byte range request (Content-Range "
                                  f"{resp.getheader('Content-Range')!r})")
            return int(found.group(3)), resp.getheader("ETag")
        except RemoteError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            http_.drop(url)
            last = exc
            _count(retries=1)
            _backoff(attempt + 1)
    raise RemoteError(f"{url}: no answer after {RETRIES} retries ({_why(last)})")


def _write_small(folder: Path, name: str, body: bytes) -> None:
    if "/" in name or name.startswith("."):
        raise RemoteError(f"{folder}: refused remote file name {name!r}")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tmp.write_bytes(body)
    os.replace(tmp, folder / name)


def _hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _resolve_hf(spec: str, allow_download: bool):
    rest = spec[len("hf://"):]
    repo, _, revision = rest.partition("@")
    repo = repo.strip("/")
    if not _REPO_ID.match(repo):
        raise SourceNotFound(f"{spec}: not a hub repo id (hf://org/name[@revision])")
    revision = revision or "main"
    endpoint = _hf_endpoint()
    org, name = repo.split("/")
    root = cache_root() / "sources" / "hf" / _slug(urlsplit(endpoint).netloc) / f"models--{org}--{name}"
    listing = _load_listing(root / "revisions" / _slug(revision))
    if allow_download and not (listing and re.fullmatch(r"[0-9a-f]{40}", revision)):
        listing = _list_hf(repo, revision, endpoint)
        _save_listing(root / "revisions" / _slug(revision), listing)
    if listing is None:
        raise SourceNotFound(f"{spec}: a hub repo not in the cache ({root}); pass --allow-download to fetch its "
                             "listing, headers and the byte ranges the audits read")
    commit = listing["commit"]
    folder = root / "snapshots" / _slug(commit)
    base = f"{endpoint}/{repo}/resolve/{commit}/"
    from huggingface_hub import get_token

    http_ = _Http(any_host_redirects=True, token=get_token() if allow_download else None,
                  token_host=urlsplit(endpoint).hostname)
    files = {f["name"]: _Listed(f["name"], f.get("size"), f.get("sha256")) for f in listing["files"]}
    return _build_source(f"hf://{repo}@{revision}", folder, base, files, kind="hf", revision=commit, http_=http_,
                         sha_from_hub=True, allow_download=allow_download, display=f"hf://{repo}@{commit}/",
                         repo=repo)


def _list_hf(repo: str, revision: str, endpoint: str) -> dict:
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).model_info(repo, revision=revision, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one message naming the repo
        raise RemoteError(f"hf://{repo}@{revision}: the hub ({endpoint}) could not list it "
                          f"({type(exc).__name__}: {str(exc)[:200]})") from None
    files = []
    for s in info.siblings or []:
        if "/" in s.rfilename:
            continue  # sub-folders are not part of a model's top level (like a local folder's listing)
        lfs = getattr(s, "lfs", None)
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) if lfs else None
        files.append({"name": s.rfilename, "size": s.size, "sha256": sha})
    if not info.sha:
        raise RemoteError(f"hf://{repo}@{revision}: the hub gave no commit for this revision")
    return {"repo": repo, "revision": revision, "commit": info.sha, "files": sorted(files, key=lambda f: f["name"])}


def _build_source(spec: str, folder: Path, base: str, files: dict[str, _Listed], *, kind: str,
                  revision: str | None, http_: _Http, sha_from_hub: bool, allow_download: bool,
                  display: str | None = None, repo: str | None = None):
    """Fetch the small files (when missing), register the safetensors files, and list the source."""
    from modellineage.reading import sources as S

    folder.mkdir(parents=True, exist_ok=True)
    display = display or base
    notes: list[str] = []
    roles = {n: S._role(n) for n in files}
    small = [n for n, r in roles.items() if r in ("config", "tokenizer") and not n.endswith(S.GGUF_SUFFIX)
             or n == S.INDEX_FILE]
    for n in small:
        f = files[n]
        target = folder / n
        if target.is_file() and (f.size is None or target.stat().st_size == f.size):
            continue
        if not allow_download:
            raise SourceNotFound(f"{display}{n}: not in the cache ({folder}); pass --allow-download to fetch it")
        if f.size is not None and f.size > MAX_SMALL_FILE_BYTES:
            notes.append(f"{n} not fetched: {f.size:,} bytes, above the limit of {MAX_SMALL_FILE_BYTES:,}")
            continue
        body, _ = http_.get_small(base + url_quote(n), n)
        if body is None:
            raise RemoteError(f"{base}{n}: listed but the server answers 404")
        if sha_from_hub and f.sha256 and hashlib.sha256(body).hexdigest() != f.sha256:
            raise RemoteError(f"{base}{n}: SHA-256 differs from the hub's LFS metadata; refused")
        _write_small(folder, n, body)
    index_error = None
    if S.INDEX_FILE in files and (folder / S.INDEX_FILE).is_file():
        try:
            weights = _index_shards(folder / S.INDEX_FILE)
        except LineageError as exc:  # like a local folder's broken index: the weight audits fail with it
            weights, index_error = [], exc
        missing = [w for w in weights if w not in files]
        if missing:
            raise SourceNotFound(f"{display}{S.INDEX_FILE}: names shards that are not listed: "
                                 + ", ".join(missing[:5]))
    else:
        weights = sorted(n for n in files if n.endswith(".safetensors"))
    for n in weights:
        f = files[n]
        if f.size is None:
            raise RemoteError(f"{display}{n}: the listing gives no size")
        ident = f.sha256 or hashlib.sha256(f"{base}{n}|{f.size}|{f.etag}".encode()).hexdigest()
        remote = RemoteFile(name=n, url=base + url_quote(n), display=display + n, size=int(f.size), etag=f.etag,
                            sha256=f.sha256 if sha_from_hub else None, cache_key=ident[:40],
                            check_etag=not sha_from_hub, allow_network=allow_download, http=http_,
                            local_blob=_hub_blob(repo, f.sha256, int(f.size)) if repo else None)
        _register(folder / n, remote)
    pickles = sorted(n for n, r in roles.items() if r == "pickle")
    if pickles:
        notes.append("pickle checkpoints on the server were not fetched: " + ", ".join(pickles))
    # Local files only (the small ones): confine vets them like a folder's, so every reader opens them.
    from modellineage.reading import confine

    bounds = confine.bounds_for(folder)
    for n in small:
        if (folder / n).is_file():
            refusal = confine.vet(folder / n, bounds, entry=n, role=roles[n] or "weights")
            if refusal is not None:  # pragma: no cover - files written by this module
                raise RemoteError(refusal.message)
    tokenizers = tuple(sorted(folder / n for n in small if roles[n] == "tokenizer" and (folder / n).is_file()))
    config = folder / "config.json" if "config.json" in small and (folder / "config.json").is_file() else None
    index = folder / S.INDEX_FILE if S.INDEX_FILE in files and (folder / S.INDEX_FILE).is_file() else None
    return S.ModelSource(spec=spec, root=folder, kind=kind, weight_files=tuple(folder / n for n in weights),
                         index_file=index, config_file=config, tokenizer_files=tokenizers, revision=revision,
                         notes=tuple(notes), url=display, index_error=index_error)
