"""Typed errors. Every message names the file (and tensor) it is about."""

from __future__ import annotations


class LineageError(Exception):
    """A measurement could not be made; the message says why and names the file."""


class SourceNotFound(LineageError):
    """A model source (path or cached repo id) does not exist."""


class UnsupportedFormat(LineageError):
    """The files exist but are in a format we refuse or cannot read (e.g. pickle checkpoints)."""


class CorruptCheckpoint(LineageError):
    """A safetensors file is truncated, has a bad header, or offsets out of range."""


class IncompatibleShapes(LineageError):
    """Two tensors (or a config and the weights) cannot be compared because their shapes differ."""


class NonFiniteWeights(LineageError):
    """A tensor holds NaN or Inf values where a number was needed."""


class PlanError(LineageError):
    """An audit plan or thresholds file is invalid; the message names file, key and what is allowed."""


class Refused(LineageError):
    """A source entry the audit will not read: it resolves outside the source's root or is not a regular file."""


#: Longest fragment of a file's text an error message may quote (:func:`excerpt`).
EXCERPT_CHARS = 40
#: Longest part of a third-party parser's message quoted (it may itself quote the file; :func:`describe`).
MESSAGE_CHARS = 100


def excerpt(text: object, limit: int = EXCERPT_CHARS) -> str:
    """A short, escaped fragment of text read from a file, safe to put in a message.

    ``repr``-escaped (control characters, quotes and non-ASCII are shown as escapes, so a fragment cannot
    break a terminal line or a report) and cut to ``limit`` characters of the original, with ``...`` and the
    full length when cut. Use it wherever file text (or a third-party parser's message, which may quote
    file text) flows into an error message.
    """
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return ascii(text)
    return f"{ascii(text[:limit])}... ({len(text):,} chars)"


def describe(exc: BaseException) -> str:
    """A parser's exception as ``Type: detail`` with any file text it quotes cut to an :func:`excerpt`.

    JSON and UTF-8 errors are described by position only (their messages carry no file text, but the
    exception objects hold the whole document); any other message is quoted as an excerpt, since libraries
    such as tokenizers, sentencepiece and tiktoken quote the offending input.
    """
    import json

    name = type(exc).__name__
    if isinstance(exc, json.JSONDecodeError):
        return f"{name}: {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"{name}: invalid {exc.encoding} at byte {exc.start}"
    message = str(exc).strip()
    return f"{name}: {excerpt(message, MESSAGE_CHARS)}" if message else name
