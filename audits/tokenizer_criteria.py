"""Judging tokenizer evidence against the bounds in thresholds.toml [tokenizer].

Four kinds of evidence can show that the target's tokenizer derives from the reference's:

* **overlap** — the design's Jaccard bands: > 98% reused, 90-98% extended, < 90% independent;
* **containment** — one vocabulary holds ≥ ``contained_min_share`` of the other, the smaller one, *whatever
  the ids*: a vocabulary built on a published one (re-numbered, tens of thousands of tokens added) keeps
  ≥ 98% of it while its Jaccard falls to ~65%. Independent vocabularies of similar size never get there,
  but a much larger vocabulary contains most of any small one, so containment alone counts only while the
  larger side is at most ``contained_max_size_ratio`` times the smaller and the smaller has at least
  ``contained_min_tokens`` tokens (calibration: benchmarks/bench_tokenizer.py --calibrate);
* **id alignment** — ≥ ``aligned_min_share`` of the reference at one constant id offset;
* **merge order** — ≥ ``merge_order_min_share`` of the shorter merge list (at least
  ``merge_order_min_shared`` rules) reappears in the other list with Kendall τ ≥ ``merge_order_min_kendall``
  between their positions: rules the target interleaves or appends do not lower τ, and independently
  trained BPEs, which share many early rules, keep τ well below it.

``derivation_signals`` reads all four for one pair; each judgement names the ones that carried its
verdict. Each function returns a ``Judgement`` whose message names the observed values, the bounds and
their keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from .criteria import Bound, Judgement, Thresholds

REUSED, EXTENSION, INDEPENDENT = "reused", "extension", "independent"
OVERLAP, CONTAINMENT, ID_ALIGNMENT, MERGE_ORDER = "overlap", "containment", "id alignment", "merge order"


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


def containment_shows_derivation(extension, thresholds: Thresholds) -> bool:
    """≥ contained_min_share of the smaller vocabulary inside the larger one, at a size ratio and a size
    where independent vocabularies do not get there (whatever the ids)."""
    return (extension.contained_share >= _b(thresholds, "contained_min_share").value
            and extension.size_ratio <= _b(thresholds, "contained_max_size_ratio").value
            and min(extension.reference_size, extension.target_size) >= _b(thresholds, "contained_min_tokens").value)


def merge_order_shows_derivation(merges, thresholds: Thresholds) -> bool:
    """Most rules of the shorter merge list reappear in the other list in the same relative order."""
    return (merges is not None and merges.kendall is not None
            and merges.shared >= _b(thresholds, "merge_order_min_shared").value
            and merges.share_of_shorter >= _b(thresholds, "merge_order_min_share").value
            and merges.kendall >= _b(thresholds, "merge_order_min_kendall").value)


@dataclass(frozen=True)
class Signal:
    """One kind of evidence for one pair: does it show derivation (None: not measurable), in one clause."""

    name: str
    shows_derivation: bool | None
    clause: str                     # the measured values with their bounds
    sources: tuple[str, ...]
    short: str = ""                 # the measured value in a few words, for the report sentence


def _overlap_signal(overlap, thresholds: Thresholds) -> Signal:
    reuse, ext = _b(thresholds, "reuse_min_overlap"), _b(thresholds, "extension_min_overlap")
    band = overlap_band(overlap.jaccard, thresholds)
    return Signal(OVERLAP, band != INDEPENDENT,
                  f"overlap: Jaccard {overlap.jaccard:.2%}, band '{band}' (extension from {ext.value:.0%}, reused "
                  f"above {reuse.value:.0%})", (ext.where, reuse.where), f"Jaccard {overlap.jaccard:.1%}")


def _containment_signal(extension, thresholds: Thresholds, reference: str) -> Signal:
    c, r, n = (_b(thresholds, k) for k in ("contained_min_share", "contained_max_size_ratio", "contained_min_tokens"))
    smaller = (f"{reference}'s {extension.reference_size:,} tokens in the target's {extension.target_size:,}"
               if extension.smaller == "reference" else
               f"the target's {extension.target_size:,} tokens in {reference}'s {extension.reference_size:,}")
    shows = containment_shows_derivation(extension, thresholds)
    clause = (f"containment: {extension.contained_share:.2%} of {smaller} (size ratio {extension.size_ratio:.2f}; "
              f"evidence from {c.value:.0%} up to a ratio of {r.value:g} and from {n.value:,} tokens)")
    if extension.contained_share >= c.value and not shows:
        clause += (f", no evidence alone: the larger vocabulary is {extension.size_ratio:.1f}× the smaller, and "
                   f"independent vocabularies that much larger contain most of a smaller one too"
                   if extension.size_ratio > r.value else
                   f", no evidence alone: {min(extension.reference_size, extension.target_size):,} tokens are "
                   f"the common core of any vocabulary")
    short = (f"{extension.contained_share:.1%} of {reference}'s tokens in the target" if extension.smaller == "reference"
             else f"{extension.contained_share:.1%} of the target's tokens in {reference}'s")
    return Signal(CONTAINMENT, shows, clause, (c.where, r.where, n.where),
                  f"{short}, size ratio {extension.size_ratio:.2f}")


def _alignment_signal(alignment, thresholds: Thresholds, reference: str) -> Signal:
    a = _b(thresholds, "aligned_min_share")
    offset = "no shared tokens" if alignment.dominant_offset is None else f"offset {alignment.dominant_offset:+d}"
    return Signal(ID_ALIGNMENT, ids_aligned(alignment, thresholds),
                  f"id alignment: {alignment.dominant_share:.2%} of {reference}'s tokens at one id offset "
                  f"({offset}; aligned from {a.value:.0%})", (a.where,),
                  f"{alignment.dominant_share:.1%} of {reference}'s tokens at one id offset")


def _merge_signal(merges, thresholds: Thresholds, reason: str | None) -> Signal:
    s, k, n = (_b(thresholds, key) for key in ("merge_order_min_share", "merge_order_min_kendall",
                                                "merge_order_min_shared"))
    sources = (s.where, k.where, n.where)
    if merges is None:
        return Signal(MERGE_ORDER, None, f"merge order: not measured ({reason or 'no merge rules on one side'})",
                      sources, "not measured")
    tau = "—" if merges.kendall is None else f"{merges.kendall:.3f}"
    rho = "—" if merges.spearman is None else f"{merges.spearman:.3f}"
    return Signal(MERGE_ORDER, merge_order_shows_derivation(merges, thresholds),
                  f"merge order: {merges.shared:,} shared rules, {merges.share_of_shorter:.2%} of the shorter list "
                  f"of {min(merges.target_merges, merges.reference_merges):,}, Kendall τ {tau} (Spearman ρ {rho}) "
                  f"between their positions (derived from {s.value:.0%} shared and τ ≥ {k.value:g}, at least "
                  f"{n.value:,} rules)", sources,
                  f"Kendall τ {tau} over the {merges.share_of_shorter:.1%} of the shorter merge list both share")


def derivation_signals(overlap, alignment, extension, merges, thresholds: Thresholds, reference: str,
                       merges_reason: str | None = None) -> tuple[Signal, ...]:
    """The four kinds of evidence for one pair, in the order overlap, containment, id alignment, merge order.

    ``merges`` is a MergeComparison or None when it could not be measured (``merges_reason`` says why).
    """
    return (_overlap_signal(overlap, thresholds), _containment_signal(extension, thresholds, reference),
            _alignment_signal(alignment, thresholds, reference), _merge_signal(merges, thresholds, merges_reason))


def carried_by(signals) -> str:
    """'containment and merge order' — the signals that show derivation, in order ('' when none)."""
    names = [s.name for s in signals if s.shows_derivation]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def verdict_sentence(signals, reference: str) -> str:
    """One sentence for the report saying which evidence carried the tokenizer verdict."""
    def listed(group) -> str:
        parts = [f"{s.name} ({s.short})" for s in group]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    shown = [s for s in signals if s.shows_derivation]
    rest = [s for s in signals if not s.shows_derivation]
    if shown:
        return (f"Tokenizer derived from {reference}'s, carried by {listed(shown)}"
                + (f"; not shown by {listed(rest)}" if rest else "") + ".")
    return f"Tokenizer shows no evidence of derivation from {reference}'s: {listed(signals)}."


def vocabulary_overlap(overlap, alignment, extension, merges, thresholds: Thresholds, reference: str,
                       expectation: str, merges_reason: str | None = None) -> Judgement:
    """independent: the overlap band (90% and up) or containment fails (ids and merge order have their own
    audits). derived: fails when none of overlap, containment, id alignment and merge order shows derivation.
    """
    signals = derivation_signals(overlap, alignment, extension, merges, thresholds, reference, merges_reason)
    ext = _b(thresholds, "extension_min_overlap")
    details = "; ".join(s.clause for s in signals)
    j = overlap.jaccard
    if expectation == "independent":
        vocab = [s for s in signals[:2] if s.shows_derivation]
        failed = bool(vocab)
        sources = "; ".join(w for s in signals[:2] for w in s.sources)
        if failed:
            message = (f"the target's tokenizer is not independent of {reference!r}'s: {carried_by(vocab)} "
                       f"shows derivation — {details} ({sources})")
        else:
            message = (f"no vocabulary evidence of derivation from {reference!r} (overlap and containment; id "
                       f"alignment and merge order are judged by their own audits) — {details} ({sources})")
        return Judgement("independent tokenizer", j, f"< {ext.value} and not contained", sources, failed, message)
    carried = carried_by(signals)
    failed = not carried
    sources = "; ".join(w for s in signals for w in s.sources if s.shows_derivation or failed)
    message = (f"derived tokenizer, carried by {carried} — {details} ({sources})" if carried else
               f"none of overlap, containment, id alignment and merge order shows a tokenizer derived from "
               f"{reference!r} — {details} ({sources})")
    return Judgement("derived (reused or extended) tokenizer", j, "any of: overlap ≥ extension band, containment, "
                     "aligned ids, merge order", sources, failed, message)


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
    """One vocabulary contains the other: by containment alone (within the size ratio and size where that is
    evidence), or ≥ contained_min_share of the smaller with aligned ids at any size ratio."""
    contained = extension.contained_share >= _b(thresholds, "contained_min_share").value
    return containment_shows_derivation(extension, thresholds) or (contained and ids_aligned(alignment, thresholds))


def not_an_extension(extension, alignment, thresholds: Thresholds, reference: str) -> Judgement:
    """Under `independent`: the target may not contain the reference (or the reverse), re-numbered or not."""
    c = _b(thresholds, "contained_min_share")
    contain = _containment_signal(extension, thresholds, reference)
    align = _alignment_signal(alignment, thresholds, reference)
    failed = extension_detected(extension, alignment, thresholds)
    carried = carried_by([s for s in (contain, align) if s.shows_derivation]) if failed else ""
    message = (f"{extension.reference_in_target:.2%} of {reference!r}'s vocabulary is in the target and "
               f"{extension.target_in_reference:.2%} of the target's in {reference!r}; {contain.clause}; "
               f"{align.clause}" + (f": an extension, carried by {carried} — {extension.summary}" if failed else "")
               + f" ({'; '.join(contain.sources + align.sources)})")
    return Judgement("not an extension of the reference vocabulary", extension.contained_share,
                     f"< {c.value} (or beyond the size ratio) unless ids aligned", c.where, failed, message)


def merge_rules(merges, thresholds: Thresholds, reference: str) -> Judgement:
    """Under `independent`: the merge lists may not start with a long identical run of rules, nor share most
    of the shorter list in the same relative order (``merge_order_shows_derivation``)."""
    b = _b(thresholds, "independent_max_merge_prefix_share")
    n = merges.common_prefix
    shorter = min(merges.target_merges, merges.reference_merges)
    share = n / shorter if shorter else 0.0
    prefix_copied = share > b.value
    order = _merge_signal(merges, thresholds, None)
    failed = prefix_copied or bool(order.shows_derivation)
    reasons = [name for name, hit in (("common prefix", prefix_copied), (MERGE_ORDER, order.shows_derivation)) if hit]
    message = (f"the first {n:,} merge rules of the target and {reference!r} are identical and in the same order, "
               f"{share:.2%} of the shorter list of {shorter:,} ({'>' if prefix_copied else '≤'} {b.value:.0%} "
               f"allowed; {b.where}); {order.clause} ({'; '.join(order.sources)})"
               + (f": the merge rules derive from {reference!r}'s, carried by {' and '.join(reasons)}" if failed
                  else ""))
    measured = merges.kendall if merges.kendall is not None else share
    return Judgement("merge lists not copied", measured,
                     f"prefix ≤ {b.value} and not (τ ≥ {_b(thresholds, 'merge_order_min_kendall').value} over "
                     f"≥ {_b(thresholds, 'merge_order_min_share').value:.0%} of the shorter list)",
                     f"{b.where}; {'; '.join(order.sources)}", failed, message)
