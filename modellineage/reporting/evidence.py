"""Deterministic evidence records: the same inputs give a byte-identical JSON file.

Everything that varies between identical runs (the wall-clock time) lives in one field,
``generated_at``; durations are not recorded. Keys are sorted, lists keep a stable order chosen by
the writer, floats use Python's shortest round-trip repr, and non-finite floats are written as the
strings "NaN", "Infinity" and "-Infinity" so that the file stays strict JSON.

A document is written whole or not at all (:func:`write_atomic`: a temporary file beside it, fsync,
rename). ``"complete": true`` marks evidence of a run in which every selected audit reached an outcome;
a run that did not (interrupted, collection errors, an error while writing) never replaces it and
writes ``<name>.partial.json`` (:func:`partial_path`) with ``"complete": false`` and the reason instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

SCHEMA = "modellineage.reporting.evidence/1"
LIBRARIES = ("modellineage", "numpy", "safetensors", "tokenizers", "transformers", "torch", "huggingface_hub",
             "pytest", "pytest-html", "scipy")


def to_jsonable(obj: Any) -> Any:
    """Plain JSON data from records: ``as_dict()`` objects, dataclasses, paths, tuples, numpy scalars."""
    if hasattr(obj, "as_dict") and callable(obj.as_dict):
        return to_jsonable(obj.as_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return float(obj)
    if hasattr(obj, "item"):  # numpy scalar
        return to_jsonable(obj.item())
    if hasattr(obj, "tolist"):  # numpy array
        return to_jsonable(obj.tolist())
    raise TypeError(f"cannot record {type(obj).__name__} as evidence")


def dumps(obj: Any) -> str:
    """Canonical JSON text of a record (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(to_jsonable(obj), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def library_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries whose behaviour the numbers depend on."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def machine_info() -> dict[str, str]:
    return {"platform": sys.platform, "machine": platform.machine(),
            "implementation": platform.python_implementation()}


def within(data: Any, root: Path, renames: dict[str, str] | None = None) -> Any:
    """``data`` (plain JSON) with every path under ``root`` written relative to it, wherever it stands in
    a string (a file list, a tensor's source, an error message), so evidence does not depend on the
    checkout folder. ``renames``: further folder prefixes written as another name (a remote source's
    cache folder as its URL), applied first."""
    prefixes = sorted({str(root) + "/": "", str(Path(root).resolve()) + "/": ""}.items(),
                      key=lambda kv: len(kv[0]), reverse=True)
    prefixes = sorted((renames or {}).items(), key=lambda kv: len(kv[0]), reverse=True) + prefixes

    def walk(x: Any) -> Any:
        if isinstance(x, str):
            for prefix, name in prefixes:
                x = x.replace(prefix, name)
            return x
        if isinstance(x, dict):
            return {k: walk(v) for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(data)


def display_path(path: Path | str, root: Path) -> str:
    """A path relative to ``root`` when inside it (so evidence does not depend on the checkout folder)."""
    path = Path(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def partial_path(path: Path) -> Path:
    """Where the evidence of a run that did not complete goes: ``evidence.json`` -> ``evidence.partial.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old file or the new one, never a part.

    The text goes to a hidden temporary file in the same directory, is flushed to disk (fsync) and
    renamed over ``path``; on any failure (a full disk, an interrupt) the temporary file is removed and
    ``path`` is left as it was.

    Raises:
        OSError: the directory cannot be written (the caller says so; ``path`` is untouched).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
