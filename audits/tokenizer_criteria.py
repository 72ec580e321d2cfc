"""Judging tokenizer evidence against the bands in thresholds.toml [tokenizer].

The bands come from the design's tokenizer analysis table: Jaccard overlap of the normalised
vocabularies > 98% -> the tokenizer is reused, 90-98% -> extended (continued pretraining), < 90% ->
an independent tokenizer. Extensions that add many tokens (so the overlap drops below 90%) still keep
the reference's ids, at offset 0 or shifted by a constant; ``aligned_min_share`` recognises them.
Each function returns a ``Judgement`` whose message names the observed value, the bound and its key.
"""

from __future__ import annotations

from .criteria import Bound, Judgement, Thresholds

REUSED, EXTENSION, INDEPENDENT = "reused", "extension", "independent"


def _b(thresholds: Thresholds, key: str) -> Bound:
    return thresholds["tokenizer", key]


def overlap_band(jaccard: float, thresholds: Thresholds) -> str:
    """The design's band of a Jaccard overlap."""
    if jaccard > _b(thresholds, "reuse_min_overlap").value:
        return REUSED
    if jaccard >= _b(thresholds, "extension_min_overlap").value:
        return EXTENSION
    return INDEPENDENT


def ids_aligned(alignment, thresholds: Thresholds) -> bool:
    return alignment.dominant_share >= _b(thresholds, "aligned_min_share").value


def vocabulary_overlap(overlap, alignment, thresholds: Thresholds, reference: str, expectation: str) -> Judgement:
    """independent: reuse (> 98%) or extension (90-98%) fails. derived: < 90% without aligned ids fails."""
    reuse, ext, aligned_b = (_b(thresholds, k) for k in ("reuse_min_overlap", "extension_min_overlap",
                                                         "aligned_min_share"))
    j = overlap.jaccard
    band = overlap_band(j, thresholds)
    aligned = ids_aligned(alignment, thresholds)
    seen = (f"vocabulary overlap with {reference!r} (Jaccard of normalised tokens) = {j:.2%}, band '{band}' "
            f"(reused > {reuse.value:.0%}, extension ≥ {ext.value:.0%}; {reuse.where}, {ext.where})")
    if expectation == "independent":
        failed = band != INDEPENDENT
        bound = f"< {ext.value}"
        message = seen + (": the target's tokenizer is not independent of the reference's" if failed else "")
        return Judgement("independent tokenizer", j, bound, ext.where, failed, message)
    failed = band == INDEPENDENT and not aligned
    align = (f"; ids aligned: {alignment.dominant_share:.2%} of the reference at offset "
             f"{alignment.dominant_offset:+d} (≥ {aligned_b.value:.0%}, {aligned_b.where})"
             if alignment.dominant_offset is not None else "; no shared tokens")
    message = seen + align + (": neither the overlap nor the ids show a derived tokenizer" if failed else "")
    return Judgement("derived (reused or extended) tokenizer", j, f"≥ {ext.value} or aligned ids", ext.where,
                     failed, message)


def id_alignment(alignment, thresholds: Thresholds, reference: str) -> Judgement:
    """Under `independent`: no constant id offset may hold `aligned_min_share` of the reference vocabulary."""
    b = _b(thresholds, "aligned_min_share")
    share = alignment.dominant_share
    failed = share >= b.value
    offset = "none" if alignment.dominant_offset is None else f"{alignment.dominant_offset:+d}"
    message = (f"{share:.2%} of {reference!r}'s tokens sit in the target at one id offset ({offset}); "
               f"{'≥' if failed else '<'} {b.value:.0%} ({b.where})"
               + ((": the target keeps the reference's token ids" if alignment.dominant_offset == 0 else
                   f": the target keeps the reference's token ids shifted by {offset}") if failed else ""))
    return Judgement("token ids not aligned", share, f"< {b.value}", b.where, failed, message)


def extension_detected(extension, alignment, thresholds: Thresholds) -> bool:
    """One vocabulary contains the other (≥ contained_min_share of the smaller) with aligned ids."""
    contained = max(extension.reference_in_target, extension.target_in_reference)
    return contained >= _b(thresholds, "contained_min_share").value and ids_aligned(alignment, thresholds)


def not_an_extension(extension, alignment, thresholds: Thresholds, reference: str) -> Judgement:
    """Under `independent`: the target may not be the reference plus K tokens (or the reverse) with kept ids."""
    c, a = _b(thresholds, "contained_min_share"), _b(thresholds, "aligned_min_share")
    contained = max(extension.reference_in_target, extension.target_in_reference)
    failed = extension_detected(extension, alignment, thresholds)
    message = (f"{extension.reference_in_target:.2%} of {reference!r}'s vocabulary is in the target and "
               f"{extension.target_in_reference:.2%} of the target's in {reference!r} (contained from "
               f"{c.value:.0%}, {c.where}); {alignment.dominant_share:.2%} at one id offset (aligned from "
               f"{a.value:.0%}, {a.where})" + (f": an extension — {extension.summary}" if failed else ""))
    return Judgement("not an extension of the reference vocabulary", contained, f"< {c.value} or ids not aligned",
                     c.where, failed, message)


def merge_prefix(merges, thresholds: Thresholds, reference: str) -> Judgement:
    """Under `independent`: the merge lists may not start with a long identical run of rules."""
    b = _b(thresholds, "independent_max_merge_prefix_share")
    n = merges.common_prefix
    shorter = min(merges.target_merges, merges.reference_merges)
    share = n / shorter if shorter else 0.0
    failed = share > b.value
    message = (f"the first {n:,} merge rules of the target and {reference!r} are identical and in the same order, "
               f"{share:.2%} of the shorter list of {shorter:,} ({'>' if failed else '≤'} {b.value:.0%} allowed; "
               f"{b.where})")
    return Judgement("merge lists not copied", share, f"≤ {b.value}", b.where, failed, message)
