"""Training evidence: checkpoint chains (:func:`measure_chain`) and training logs (:func:`measure_log`).

Both return frozen records with their provenance (files, sample fraction and seed) and judge nothing;
audits/test_training.py judges them against thresholds.toml [training].
"""

from modellineage.training.chain import Checkpoint, ChainEvidence, measure_chain
from modellineage.training.logs import LogClaim, LogEvidence, measure_log, read_log

__all__ = ["Checkpoint", "ChainEvidence", "measure_chain", "LogClaim", "LogEvidence", "measure_log", "read_log"]
