"""Tokenizer provenance measures: how much of one vocabulary another one reuses, and how.

Every function compares a *target* vocabulary with a *reference* vocabulary (``modellineage.tokenizer.vocab``)
and returns a frozen record with ``as_dict()``; none of them judges. Tokens are compared by their
normalised byte sequences (so a SentencePiece and a byte-level spelling of one token are one token);
the raw-string figures are reported beside them. Orderings are by id, so records are deterministic.

Measures: ``measure_overlap`` (share of reference, share of target, Jaccard; raw and normalised),
``measure_id_alignment`` (same-id agreement, id-offset histogram, runs of constant offset),
``measure_merges`` (shared merge rules as a share of each list and of the shorter one, Spearman and Kendall
correlation of the shared rules' ranks, longest common prefix; ``merge_order`` on two plain lists),
``measure_special_tokens`` (bos/eos/pad/unk and added tokens side by side), ``measure_extension``
(target ⊇ reference + K, or the reverse: containment of each side and of the smaller one, the size ratio,
and where the added ids sit), ``measure_encoding`` (identical
piece sequences and token-boundary F1 on a probe corpus, see ``load_probes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from modellineage.errors import CorruptCheckpoint, UnsupportedFormat
from modellineage.tokenizer.vocab import SPECIAL_ROLES, Vocabulary, first_ids

EXAMPLES = 12          # tokens listed per example table
HISTOGRAM_BINS = 12    # id offsets listed (the most frequent)
PROBE_SEPARATOR = "%%"


def show(token: bytes) -> str:
    """A readable rendering of a normalised token: text where it is UTF-8, \\x escapes elsewhere."""
    return repr(token.decode("utf-8", errors="backslashreplace"))


def _sides(target: Vocabulary, reference: Vocabulary) -> dict:
    return {"target_file": str(target.path), "reference_file": str(reference.path),
            "target_format": target.format, "reference_format": reference.format}


# ----------------------------------------------------------------------------------------- overlap
@dataclass(frozen=True)
class VocabOverlap:
    """Shared tokens, normalised (bytes) and raw (strings)."""

    target_size: int                # distinct normalised tokens
    reference_size: int
    shared: int
    share_of_reference: float
    share_of_target: float
    jaccard: float
    raw_shared: int
    raw_share_of_reference: float
    raw_share_of_target: float
    raw_jaccard: float
    first_shared: tuple             # (token, reference id, target id) by reference id
    only_reference: tuple           # (token, reference id)
    only_target: tuple              # (token, target id)
    files: dict

    def as_dict(self) -> dict:
        return {
            "normalised": {"target_size": self.target_size, "reference_size": self.reference_size,
                           "shared": self.shared, "share_of_reference": self.share_of_reference,
                           "share_of_target": self.share_of_target, "jaccard": self.jaccard},
            "raw": {"shared": self.raw_shared, "share_of_reference": self.raw_share_of_reference,
                    "share_of_target": self.raw_share_of_target, "jaccard": self.raw_jaccard},
            "first_shared": [list(x) for x in self.first_shared],
            "only_reference": [list(x) for x in self.only_reference],
            "only_target": [list(x) for x in self.only_target],
            **self.files,
        }


def _ratios(shared: int, n_ref: int, n_tgt: int) -> tuple[float, float, float]:
    union = n_ref + n_tgt - shared
    return (shared / n_ref if n_ref else 0.0, shared / n_tgt if n_tgt else 0.0, shared / union if union else 0.0)


def measure_overlap(target: Vocabulary, reference: Vocabulary, *, examples: int = EXAMPLES) -> VocabOverlap:
    """Overlap of the two vocabularies as share of each side and Jaccard, normalised and raw."""
    t_ids, r_ids = target.id_of_bytes(), reference.id_of_bytes()
    shared = t_ids.keys() & r_ids.keys()
    s_ref, s_tgt, jac = _ratios(len(shared), len(r_ids), len(t_ids))
    t_raw, r_raw = target.id_of_raw(), reference.id_of_raw()
    raw_shared = len(t_raw.keys() & r_raw.keys())
    rs_ref, rs_tgt, rjac = _ratios(raw_shared, len(r_raw), len(t_raw))
    first_shared, only_ref = [], []
    for tok, rid in r_ids.items():  # in id order (see Vocabulary.id_of_bytes)
        if tok in t_ids:
            if len(first_shared) < examples:
                first_shared.append((show(tok), rid, t_ids[tok]))
        elif len(only_ref) < examples:
            only_ref.append((show(tok), rid))
        if len(first_shared) >= examples and len(only_ref) >= examples:
            break
    only_tgt = []
    for tok, tid in t_ids.items():
        if tok not in r_ids:
            only_tgt.append((show(tok), tid))
            if len(only_tgt) >= examples:
                break
    return VocabOverlap(len(t_ids), len(r_ids), len(shared), s_ref, s_tgt, jac, raw_shared, rs_ref, rs_tgt, rjac,
                        tuple(first_shared), tuple(only_ref), tuple(only_tgt), _sides(target, reference))


# ----------------------------------------------------------------------------------------- id alignment
@dataclass(frozen=True)
class IdAlignment:
    """Do shared tokens keep their ids (or move by one constant offset)?"""

    reference_size: int
    shared: int
    same_id: int                    # same bytes and same id
    same_id_share: float            # of the reference vocabulary
    distinct_offsets: int
    dominant_offset: int | None     # target id - reference id, most frequent
    dominant_count: int
    dominant_share: float           # of the reference vocabulary
    histogram: tuple                # (offset, count), most frequent first (ties: smaller offset)
    runs: tuple                     # (first ref id, last ref id, offset, count) runs of consecutive shared tokens
    files: dict

    def as_dict(self) -> dict:
        return {"reference_size": self.reference_size, "shared": self.shared, "same_id": self.same_id,
                "same_id_share": self.same_id_share, "distinct_offsets": self.distinct_offsets,
                "dominant_offset": self.dominant_offset, "dominant_count": self.dominant_count,
                "dominant_share": self.dominant_share,
                "histogram": [{"offset": o, "count": c} for o, c in self.histogram],
                "runs": [{"reference_ids": [a, b], "offset": o, "count": c} for a, b, o, c in self.runs],
                **self.files}


def measure_id_alignment(target: Vocabulary, reference: Vocabulary, *, bins: int = HISTOGRAM_BINS,
                         max_runs: int = 12) -> IdAlignment:
    """Same-id agreement and the histogram of id offsets (target id - reference id) among shared tokens."""
    t_ids, r_ids = target.id_of_bytes(), reference.id_of_bytes()
    # Shared tokens in reference id order (id_of_bytes is in id order).
    rid = np.fromiter((i for tok, i in r_ids.items() if tok in t_ids), dtype=np.int64)
    tid = np.fromiter((t_ids[tok] for tok in r_ids if tok in t_ids), dtype=np.int64, count=len(rid))
    off = tid - rid
    values, counts = np.unique(off, return_counts=True)
    order = np.lexsort((values, -counts))               # most frequent first, ties: smaller offset
    hist = list(zip(values[order].tolist(), counts[order].tolist()))
    dominant, count = hist[0] if hist else (None, 0)
    # Maximal runs of shared tokens (in reference order) at one offset: (first rid, last rid, offset, count).
    starts = np.flatnonzero(np.r_[True, off[1:] != off[:-1]]) if len(off) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(off)] - 1
    sizes = ends - starts + 1
    big = np.lexsort((rid[starts], -sizes))[:max_runs]   # the longest runs, ties: lower reference id
    big = big[np.argsort(rid[starts][big], kind="stable")]
    runs = tuple((int(rid[starts[i]]), int(rid[ends[i]]), int(off[starts[i]]), int(sizes[i])) for i in big)
    n_ref = len(r_ids)
    same = int(counts[values == 0].sum())
    return IdAlignment(n_ref, len(rid), same, same / n_ref if n_ref else 0.0, len(values), dominant, count,
                       count / n_ref if n_ref else 0.0, tuple(hist[:bins]), runs, _sides(target, reference))


# ----------------------------------------------------------------------------------------- merges
@dataclass(frozen=True)
class MergeOrder:
    """Shared merge rules of two merge lists and whether they were learnt in the same relative order."""

    shared: int
    share_of_reference: float       # of the reference's distinct rules
    share_of_target: float
    share_of_shorter: float         # of the shorter list's distinct rules ("most reference rules reappear")
    spearman: float | None          # rank correlation of the shared rules' positions (None: < 3 shared)
    kendall: float | None
    common_prefix: int              # leading rules identical in order


def merge_order(target_merges: Sequence, reference_merges: Sequence) -> MergeOrder:
    """Shared rules and the Spearman / Kendall correlation of their positions in the two lists.

    The correlations are computed over the shared rules only (each list's position of each shared rule,
    first occurrence), so rules one side interleaves or appends do not lower them: a list that keeps
    every reference rule in order and inserts new ones anywhere has Kendall τ = 1. Lists are sequences
    of hashable rules (``(left, right)`` byte pairs); usable on prefixes of merge lists (calibration).
    """
    t_rank = first_ids(target_merges, range(len(target_merges)))
    r_rank = first_ids(reference_merges, range(len(reference_merges)))
    pairs = [(r, t_rank[m]) for m, r in r_rank.items() if m in t_rank]
    s_ref, s_tgt, _ = _ratios(len(pairs), len(r_rank), len(t_rank))
    shorter = min(len(r_rank), len(t_rank))
    spearman = kendall = None
    if len(pairs) >= 3:
        from scipy.stats import kendalltau, spearmanr

        x, y = np.array(pairs, dtype=np.int64).T
        rho, tau = spearmanr(x, y).statistic, kendalltau(x, y).statistic
        spearman = None if rho != rho else float(rho)  # NaN (constant input) -> None
        kendall = None if tau != tau else float(tau)
    prefix = 0
    for a, b in zip(target_merges, reference_merges):
        if a != b:
            break
        prefix += 1
    return MergeOrder(len(pairs), s_ref, s_tgt, len(pairs) / shorter if shorter else 0.0, spearman, kendall, prefix)


@dataclass(frozen=True)
class MergeComparison:
    """Shared merge rules and whether they were learnt in the same order."""

    target_merges: int
    reference_merges: int
    shared: int
    share_of_reference: float
    share_of_target: float
    spearman: float | None          # rank correlation of the shared rules' positions (None: < 3 shared)
    kendall: float | None
    common_prefix: int              # leading rules identical in order
    first_difference: tuple | None  # (position, target rule, reference rule)
    first_rules: tuple              # the first rules side by side: (position, target rule, reference rule)
    target_origin: str
    reference_origin: str
    files: dict
    share_of_shorter: float = 0.0   # shared rules as a share of the shorter list

    def as_dict(self) -> dict:
        return {"target_merges": self.target_merges, "reference_merges": self.reference_merges,
                "shared": self.shared, "share_of_reference": self.share_of_reference,
                "share_of_target": self.share_of_target, "share_of_shorter": self.share_of_shorter,
                "spearman": self.spearman, "kendall": self.kendall,
                "common_prefix": self.common_prefix,
                "first_difference": list(self.first_difference) if self.first_difference else None,
                "first_rules": [list(r) for r in self.first_rules],
                "target_origin": self.target_origin, "reference_origin": self.reference_origin, **self.files}


def _rule(pair: tuple[bytes, bytes] | None) -> str:
    return "—" if pair is None else f"{show(pair[0])} + {show(pair[1])}"


def measure_merges(target: Vocabulary, reference: Vocabulary, *, examples: int = EXAMPLES) -> MergeComparison:
    """Shared merge rules, Spearman/Kendall correlation of their ranks (``merge_order``), longest common prefix.

    Raises UnsupportedFormat naming the file when one side has no merges (Unigram, WordPiece).
    """
    for v in (target, reference):
        if v.merges is None:
            raise UnsupportedFormat(f"{v.path}: a {v.model_type} vocabulary has no merge rules to compare")
    t_m, r_m = target.merges, reference.merges
    order = merge_order(t_m, r_m)
    prefix = order.common_prefix
    first_diff = None
    if prefix < max(len(t_m), len(r_m)):
        first_diff = (prefix, _rule(t_m[prefix] if prefix < len(t_m) else None),
                      _rule(r_m[prefix] if prefix < len(r_m) else None))
    rules = tuple((i, _rule(t_m[i] if i < len(t_m) else None), _rule(r_m[i] if i < len(r_m) else None))
                  for i in range(min(examples, max(len(t_m), len(r_m)))))
    return MergeComparison(len(t_m), len(r_m), order.shared, order.share_of_reference, order.share_of_target,
                           order.spearman, order.kendall, prefix, first_diff, rules, target.merges_origin,
                           reference.merges_origin, _sides(target, reference), order.share_of_shorter)


# ----------------------------------------------------------------------------------------- special tokens
@dataclass(frozen=True)
class SpecialTokens:
    """bos/eos/pad/unk and added tokens side by side."""

    roles: tuple                    # (role, target raw, reference raw, same)
    target_special: int
    reference_special: int
    shared_special: int             # special strings present as special tokens on both sides
    target_added: tuple             # first added tokens (id, raw, special)
    reference_added: tuple
    target_added_count: int
    reference_added_count: int
    files: dict

    def as_dict(self) -> dict:
        return {"roles": [{"role": r, "target": t, "reference": f, "same": s} for r, t, f, s in self.roles],
                "target_special": self.target_special, "reference_special": self.reference_special,
                "shared_special": self.shared_special,
                "target_added_count": self.target_added_count, "reference_added_count": self.reference_added_count,
                "target_added": [list(a) for a in self.target_added],
                "reference_added": [list(a) for a in self.reference_added], **self.files}


def measure_special_tokens(target: Vocabulary, reference: Vocabulary, *, examples: int = EXAMPLES) -> SpecialTokens:
    t_roles, r_roles = dict(target.special_tokens), dict(reference.special_tokens)
    roles = tuple((role, t_roles.get(role), r_roles.get(role),
                   t_roles.get(role) is not None and t_roles.get(role) == r_roles.get(role))
                  for role in SPECIAL_ROLES)

    def specials(v: Vocabulary) -> set[str]:
        at = np.searchsorted(np.asarray(v.ids), sorted(v.special_ids))  # ids are sorted
        return {v.raw[k] for k, i in zip(at.tolist(), sorted(v.special_ids)) if k < len(v.ids) and v.ids[k] == i}

    t_s, r_s = specials(target), specials(reference)
    return SpecialTokens(roles, len(t_s), len(r_s), len(t_s & r_s), tuple(target.added_tokens[:examples]),
                         tuple(reference.added_tokens[:examples]), len(target.added_tokens),
                         len(reference.added_tokens), _sides(target, reference))


# ----------------------------------------------------------------------------------------- extension
@dataclass(frozen=True)
class Extension:
    """Is one vocabulary the other plus K tokens (appended, or inserted with an id shift)?"""

    reference_in_target: float      # share of the reference's tokens found in the target
    target_in_reference: float
    added: int                      # K: target tokens not in the reference
    removed: int                    # reference tokens not in the target
    contained: str                  # "identical" | "target ⊇ reference" | "reference ⊇ target" | "neither" (exact)
    added_id_runs: tuple            # (first target id, last target id, count) of added tokens, by id
    dominant_offset: int | None
    dominant_share: float           # share of the reference at the dominant id offset
    shift_runs: tuple               # (first ref id, last ref id, offset, count): where the ids moved
    files: dict
    reference_size: int = 0         # distinct normalised tokens
    target_size: int = 0

    @property
    def smaller(self) -> str:
        """The side with fewer distinct tokens: ``"reference"`` (also on a tie) or ``"target"``."""
        return "reference" if self.reference_size <= self.target_size else "target"

    @property
    def contained_share(self) -> float:
        """Share of the smaller vocabulary found in the larger one."""
        return self.reference_in_target if self.smaller == "reference" else self.target_in_reference

    @property
    def size_ratio(self) -> float:
        """Distinct tokens of the larger side over the smaller side's (≥ 1; inf when the smaller is empty)."""
        small, large = sorted((self.reference_size, self.target_size))
        return large / small if small else float("inf")

    def as_dict(self) -> dict:
        return {"reference_in_target": self.reference_in_target, "target_in_reference": self.target_in_reference,
                "reference_size": self.reference_size, "target_size": self.target_size, "smaller": self.smaller,
                "contained_share": self.contained_share, "size_ratio": self.size_ratio,
                "added": self.added, "removed": self.removed, "contained": self.contained,
                "added_id_runs": [{"target_ids": [a, b], "count": c} for a, b, c in self.added_id_runs],
                "dominant_offset": self.dominant_offset, "dominant_share": self.dominant_share,
                "shift_runs": [{"reference_ids": [a, b], "offset": o, "count": c} for a, b, o, c in self.shift_runs],
                **self.files}

    @property
    def summary(self) -> str:
        """One line of what the records show, e.g. '+768 tokens at target ids 3–770; ids 3–31999 shifted by +768'."""
        runs = ", ".join(f"{a}–{b}" if a != b else f"{a}" for a, b, _ in self.added_id_runs[:3])
        parts = [f"{self.contained}; +{self.added} / −{self.removed} tokens" + (f" (added at target ids {runs}"
                 + (" ..." if len(self.added_id_runs) > 3 else "") + ")" if runs else "")]
        moved = [r for r in self.shift_runs if r[2] != 0]
        if moved:
            parts.append("; ".join(f"reference ids {a}–{b} at offset {o:+d}" for a, b, o, _ in moved[:3]))
        return "; ".join(parts)


