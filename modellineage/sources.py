"""Where a model is: a local directory, a single .safetensors file, or a repo id in the local HF cache.

Resolving a source only lists files; it reads no tensor data. Nothing is downloaded unless the caller
passes ``allow_download=True``, and pickle checkpoints are listed (so the report can name them) but never
opened.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path

from .boundary import quote, read_json
from .errors import CorruptCheckpoint, LineageError, SourceNotFound, UnsupportedFormat

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

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """The files of one model, found on disk. Paths are absolute."""

    spec: str
    root: Path
    kind: str  # "directory" | "file" | "hf-cache"
    weight_files: tuple[Path, ...] = ()
    index_file: Path | None = None
    config_file: Path | None = None
    tokenizer_files: tuple[Path, ...] = ()
    pickle_files: tuple[Path, ...] = ()
    revision: str | None = None
    notes: tuple[str, ...] = field(default=())
    # Why the safetensors index could not be used: require_weights() raises it, so the weight audits of
    # this source fail with it and every other audit runs.
    index_error: LineageError | None = field(default=None, compare=False)

    @property
    def has_weights(self) -> bool:
        return bool(self.weight_files)

    def files(self) -> tuple[Path, ...]:
        """Every input file this source contributes to an audit, sorted."""
        found = set(self.weight_files) | set(self.tokenizer_files) | set(self.pickle_files)
        found |= {p for p in (self.index_file, self.config_file) if p is not None}
        return tuple(sorted(found))

    def require_weights(self) -> tuple[Path, ...]:
        """The safetensors files, or an error saying why there are none."""
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
            **({"index_error": str(self.index_error)} if self.index_error is not None else {}),
        }


def resolve_source(spec: str, *, base_dir: Path | None = None, allow_download: bool = False) -> ModelSource:
    """Find the files of a model.

    Args:
        spec: a directory, a ``.safetensors`` file, a ``.gguf`` file (read for its tokenizer only), or a
            Hugging Face repo id (``org/name[@revision]``).
        base_dir: relative paths are resolved against it (the audit plan's folder); default: cwd.
        allow_download: fetch a repo id that is not in the local cache (safetensors, json, tokenizer files only).

    Returns:
        A ModelSource listing the files; no tensor data has been read.

    Raises:
        SourceNotFound: the path does not exist and no cached repo of that id exists.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = base / path
    if path.exists():
        return _from_path(spec, path.resolve())
    if _REPO_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _from_hub_cache(spec, allow_download)
    raise SourceNotFound(f"{path}: no such file or directory (model source {spec!r})")


def is_tokenizer_file(name: str) -> bool:
    """A file name the tokenizer reader (modellineage.vocab) may need (GGUF files are decided per directory)."""
    return (name in TOKENIZER_FILES or Path(name).suffix in TOKENIZER_SUFFIXES
            or any(fnmatch.fnmatchcase(name, pattern) for pattern in TOKENIZER_PATTERNS))


def _from_path(spec: str, path: Path) -> ModelSource:
    if path.is_file():
        if path.suffix == ".safetensors":
            return ModelSource(spec=spec, root=path, kind="file", weight_files=(path,))
        if path.suffix in PICKLE_SUFFIXES:
            return ModelSource(spec=spec, root=path, kind="file", pickle_files=(path,))
        if path.suffix == GGUF_SUFFIX:
            return ModelSource(spec=spec, root=path, kind="file", tokenizer_files=(path,),
                               notes=("a GGUF file: its tokenizer vocabulary is read, its tensors are not "
                                      "(the weight audits read safetensors)",))
        raise UnsupportedFormat(f"{path}: not a model source (expected a directory, a .safetensors file or a "
                                f".gguf file)")
    return _from_directory(spec, path, kind="directory")


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


def _from_directory(spec: str, root: Path, *, kind: str, revision: str | None = None) -> ModelSource:
    entries = sorted(p for p in root.iterdir() if p.is_file())
    index = root / INDEX_FILE
    notes: list[str] = []
    index_error = None
    if index.is_file():
        try:
            weights = _shards_from_index(index)
        except LineageError as exc:  # a broken index fails the weight audits of this source, not the run
            weights, index_error = (), exc
        stray = sorted({p for p in entries if p.suffix == ".safetensors"} - set(weights))
        if stray:
            notes.append("safetensors files not in the index were ignored: " + ", ".join(p.name for p in stray))
    else:
        index = None
        weights = tuple(p for p in entries if p.suffix == ".safetensors")
    tokenizers = _tokenizer_files(entries, notes)
    pickles = tuple(p for p in entries if p.suffix in PICKLE_SUFFIXES)
    if weights and pickles:
        notes.append("pickle checkpoints present beside safetensors were not opened: "
                     + ", ".join(p.name for p in pickles))
    config = root / "config.json"
    if not (weights or tokenizers or pickles or config.is_file() or index_error):
        raise SourceNotFound(f"{root}: the directory holds no weights, config or tokenizer files")
    return ModelSource(
        spec=spec,
        root=root,
        kind=kind,
        weight_files=tuple(weights),
        index_file=index,
        config_file=config if config.is_file() else None,
        tokenizer_files=tokenizers,
        pickle_files=pickles,
        revision=revision,
        notes=tuple(notes),
        index_error=index_error,
    )


def _shards_from_index(index: Path) -> tuple[Path, ...]:
    weight_map = read_json(index, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v and "\0" not in v
                                                   for v in weight_map.values()):
        raise CorruptCheckpoint(f"{index}: not a valid safetensors index (weight_map must map tensor names "
                                f"to shard file names)")
    names = sorted(set(weight_map.values()))
    shards = tuple(index.parent / name for name in names)
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise SourceNotFound(f"{index}: names shards that are missing: {', '.join(quote(m) for m in missing[:5])}"
                             + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    return shards


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
