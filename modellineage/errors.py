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
