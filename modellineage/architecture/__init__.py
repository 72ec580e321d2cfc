"""Architecture evidence: normalised configs compared field by field, and configs checked against what
the weight shapes say. What it can show: a claimed architecture or a config that lies about the
weights. What it cannot: lineage (many families share an architecture).
"""

from modellineage.reading.config import ArchConfig, normalise_config

from .compare import (
    Agreement,
    ArchitectureEvidence,
    ConfigComparison,
    FieldComparison,
    WeightFacts,
    check_config_against_weights,
    compare_configs,
    count_parameters,
    facts_from_weights,
    measure,
)

__all__ = ["measure", "ArchitectureEvidence", "ArchConfig", "normalise_config", "WeightFacts", "facts_from_weights", "Agreement", "check_config_against_weights", "FieldComparison", "ConfigComparison", "compare_configs", "count_parameters"]
