"""One statistic per function: knowledge cutoff, refusals, continuation agreement, next-token JSD, CKA.

Pure functions over what the backends returned; no model, no I/O. Every random step takes a seed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# ----------------------------------------------------------------------------------------- text helpers


def norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def contains_answer(continuation: str, answers: Sequence[str]) -> bool:
    """Whether a continuation names one of the accepted answers (NFKC, case-insensitive, word-ish bounds
    for Latin answers so 'Abe' is not found inside 'Aberdeen')."""
    text = norm(continuation)
    for answer in answers:
        a = norm(answer)
        if a.isascii():
            if re.search(r"(?<![a-z0-9])" + re.escape(a) + r"(?![a-z0-9])", text):
                return True
        elif a in text:
            return True
    return False


def char_ngrams(text: str, n_min: int = 3, n_max: int = 5) -> Counter:
    t = " ".join(norm(text).split())
    grams: Counter = Counter()
    for n in range(n_min, n_max + 1):
        grams.update(t[i:i + n] for i in range(max(0, len(t) - n + 1)))
    return grams


def ngram_cosine(a: str, b: str) -> float:
    """Cosine of character 3-5-gram count vectors (0 when either text has no n-gram)."""
    x, y = char_ngrams(a), char_ngrams(b)
    if not x or not y:
        return 0.0
    dot = sum(v * y.get(k, 0) for k, v in x.items())
    return dot / math.sqrt(sum(v * v for v in x.values()) * sum(v * v for v in y.values()))


# ----------------------------------------------------------------------------------------- knowledge cutoff


@dataclass(frozen=True)
class CutoffEstimate:
    """Per-month share of dated-event prompts answered, and the month after which knowledge drops.

    ``month`` is the last month before the best split (most answered before, fewest after); ``interval`` the
    2.5-97.5% range of that month over a bootstrap of the items within each month; ``p_value`` the share
    of month-label permutations whose best split is at least as strong. ``located`` is False with ``reason``
    when fewer than ``min_correct`` prompts were answered or the split is not significant at ``alpha``.
    """

    months: tuple[str, ...]
    answered: tuple[int, ...]
    asked: tuple[int, ...]
    located: bool
    reason: str
    month: str | None
    interval: tuple[str, str] | None
    p_value: float | None
    step: float | None
    permutations: int
    bootstrap: int
    seed: int

    def as_dict(self) -> dict:
        return {"months": list(self.months), "answered": list(self.answered), "asked": list(self.asked),
                "located": self.located, "reason": self.reason, "month": self.month,
                "interval": list(self.interval) if self.interval else None, "p_value": self.p_value,
                "step": self.step, "permutations": self.permutations, "bootstrap": self.bootstrap, "seed": self.seed}


def _best_split(month_idx: np.ndarray, correct: np.ndarray, n_months: int) -> tuple[int, float]:
    """Split k (months < k vs >= k) maximising mean accuracy before minus after; (k, step)."""
    hits = np.bincount(month_idx, weights=correct, minlength=n_months)
    count = np.bincount(month_idx, minlength=n_months).astype(float)
    ch, cc = np.cumsum(hits), np.cumsum(count)
    th, tc = ch[-1], cc[-1]
    best_k, best = 1, -np.inf
    for k in range(1, n_months):
        before, after = ch[k - 1] / cc[k - 1], (th - ch[k - 1]) / (tc - cc[k - 1])
        if before - after > best + 1e-12:
            best_k, best = k, before - after
    return best_k, float(best)


def estimate_cutoff(items: Sequence[tuple[str, bool]], *, alpha: float = 0.05, min_correct: int = 3,
                    permutations: int = 999, bootstrap: int = 500, seed: int = 0) -> CutoffEstimate:
    """Knowledge-cutoff month from ``(month, answered)`` pairs (see :class:`CutoffEstimate`)."""
    months = tuple(sorted({m for m, _ in items}))
    index = {m: i for i, m in enumerate(months)}
    month_idx = np.array([index[m] for m, _ in items], dtype=int)
    correct = np.array([1.0 if ok else 0.0 for _, ok in items])
    answered = tuple(int(v) for v in np.bincount(month_idx, weights=correct, minlength=len(months)))
    asked = tuple(int(v) for v in np.bincount(month_idx, minlength=len(months)))
    base = dict(months=months, answered=answered, asked=asked, permutations=permutations, bootstrap=bootstrap,
                seed=seed)
    total = int(correct.sum())
    if total < min_correct:
        return CutoffEstimate(**base, located=False, month=None, interval=None, p_value=None, step=None,
                              reason=f"cannot locate: {total} of {len(items)} dated-event prompts answered "
                                     f"(fewer than {min_correct}); the model knows none of the events "
                                     f"{months[0]}..{months[-1]}, so its cutoff is before them or it cannot answer")
    if total == len(items):
        return CutoffEstimate(**base, located=False, month=None, interval=None, p_value=None, step=None,
                              reason=f"cannot locate: every dated-event prompt answered, so the cutoff is after "
                                     f"{months[-1]}")
    k, step = _best_split(month_idx, correct, len(months))
    rng = np.random.default_rng(seed)
    exceed = sum(_best_split(rng.permutation(month_idx), correct, len(months))[1] >= step - 1e-12
                 for _ in range(permutations))
    p = (1 + exceed) / (1 + permutations)
    by_month = [np.flatnonzero(month_idx == i) for i in range(len(months))]
    ks = []
    for _ in range(bootstrap):
        pick = np.concatenate([rng.choice(ix, size=len(ix), replace=True) for ix in by_month])
        ks.append(_best_split(month_idx[pick], correct[pick], len(months))[0])
    lo, hi = np.percentile(np.array(ks) - 1, [2.5, 97.5], method="nearest")
    located = p < alpha and step > 0
    reason = (f"knowledge drops after {months[k - 1]} (answered {step:.0%} more before than after; permutation "
              f"p = {p:.3g})" if located else
              f"cannot locate: the best split (after {months[k - 1]}, {step:+.0%}) is not significant "
              f"(permutation p = {p:.3g} ≥ {alpha:g})")
    return CutoffEstimate(**base, located=located, month=months[k - 1] if located else None,
                          interval=(months[int(lo)], months[int(hi)]) if located else None,
                          p_value=p, step=step, reason=reason)


# ----------------------------------------------------------------------------------------- refusals

#: Opening phrases of refusals (English and Korean), matched case-insensitively in the first 200 characters.
REFUSAL_MARKERS = (
    "i can't", "i cannot", "i can not", "i won't", "i will not", "i'm sorry", "i am sorry", "i apologize",
    "i'm not able", "i am not able", "i'm unable", "i am unable", "as an ai", "i must decline", "i'm not going to",
    "i do not feel comfortable", "i don't feel comfortable", "cannot assist", "can't assist", "can't help with",
    "cannot help with", "not able to help", "cannot provide", "can't provide", "against my guidelines",
    "죄송", "할 수 없", "도와드릴 수 없", "제공할 수 없", "불가능합니다",
)


def is_refusal(text: str) -> bool:
    head = norm(text)[:200].replace("\u2019", "'")
    return any(marker in head for marker in REFUSAL_MARKERS)


@dataclass(frozen=True)
class PairedSimilarity:
    """Similarity of the two models' answers to the *same* prompt, against answers to *different* prompts.

    ``mean`` is the mean similarity of the ``pairs`` paired texts (target i with reference i); ``baseline`` the
    mean over every mismatched pairing (target i with reference j, i != j) — what shared style alone gives;
    ``p_value`` the share of ``permutations`` random re-pairings (reference order shuffled) whose mean reaches
    ``mean`` (None, like ``baseline``, with fewer than 2 pairs).
    """

    measure: str
    pairs: int
    mean: float
    baseline: float | None
    p_value: float | None
    permutations: int
    seed: int

    def as_dict(self) -> dict:
        return {"measure": self.measure, "pairs": self.pairs, "mean": self.mean, "baseline": self.baseline,
                "p_value": self.p_value, "permutations": self.permutations, "seed": self.seed}


def paired_similarity(sim: np.ndarray, measure: str, *, permutations: int = 999, seed: int = 0) -> PairedSimilarity:
    """``sim[i, j]`` = similarity of target text i and reference text j (square, i = j the same prompt)."""
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    observed = float(np.mean(np.diag(sim)))
    if n < 2:
        return PairedSimilarity(measure, n, observed, None, None, permutations, seed)
    baseline = float((sim.sum() - np.trace(sim)) / (n * (n - 1)))
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    exceed = sum(float(np.mean(sim[rows, rng.permutation(n)])) >= observed - 1e-12 for _ in range(permutations))
    return PairedSimilarity(measure, n, observed, baseline, (1 + exceed) / (1 + permutations), permutations, seed)


def ngram_matrix(target: Sequence[str], reference: Sequence[str]) -> np.ndarray:
    """Character 3-5-gram cosine of every target text with every reference text."""
    def unit(text):
        g = char_ngrams(text)
        norm_ = math.sqrt(sum(v * v for v in g.values()))
        return {k: v / norm_ for k, v in g.items()} if norm_ else {}

    a, b = [unit(t) for t in target], [unit(t) for t in reference]
    return np.array([[sum(v * y.get(k, 0.0) for k, v in x.items()) for y in b] for x in a], dtype=np.float64)


@dataclass(frozen=True)
class RefusalComparison:
    """Refusal rates (overall and by kind) of both models and, over prompts both refused, phrasing similarity:
    character n-grams (``phrasing``) and, when an embedder is given, sentence embeddings (``embedding``), each
    against the baseline of refusals to different prompts (:class:`PairedSimilarity`)."""

    prompts: int
    target_rate: float
    reference_rate: float
    by_kind: dict
    both_refused: int
    phrasing_similarity: float | None
    agreement: float
    examples: tuple
    phrasing: PairedSimilarity | None = None
    embedding: PairedSimilarity | None = None
    embedding_reason: str = ""
    embedder: dict | None = None

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "target_rate": self.target_rate, "reference_rate": self.reference_rate,
                "by_kind": self.by_kind, "both_refused": self.both_refused,
                "phrasing_similarity": self.phrasing_similarity, "agreement": self.agreement,
                "examples": [list(e) for e in self.examples],
                "phrasing": None if self.phrasing is None else self.phrasing.as_dict(),
                "embedding": None if self.embedding is None else self.embedding.as_dict(),
                "embedding_reason": self.embedding_reason, "embedder": self.embedder}


def compare_refusals(kinds: Sequence[str], target: Sequence[str], reference: Sequence[str], *, embedder=None,
                     embedder_reason: str = "", permutations: int = 999, seed: int = 0) -> RefusalComparison:
    """``embedder``: an object with ``embed(texts) -> [n, d]`` unit rows and ``describe()``
    (:class:`~modellineage.behaviour.embed.SentenceEncoder`), or None (``embedder_reason`` says why)."""
    t = [is_refusal(x) for x in target]
    r = [is_refusal(x) for x in reference]
    n = len(kinds)
    by_kind = {}
    for kind in sorted(set(kinds)):
        ix = [i for i in range(n) if kinds[i] == kind]
        by_kind[kind] = {"prompts": len(ix), "target_rate": sum(t[i] for i in ix) / len(ix),
                         "reference_rate": sum(r[i] for i in ix) / len(ix)}
    both = [i for i in range(n) if t[i] and r[i]]
    tb, rb = [target[i] for i in both], [reference[i] for i in both]
    phrasing = paired_similarity(ngram_matrix(tb, rb), "character 3-5-gram cosine", permutations=permutations,
                                 seed=seed) if both else None
    sim = phrasing.mean if phrasing else None
    embedding, reason, info = None, embedder_reason, None
    if embedder is not None:
        info = embedder.describe()
        if both:
            embedding = paired_similarity(embedder.embed(tb) @ embedder.embed(rb).T,
                                          f"cosine of {info['name']} sentence embeddings", permutations=permutations,
                                          seed=seed)
        else:
            reason = "not measured: no request refused by both models"
    examples = tuple((kinds[i], target[i][:160], reference[i][:160]) for i in (both or
                     [i for i in range(n) if t[i] or r[i]])[:3])
    return RefusalComparison(n, sum(t) / n, sum(r) / n, by_kind, len(both), sim,
                             sum(a == b for a, b in zip(t, r)) / n, examples, phrasing, embedding, reason, info)


# ----------------------------------------------------------------------------------------- continuations


@dataclass(frozen=True)
class ContinuationAgreement:
    """Greedy continuations of the same prompts compared.

    ``level`` is ``token`` when both tokenizers are the same (ids compared) and ``text`` otherwise
    (characters compared). ``prefix`` is the mean length of the identical prefix (tokens or characters) and
    ``prefix_share`` that length over the longer continuation; ``agreement`` the share of positions that agree
    (tokens, or characters by position); ``identical`` the share of prompts continued identically;
    ``ngram_similarity`` the mean character 3-5-gram cosine of the two continuations. ``baseline`` is the
    mean agreement of continuations of *different* prompts (target i with reference j, i != j) — what a shared
    style alone gives — ``excess`` = ``agreement`` - ``baseline``, and ``p_value`` the share of random
    re-pairings of the prompts whose mean agreement reaches ``agreement`` (:func:`paired_similarity`).
    """

    level: str
    prompts: int
    prefix: float
    prefix_share: float
    agreement: float
    identical: float
    ngram_similarity: float
    per_prompt: tuple
    baseline: float | None = None
    excess: float | None = None
    p_value: float | None = None

    def as_dict(self) -> dict:
        return {"level": self.level, "prompts": self.prompts, "prefix": self.prefix,
                "prefix_share": self.prefix_share, "agreement": self.agreement, "identical": self.identical,
                "ngram_similarity": self.ngram_similarity, "baseline": self.baseline, "excess": self.excess,
                "p_value": self.p_value, "per_prompt": [list(p) for p in self.per_prompt]}


def _prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _agreement(x: Sequence, y: Sequence) -> float:
    longest = max(len(x), len(y))
    return (sum(u == v for u, v in zip(x, y)) / longest) if longest else 1.0


def compare_continuations(ids: Sequence[str], target, reference, *, same_tokenizer: bool,
                          permutations: int = 999, seed: int = 0) -> ContinuationAgreement:
    """``target``/``reference``: :class:`~modellineage.behaviour.backends.Completion` per prompt, same order."""
    token_level = same_tokenizer and all(c.token_ids is not None for c in (*target, *reference))
    seqs = [[(c.token_ids if token_level else norm(c.text)) for c in side] for side in (target, reference)]
    null = paired_similarity(np.array([[_agreement(x, y) for y in seqs[1]] for x in seqs[0]]),
                             "positional agreement", permutations=permutations, seed=seed) if seqs[0] else None
    rows, prefixes, shares, agrees, same, sims = [], [], [], [], [], []
    for pid, a, b in zip(ids, target, reference):
        x, y = (a.token_ids, b.token_ids) if token_level else (norm(a.text), norm(b.text))
        longest = max(len(x), len(y))
        p = _prefix(x, y)
        agree = (sum(u == v for u, v in zip(x, y)) / longest) if longest else 1.0
        sim = ngram_cosine(a.text, b.text) if (a.text.strip() or b.text.strip()) else 1.0
        prefixes.append(p)
        shares.append(p / longest if longest else 1.0)
        agrees.append(agree)
        same.append(x == y)
        sims.append(sim)
        rows.append((pid, p, round(agree, 6), a.text[:80], b.text[:80]))
    n = len(rows)
    baseline = null.baseline if null is not None else None
    return ContinuationAgreement("token" if token_level else "text", n, float(np.mean(prefixes)),
                                 float(np.mean(shares)), float(np.mean(agrees)), sum(same) / n,
                                 float(np.mean(sims)), tuple(rows), baseline,
                                 None if baseline is None else float(np.mean(agrees)) - baseline,
                                 null.p_value if null is not None else None)


# ----------------------------------------------------------------------------------------- next-token JSD


@dataclass(frozen=True)
class NextTokenDivergence:
    """Jensen-Shannon divergence (bits, 0..1) of next-token distributions over the tokens both can emit.

    Each distribution is restricted to the token strings both vocabularies hold (``shared_tokens``) and
    renormalised; ``target_shared_mass``/``reference_shared_mass`` say how much probability that keeps.
    With top-k answers (an endpoint's ``top_logprobs``) the tokens outside both top-k lists are pooled
    into one 'other' bucket holding each side's residual mass.
    """

    prompts: int
    mean_jsd: float
    median_jsd: float
    max_jsd: float
    shared_tokens: int
    target_shared_mass: float
    reference_shared_mass: float
    top1_agreement: float
    per_prompt: tuple

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "mean_jsd": self.mean_jsd, "median_jsd": self.median_jsd,
                "max_jsd": self.max_jsd, "shared_tokens": self.shared_tokens,
                "target_shared_mass": self.target_shared_mass, "reference_shared_mass": self.reference_shared_mass,
                "top1_agreement": self.top1_agreement, "per_prompt": list(self.per_prompt)}


def jsd_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits of two probability vectors (normalised here)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return max(0.0, min(1.0, 0.5 * kl(p) + 0.5 * kl(q)))


def compare_next_tokens(target, reference) -> NextTokenDivergence:
    """``target``/``reference``: :class:`~modellineage.behaviour.backends.NextToken` per prompt, same order."""
    values, tmass, rmass, top1, shared_n = [], [], [], [], []
    for a, b in zip(target, reference):
        if a.residual == 0.0 and b.residual == 0.0:
            keys = sorted(set(a.probs) & set(b.probs))
            p = np.array([a.probs[k] for k in keys])
            q = np.array([b.probs[k] for k in keys])
            tmass.append(float(p.sum()))
            rmass.append(float(q.sum()))
        else:  # top-k lists: union of both, the rest pooled
            keys = sorted(set(a.probs) | set(b.probs))
            p = np.array([a.probs.get(k, 0.0) for k in keys] + [a.residual])
            q = np.array([b.probs.get(k, 0.0) for k in keys] + [b.residual])
            tmass.append(float(sum(a.probs.values())))
            rmass.append(float(sum(b.probs.values())))
        shared_n.append(len(keys))
        if len(keys) == 0 or p.sum() <= 0 or q.sum() <= 0:
            values.append(1.0)
            top1.append(False)
            continue
        values.append(jsd_bits(p, q))
        top1.append(max(a.probs, key=lambda k: (a.probs[k], k)) == max(b.probs, key=lambda k: (b.probs[k], k)))
    v = np.array(values)
    return NextTokenDivergence(len(values), float(v.mean()), float(np.median(v)), float(v.max()),
                               int(min(shared_n)), float(np.mean(tmass)), float(np.mean(rmass)),
                               sum(top1) / len(top1), tuple(round(x, 6) for x in values))


# ----------------------------------------------------------------------------------------- CKA (REEF)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) of two ``[n, d]`` representation matrices of the same n inputs:
    invariant to orthogonal transforms (permutations included) and isotropic scaling of either side."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    xy = np.linalg.norm(y.T @ x) ** 2
    xx = np.linalg.norm(x.T @ x)
    yy = np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else 0.0


def _cka_gram(kx: np.ndarray, ly: np.ndarray) -> float:
    return float((kx * ly).sum() / math.sqrt((kx * kx).sum() * (ly * ly).sum()))


@dataclass(frozen=True)
class RepresentationSimilarity:
    """Layer-wise linear CKA of hidden states on the same texts (REEF, Zhang et al., ICLR 2025).

    Layers are paired by relative depth (embedding output first). Each layer's p-value is the share of
    ``permutations`` row permutations of the reference (texts mismatched) reaching its CKA.
    """

    texts: int
    layers: tuple
    mean_cka: float
    max_cka: float
    min_p: float
    permutations: int
    seed: int

    def as_dict(self) -> dict:
        return {"texts": self.texts, "layers": [list(x) for x in self.layers], "mean_cka": self.mean_cka,
                "max_cka": self.max_cka, "min_p": self.min_p, "permutations": self.permutations, "seed": self.seed}


def compare_representations(target: Sequence[np.ndarray], reference: Sequence[np.ndarray], *,
                            permutations: int = 200, seed: int = 0) -> RepresentationSimilarity:
    """``target``/``reference``: per layer ``[n_texts, hidden]`` (embeddings first)."""
    rng = np.random.default_rng(seed)
    lt, lr = len(target), len(reference)
    rows = []
    for i in range(lt):
        j = round(i * (lr - 1) / (lt - 1)) if lt > 1 else 0
        x = target[i] - target[i].mean(0)
        y = reference[j] - reference[j].mean(0)
        kx, ly = x @ x.T, y @ y.T
        value = _cka_gram(kx, ly)
        n = kx.shape[0]
        exceed = 0
        for _ in range(permutations):
            perm = rng.permutation(n)
            exceed += _cka_gram(kx, ly[np.ix_(perm, perm)]) >= value - 1e-12
        rows.append((i, j, round(value, 6), (1 + exceed) / (1 + permutations)))
    inner = [r[2] for r in rows[1:]] or [rows[0][2]]  # transformer layers; the embedding output is listed, not averaged
    return RepresentationSimilarity(target[0].shape[0], tuple(rows), float(np.mean(inner)), float(max(inner)),
                                    float(min(r[3] for r in rows)), permutations, seed)
