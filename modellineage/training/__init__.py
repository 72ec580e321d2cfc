"""Training evidence: checkpoint chains (:func:`measure_chain`) and training logs (:func:`measure_log`).

:func:`measure` is the family's one entry point (both at once). Every function returns frozen records with
their provenance (files, sample fraction and seed) and judges nothing; audits/test_training.py judges them
against thresholds.toml [training].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modellineage.errors import LineageError
from modellineage.training.chain import Checkpoint, ChainEvidence, measure_chain
from modellineage.training.logs import LogClaim, LogEvidence, measure_log, read_log

__all__ = ["Checkpoint", "ChainEvidence", "measure_chain", "LogClaim", "LogEvidence", "measure_log", "read_log",
           "TrainingEvidence", "measure"]


@dataclass(frozen=True)
class TrainingEvidence:
    """A chain (or None without checkpoints) and each log's evidence, or why it could not be measured."""

    chain: ChainEvidence | None
    logs: Mapping[str, LogEvidence | str]

    def as_dict(self) -> dict:
        return {"chain": self.chain.as_dict() if self.chain else None,
                "logs": {k: v if isinstance(v, str) else v.as_dict() for k, v in sorted(self.logs.items())}}


def measure(target=None, *, checkpoints: Sequence[Checkpoint] = (), references: Mapping | None = None,
            logs: Mapping[str, tuple[Path | str, LogClaim]] | None = None, vocab_size: int | None = None,
            fraction: float | None = None, seed: int = 0) -> TrainingEvidence:
    """Measure a target's training evidence.

    Args:
        target: the released model (a Model handle), compared with the chain's last checkpoint.
        checkpoints: the chain in training order (see :func:`measure_chain`).
        references: name -> Model handle, compared with every checkpoint.
        logs: name -> (log file, what is claimed about its run).
        vocab_size: for the ln(V) figures (default: the target's config ``vocab_size``).
        fraction, seed: row sampling of the weight comparisons.

    Example:
        >>> from modellineage import open_model, training                      # doctest: +SKIP
        >>> chain = [training.Checkpoint(f"s{s}", s, open_model(f"fixtures/chain/pretrain/step_{s:04d}"))
        ...          for s in (0, 100, 200)]
        >>> training.measure(open_model("fixtures/demo/base"), checkpoints=chain).chain.links[0].neighbour
    """
    if vocab_size is None and target is not None:
        try:
            vocab_size = target.arch.vocab_size if target.arch is not None else None
        except LineageError:
            vocab_size = None
    chain = measure_chain(checkpoints, target=target, references=references, fraction=fraction, seed=seed) \
        if checkpoints else None
    found: dict[str, LogEvidence | str] = {}
    for name, (path, claim) in (logs or {}).items():
        try:
            found[name] = measure_log(path, name=name, vocab_size=vocab_size, claim=claim)
        except LineageError as exc:
            found[name] = str(exc)
    return TrainingEvidence(chain, found)
