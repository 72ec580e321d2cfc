"""Where a model is: a local directory, a single .safetensors file, a repo id in the local HF cache, or a
remote source (``hf://``, ``https://``; :mod:`modellineage.reading.remote`).

Resolving a source only lists files; it reads no tensor data. Nothing is downloaded unless the caller
passes ``allow_download=True``, and pickle checkpoints are listed (so the report can name them) but never
opened.

Every file a source lists is a regular file inside its root (``modellineage.reading.confine``): an entry that is
a link out of the folder (or, in the Hugging Face cache, out of its repo's ``blobs/``), an index entry
with ``..`` or an absolute path, a directory, FIFO or device is not listed but recorded in
``ModelSource.refused``; the audits that would have read it fail with the refusal's message, the others
run.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from modellineage.errors import CorruptCheckpoint, LineageError, Refused, SourceNotFound, UnsupportedFormat
from modellineage.reading import confine
from modellineage.reading.boundary import read_json
from modellineage.reading.confine import Refusal

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
TOKENIZER_SUFFIXES = (".tiktoken",)
# Tokenizer files known by name pattern: Mistral's tekken JSON and versioned SentencePiece models
# (tokenizer.model.v3, mistral_instruct_tokenizer_241114.model.v7m1).
TOKENIZER_PATTERNS = ("tekken*.json", "*.model.v[0-9]*")
# Tokenizer files that hold no vocabulary of their own.
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "merges.txt")
GGUF_SUFFIX = ".gguf"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"
# What --allow-download fetches: never pickles (and no GGUF files, which hold whole models).
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.model.v*", "*.tiktoken", "*.txt")

#: llama.cpp's gguf-split shard names (gguf-py's ``SHARD_NAME_FORMAT``: ``{stem}-{no:05d}-of-{count:05d}.gguf``).
SPLIT_GGUF = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """The files of one model, found on disk. Paths are absolute."""

    spec: str
    root: Path
    kind: str  # "directory" | "file" | "hf-cache" | "hf" (hub, by ranges) | "url" (https, by ranges)
    weight_files: tuple[Path, ...] = ()
    index_file: Path | None = None
    config_file: Path | None = None
    tokenizer_files: tuple[Path, ...] = ()
    pickle_files: tuple[Path, ...] = ()
    revision: str | None = None
    notes: tuple[str, ...] = field(default=())
    refused: tuple[Refusal, ...] = ()  # entries not read: outside the root, or not regular files
    # Why the safetensors index could not be used: require_weights() raises it, so the weight audits of
    # this source fail with it and every other audit runs.
    index_error: LineageError | None = field(default=None, compare=False)
    # A remote source (``hf://``, ``https://``): the URL its files are read from (modellineage.reading.remote).
    url: str | None = None

    def refusals(self, role: str) -> tuple[Refusal, ...]:
        """The refused entries the audit would have read as ``role`` ("weights", "tokenizer", "config")."""
        return tuple(r for r in self.refused if r.role == role)

    def check_readable(self, role: str) -> None:
        """Raise :class:`Refused` naming every refused entry of ``role``: a partial set of shards or of
        tokenizer files would be measured as if it were the model's, so none of that role is read."""
        found = self.refusals(role)
        if found:
            raise Refused(f"{self.root}: " + "; ".join(r.message for r in found))

    @property
    def has_weights(self) -> bool:
        return bool(self.weight_files)

    def files(self) -> tuple[Path, ...]:
        """Every input file this source contributes to an audit, sorted."""
        found = set(self.weight_files) | set(self.tokenizer_files) | set(self.pickle_files)
        found |= {p for p in (self.index_file, self.config_file) if p is not None}
        return tuple(sorted(found))

    def require_weights(self) -> tuple[Path, ...]:
        """The safetensors files, or an error saying why there are none (or why they are not read)."""
        self.check_readable("weights")
        if self.weight_files:
            return self.weight_files
        if self.index_error is not None:
            raise self.index_error
        if self.pickle_files:
            names = ", ".join(p.name for p in self.pickle_files)
            raise UnsupportedFormat(
                f"{self.root}: holds only pickle checkpoints ({names}); loading them can run arbitrary "
                "code, so they are never unpickled. Convert them to safetensors with a tool you trust."
            )
        raise UnsupportedFormat(f"{self.root}: no *.safetensors weights (a tokenizer-only or config-only source)")

    def as_dict(self) -> dict:
        return {
            "spec": self.spec,
            "root": str(self.root),
            "kind": self.kind,
            "revision": self.revision,
            "weight_files": [p.name for p in self.weight_files],
            "config_file": self.config_file.name if self.config_file else None,
            "tokenizer_files": [p.name for p in self.tokenizer_files],
            "pickle_files": [p.name for p in self.pickle_files],
            "notes": list(self.notes),
            "refused": [r.as_dict() for r in self.refused],
            **({"index_error": str(self.index_error)} if self.index_error is not None else {}),
            **({"url": self.url} if self.url is not None else {}),
        }


