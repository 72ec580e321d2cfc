"""Weight evidence: streamed per-tensor and per-layer similarity (raw and centred), layer and expert
correspondence, tensor signatures, embedding statistics, PCA, exact reuse.

What it can show: weights descend from a reference's. What it cannot: distillation (weights
trained anew on a teacher's outputs look independent).
"""


import importlib

__all__ = ["measure", "measure_target", "measure_aligned", "WeightEvidence", "TargetSide"]


def __getattr__(name: str):
    """The pipeline's names on first use: the independence family imports this package's readers, and
    the pipeline imports the independence test (aligned figures), so nothing is imported eagerly here."""
    if name in __all__:
        return getattr(importlib.import_module(".pipeline", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
