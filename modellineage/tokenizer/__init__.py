"""Tokenizer evidence: one normalised vocabulary from every tokenizer format, overlap, id alignment,
containment and merge order between two tokenizers, MinHash fingerprints.

What it can show: a tokenizer was reused or extended. What it cannot: whether weights were; a
reused tokenizer is common among independently trained models.
"""

from .compare import (
    EncodingAgreement,
    Extension,
    IdAlignment,
    MergeComparison,
    MergeOrder,
    Probe,
    SpecialTokens,
    TokenizerComparison,
    VocabOverlap,
    boundary_f1,
    compare_tokenizers,
    measure,
    load_probes,
    measure_encoding,
    measure_extension,
    measure_id_alignment,
    measure_merges,
    measure_overlap,
    measure_special_tokens,
    merge_order,
    show,
)
from .fingerprint import (
    DEFAULT_K,
    HASH,
    MinHashSketch,
    OverlapEstimate,
    estimate_overlap,
    exact_overlap,
    sketch,
    vocabulary_sha256,
)
from .vocab import (
    Vocabulary,
    byte_level_to_bytes,
    bytes_to_byte_level,
    derive_merges,
    first_ids,
    load_from_files,
    load_vocabulary,
    metaspace_to_bytes,
    text_pieces,
    wordpiece_to_bytes,
)

__all__ = ["measure", "show", "VocabOverlap", "measure_overlap", "IdAlignment", "measure_id_alignment", "MergeOrder", "merge_order", "MergeComparison", "measure_merges", "SpecialTokens", "measure_special_tokens", "Extension", "measure_extension", "Probe", "load_probes", "EncodingAgreement", "boundary_f1", "measure_encoding", "TokenizerComparison", "compare_tokenizers", "Vocabulary", "load_vocabulary", "load_from_files", "derive_merges", "first_ids", "text_pieces", "byte_level_to_bytes", "bytes_to_byte_level", "metaspace_to_bytes", "wordpiece_to_bytes", "HASH", "DEFAULT_K", "MinHashSketch", "vocabulary_sha256", "sketch", "OverlapEstimate", "estimate_overlap", "exact_overlap"]
