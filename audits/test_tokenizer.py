"""Tokenizer evidence: is the target's tokenizer the reference's (reused, extended) or its own?

Retraining a tokenizer is expensive and breaks the pretrained embeddings, so fine-tunes and continued
pretraining keep the base tokenizer, possibly with added tokens; other tokenizers are built on a published
vocabulary, re-numbered and extended. One test per measure family: the overlap audit gives the verdict
under both claims from overlap, containment, id alignment and merge order (audits.tokenizer_criteria) and
says which carried it; id alignment, extension and merge order are judged under `independent`; special
tokens and encoding agreement on the probe corpus are recorded for the report.
Each measure is computed once per (target, reference) pair for the session (``tokenizer_cache``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Callable

import pytest

from modellineage.errors import UnsupportedFormat
from modellineage.reporting import report
from modellineage.tokenizer.compare import (
    load_probes,
    measure_encoding,
    measure_extension,
    measure_id_alignment,
    measure_merges,
    measure_overlap,
    measure_special_tokens,
)

from .plugin import once
from .tokenizer_criteria import (
    derivation_signals,
    id_alignment,
    merge_rules,
    not_an_extension,
    verdict_sentence,
    vocabulary_overlap,
)

pytestmark = pytest.mark.tokenizer
PROBES = Path(__file__).resolve().parents[1] / "fixtures" / "probes"


@lru_cache(maxsize=1)
def _probes():
    return load_probes(PROBES)


@pytest.fixture(scope="session")
def tokenizer_cache() -> dict:
    """Tokenizer measurements by (reference name, measure); the session has one target."""
    return {}


def _measured(cache: dict, reference, measure: str, compute: Callable):
    """``compute()`` once per (reference, measure) for the session (:func:`audits.plugin.once`)."""
    return once(cache, (reference.name, measure), compute)


def _vocabularies(target, reference, evidence):
    t, r = target.vocabulary, reference.model.vocabulary
    evidence.measured("target_vocabulary", t)
    evidence.measured("reference_vocabulary", r)
    return t, r


def _alignment(t, r, reference, cache):
    return _measured(cache, reference, "id_alignment", lambda: measure_id_alignment(t, r))


def _extension(t, r, reference, cache):
    alignment = _alignment(t, r, reference, cache)
    return _measured(cache, reference, "extension", lambda: measure_extension(t, r, alignment=alignment))


def _merges(t, r, reference, cache):
    """The merge comparison, or (None, why) when a side has no merge rules (Unigram, WordPiece)."""
    try:
        return _measured(cache, reference, "merges", lambda: measure_merges(t, r)), None
    except UnsupportedFormat as exc:
        return None, str(exc)


def _files(t, r, reference: str) -> str:
    return report.table(["side", "file read", "format", "model", "tokens"],
                        [["target", t.path.name, t.format, t.model_type, f"{t.size:,}"],
                         [reference, r.path.name, r.format, r.model_type, f"{r.size:,}"]],
                        caption="Tokenizer files read")


def test_vocabulary_overlap(target, reference, thresholds, evidence, tokenizer_cache):
    t, r = _vocabularies(target, reference, evidence)
    overlap = evidence.measured("overlap", _measured(tokenizer_cache, reference, "overlap",
                                                     lambda: measure_overlap(t, r)))
    alignment = evidence.measured("id_alignment", _alignment(t, r, reference, tokenizer_cache))
    extension = evidence.measured("extension", _extension(t, r, reference, tokenizer_cache))
    merges, why = _merges(t, r, reference, tokenizer_cache)
    if merges is not None:
        evidence.measured("merges", merges)
    signals = evidence.measured("derivation_signals", derivation_signals(
        overlap, alignment, extension, merges, thresholds, reference.name, why))
    evidence.says(verdict_sentence(signals, reference.name))
    evidence.html(_files(t, r, reference.name) + report.table(
        ["tokens", "target", reference.name, "shared", f"share of {reference.name}", "share of target", "Jaccard"],
        [["normalised (bytes)", f"{overlap.target_size:,}", f"{overlap.reference_size:,}", f"{overlap.shared:,}",
          f"{overlap.share_of_reference:.2%}", f"{overlap.share_of_target:.2%}", f"{overlap.jaccard:.2%}"],
         ["raw strings", f"{len(t.id_of_raw()):,}", f"{len(r.id_of_raw()):,}", f"{overlap.raw_shared:,}",
          f"{overlap.raw_share_of_reference:.2%}", f"{overlap.raw_share_of_target:.2%}", f"{overlap.raw_jaccard:.2%}"]],
        caption=f"Vocabulary overlap with {reference.name}")
        + report.table(["token", f"{reference.name} id", "target id"], overlap.first_shared,
                       caption="First shared tokens (by reference id)")
        + report.table(["token", f"{reference.name} id"], overlap.only_reference,
                       caption=f"First tokens only in {reference.name}")
        + report.table(["token", "target id"], overlap.only_target, caption="First tokens only in the target"))
    evidence.html(report.table(["evidence", "shows derivation", "measured (bound)"],
                               [[s.name, {True: "yes", False: "no", None: "not measured"}[s.shows_derivation],
                                 s.clause.split(": ", 1)[1]] for s in signals],
                               caption=f"What the tokenizer evidence shows about {reference.name}"))
    judgement = evidence.judged(vocabulary_overlap(overlap, alignment, extension, merges, thresholds,
                                                   reference.name, reference.expectation("tokenizer"), why))
    assert not judgement.failed, judgement.message


def test_id_alignment(target, reference, thresholds, evidence, tokenizer_cache):
    t, r = _vocabularies(target, reference, evidence)
    alignment = evidence.measured("id_alignment", _alignment(t, r, reference, tokenizer_cache))
    evidence.html(report.table(
        ["shared tokens", "same id", "same id (share of reference)", "distinct offsets", "dominant offset",
         "at dominant offset (share of reference)"],
        [[f"{alignment.shared:,}", f"{alignment.same_id:,}", f"{alignment.same_id_share:.2%}",
          f"{alignment.distinct_offsets:,}", alignment.dominant_offset, f"{alignment.dominant_share:.2%}"]],
        caption=f"Token ids: target vs {reference.name}")
        + report.table(["id offset (target − reference)", "shared tokens"], alignment.histogram,
                       caption="Id-offset histogram (most frequent offsets)")
        + report.table([f"{reference.name} ids", "offset", "tokens"],
                       [[f"{a}–{b}", f"{o:+d}", c] for a, b, o, c in alignment.runs],
                       caption="Longest runs of consecutive shared tokens at one offset"))
    if alignment.histogram:
        evidence.png(report.bar_plot([f"{o:+d}" for o, _ in alignment.histogram],
                                     [c / max(alignment.reference_size, 1) for _, c in alignment.histogram],
                                     title=f"Shared tokens by id offset (target − {reference.name})",
                                     ylabel="share of reference", ylim=(0, 1)), "id offsets")
    evidence.says(f"{alignment.dominant_share:.1%} of {reference.name}'s tokens sit at one id offset "
                  f"({alignment.dominant_offset}).")
    if reference.expectation("tokenizer") == "derived":
        pytest.skip(f"recorded, not judged: {alignment.dominant_share:.2%} of {reference.name}'s tokens at offset "
                    f"{alignment.dominant_offset} (a derived tokenizer is judged by the overlap audit)")
    judgement = evidence.judged(id_alignment(alignment, thresholds, reference.name))
    assert not judgement.failed, judgement.message


def test_vocabulary_extension(target, reference, thresholds, evidence, tokenizer_cache):
    t, r = _vocabularies(target, reference, evidence)
    alignment = _alignment(t, r, reference, tokenizer_cache)
    extension = evidence.measured("extension", _extension(t, r, reference, tokenizer_cache))
    evidence.html(report.table(
        [f"{reference.name} in target", f"target in {reference.name}", "smaller side contained", "size ratio",
         "added (K)", "removed", "containment", "dominant offset", "at that offset"],
        [[f"{extension.reference_in_target:.2%}", f"{extension.target_in_reference:.2%}",
          f"{extension.contained_share:.2%} ({extension.smaller})", f"{extension.size_ratio:.2f}",
          f"{extension.added:,}", f"{extension.removed:,}", extension.contained, extension.dominant_offset,
          f"{extension.dominant_share:.2%}"]],
        caption=f"Extension: target vs {reference.name}")
        + report.table(["target ids of added tokens", "tokens"],
                       [[f"{a}–{b}", c] for a, b, c in extension.added_id_runs], caption="Where the added tokens sit")
        + report.table([f"{reference.name} ids", "offset", "tokens"],
                       [[f"{a}–{b}", f"{o:+d}", c] for a, b, o, c in extension.shift_runs],
                       caption="Where the reference's ids went"))
    evidence.says(f"Extension check: {extension.summary}; {extension.contained_share:.1%} of the smaller "
                  f"vocabulary ({extension.smaller}) in the other at size ratio {extension.size_ratio:.2f}.")
    if reference.expectation("tokenizer") == "derived":
        pytest.skip(f"recorded, not judged: {extension.summary}")
    judgement = evidence.judged(not_an_extension(extension, alignment, thresholds, reference.name))
    assert not judgement.failed, judgement.message


def test_merge_rules(target, reference, thresholds, evidence, tokenizer_cache):
    t, r = _vocabularies(target, reference, evidence)
    merges = evidence.measured("merges", _measured(tokenizer_cache, reference, "merges", lambda: measure_merges(t, r)))
    fmt = (lambda v: "—" if v is None else f"{v:.4f}")
    evidence.html(report.table(
        ["target rules", f"{reference.name} rules", "shared", f"share of {reference.name}", "share of shorter",
         "Spearman ρ", "Kendall τ", "common prefix", "origin (target / reference)"],
        [[f"{merges.target_merges:,}", f"{merges.reference_merges:,}", f"{merges.shared:,}",
          f"{merges.share_of_reference:.2%}", f"{merges.share_of_shorter:.2%}", fmt(merges.spearman),
          fmt(merges.kendall), f"{merges.common_prefix:,}", f"{merges.target_origin} / {merges.reference_origin}"]],
        caption=f"Merge rules: target vs {reference.name} (Spearman and Kendall between the shared rules' positions "
                "in the two lists)")
        + report.table(["#", "target", reference.name], merges.first_rules, caption="First merge rules side by side"))
    tau = "—" if merges.kendall is None else f"{merges.kendall:.3f}"
    summary = (f"{merges.shared:,} shared merge rules ({merges.share_of_shorter:.1%} of the shorter list), Kendall "
               f"τ {tau} between their positions, common prefix {merges.common_prefix:,}")
    evidence.says(f"Merge rules: {summary}.")
    if reference.expectation("tokenizer") == "derived":
        pytest.skip(f"recorded, not judged: {summary}")
    judgement = evidence.judged(merge_rules(merges, thresholds, reference.name))
    assert not judgement.failed, judgement.message


def test_special_tokens_recorded(target, reference, evidence, tokenizer_cache):
    """Informational: special tokens side by side (common strings like <s> are no evidence on their own)."""
    t, r = _vocabularies(target, reference, evidence)
    special = evidence.measured("special_tokens", _measured(tokenizer_cache, reference, "special_tokens",
                                                            lambda: measure_special_tokens(t, r)))
    evidence.html(report.table(["role", "target", reference.name, "same"],
                               [[role, a, b, "yes" if same else "no"] for role, a, b, same in special.roles],
                               caption="Special tokens")
                  + report.table(["", "special tokens", "added tokens"],
                                 [["target", special.target_special, special.target_added_count],
                                  [reference.name, special.reference_special, special.reference_added_count]],
                                 caption=f"{special.shared_special} special token string(s) on both sides"))


def test_encoding_agreement_recorded(target, reference, evidence, tokenizer_cache):
    """Informational: the probe corpus (fixtures/probes) cut by both tokenizers."""
    t, r = _vocabularies(target, reference, evidence)
    enc = evidence.measured("encoding", _measured(tokenizer_cache, reference, "encoding",
                                                  lambda: measure_encoding(t, r, _probes(), corpus=PROBES)))
    evidence.html(report.table(["category", "probes", "identical pieces", "mean boundary F1"],
                               [[c, n, k, f"{f:.3f}"] for c, n, k, f in enc.by_category]
                               + [["all", enc.probes, enc.identical, f"{enc.mean_boundary_f1:.3f}"]],
                               caption=f"Encoding agreement with {reference.name} on the probe corpus")
                  + (report.table(["probe", "target pieces", f"{reference.name} pieces"], enc.differences,
                                  caption="First probes cut differently") if enc.differences else ""))
    evidence.says(f"{enc.identical} of {enc.probes} probe texts are tokenized identically "
                  f"(mean boundary F1 {enc.mean_boundary_f1:.3f}).")