def measure_extension(target: Vocabulary, reference: Vocabulary, *, alignment: IdAlignment | None = None,
                      max_runs: int = 12) -> Extension:
    t_ids, r_ids = target.id_of_bytes(), reference.id_of_bytes()
    shared = sum(1 for tok in r_ids if tok in t_ids)
    added_ids = sorted(tid for tok, tid in t_ids.items() if tok not in r_ids)
    removed = len(r_ids) - shared
    added = len(added_ids)
    contained = ("identical" if not added and not removed else "target ⊇ reference" if not removed
                 else "reference ⊇ target" if not added else "neither")
    runs: list[list[int]] = []
    for tid in added_ids:
        if runs and runs[-1][1] == tid - 1:
            runs[-1][1] = tid
            runs[-1][2] += 1
        else:
            runs.append([tid, tid, 1])
    runs = sorted(sorted(runs, key=lambda r: (-r[2], r[0]))[:max_runs])
    alignment = alignment or measure_id_alignment(target, reference)
    return Extension(shared / len(r_ids) if r_ids else 0.0, shared / len(t_ids) if t_ids else 0.0, added, removed,
                     contained, tuple(tuple(r) for r in runs), alignment.dominant_offset, alignment.dominant_share,
                     tuple(r for r in alignment.runs if r[3] > 1), _sides(target, reference), len(r_ids), len(t_ids))


