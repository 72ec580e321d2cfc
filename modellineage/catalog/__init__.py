"""Catalog evidence: the target's tokenizer and architecture against a bundled catalog of published
models, to name the candidate bases an auditor did not think of.
"""

from .entries import (
    COMPARED_FIELDS,
    ArchitectureMatch,
    Catalog,
    CatalogModel,
    CatalogTokenizer,
    TokenizerFingerprint,
    TokenizerMatch,
    fingerprint_tokens,
    load_catalog,
    nearest_architectures,
    nearest_tokenizers,
    vocabulary_tokens,
)

__all__ = ["COMPARED_FIELDS", "CatalogModel", "CatalogTokenizer", "Catalog", "load_catalog", "ArchitectureMatch", "nearest_architectures", "TokenizerFingerprint", "vocabulary_tokens", "fingerprint_tokens", "TokenizerMatch", "nearest_tokenizers"]
