"""Byte progress bars on stderr, off unless asked for and stderr is a terminal.

The pytest plugin calls :func:`set_enabled` (off under ``-q``); :func:`enabled` also
requires ``sys.stderr`` to be a TTY, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO

__all__ = ["configure", "count_bar", "enabled", "progress_bar", "set_enabled"]

_flag = True
_stream: IO[str] | None = None


def configure(enabled: bool, stream: IO[str] | None = None) -> None:
    """Set the process-wide switch and, optionally, the terminal stream bars are drawn on.

    A test runner that captures stderr passes a duplicate of the real terminal here, taken before
    capturing starts, so bars still reach the user while test output stays captured.

    Args:
        enabled: draw bars at all.
        stream: where to draw them (default: ``sys.stderr`` at drawing time).
    """
    global _stream
    set_enabled(enabled)
    _stream = stream


def set_enabled(flag: bool) -> None:
    """Turn progress bars on or off for the whole process.

    Args:
        flag: the new setting.
    """
    global _flag
    _flag = bool(flag)


def enabled() -> bool:
    """Whether bars are shown: the setting is on and stderr is a terminal.

    Returns:
        True when a bar would be drawn.
    """
    if not _flag:
        return False
    try:
        return bool(_output().isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


_is_enabled = enabled


def _output() -> IO[str]:
    return _stream if _stream is not None else sys.stderr


def _noop(_nbytes: int) -> None:
    return None


@contextmanager
def progress_bar(total_bytes: int, desc: str, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """A byte progress bar as a context manager.

    Args:
        total_bytes: expected number of bytes.
        desc: label shown left of the bar.
        enabled: the caller's wish for this bar (e.g. only for big files); it is drawn only
            when this is not ``False`` *and* the process setting :func:`enabled` is on
            (flag set and stderr a TTY). Otherwise the context yields a no-op.

    Returns:
        A context manager yielding ``update(nbytes)``.

    Example:
        >>> with progress_bar(size, "hashing model.safetensors", enabled=False) as update:
        ...     scan_safetensors(path, progress=update)
    """
    show = (enabled is None or bool(enabled)) and _is_enabled()
    if not show:
        yield _noop
        return
    from tqdm import tqdm  # only when drawing

    with tqdm(
        total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=_output(), leave=False
    ) as bar:
        yield bar.update


@contextmanager
def count_bar(total: int, desc: str, unit: str = "it") -> Iterator[Callable[[int], None]]:
    """A progress bar over ``total`` items (e.g. requests to an endpoint); drawn under the same rule as
    :func:`progress_bar`. Yields ``update(n)``."""
    if not _is_enabled():
        yield _noop
        return
    from tqdm import tqdm  # only when drawing

    with tqdm(total=total, desc=desc, unit=unit, file=_output(), leave=False) as bar:
        yield bar.update
