"""Reads confined to a model source: only regular files that resolve inside the source's root.

A model folder is written by the party under audit, so every name in it is hostile: a ``vocab.txt``
may be a symbolic link to ``/proc/self/environ``, an index entry may read ``../../.ssh/id_ed25519``, a
``tokenizer.model`` may be a FIFO (a read never returns) or ``/dev/zero`` (a read never ends). The rule,
applied once here for every reader of the library:

- **Vetting** (:func:`vet`, called by :mod:`modellineage.reading.sources` while listing a source): an entry is
  used only if it resolves to a regular file inside the source's *bounds* (:func:`bounds_for`): the
  source folder itself, or for a single-file source the file itself; in the Hugging Face cache layout
  (``models--org--name/snapshots/<rev>/``, whose files are links into ``models--org--name/blobs/``)
  also that repo's own ``blobs/``. Anything else becomes a :class:`Refusal` naming the entry and where
  it points, never anything read from it (nothing is).
- **Opening** (:func:`open_fd` and the helpers over it, called by every reader: safetensors headers and
  tensor reads, digests, config.json, every tokenizer format): the file is opened once, by the real path
  vetted, with ``O_NOFOLLOW`` (a last component swapped for a link since vetting is refused) and
  ``O_NONBLOCK`` (opening a FIFO does not wait for a writer); ``fstat`` of the open descriptor must be a
  regular file, and when the path was vetted, the very file vetted (same device and inode), so a file or
  folder swapped between vetting and reading is refused rather than read. Third-party parsers
  (tokenizers, sentencepiece, tiktoken, gguf) get bytes or a descriptor opened here, never a path to open
  themselves.

A path that no source vetted (a caller of :func:`modellineage.reading.tensors.read_header` or
:func:`modellineage.tokenizer.vocab.load_vocabulary` naming a file directly) is still opened only as a regular
file, without following a link in its last component's resolved target.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from modellineage.errors import Refused, SourceNotFound, excerpt

#: Folder names of the Hugging Face hub cache layout (``huggingface_hub.constants``; ``REPO_TYPES``).
HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")
HUB_SNAPSHOTS = "snapshots"
HUB_BLOBS = "blobs"
#: Longest link text or index entry quoted in a refusal (publisher-written strings, escaped).
_TARGET_CHARS = 160

_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
          | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))

# Absolute path as a source lists it -> (the real path vetted, st_dev, st_ino). A process-wide table,
# written when a source is resolved and read by every open; one entry per input file.
_VETTED: dict[str, tuple[str, int, int]] = {}


@dataclass(frozen=True)
class Refusal:
    """An entry of a source that is not read, and why (nothing of its content is known or shown)."""

    entry: str    # as the source names it: a file name relative to the root, or an index entry
    target: str   # where it points: the link's text or the resolved path ("" when it is not a link)
    reason: str   # e.g. "it resolves outside the source folder", "not a regular file (FIFO)"
    role: str     # what the audit would have read it as: "weights" | "tokenizer" | "config" | "pickle"

    @property
    def message(self) -> str:
        where = f" -> {self.target}" if self.target else ""
        return f"{self.entry}{where}: refused, {self.reason}"

    def as_dict(self) -> dict:
        return {"entry": self.entry, "points_to": self.target or None, "reason": self.reason, "role": self.role}


def bounds_for(root: Path) -> tuple[Path, ...]:
    """The real paths a source rooted at ``root`` (a folder, or a single file) may read files under.

    ``root`` itself; and when ``root`` (or the folder holding a single-file root) is a snapshot of the
    Hugging Face cache layout, ``<repo>/blobs`` of that same repo, provided ``blobs`` is a real folder
    (a ``blobs`` that is itself a link could point anywhere).
    """
    root = Path(root)
    if root.is_dir():  # a folder named as the source: the user's choice, links included
        real = snapshot = Path(os.path.realpath(root))
    else:  # a single file: itself, not where a link of that name leads
        snapshot = Path(os.path.realpath(root.parent))
        real = snapshot / root.name
    found = [real]
    repo = snapshot.parent.parent
    if snapshot.parent.name == HUB_SNAPSHOTS and repo.name.startswith(HUB_REPO_PREFIXES):
        blobs = repo / HUB_BLOBS
        if blobs.is_dir() and not blobs.is_symlink():
            found.append(blobs)
    return tuple(found)


def _inside(path: str, bound: Path) -> bool:
    bound_s = str(bound)
    return path == bound_s or path.startswith(bound_s.rstrip(os.sep) + os.sep)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a link")):
        if test(mode):
            return name
    return "not a regular file"


def shown(text: str) -> str:
    """A publisher-written path (link text, index entry) as it may appear in a message: escaped, bounded."""
    return excerpt(text, _TARGET_CHARS) if (len(text) > _TARGET_CHARS or not text.isprintable()) else text


def entry_path(root: Path, name: object, *, role: str) -> tuple[Path | None, Refusal | None]:
    """An index entry (a file name relative to the folder holding the index) as a path under ``root``.

    Refused without touching the file system: a name that is not a non-empty string, is absolute, has a
    ``..`` component or a NUL byte. What it then resolves to is :func:`vet`'s business.
    """
    if not isinstance(name, str) or not name:
        return None, Refusal(shown(repr(name)), "", "not a file name", role)
    label = shown(name)
    if "\x00" in name:
        return None, Refusal(label, "", "the name holds a NUL byte", role)
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("~"):
        return None, Refusal(label, "", "an absolute path (entries must be relative to the folder)", role)
    if ".." in pure.parts:
        return None, Refusal(label, "", "the path climbs out of the folder ('..')", role)
    return Path(root) / name, None


def vet(path: Path, bounds: tuple[Path, ...], *, entry: str, role: str) -> Refusal | None:
    """None when ``path`` resolves to a regular file inside ``bounds`` (and remember which file that is,
    for :func:`open_fd`); otherwise the :class:`Refusal` saying why. Reads nothing from the file.
    """
    path = Path(path)
    target = ""
    try:
        if path.is_symlink():
            target = os.readlink(path)
    except OSError:
        pass
    try:
        real = os.path.realpath(path, strict=True)
    except OSError as exc:
        why = "a link that loops" if exc.errno == errno.ELOOP else "it points to nothing (a dangling link)" \
            if target else f"cannot be resolved ({exc.strerror})"
        return Refusal(shown(entry), shown(target), why, role)
    where = "its Hugging Face cache repo" if len(bounds) > 1 else "the source folder" if Path(bounds[0]).is_dir() \
        else "the file named as the source"
    if not any(_inside(real, b) for b in bounds):
        return Refusal(shown(entry), shown(target or real), f"it resolves outside {where}", role)
    try:
        st = os.stat(real)
    except OSError as exc:
        return Refusal(shown(entry), shown(target), f"cannot be examined ({exc.strerror})", role)
    if not stat.S_ISREG(st.st_mode):
        return Refusal(shown(entry), shown(target), f"{_kind(st.st_mode)}, not a regular file", role)
    _VETTED[os.path.abspath(path)] = (real, st.st_dev, st.st_ino)
    return None


def open_fd(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path``, which must be a regular file (and the file vetted, if it was).

    Raises:
        Refused: not a regular file, a link where the vetted file was, or another file than the one vetted.
        SourceNotFound: the file does not exist (any more) or cannot be opened.
    """
    key = os.path.abspath(path)
    known = _VETTED.get(key)
    real = known[0] if known is not None else os.path.realpath(key)
    try:
        fd = os.open(real, _FLAGS)
    except FileNotFoundError:
        raise SourceNotFound(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path}: refused, it became a symbolic link after the source was checked") from None
        raise SourceNotFound(f"{path}: cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused(f"{path}: refused, {_kind(st.st_mode)}, not a regular file")
        if known is not None and (st.st_dev, st.st_ino) != known[1:]:
            raise Refused(f"{path}: refused, it was replaced by another file after the source was checked")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str | os.PathLike[str]) -> BinaryIO:
    """:func:`open_fd` as an unbuffered-by-default binary file object (closes the descriptor on close)."""
    return os.fdopen(open_fd(path), "rb")


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole content of a (vetted, regular) file."""
    with open_file(path) as fh:
        return fh.read()


def read_text(path: str | os.PathLike[str]) -> str:
    """The whole content of a (vetted, regular) file as UTF-8 text (UnicodeDecodeError on bad bytes)."""
    return read_bytes(path).decode("utf-8")


__all__ = ["Refusal", "bounds_for", "shown", "entry_path", "vet", "open_fd", "open_file", "read_bytes", "read_text"]
