"""Behavioural evidence: what a model says (locally or through an OpenAI-compatible endpoint), compared.

Weight methods are blind to distillation and unusable when only an API is available; behaviour sees both,
but answers a different question: *does the target behave like the reference* (derived or distilled from
it), not *do its weights descend from the reference's*. Entry point: :func:`measure`.
"""

from .backends import Completion, EndpointError, HttpBackend, LocalBackend, NextToken
from .embed import SentenceEncoder, load_encoder
from .measure import BehaviourComparison, BehaviourEvidence, BehaviourProfile, compare, measure, profile
from .measures import (
    ContinuationAgreement,
    CutoffEstimate,
    NextTokenDivergence,
    PairedSimilarity,
    RefusalComparison,
    RepresentationSimilarity,
    estimate_cutoff,
    linear_cka,
)
from .probes import Probes, load_probes

__all__ = ["measure", "profile", "compare", "BehaviourEvidence", "BehaviourProfile", "BehaviourComparison",
           "LocalBackend", "HttpBackend", "EndpointError", "Completion", "NextToken", "Probes", "load_probes",
           "CutoffEstimate", "ContinuationAgreement", "RefusalComparison", "NextTokenDivergence",
           "RepresentationSimilarity", "PairedSimilarity", "SentenceEncoder", "load_encoder", "estimate_cutoff",
           "linear_cka"]