def resolve_source(spec: str, *, base_dir: Path | None = None, allow_download: bool = False) -> ModelSource:
    """Find the files of a model.

    Args:
        spec: a directory, a ``.safetensors`` file, a ``.gguf`` file (weights, config facts and tokenizer), a
            Hugging Face repo id (``org/name[@revision]``) in the local cache, or a remote source read by
            byte ranges (``hf://org/name[@revision]``, ``https://…/model.safetensors`` or a directory URL;
            :mod:`modellineage.reading.remote`).
        base_dir: relative paths are resolved against it (the audit plan's folder); default: cwd.
        allow_download: fetch a repo id that is not in the local cache (safetensors, json, tokenizer files only).

    Returns:
        A ModelSource listing the files; no tensor data has been read.

    Raises:
        SourceNotFound: the path does not exist and no cached repo of that id exists.
    """
    from modellineage.reading import remote

    if remote.is_remote(spec):
        return remote.resolve_remote(spec, allow_download=allow_download)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.exists() or path.is_symlink():
        return _from_path(spec, named_path(path))
    if _REPO_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _from_hub_cache(spec, allow_download)
    raise SourceNotFound(f"{path}: no such file or directory (model source {spec!r})")


def is_tokenizer_file(name: str) -> bool:
    """A file name the tokenizer reader (modellineage.tokenizer.vocab) may need (GGUF files are decided per directory)."""
    return (name in TOKENIZER_FILES or Path(name).suffix in TOKENIZER_SUFFIXES
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in TOKENIZER_PATTERNS))


def named_path(path: Path) -> Path:
    """``path`` made absolute with its folders resolved but its last component kept as named.

    A folder named as a source is the user's choice, links included; a file is the source's root itself
    and must not be a link that leads elsewhere (see :func:`_from_path`), so its link is kept to be vetted.
    """
    path = Path(os.path.abspath(path))
    if path.is_dir():
        return path.resolve()
    return Path(os.path.realpath(path.parent)) / path.name


def _from_path(spec: str, path: Path) -> ModelSource:
    if path.is_dir():
        return _from_directory(spec, path, kind="directory")
    # A single file is its own root: a link to anywhere else is refused like a link out of a folder (the
    # user named a file in a folder its publisher controls, not the link's target), except the Hugging
    # Face cache's snapshot links into the same repo's blobs/.
    role = "weights" if path.suffix == ".safetensors" else "pickle" if path.suffix in PICKLE_SUFFIXES \
        else "tokenizer" if path.suffix == GGUF_SUFFIX else None
    if role is None:
        raise UnsupportedFormat(f"{path}: not a model source (expected a directory, a .safetensors file or a "
                                f".gguf file)")
    refusal = confine.vet(path, confine.bounds_for(path), entry=path.name, role=role)
    if refusal is not None:
        if path.suffix == GGUF_SUFFIX:  # a GGUF file is the model's weights and its tokenizer
            return ModelSource(spec=spec, root=path, kind="file",
                               refused=(refusal, dataclasses.replace(refusal, role="weights")))
        return ModelSource(spec=spec, root=path, kind="file", refused=(refusal,))
    if role == "weights":
        return ModelSource(spec=spec, root=path, kind="file", weight_files=(path,))
    if role == "pickle":
        return ModelSource(spec=spec, root=path, kind="file", pickle_files=(path,))
    from modellineage.reading.gguf_weights import declares_tensors

    split = SPLIT_GGUF.match(path.name)
    if split is not None:
        return _split_gguf(spec, path, split)
    if not declares_tensors(path):
        return ModelSource(spec=spec, root=path, kind="file", tokenizer_files=(path,),
                           notes=("a GGUF file without tensors: its tokenizer vocabulary is read",))
    return ModelSource(spec=spec, root=path, kind="file", tokenizer_files=(path,), weight_files=(path,),
                       notes=("a GGUF file: its tensors are read through modellineage.reading.gguf_weights "
                              "(llama.cpp names and q/k order mapped back, quantised types dequantised), "
                              "its config facts from its metadata, its tokenizer from its vocabulary",))