# ----------------------------------------------------------------------------------------- probes
@dataclass(frozen=True)
class Probe:
    """One probe text of the corpus: its category (file stem) and position in that file."""

    category: str
    index: int
    text: str

    @property
    def name(self) -> str:
        return f"{self.category}/{self.index}"


def load_probes(directory: Path | str) -> tuple[Probe, ...]:
    """Probe texts from ``<category>.txt`` files; texts within a file are separated by lines ``%%``.

    Text between separators is kept verbatim (tabs, runs of spaces, blank lines, ``\\r``: the bytes are
    decoded without newline translation), except the one ``\\n`` that ends each text before its separator
    line and the file's final ``\\n``. Separator lines end with ``\\n``; a file whose separator lines end
    with ``\\r\\n`` (saved with Windows line endings) is refused, naming the file, since its texts would
    silently run together.
    """
    directory = Path(directory)
    files = sorted(directory.glob("*.txt"))
    if not files:
        raise UnsupportedFormat(f"{directory}: no probe files (*.txt)")
    probes = []
    for path in files:
        try:
            content = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptCheckpoint(f"{path}: cannot read probe texts ({exc})") from None
        if f"\n{PROBE_SEPARATOR}\r\n" in content or content.startswith(f"{PROBE_SEPARATOR}\r\n"):
            raise CorruptCheckpoint(f"{path}: separator lines '{PROBE_SEPARATOR}' end with \\r\\n; save the file "
                                    "with \\n line endings (a \\r inside a text is kept verbatim)")
        chunks = content.split("\n" + PROBE_SEPARATOR + "\n")
        chunks[-1] = chunks[-1].removesuffix("\n")
        for i, text in enumerate(c for c in chunks if c):
            probes.append(Probe(path.stem, i, text))
    if not probes:
        raise UnsupportedFormat(f"{directory}: the probe files ({', '.join(p.name for p in files)}) hold no texts")
    return tuple(probes)


