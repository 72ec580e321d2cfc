"""``profile`` one model's behaviour on the probe sets, ``compare`` two profiles, ``measure`` both at once.

A profile is everything a backend answered (greedy continuations, dated-event answers, refusal texts,
next-token distributions, hidden states when local); a comparison is the statistics of
:mod:`modellineage.behaviour.measures` over two profiles of the same probes. Profiles are computed once
per model and reused for every reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backends import Completion
from .measures import (
    ContinuationAgreement,
    CutoffEstimate,
    NextTokenDivergence,
    RefusalComparison,
    RepresentationSimilarity,
    compare_continuations,
    compare_next_tokens,
    compare_refusals,
    compare_representations,
    contains_answer,
    estimate_cutoff,
)
from modellineage.reading.progress import count_bar

from .embed import NO_EMBEDDER
from .probes import Probes, load_probes

#: New tokens per greedy continuation (continuation and multilingual prompts), per dated-event answer, per refusal.
CONTINUATION_TOKENS = 24
EVENT_TOKENS = 12
REFUSAL_TOKENS = 32
#: How a refusal prompt is put to a model without a chat endpoint (plain completion).
PLAIN_CHAT = "User: {prompt}\nAssistant:"


@dataclass(frozen=True)
class BehaviourProfile:
    """What one model answered to every probe; ``next_tokens``/``hidden`` are None with a reason when the
    backend cannot give them (an endpoint without logprobs; hidden states only exist locally)."""

    model: str
    backend: dict
    probes: dict
    events: tuple
    refusals: tuple
    continuations: tuple
    next_tokens: tuple | None
    next_tokens_reason: str
    hidden: tuple | None
    hidden_reason: str
    exchanges: tuple

    def as_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "probes": self.probes,
                "events_answered": [[i, m, lang, ok] for i, m, lang, ok, _ in self.events],
                "refusals": [[i, kind, text[:120]] for i, kind, text in self.refusals],
                "continuations": [[i, c.text[:120]] for i, c in self.continuations],
                "next_tokens": None if self.next_tokens is None else len(self.next_tokens),
                "next_tokens_reason": self.next_tokens_reason,
                "hidden_layers": None if self.hidden is None else len(self.hidden),
                "hidden_reason": self.hidden_reason,
                "exchanges": [{"request_sha256": a, "response_sha256": b} for a, b in self.exchanges]}

    def cutoff(self, *, alpha: float = 0.05, seed: int = 0) -> CutoffEstimate:
        """The knowledge-cutoff estimate from the dated-event answers (both languages pooled)."""
        return estimate_cutoff([(m, ok) for _, m, _, ok, _ in self.events], alpha=alpha, seed=seed)


def profile(backend, probes: Probes | None = None) -> BehaviourProfile:
    """Ask ``backend`` every probe (deterministic: greedy, temperature 0, seed 0).

    Raises:
        EndpointError: an HTTP endpoint timed out, failed or answered malformed JSON.
    """
    probes = probes or load_probes()
    start = len(getattr(backend, "exchanges", []))
    with count_bar(len(probes.texts()) + len(probes.events.items) + len(probes.refusal.items)
                   + len(probes.continuation.items) + len(probes.multilingual.items),
                   f"behaviour of {backend.name}", unit="prompt") as update:
        return _profile(backend, probes, start, update)


def _profile(backend, probes: Probes, start: int, update) -> BehaviourProfile:
    local = getattr(backend, "complete_many", None)

    def many(prompts, n):
        if local is not None:
            out = local(prompts, n)
            update(len(prompts))
            return out
        out = []
        for p in prompts:  # one request per prompt: the bar shows an endpoint's progress
            out.append(backend.complete(p, n))
            update(1)
        return out

    answers = many([i.prompt for i in probes.events.items], EVENT_TOKENS)
    events = [(item.id, item.month, item.lang, contains_answer(out.text, item.answers), out.text)
              for item, out in zip(probes.events.items, answers)]
    if getattr(backend, "chat", False):
        said = []
        for i in probes.refusal.items:
            said.append(backend.chat_complete(i.prompt, REFUSAL_TOKENS))
            update(1)
    else:
        said = many([PLAIN_CHAT.format(prompt=i.prompt) for i in probes.refusal.items], REFUSAL_TOKENS)
    refusals = [(item.id, item.kind or "", out.text) for item, out in zip(probes.refusal.items, said)]
    items = [i for s in (probes.continuation, probes.multilingual) for i in s.items]
    continuations = list(zip([i.id for i in items], many([i.prompt for i in items], CONTINUATION_TOKENS)))
    texts = probes.texts()
    dists = []
    for t in texts:
        dists.append(backend.next_token(t))
        update(1)
    if any(d is None for d in dists):
        next_tokens, nt_reason = None, "the endpoint returns no logprobs, so next-token distributions are unknown"
    else:
        next_tokens, nt_reason = tuple(dists), f"{len(dists)} prompts"
    if hasattr(backend, "hidden_states"):
        hidden, h_reason = tuple(backend.hidden_states(texts)), f"{len(texts)} texts, last token, every layer"
    else:
        hidden, h_reason = None, "hidden states exist only for a local model (an endpoint gives none)"
    exchanges = tuple(getattr(backend, "exchanges", [])[start:])
    return BehaviourProfile(backend.name, backend.describe(), probes.as_dict(), tuple(events), tuple(refusals),
                            tuple(continuations), next_tokens, nt_reason, hidden, h_reason, exchanges)


@dataclass(frozen=True)
class BehaviourComparison:
    """Two profiles compared. A part that cannot be measured is None and its reason says why."""

    target: str
    reference: str
    continuation: ContinuationAgreement
    refusal: RefusalComparison
    next_token: NextTokenDivergence | None
    next_token_reason: str
    representation: RepresentationSimilarity | None
    representation_reason: str

    def as_dict(self) -> dict:
        return {"target": self.target, "reference": self.reference, "continuation": self.continuation.as_dict(),
                "refusal": self.refusal.as_dict(),
                "next_token": None if self.next_token is None else self.next_token.as_dict(),
                "next_token_reason": self.next_token_reason,
                "representation": None if self.representation is None else self.representation.as_dict(),
                "representation_reason": self.representation_reason}


def compare(target: BehaviourProfile, reference: BehaviourProfile, *, permutations: int = 200,
            seed: int = 0, embedder=None, embedder_reason: str = NO_EMBEDDER) -> BehaviourComparison:
    """Compare two profiles of the same probes (see :mod:`modellineage.behaviour.measures`).

    ``embedder`` (a :class:`~modellineage.behaviour.embed.SentenceEncoder`) adds the embedding similarity of
    the refusals both gave; without one, ``embedder_reason`` is recorded as why it was not measured.
    """
    if target.probes != reference.probes:
        raise ValueError("profiles of different probe sets cannot be compared")
    same_tok = (target.backend.get("tokenizer_sha256") is not None
                and target.backend.get("tokenizer_sha256") == reference.backend.get("tokenizer_sha256"))
    cont = compare_continuations([i for i, _ in target.continuations], [c for _, c in target.continuations],
                                 [c for _, c in reference.continuations], same_tokenizer=same_tok, seed=seed)
    ref = compare_refusals([k for _, k, _ in target.refusals], [t for _, _, t in target.refusals],
                           [t for _, _, t in reference.refusals], embedder=embedder,
                           embedder_reason="" if embedder is not None else embedder_reason, seed=seed)
    if target.next_tokens is None or reference.next_tokens is None:
        nt, nt_reason = None, "; ".join(f"{p.model}: {p.next_tokens_reason}" for p in (target, reference)
                                        if p.next_tokens is None)
    else:
        nt, nt_reason = compare_next_tokens(target.next_tokens, reference.next_tokens), ""
    if target.hidden is None or reference.hidden is None:
        rep, rep_reason = None, "; ".join(f"{p.model}: {p.hidden_reason}" for p in (target, reference)
                                          if p.hidden is None)
    else:
        rep, rep_reason = compare_representations(target.hidden, reference.hidden, permutations=permutations,
                                                  seed=seed), ""
    return BehaviourComparison(target.model, reference.model, cont, ref, nt, nt_reason, rep, rep_reason)


@dataclass(frozen=True)
class BehaviourEvidence:
    """``measure``'s answer: both profiles and their comparison."""

    target: BehaviourProfile
    reference: BehaviourProfile
    comparison: BehaviourComparison

    def as_dict(self) -> dict:
        return {"target": self.target.as_dict(), "reference": self.reference.as_dict(),
                "comparison": self.comparison.as_dict()}


def measure(target_backend, reference_backend, probes: Probes | None = None, *, permutations: int = 200,
            seed: int = 0, embedder=None, embedder_reason: str = NO_EMBEDDER) -> BehaviourEvidence:
    """Profile both backends on the same probes and compare them.

    Example::

        from modellineage.behaviour import LocalBackend, measure
        from modellineage.reading.model import Model
        from modellineage.reading.sources import resolve_source
        a = LocalBackend(Model("base", resolve_source("fixtures/demo/base")))
        b = LocalBackend(Model("scratch", resolve_source("fixtures/demo/scratch")))
        print(measure(a, b).comparison.continuation.agreement)
    """
    probes = probes or load_probes()
    t = profile(target_backend, probes)
    r = profile(reference_backend, probes)
    return BehaviourEvidence(t, r, compare(t, r, permutations=permutations, seed=seed, embedder=embedder,
                                           embedder_reason=embedder_reason))


__all__ = ["BehaviourProfile", "BehaviourComparison", "BehaviourEvidence", "Completion", "profile", "compare",
           "measure", "CONTINUATION_TOKENS", "EVENT_TOKENS", "REFUSAL_TOKENS", "PLAIN_CHAT"]