def _split_gguf(spec: str, path: Path, split: re.Match) -> ModelSource:
    """A split GGUF (llama.cpp's gguf-split) named by any of its shards: one model source over every shard.

    The shards are the files ``{stem}-00001-of-{count}.gguf`` ... beside the one named; the source's root
    is their folder, and each must be a regular file inside it (vetted like a folder's entries). A missing
    shard, or a name whose numbering cannot be one of ``count``, fails the weight audits naming the file;
    every shard's header is checked against its name when the weights are opened
    (:class:`modellineage.reading.gguf_weights.GGUFStore`: ``split.no``, ``split.count``,
    ``split.tensors.count``). The first shard also carries the metadata and the tokenizer.
    """
    from modellineage.reading.gguf_weights import declares_tensors

    folder = path.parent
    stem, no, count = split.group("stem"), int(split.group("no")), int(split.group("count"))
    if not 1 <= no <= count:
        return ModelSource(spec=spec, root=folder, kind="file", index_error=CorruptCheckpoint(
            f"{path}: a split GGUF shard numbered {no} of {count} (shards count from 1 to their number)"))
    bounds = confine.bounds_for(folder)
    names = [f"{stem}-{k:05d}-of-{count:05d}.gguf" for k in range(1, count + 1)]
    shards, missing, refused = [], [], []
    for name in names:
        shard = folder / name
        if not (shard.exists() or shard.is_symlink()):
            missing.append(name)
            continue
        refusal = confine.vet(shard, bounds, entry=name, role="weights")
        if refusal is not None:
            refused.append(refusal)
            if name == names[0]:
                refused.append(dataclasses.replace(refusal, role="tokenizer"))
        else:
            shards.append(shard)
    notes = [f"a split GGUF of {count} shard(s) ({names[0]} ...): read as one model, its tensors through "
             "modellineage.reading.gguf_weights, metadata and tokenizer from the first shard"]
    others = sorted(p.name for p in folder.glob(f"{glob_escape(stem)}-*-of-*.gguf") if p.name not in names)
    if others:
        notes.append("other split GGUF files beside it (another shard count) not read: " + ", ".join(others[:8]))
    if missing:
        return ModelSource(spec=spec, root=folder, kind="file", refused=tuple(refused), notes=tuple(notes),
                           index_error=SourceNotFound(f"{folder / names[0]}: split GGUF shard(s) missing: "
                                                      + ", ".join(missing)))
    if refused:
        return ModelSource(spec=spec, root=folder, kind="file", refused=tuple(refused), notes=tuple(notes))
    weights = tuple(shards) if any(declares_tensors(p) for p in shards) else ()
    return ModelSource(spec=spec, root=folder, kind="file", weight_files=weights, tokenizer_files=(shards[0],),
                       notes=tuple(notes))


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped (a model name may hold ``[``)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _role(name: str) -> str | None:
    """What an entry of a model folder is read as, by its name (None: never read, so never vetted)."""
    suffix = Path(name).suffix
    if name == INDEX_FILE or suffix == ".safetensors":
        return "weights"
    if name == "config.json":
        return "config"
    if suffix in PICKLE_SUFFIXES:
        return "pickle"
    if is_tokenizer_file(name) or suffix == GGUF_SUFFIX:
        return "tokenizer"
    return None


def _tokenizer_files(entries: list[Path], notes: list[str]) -> tuple[Path, ...]:
    """The directory's tokenizer files; a GGUF file only when nothing else holds a vocabulary.

    A GGUF file holds a whole model (gigabytes, hashed for the evidence when listed), so it is listed
    only as the tokenizer of last resort, and then only the first by name (the first shard of a split
    GGUF carries the vocabulary; other quantisations of the same model repeat it).
    """
    found = [p for p in entries if is_tokenizer_file(p.name)]
    ggufs = [p for p in entries if p.suffix == GGUF_SUFFIX]
    if ggufs and not any(p.name not in TOKENIZER_SIDE_FILES for p in found):
        found.append(ggufs[0])
        if len(ggufs) > 1:
            notes.append(f"tokenizer read from {ggufs[0].name}; other GGUF files not read: "
                         + ", ".join(p.name for p in ggufs[1:]))
    elif ggufs:
        notes.append("GGUF files not read (the directory has other tokenizer files): "
                     + ", ".join(p.name for p in ggufs))
    return tuple(sorted(found))


def list_folder(root: Path) -> tuple[list[Path], list[Refusal]]:
    """The entries of a model folder the audit may read (named as ``root / name``), and those refused.

    Only names the audit reads are looked at (weights, index, config, tokenizer and pickle files); each
    must resolve to a regular file inside :func:`modellineage.reading.confine.bounds_for` ``(root)``.
    """
    bounds = confine.bounds_for(root)
    entries: list[Path] = []
    refused: list[Refusal] = []
    for p in sorted(Path(root).iterdir()):
        role = _role(p.name)
        if role is not None:
            refusal = confine.vet(p, bounds, entry=p.name, role=role)
            (entries.append(p) if refusal is None else refused.append(refusal))
    return entries, refused


def _from_directory(spec: str, root: Path, *, kind: str, revision: str | None = None) -> ModelSource:
    bounds = confine.bounds_for(root)
    entries, refused = list_folder(root)
    index = root / INDEX_FILE
    notes: list[str] = []
    index_error = None
    if index in entries:
        try:
            weights, bad = _shards_from_index(index, bounds)
            refused.extend(bad)
        except LineageError as exc:  # a broken index fails the weight audits of this source, not the run
            weights, index_error = (), exc
        stray = sorted({p for p in entries if p.suffix == ".safetensors"} - set(weights))
        if stray:
            notes.append("safetensors files not in the index were ignored: " + ", ".join(p.name for p in stray))
    elif any(r.entry == INDEX_FILE for r in refused):  # the shard set is unknown: read none
        index, weights = None, ()
    else:
        index = None
        weights = tuple(p for p in entries if p.suffix == ".safetensors")
    tokenizers = _tokenizer_files(entries, notes)
    pickles = tuple(p for p in entries if p.suffix in PICKLE_SUFFIXES)
    if weights and pickles:
        notes.append("pickle checkpoints present beside safetensors were not opened: "
                     + ", ".join(p.name for p in pickles))
    config = root / "config.json"
    if not (weights or tokenizers or pickles or config in entries or refused or index_error):
        raise SourceNotFound(f"{root}: the directory holds no weights, config or tokenizer files")
    return ModelSource(
        spec=spec,
        root=root,
        kind=kind,
        weight_files=tuple(weights),
        index_file=index,
        config_file=config if config in entries else None,
        tokenizer_files=tokenizers,
        pickle_files=pickles,
        revision=revision,
        notes=tuple(notes),
        refused=tuple(sorted({(r.role, r.entry): r for r in reversed(refused)}.values(),  # an entry once
                             key=lambda r: (r.role, r.entry))),
        index_error=index_error,
    )


def _shards_from_index(index: Path, bounds: tuple[Path, ...]) -> tuple[tuple[Path, ...], list[Refusal]]:
    """The shards an index names (each vetted like a listed file), and the entries refused."""
    weight_map = read_json(index, "safetensors index").get("weight_map")  # bounded; any failure names it
    if not isinstance(weight_map, dict):
        raise CorruptCheckpoint(f"{index}: not a valid safetensors index (no weight_map object)")
    values = list(weight_map.values())
    if not all(isinstance(v, str) for v in values):
        raise CorruptCheckpoint(f"{index}: not a valid safetensors index (a weight_map value is not a file name)")
    names = sorted(set(values))
    shards, missing, refused = [], [], []
    for name in names:
        path, refusal = confine.entry_path(index.parent, name, role="weights")
        if refusal is None and not (path.exists() or path.is_symlink()):
            missing.append(confine.shown(name))
            continue
        refusal = refusal or confine.vet(path, bounds, entry=name, role="weights")
        (shards.append(path) if refusal is None else refused.append(refusal))
    if missing:
        raise SourceNotFound(f"{index}: names shards that are missing: {', '.join(missing)}")
    return tuple(shards), refused


def _from_hub_cache(spec: str, allow_download: bool) -> ModelSource:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision or None,
            local_files_only=not allow_download,
            allow_patterns=list(DOWNLOAD_PATTERNS) if allow_download else None,
        )
    except LocalEntryNotFoundError:
        raise SourceNotFound(
            f"{spec}: not a local path, and no snapshot of repo {repo_id!r} in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}); pass --allow-download to fetch it"
        ) from None
    except Exception as exc:  # network or repository errors under --allow-download
        raise SourceNotFound(f"{spec}: could not be resolved from the Hugging Face hub ({exc})") from None
    folder = Path(folder)
    return _from_directory(spec, folder, kind="hf-cache", revision=folder.name)