# ----------------------------------------------------------------------------------------- encoding
@dataclass(frozen=True)
class EncodingAgreement:
    """Do the two tokenizers cut the probe texts into the same pieces?"""

    probes: int
    identical: int
    identical_share: float
    mean_boundary_f1: float
    by_category: tuple              # (category, probes, identical, mean F1), sorted by category
    stream_mismatch: int            # probes whose pieces do not concatenate to the same bytes (normalisation)
    differences: tuple              # (probe, target pieces, reference pieces) for the first disagreements
    target_pieces: int
    reference_pieces: int
    files: dict

    def as_dict(self) -> dict:
        return {"probes": self.probes, "identical": self.identical, "identical_share": self.identical_share,
                "mean_boundary_f1": self.mean_boundary_f1,
                "by_category": [{"category": c, "probes": n, "identical": k, "mean_boundary_f1": f}
                                for c, n, k, f in self.by_category],
                "stream_mismatch": self.stream_mismatch,
                "differences": [list(d) for d in self.differences],
                "target_pieces": self.target_pieces, "reference_pieces": self.reference_pieces, **self.files}


def _pieces(vocab: Vocabulary, text: str) -> list[bytes]:
    """Pieces with a SentencePiece dummy-prefix space removed (so 'Hello' and '▁Hello' agree)."""
    pieces = [p for p in vocab.encode(text) if p]
    if pieces and pieces[0].startswith(b" ") and not text.startswith(" "):
        pieces[0] = pieces[0][1:]
        if not pieces[0]:
            pieces.pop(0)
    return pieces


