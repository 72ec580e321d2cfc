"""Parser boundaries: every byte a model folder supplies is parsed through here.

A model folder is hostile: whatever a parser (``json``, ``tokenizers``, ``sentencepiece``, ``gguf``,
``tiktoken``) raises on its bytes — a ``ValueError`` for a 5,000-digit number, a ``RecursionError`` for
100,000 nested brackets, a Rust panic (pyo3's ``PanicException`` derives from ``BaseException``) — becomes
the library's typed error naming the file (:func:`guard`), so the audits that needed the file fail with
one line and every other audit still runs. Messages quote at most a short escaped fragment
(:func:`quote`, :func:`modellineage.errors.excerpt`), never file content at length; files are opened
through :mod:`modellineage.reading.confine`.

Work and memory must scale with the bytes present, not with counts a file declares, so the readers here
refuse files and entry counts above the safety limits below before a parser allocates for them (a
:class:`CorruptCheckpoint`: the audits that needed the file fail, naming the file and the limit). The
limits are not thresholds of judgement (they decide nothing about lineage); they sit far above every
real file we know and low enough that the largest accepted file stays well under 2 GiB of resident
memory (``tests/test_hostile_parsers.py`` measures it).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from modellineage.errors import CorruptCheckpoint, LineageError, describe, excerpt
from modellineage.reading import confine

#: Largest JSON file read (config.json, safetensors index, tokenizer.json, tokenizer side files, tekken,
#: vocab.json). The largest real ones are tokenizer.json files of ~33 MB (Gemma-3, 262,144 tokens);
#: parsed JSON takes up to ~15x its size in Python objects, so 64 MiB stays under ~1 GiB.
MAX_JSON_BYTES = 64 << 20
#: Largest plain tokenizer file read whole (merges.txt, vocab.txt, tiktoken rank files, SentencePiece
#: models). Real ones are < 20 MB (o200k_base.tiktoken 3.6 MB; XLM-V's SentencePiece model ~15 MB).
MAX_TOKENIZER_FILE_BYTES = 64 << 20
#: Largest SentencePiece model read. Real ones are < 20 MB (XLM-V's 901,629 pieces); protobuf keeps ~64
#: bytes per piece while the pieces are counted, so a file of 2-byte empty pieces costs ~1 GiB at this size.
MAX_SENTENCEPIECE_BYTES = 32 << 20
#: Deepest JSON nesting accepted. Real configs and tokenizer files nest < 10 levels; deeper values
#: would only exhaust the interpreter's recursion limit in every consumer that walks them.
MAX_JSON_DEPTH = 64
#: Most entries (tokens, merge rules, pieces) one tokenizer may hold. The largest real vocabulary we know
#: is XLM-V's 901,629 tokens; the largest merge lists a few hundred thousand rules. The tokenizers library
#: holds ~0.4 GiB per million tokens (measured), so 2,000,000 keeps a maximal file under 2 GiB.
MAX_TOKENIZER_ENTRIES = 2_000_000
#: Wall-clock seconds one tokenizer may spend encoding text, over all its encode calls in a run. A
#: tokenizer.json may carry its own pre-tokenizer and normalizer regexes, run by Oniguruma, which backtracks:
#: a pattern like ``(a|aa)+$`` costs ~1 ms per character even under Oniguruma's per-match retry limit
#: (measured: 1.4 s for 1,160 characters), and worse ones run for hours on a probe corpus. Real tokenizers
#: encode the bundled probe corpus (41 texts) in well under a second here, so 60 s is ample headroom and
#: bounds what a hostile pattern can cost. Not a threshold of judgement: it decides which measures run.
MAX_ENCODE_SECONDS = 60.0
#: Longest rendering of a non-string value (a shape, a number) quoted whole in a message.
FRAGMENT_CHARS = 40

# Interrupts are the auditor's, never the file's: they pass through every guard.
_PASS_THROUGH = (KeyboardInterrupt, SystemExit, GeneratorExit)


def quote(value: object) -> str:
    """A value read from a file (a name, a number, a shape), short and escaped, for a message: a string as
    :func:`modellineage.errors.excerpt` shows it, anything else as its ``repr`` when that is short plain
    ASCII, else an excerpt of it."""
    if isinstance(value, str):
        return excerpt(value)
    text = repr(value)
    return text if len(text) <= FRAGMENT_CHARS and text.isascii() and text.isprintable() else excerpt(text)


@contextmanager
def guard(path: Path | str, what: str, error: type[LineageError] = CorruptCheckpoint) -> Iterator[None]:
    """Turn any failure inside the block into ``error("{path}: {what} (Type: message)")``.

    The library's own errors pass unchanged; so do interrupts (Ctrl-C). Everything else — any
    ``Exception`` (``RecursionError`` and ``MemoryError`` included) and a Rust panic surfacing as pyo3's
    ``PanicException`` (a ``BaseException``) — is the file's fault and names the file.
    """
    try:
        yield
    except LineageError:
        raise
    except _PASS_THROUGH:
        raise
    except BaseException as exc:  # noqa: BLE001 - a parser of hostile bytes may raise anything
        raise error(f"{path}: {what} ({describe(exc)})") from None


@contextmanager
def rust_call(path: Path | str, what: str, error: type[LineageError] = CorruptCheckpoint) -> Iterator[None]:
    """:func:`guard` for a call into a Rust extension (``tokenizers``): a panic there is one line.

    Rust's panic hook prints the panic message to stderr, and with ``RUST_BACKTRACE`` set a 30-100 line
    backtrace after it; it reads the variable at the first panic and keeps that choice for the process.
    So the variable is off while the call runs (the hook's two-line message remains, the typed error
    says the rest). Called from the audit's main thread only (the environment is process-wide).
    """
    before = os.environ.get("RUST_BACKTRACE")
    if before not in (None, "0"):
        os.environ["RUST_BACKTRACE"] = "0"
    try:
        with guard(path, what, error):
            yield
    finally:
        if before not in (None, "0"):
            os.environ["RUST_BACKTRACE"] = before


class EncodeClock:
    """The wall-clock allowance of one tokenizer's encode calls (:data:`MAX_ENCODE_SECONDS` in all).

    ``tokenizers``' ``encode`` holds the GIL for as long as its regexes run, so nothing could stop it;
    :meth:`encode` runs ``encode_batch`` (which releases the GIL) on a daemon thread and waits at most
    the time left. When the allowance runs out the call raises :class:`CorruptCheckpoint` naming the file,
    and so does every later call: the measures that encode text fail with that line, the rest of the audit
    runs. The abandoned thread cannot be killed; it ends when its search does or when the process exits.
    """

    def __init__(self, path: Path | str, seconds: float | None = None) -> None:
        self.path = path
        self.seconds = float(MAX_ENCODE_SECONDS if seconds is None else seconds)
        self.spent = 0.0
        self.exhausted = False

    def _refuse(self) -> CorruptCheckpoint:
        return CorruptCheckpoint(
            f"{self.path}: encoding text took more than the {self.seconds:g} s allowed for one tokenizer "
            f"(MAX_ENCODE_SECONDS; a pre-tokenizer or normalizer pattern that backtracks?): the measures that "
            f"encode text with it are not computed")

    def encode(self, tok: Any, text: str, what: str = "the tokenizer failed to encode a text", **kwargs: Any):
        """``tok.encode(text, **kwargs)`` within the allowance (the same :class:`tokenizers.Encoding`)."""
        if self.exhausted:
            raise self._refuse()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["out"] = tok.encode_batch([text], **kwargs)[0]
            except BaseException as exc:  # noqa: BLE001 - re-raised below, on the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=run, name="bounded-encode", daemon=True)
        start = time.monotonic()
        with rust_call(self.path, what):
            worker.start()
            worker.join(max(0.0, self.seconds - self.spent))
            self.spent += time.monotonic() - start
            if worker.is_alive():
                self.exhausted = True
                raise self._refuse()
            if "error" in box:
                raise box["error"]
        return box["out"]


def read_bytes(path: Path, what: str, limit: int = MAX_TOKENIZER_FILE_BYTES) -> bytes:
    """The whole file (opened through :mod:`modellineage.reading.confine`), refused above ``limit`` bytes before
    anything is read."""
    with confine.open_file(path) as fh:
        with guard(path, f"cannot read {what}"):
            size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise CorruptCheckpoint(f"{path}: {what} is {size:,} bytes, above the safety limit of {limit:,} "
                                    f"bytes (modellineage.reading.boundary)")
        with guard(path, f"cannot read {what}"):
            return fh.read()


def check_count(path: Path, count: int, what: str, limit: int = MAX_TOKENIZER_ENTRIES) -> int:
    """Refuse a file that declares or holds more than ``limit`` entries of one kind."""
    if count > limit:
        raise CorruptCheckpoint(f"{path}: {count:,} {what}, above the safety limit of {limit:,} "
                                f"(MAX_TOKENIZER_ENTRIES, modellineage.reading.boundary)")
    return count


def read_text(path: Path, what: str, limit: int = MAX_TOKENIZER_FILE_BYTES) -> str:
    """The whole file as UTF-8 text, at most ``limit`` bytes."""
    data = read_bytes(path, what, limit)
    with guard(path, f"{what} is not UTF-8 text"):
        return data.decode("utf-8")


def loads_json(text: str | bytes, path: Path, what: str, *, expect: type | None = dict,
               object_pairs_hook=None, max_depth: int | None = MAX_JSON_DEPTH) -> Any:
    """Parse JSON text of ``path``; any failure, nesting deeper than ``max_depth`` or a top level of
    another type than ``expect`` is a :class:`CorruptCheckpoint` naming the file.

    ``max_depth=None`` skips the depth walk (one step per value: ~3 s for 2.5M merge rules) for data only
    read inside a :func:`guard` and never recorded (a tokenizer.json: the tokenizers library limits its
    own nesting, and a RecursionError in our reads of it names the file like any other failure)."""
    with guard(path, "not valid JSON"):
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text, object_pairs_hook=object_pairs_hook)
    if max_depth is not None:
        check_depth(data, path, what, max_depth)
    if expect is not None and not isinstance(data, expect):
        raise CorruptCheckpoint(f"{path}: {what} is JSON but not an {_JSON_TYPES.get(expect, expect.__name__)} "
                                f"(found {_JSON_TYPES.get(type(data), type(data).__name__)})")
    return data


def read_json(path: Path, what: str, *, expect: type | None = dict, limit: int = MAX_JSON_BYTES) -> Any:
    """Read and parse one JSON file of a model folder (see :func:`loads_json`)."""
    return loads_json(read_bytes(path, what, limit), path, what, expect=expect)


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def check_depth(data: Any, path: Path, what: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse parsed JSON nested deeper than ``limit`` (walked without recursion)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise CorruptCheckpoint(f"{path}: {what} nests deeper than {limit} levels (MAX_JSON_DEPTH)")
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))


def count_value(value: Any, *, limit: int) -> int | None:
    """``value`` as a count: an int (or an integral finite float) in ``[0, limit]``, else None.

    Booleans, strings, NaN, infinities, fractions, negatives and values above ``limit`` are not counts.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            return None
        value = int(value)
    if not isinstance(value, int) or not 0 <= value <= limit:
        return None
    return value


def real_value(value: Any) -> float | None:
    """``value`` as a finite float (ints included, booleans not), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        out = float(value)
    except OverflowError:
        return None
    return out if math.isfinite(out) else None


__all__ = ["MAX_JSON_BYTES", "MAX_TOKENIZER_FILE_BYTES", "MAX_SENTENCEPIECE_BYTES", "MAX_JSON_DEPTH",
           "MAX_TOKENIZER_ENTRIES", "quote", "guard", "rust_call", "check_count", "read_bytes", "read_text",
           "loads_json", "read_json", "check_depth", "count_value", "real_value"]
