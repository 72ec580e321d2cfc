"""Training evidence: checkpoint chains (:func:`measure_chain`) and training logs (:func:`measure_log`)."""

from modellineage.training.chain import Checkpoint, ChainEvidence, measure_chain

__all__ = ["Checkpoint", "ChainEvidence", "measure_chain"]
