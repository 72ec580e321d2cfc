"""Judging behavioural measurements against thresholds.toml [behaviour] (see audits/criteria.py for the shape)."""

from __future__ import annotations

from modellineage.behaviour.probes import parse_month

from .criteria import Bound, Judgement


def _months(text: str) -> int:
    year, month = parse_month(text)
    return year * 12 + month - 1


def cutoff_matches_claim(model: str, claimed: str, estimate) -> Judgement:
    """A claimed knowledge-cutoff month must lie within the estimate's bootstrap interval."""
    lo, hi = estimate.interval
    inside = _months(lo) <= _months(claimed) <= _months(hi)
    where = f"bootstrap interval of the estimate (permutation p = {estimate.p_value:.3g})"
    message = (f"{model}: claimed knowledge cutoff {claimed} is {'within' if inside else 'outside'} the estimated "
               f"{estimate.month} (95% interval {lo}..{hi}; {estimate.reason})")
    return Judgement("claimed knowledge cutoff", estimate.month, f"{lo}..{hi}", where, not inside, message)


def next_tokens_independent(reference: str, divergence, bound: Bound) -> Judgement:
    """Under `independent`: the mean next-token JSD must stay at or above what independent models show."""
    jsd = divergence.mean_jsd
    failed = jsd < bound.value
    message = (f"mean next-token Jensen-Shannon divergence to {reference!r} = {jsd:.4f} bits over "
               f"{divergence.prompts} prompts ({'<' if failed else '≥'} {bound.value} {'' if failed else 'required '}"
               f"for independent models; {bound.where})"
               + ("; the target predicts like the reference: derived or distilled from it" if failed else ""))
    return Judgement("next tokens differ as independent models' do", jsd, f"≥ {bound.value}", bound.where, failed,
                     message)


def continuations_independent(reference: str, agreement, bound: Bound) -> Judgement:
    """Under `independent`: greedy continuations must agree no more than independent models' do."""
    value = agreement.agreement
    failed = value > bound.value
    unit = "tokens" if agreement.level == "token" else "characters"
    message = (f"greedy continuations agree with {reference!r} at {value:.3f} of positions ({unit}; identical prefix "
               f"{agreement.prefix:.1f} {unit} on average over {agreement.prompts} prompts; "
               f"{'>' if failed else '≤'} {bound.value} allowed for independent models; {bound.where})")
    return Judgement("continuations agree no more than independent models'", value, f"≤ {bound.value}", bound.where,
                     failed, message)
