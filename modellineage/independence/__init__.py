"""Independence evidence: a permutation-invariant test of separate training on matched MLP neurons with
a calibrated p-value. What it can show: two models were not trained independently. What it cannot:
which one came first.
"""

from .matching import (
    HeadAlignment,
    HiddenAlignment,
    IndependenceTest,
    LayerResult,
    TokenPairs,
    UnitResult,
    align_hidden,
    match_rows,
    measure_independence,
    shared_token_pairs,
)

__all__ = ["TokenPairs", "HiddenAlignment", "HeadAlignment", "UnitResult", "LayerResult", "IndependenceTest", "shared_token_pairs", "align_hidden", "match_rows", "measure_independence"]

#: The family's entry point: ``measure(target, reference, *, seed=0, ...)`` -> :class:`IndependenceTest`.
measure = measure_independence
__all__ += ["measure"]