def _boundaries(pieces: Sequence[bytes]) -> set[int]:
    out, pos = set(), 0
    for p in pieces[:-1]:
        pos += len(p)
        out.add(pos)
    return out


def boundary_f1(a: Sequence[bytes], b: Sequence[bytes]) -> float:
    """F1 of the internal token boundaries (byte offsets); 1.0 when neither side has any."""
    x, y = _boundaries(a), _boundaries(b)
    if not x and not y:
        return 1.0
    hit = len(x & y)
    return 2 * hit / (len(x) + len(y))


def measure_encoding(target: Vocabulary, reference: Vocabulary, probes: Sequence[Probe], *,
                     examples: int = 5, corpus: Path | str | None = None) -> EncodingAgreement:
    """Share of probe texts cut into the identical piece sequence, and mean token-boundary F1.

    ``corpus`` is the directory the probes were read from (``load_probes``); it is recorded in the
    result and named in errors. Raises UnsupportedFormat naming the file when a vocabulary cannot
    encode (e.g. GGUF), and naming the corpus when there are no probes.
    """
    if not probes:
        where = f"{corpus}: " if corpus is not None else ""
        raise UnsupportedFormat(f"{where}no probe texts to encode (read them with load_probes(<directory>))")
    identical, f1s, mismatch, diffs = 0, [], 0, []
    per_cat: dict[str, list] = {}
    n_t = n_r = 0
    for probe in probes:
        a, b = _pieces(target, probe.text), _pieces(reference, probe.text)
        n_t += len(a)
        n_r += len(b)
        same = a == b
        f1 = 1.0 if same else boundary_f1(a, b)
        identical += same
        f1s.append(f1)
        if b"".join(a) != b"".join(b):
            mismatch += 1
        cat = per_cat.setdefault(probe.category, [0, 0, 0.0])
        cat[0] += 1
        cat[1] += same
        cat[2] += f1
        if not same and len(diffs) < examples:
            diffs.append((probe.name, " | ".join(show(p) for p in a[:16]) + (" ..." if len(a) > 16 else ""),
                          " | ".join(show(p) for p in b[:16]) + (" ..." if len(b) > 16 else "")))
    n = len(probes)
    by_cat = tuple((c, v[0], v[1], v[2] / v[0]) for c, v in sorted(per_cat.items()))
    files = _sides(target, reference)
    if corpus is not None:
        files["probe_corpus"] = str(corpus)
    return EncodingAgreement(n, identical, identical / n, sum(f1s) / n, by_cat, mismatch, tuple(diffs), n_t, n_r,
                             files)


