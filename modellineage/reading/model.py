"""A lazily opened model: nothing is read until a measurement asks for it.

``Model`` reads ``config.json`` on first use of ``config``, safetensors headers on first use of
``store``/``shapes``, and tensor bytes only when ``tensor_digests`` (or a measurement) streams them.
File digests are shared through one ``DigestCache`` per session, so every file is hashed at most once
and the evidence can name every input with its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from modellineage.architecture.compare import WeightFacts, facts_from_weights
from modellineage.errors import LineageError
from modellineage.reading.boundary import guard, read_json
from modellineage.reading.config import ArchConfig, normalise_config
from modellineage.reading import confine, remote
from modellineage.reading.hashing import (FileDigest, TensorDigest, digest_cached_tensors, feeder_for, header_sha256,
                                          scan_safetensors, sha256_file)
from modellineage.reading.naming import NameMap, canonicalize
from modellineage.reading.progress import progress_bar
from modellineage.reading.sources import ModelSource
from modellineage.reading.tensors import TensorStore


def _is_gguf(files) -> bool:
    return bool(files) and all(Path(f).suffix == ".gguf" for f in files)


def _scan_gguf(path, *, progress=None) -> FileDigest:
    from modellineage.reading.gguf_weights import scan_gguf
    return scan_gguf(path, progress=progress)


#: Under a partial read of a remote model, tensors up to this size are fetched for their digests anyway
#: (norm gains, biases, routers: ~0.02% of a 100B MoE, and byte-identical trained norms are reuse evidence).
SMALL_TENSOR_BYTES = 1 << 20

#: Under a read budget (``--budget``), the share of each model's part of the budget its tensor digests (exact
#: reuse, finiteness) may read; :func:`modellineage.weights.budget.plan_budget` leaves it out of what the weight
#: and independence measurements share. One row of every tensor of a 100B MoE is ~0.07% of it (18,963
#: tensors of 2.5-8 KiB rows in 205 GB), so at a 1% budget 10% covers every tensor.
DIGEST_SHARE = 0.1
#: Seed of the row digested per tensor under a read budget (chosen by the tensor's shape alone, so every
#: tensor of one shape, in either model, is digested on the same row and a copy under any name matches).
DIGEST_SEED = 20261203
#: Where a weight file's SHA-256 came from when a budgeted run did not read the whole file.
SHA_NOT_UNDER_BUDGET = "not computed under --budget (pass --verify-hashes)"
_WEIGHT_SUFFIXES = (".safetensors", ".gguf")


def digest_row(shape: tuple[int, ...], rows: int) -> int:
    """The row (of a tensor's 2-D view) digested under a read budget: a seeded function of the shape."""
    h = hashlib.sha256(f"{DIGEST_SEED}:{tuple(int(x) for x in shape)}".encode()).digest()
    return int.from_bytes(h[:8], "little") % max(1, rows)


@dataclass(frozen=True)
class SampledDigests:
    """Tensor digests of one model under a read budget: one seeded row per tensor (whole 1-D tensors),
    as many tensors as the digest share of the budget allows, in a seeded order of their names.

    ``unchecked``: tensors not digested; ``reason`` says why. ``bytes_read`` counts the row bytes read.
    """

    digests: tuple[TensorDigest, ...]
    unchecked: tuple[str, ...]
    reason: str
    bytes_allowed: int
    bytes_planned: int
    bytes_read: int

    def as_dict(self) -> dict:
        return {"rows_per_tensor": 1, "row_seed": DIGEST_SEED, "digested": len(self.digests),
                "whole": sum(d.rows is None for d in self.digests), "unchecked": len(self.unchecked),
                "unchecked_reason": self.reason if self.unchecked else "", "bytes_allowed": self.bytes_allowed,
                "bytes_planned": self.bytes_planned, "bytes_read": self.bytes_read}


def digest_allowance(store: TensorStore, budget) -> int:
    """Bytes the tensor digests of the model behind ``store`` may read under ``budget``
    (:class:`modellineage.weights.budget.ReadBudget`): :data:`DIGEST_SHARE` of the model's part of it
    (a share of its float-tensor bytes, or half of a byte budget, which is per pair)."""
    if budget.nbytes is not None:
        return int(budget.nbytes * DIGEST_SHARE / 2)
    present = sum(store.info(n).nbytes for n in store.names() if store.info(n).is_float)
    return int(budget.fraction * present * DIGEST_SHARE)


def plan_digests(store: TensorStore, allowed: int) -> tuple[list[tuple[str, int | None]], list[str], int]:
    """Which tensors (and which row; None: the whole tensor) the digests read within ``allowed`` bytes.

    Tensors are taken in a seeded order of their names (the same in every model with those names); one
    that does not fit is left unchecked and the next tried. Returns the plan, the unchecked names and the
    planned bytes.
    """
    order = sorted(store.names(), key=lambda n: hashlib.sha256(f"{DIGEST_SEED}:{n}".encode()).digest())
    plan: list[tuple[str, int | None]] = []
    unchecked: list[str] = []
    spent = 0
    for name in order:
        info = store.info(name)
        whole = info.rows <= 1 or info.nbytes == 0
        cost = info.nbytes if whole else info.nbytes // info.rows
        if spent + cost > allowed:
            unchecked.append(name)
            continue
        spent += cost
        plan.append((name, None if whole else digest_row(info.shape, info.rows)))
    return plan, sorted(unchecked), spent


class DigestCache:
    """SHA-256 digests of input files, computed at most once per session.

    ``verify``: compute every file's SHA-256 over its full content even where one is already known (hub LFS
    metadata, an HF cache blob name) and check the two agree (``--verify-hashes``).
    ``full_read``: the audit reads whole models (no ``--sample``); when False, a remote file is never fetched
    whole for a digest: its per-tensor digests cover the tensors already fetched and name the others.
    ``budget``: a read budget (``--budget``, :class:`modellineage.weights.budget.ReadBudget`): unless ``verify``,
    tensor digests are taken on one seeded row per tensor within :data:`DIGEST_SHARE` of it
    (:meth:`sampled`), and a weight file's SHA-256 is not computed (its size and header SHA-256 identify it;
    :data:`SHA_NOT_UNDER_BUDGET`) unless it is known from where it already exists.
    """

    def __init__(self, *, verify: bool = False, full_read: bool = True, budget=None) -> None:
        self.verify = verify
        self.full_read = full_read
        self.budget = budget
        self._sampled: dict[tuple, SampledDigests] = {}
        self._digests: dict[Path, FileDigest] = {}
        self._plain: dict[Path, FileDigest] = {}  # whole-file hashes of files that failed to parse
        self._partial: dict[Path, tuple[tuple[TensorDigest, ...], tuple[str, ...]]] = {}

    @staticmethod
    def _key(path: Path) -> Path:
        return Path(os.path.abspath(path)) if remote.lookup(path) is not None else Path(path).resolve()

    def get(self, path: Path, *, label: str = "") -> FileDigest:
        """The digest of one file; safetensors files also get per-tensor digests (one sequential pass)."""
        # Keyed by the resolved file (HF cache snapshots are symlinks into blobs/), recorded under the
        # name the source gave it, so the evidence says "model.safetensors", not a blob hash.
        key = self._key(path)
        if key not in self._digests:
            far = remote.lookup(path)
            size = far.size if far is not None else key.stat().st_size
            hasher = scan_safetensors if key.suffix == ".safetensors" or Path(path).suffix == ".safetensors" \
                else _scan_gguf if Path(path).suffix == ".gguf" else sha256_file
            show = None if size > 64 << 20 else False
            with progress_bar(size, f"hashing {label or Path(path).name}", enabled=show) as update:
                self._digests[key] = hasher(Path(path).absolute(), progress=update)
        return self._digests[key]

    def file_digest(self, path: Path, *, label: str = "") -> tuple[FileDigest, str | None]:
        """Size and SHA-256 of any input file, even a corrupt one; the second item says what was wrong."""
        try:
            return self.get(path, label=label), None
        except LineageError as exc:
            key = self._key(path)
            if key not in self._plain:
                try:
                    self._plain[key] = sha256_file(Path(path).absolute())
                except LineageError as again:  # not readable at all (e.g. replaced since the source was listed)
                    return FileDigest(str(Path(path).absolute()), 0, "", ()), str(again)
            return self._plain[key], str(exc)

    def __contains__(self, path: Path) -> bool:
        return self._key(path) in self._digests

    def tensor_digests(self, path: Path, *, label: str = "") -> tuple[tuple[TensorDigest, ...], tuple[str, ...]]:
        """Per-tensor digests of one safetensors file and the tensors that could not be checked.

        Whole files are scanned (one pass, the file's SHA-256 too), except a remote file under a partial
        read (``full_read`` False): then only the tensors already fetched and those of at most
        :data:`SMALL_TENSOR_BYTES` are digested, the others named.
        """
        far = remote.lookup(path)
        if far is None or self.full_read or self.verify or self._key(path) in self._digests:
            return self.get(path, label=label).tensors, ()
        key = self._key(path)
        if key not in self._partial:
            self._partial[key] = digest_cached_tensors(path, fetch_below=SMALL_TENSOR_BYTES)
        return self._partial[key]

    @property
    def budgeted(self) -> bool:
        """Whether whole weight files are left unread: a read budget without ``--verify-hashes``."""
        return self.budget is not None and not self.verify

    def sampled(self, store: TensorStore) -> SampledDigests:
        """One model's tensor digests under the read budget (see :class:`SampledDigests`), read once."""
        key = tuple(self._key(p) for p in store.files)
        if key not in self._sampled:
            allowed = digest_allowance(store, self.budget)
            plan, unchecked, planned = plan_digests(store, allowed)
            before = store.bytes_read
            digests, offline = [], []
            for name, row in plan:
                info = store.info(name)
                feeder = feeder_for(info)
                try:
                    if row is None:
                        if info.nbytes:
                            feeder.feed(store.read_raw_row_range(name, 0, info.rows))
                        digests.append(feeder.digest())
                    else:
                        feeder.feed(store.read_raw_row_range(name, row, row + 1))
                        digests.append(feeder.digest(rows=(row,)))
                except remote.RemoteError:  # a remote file's row not in the range cache, downloads not allowed
                    offline.append(name)
            reasons = []
            if unchecked:
                reasons.append(f"{len(unchecked):,} beyond the tensor digests' share of the read budget ({allowed:,} "
                               f"bytes = {DIGEST_SHARE:.0%} of this model's part of --budget {self.budget.text}; one "
                               f"row each)")
            if offline:
                reasons.append(f"{len(offline):,} not in the remote source's range cache (pass --allow-download)")
            self._sampled[key] = SampledDigests(tuple(sorted(digests, key=lambda d: d.name)),
                                                tuple(sorted(unchecked + offline)), "; ".join(reasons), allowed,
                                                planned, store.bytes_read - before)
        return self._sampled[key]

    def _budget_record(self, path: Path, key: Path) -> dict:
        """A local weight file a budgeted run does not read whole: size + header SHA-256 as its identity."""
        size = key.stat().st_size
        record = {"size": size, "sha256": None, "sha256_source": SHA_NOT_UNDER_BUDGET}
        try:
            if Path(path).suffix == ".gguf":
                from modellineage.reading.gguf_weights import read_gguf_header
                header_bytes = read_gguf_header(path).data_start
            else:
                from modellineage.reading.tensors import read_header
                header_bytes = read_header(path).data_start
            record.update(header_bytes=header_bytes, header_sha256=header_sha256(path, header_bytes),
                          identity="size + header SHA-256 (shared by checkpoints of one layout: the tensor digests of "
                                   "the reuse and finiteness audits tell their contents apart)")
        except LineageError as exc:
            record["error"] = str(exc)
        return record

    def input_record(self, path: Path, *, label: str = "") -> dict:
        """Size and SHA-256 of one input file for the evidence, and where the SHA-256 came from.

        ``sha256_source``: "computed over the full file", "hub LFS metadata" (a remote hub file, unless
        ``verify``), "HF cache blob name" (a local Hugging Face cache file whose blob is named by its
        SHA-256, unless ``verify`` or the file was scanned anyway), :data:`SHA_NOT_UNDER_BUDGET` (a local
        weight file with neither under a read budget: ``sha256`` None, ``header_sha256`` of its first
        ``header_bytes`` bytes and ``size`` identify it); None when no SHA-256 is known (a remote
        file read in part, with neither). Remote files also record their URL and the distinct bytes read.
        A disagreement between a computed SHA-256 and the known one is the record's ``error``.
        """
        far = remote.lookup(path)
        key = self._key(path)
        record: dict = {}
        if far is not None:
            record.update(url=far.display)
            known, known_source = far.sha256, remote.SHA_HUB
            must_compute = (self.verify or key in self._digests
                            or (known is None and (self.full_read or far.is_cached())))
        else:
            name = key.name
            blob = (key.parent.name == confine.HUB_BLOBS and len(name) == 64
                    and all(c in "0123456789abcdef" for c in name))
            known, known_source = (name, remote.SHA_BLOB) if blob else (None, None)
            must_compute = self.verify or key in self._digests or known is None
            if (must_compute and known is None and self.budgeted and key not in self._digests
                    and Path(path).suffix in _WEIGHT_SUFFIXES):
                return self._budget_record(path, key)
        if must_compute:
            digest, error = self.file_digest(path, label=label)
            record.update(size=digest.size, sha256=digest.sha256 or None, sha256_source=remote.SHA_COMPUTED)
            if known is not None and digest.sha256 and digest.sha256 != known:
                mismatch = (f"SHA-256 computed over the full file ({digest.sha256}) differs from the "
                            f"{known_source} ({known})")
                error = f"{error}; {mismatch}" if error else mismatch
            elif known is not None and digest.sha256:
                record["sha256_matches"] = known_source
            if error:
                record["error"] = error
        elif known is not None:
            size = far.size if far is not None else key.stat().st_size
            record.update(size=size, sha256=known, sha256_source=known_source)
        else:
            record.update(size=far.size, sha256=None, sha256_source=None,
                          error=f"no SHA-256: the hub gives none for this file and only {far.cached_bytes():,} of "
                                f"{far.size:,} bytes were fetched; --verify-hashes fetches and hashes the whole file")
        if far is not None:
            record["bytes_read"] = far.bytes_read()
        return record


class Model:
    """One model of the audit plan, opened lazily."""

    def __init__(self, name: str, source: ModelSource, digests: DigestCache | None = None) -> None:
        self.name = name
        self.source = source
        self.digests = digests if digests is not None else DigestCache()

    def __repr__(self) -> str:
        return f"Model({self.name!r}, {str(self.source.root)!r})"

    @cached_property
    def config(self) -> dict | None:
        """The raw config.json, or None when the source has none (Refused when its config.json was refused)."""
        self.source.check_readable("config")
        path = self.source.config_file
        if path is None:
            if _is_gguf(self.source.weight_files):  # llama.cpp files state their config in metadata
                from modellineage.reading.gguf_weights import config_from_gguf
                return config_from_gguf(self.store.header)
            return None
        return read_json(path, "config.json")

    @cached_property
    def arch(self) -> ArchConfig | None:
        """The normalised architecture from config.json, or None without a config."""
        if self.config is None:
            return None
        with guard(self.source.config_file, "config.json cannot be normalised"):
            return normalise_config(self.config)

    @cached_property
    def store(self) -> TensorStore:
        """Tensor access over all shards (headers only until rows are asked for)."""
        files = self.source.require_weights()
        if _is_gguf(files):
            from modellineage.reading.gguf_weights import GGUFStore
            return GGUFStore(files)
        return TensorStore(files)

    @cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.store.info(name).shape for name in self.store.names()}

    @cached_property
    def name_map(self) -> NameMap:
        dtypes = {name: self.store.info(name).dtype for name in self.store.names()}
        try:
            config = self.config
        except LineageError:  # an unreadable config fails the audits that read it; names map without it
            config = None
        return canonicalize(self.shapes, config, dtypes=dtypes)

    @cached_property
    def weight_facts(self) -> WeightFacts:
        try:
            arch = self.arch
        except LineageError:  # only its head_dim is used, where the weights do not show it
            arch = None
        return facts_from_weights(self.name_map, arch)

    @property
    def vocabulary(self):
        """The normalised tokenizer vocabulary (modellineage.tokenizer.vocab), read from the source's tokenizer files.

        Read once: a tokenizer that cannot be read raises the same error to every audit that asks,
        without parsing the files again.
        """
        if "_vocabulary" not in self.__dict__:
            try:
                self.__dict__["_vocabulary"] = self._read_vocabulary()
            except LineageError as exc:
                self.__dict__["_vocabulary"] = exc
        found = self.__dict__["_vocabulary"]
        if isinstance(found, LineageError):
            raise found
        return found

    def _read_vocabulary(self):
        from modellineage.errors import UnsupportedFormat
        from modellineage.tokenizer.vocab import _PRIORITY, load_from_files

        self.source.check_readable("tokenizer")
        if not self.source.tokenizer_files:
            raise UnsupportedFormat(f"{self.source.root}: no tokenizer files ("
                                    + ", ".join(p.replace("vocab.json", "vocab.json + merges.txt") for p in _PRIORITY)
                                    + ")")
        return load_from_files(self.source.tokenizer_files, where=self.source.root)

    def tensor_digests(self) -> tuple[TensorDigest, ...]:
        """Per-tensor SHA-256 of every tensor in every shard, sorted by tensor name.

        A remote model read in part (``--sample``) gives the digests of the tensors fetched;
        :attr:`unchecked_tensors` names the others.
        """
        if self.digests.budgeted:
            sampled = self.digests.sampled(self.store)
            self.__dict__["_unchecked"] = sampled.unchecked
            self.__dict__["_digest_coverage"] = sampled
            return sampled.digests
        found: list[TensorDigest] = []
        unchecked: list[str] = []
        for path in self.source.require_weights():
            digests, missing = self.digests.tensor_digests(path, label=f"{self.name}/{path.name}")
            found.extend(digests)
            unchecked.extend(missing)
        self.__dict__["_unchecked"] = tuple(sorted(unchecked))
        return tuple(sorted(found, key=lambda d: d.name))

    @property
    def unchecked_tensors(self) -> tuple[str, ...]:
        """Tensors :meth:`tensor_digests` could not digest (a remote model read in part, or beyond the
        digests' share of a read budget), sorted."""
        if "_unchecked" not in self.__dict__:
            self.tensor_digests()
        return self.__dict__["_unchecked"]

    @property
    def digest_coverage(self) -> SampledDigests | None:
        """Under a read budget, what :meth:`tensor_digests` read and could not check; None otherwise."""
        if "_unchecked" not in self.__dict__:
            self.tensor_digests()
        return self.__dict__.get("_digest_coverage")

    @property
    def unchecked_reason(self) -> str:
        """Why :attr:`unchecked_tensors` were not checked (empty when all were)."""
        if not self.unchecked_tensors:
            return ""
        coverage = self.digest_coverage
        return coverage.reason if coverage is not None else \
            "not fetched from the remote source under a partial read; a full read or --verify-hashes checks them"

    def file_digests(self) -> tuple[tuple[FileDigest, str | None], ...]:
        """Size and SHA-256 of every input file of this source, each with the parse error if it has one."""
        return tuple(self.digests.file_digest(p, label=f"{self.name}/{p.name}") for p in self.source.files())

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
