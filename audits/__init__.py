"""The provenance audits: thin pytest tests that measure with `modellineage` and judge with thresholds.toml."""