# ----------------------------------------------------------------------------------------- everything
@dataclass(frozen=True)
class TokenizerComparison:
    """All measures of one (target, reference) pair."""

    target: dict
    reference: dict
    overlap: VocabOverlap
    alignment: IdAlignment
    extension: Extension
    special: SpecialTokens
    merges: MergeComparison | None
    encoding: EncodingAgreement | None
    skipped: tuple                  # (measure, reason) for measures that could not be made

    def as_dict(self) -> dict:
        return {"target": self.target, "reference": self.reference, "overlap": self.overlap,
                "alignment": self.alignment, "extension": self.extension, "special": self.special,
                "merges": self.merges, "encoding": self.encoding,
                "skipped": [list(s) for s in self.skipped]}


def compare_tokenizers(target: Vocabulary, reference: Vocabulary,
                       probes: Sequence[Probe] = ()) -> TokenizerComparison:
    """Every measure of this module for one pair; a measure that cannot be made is listed in ``skipped``."""
    skipped = []
    alignment = measure_id_alignment(target, reference)
    try:
        merges = measure_merges(target, reference)
    except UnsupportedFormat as exc:
        merges, _ = None, skipped.append(("merges", str(exc)))
    encoding = None
    if probes:
        try:
            encoding = measure_encoding(target, reference, probes)
        except UnsupportedFormat as exc:
            skipped.append(("encoding", str(exc)))
    return TokenizerComparison(target.as_dict(), reference.as_dict(), measure_overlap(target, reference), alignment,
                               measure_extension(target, reference, alignment=alignment),
                               measure_special_tokens(target, reference), merges, encoding, tuple(skipped))


def measure(target, reference, probes: Sequence[Probe] | Path | str = ()) -> TokenizerComparison:
    """Every tokenizer measure of ``target`` against ``reference`` (opened models or vocabularies).

    ``probes``: probe texts (:func:`load_probes`) or a folder of them for the encoding agreement; a
    measure that cannot be made is listed in the result's ``skipped`` with the reason.
    """
    t = getattr(target, "vocabulary", target)
    r = getattr(reference, "vocabulary", reference)
    if isinstance(probes, (str, Path)):
        probes = load_probes(probes)
    return compare_tokenizers(t, r, probes)
