"""A lazily opened model: nothing is read until a measurement asks for it.

``Model`` reads ``config.json`` on first use of ``config``, safetensors headers on first use of
``store``/``shapes``, and tensor bytes only when ``tensor_digests`` (or a measurement) streams them.
File digests are shared through one ``DigestCache`` per session, so every file is hashed at most once
and the evidence can name every input with its SHA-256.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from modellineage.architecture.compare import WeightFacts, facts_from_weights
from modellineage.errors import LineageError
from modellineage.reading.boundary import guard, read_json
from modellineage.reading.config import ArchConfig, normalise_config
from modellineage.reading.hashing import FileDigest, TensorDigest, scan_safetensors, sha256_file
from modellineage.reading.naming import NameMap, canonicalize
from modellineage.reading.progress import progress_bar
from modellineage.reading.sources import ModelSource
from modellineage.reading.tensors import TensorStore


def _is_gguf(files) -> bool:
    return bool(files) and all(Path(f).suffix == ".gguf" for f in files)


def _scan_gguf(path, *, progress=None) -> FileDigest:
    from modellineage.reading.gguf_weights import scan_gguf
    return scan_gguf(path, progress=progress)


class DigestCache:
    """SHA-256 digests of input files, computed at most once per session."""

    def __init__(self) -> None:
        self._digests: dict[Path, FileDigest] = {}
        self._plain: dict[Path, FileDigest] = {}  # whole-file hashes of files that failed to parse

    def get(self, path: Path, *, label: str = "") -> FileDigest:
        """The digest of one file; safetensors files also get per-tensor digests (one sequential pass)."""
        # Keyed by the resolved file (HF cache snapshots are symlinks into blobs/), recorded under the
        # name the source gave it, so the evidence says "model.safetensors", not a blob hash.
        key = Path(path).resolve()
        if key not in self._digests:
            size = key.stat().st_size
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
            key = Path(path).resolve()
            if key not in self._plain:
                try:
                    self._plain[key] = sha256_file(Path(path).absolute())
                except LineageError as again:  # not readable at all (e.g. replaced since the source was listed)
                    return FileDigest(str(Path(path).absolute()), 0, "", ()), str(again)
            return self._plain[key], str(exc)

    def __contains__(self, path: Path) -> bool:
        return Path(path).resolve() in self._digests


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
        """Per-tensor SHA-256 of every tensor in every shard, sorted by tensor name."""
        found: list[TensorDigest] = []
        for path in self.source.require_weights():
            found.extend(self.digests.get(path, label=f"{self.name}/{path.name}").tensors)
        return tuple(sorted(found, key=lambda d: d.name))

    def file_digests(self) -> tuple[tuple[FileDigest, str | None], ...]:
        """Size and SHA-256 of every input file of this source, each with the parse error if it has one."""
        return tuple(self.digests.file_digest(p, label=f"{self.name}/{p.name}") for p in self.source.files())

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()
