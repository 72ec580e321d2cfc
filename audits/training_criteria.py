"""Judging training evidence (checkpoint chains, training logs) against thresholds.toml.

Each criterion returns a :class:`~audits.criteria.Judgement` whose message states the observed value, the
bound and where it comes from. The library (modellineage.training) measures; only this module decides.
"""

from __future__ import annotations

import math

from .criteria import Bound, Judgement


def _verdict(failed: bool, message: str, claim: str, measured, bound: str, where: str) -> Judgement:
    return Judgement(claim, measured, bound, where, failed, message)


def initialisation(init, std_bound: Bound, gain_bound: Bound) -> Judgement:
    """The earliest checkpoint: every matrix role's std within ``std_bound`` of the init scheme's, every
    norm gain within ``gain_bound`` of 1."""
    m, g = init.worst("matrix"), init.worst("gain")
    bad = []
    if m is None:
        return _verdict(True, f"{init.checkpoint}: no weight matrix was compared, so the initialisation cannot be "
                        "checked", "earliest checkpoint is an initialisation", None, "", std_bound.where)
    if m.deviation > std_bound.value:
        bad.append(f"{m.role} standard deviation {m.std:.4g} is {m.deviation:.1%} off the init scheme's "
                   f"{m.expected_std:.4g} ({m.scheme}; > {std_bound.value:.0%} allowed, {std_bound.where})")
    if g is not None and g.deviation > gain_bound.value:
        bad.append(f"{g.role} gains are not ones: mean {g.mean:.4g}, s.d. {g.std:.4g} (deviation {g.deviation:.3g} > "
                   f"{gain_bound.value:g} allowed, {gain_bound.where})")
    worst = f"worst matrix role {m.role}: {m.deviation:.1%} off {m.scheme}" + (
        f"; worst gains {g.role}: deviation {g.deviation:.3g}" if g is not None else "")
    if bad:
        message = f"{init.checkpoint} does not look like an initialisation: " + "; ".join(bad)
    else:
        message = (f"{init.checkpoint} looks like an initialisation ({worst}; ≤ {std_bound.value:.0%} and "
                   f"≤ {gain_bound.value:g} allowed, {std_bound.where}, {gain_bound.where})")
    return _verdict(bool(bad), message, "earliest checkpoint is an initialisation",
                    {"matrix_deviation": m.deviation, "gain_deviation": None if g is None else g.deviation},
                    f"≤ {std_bound.value} / ≤ {gain_bound.value}", f"{std_bound.where}; {gain_bound.where}")


def smooth_link(link, previous_to_first: float, neighbour_bound: Bound, rise_bound: Bound) -> Judgement:
    """One link: similar enough to its predecessor, and no closer to the first checkpoint than the predecessor."""
    n, t = link.neighbour.matrix_centred, link.to_first.matrix_centred
    rise = t - previous_to_first
    bridged = f" (bridging unreadable {', '.join(link.bridged)})" if link.bridged else ""
    bad = []
    if not n >= neighbour_bound.value:
        bad.append(f"centred similarity to the previous checkpoint {link.previous}{bridged} = {n:.3f} < "
                   f"{neighbour_bound.value} ({neighbour_bound.where}): not a continuation of the same run")
    if rise > rise_bound.value:
        bad.append(f"similarity to the first checkpoint rises from {previous_to_first:.3f} to {t:.3f} "
                   f"(+{rise:.3f} > {rise_bound.value} allowed, {rise_bound.where}): training moved back "
                   f"toward the initialisation")
    if bad:
        message = f"{link.checkpoint}: " + "; ".join(bad)
    else:
        message = (f"{link.checkpoint}: centred similarity to {link.previous}{bridged} = {n:.3f} "
                   f"(≥ {neighbour_bound.value}, {neighbour_bound.where}); to the first checkpoint {t:.3f} "
                   f"(change {rise:+.3f}, ≤ +{rise_bound.value} allowed, {rise_bound.where})")
    return _verdict(bool(bad), message, "checkpoints drift smoothly", {"neighbour": n, "to_first": t, "rise": rise},
                    f"≥ {neighbour_bound.value} / rise ≤ {rise_bound.value}",
                    f"{neighbour_bound.where}; {rise_bound.where}")


def descends(target: str, cmp, bound: Bound) -> Judgement:
    """The released target is derived from the chain's last checkpoint."""
    v = cmp.matrix_centred
    failed = not v >= bound.value
    message = (f"{target} vs the last checkpoint {cmp.b}: mean centred similarity {v:.3f} "
               f"{'<' if failed else '≥'} {bound.value} ({bound.where})"
               + (": the released model does not descend from the disclosed chain" if failed else ""))
    return _verdict(failed, message, "target descends from the last checkpoint", v, f"≥ {bound.value}", bound.where)


def no_jump_toward(reference: str, profile, categories, level: Bound, embedding_level: Bound,
                   jump: Bound) -> Judgement:
    """Under `independent`: no checkpoint's category similarity to the reference reaches the independent bounds,
    and the matrix mean never jumps toward it between neighbours.

    ``profile``: (checkpoint, matrix mean) in order; ``categories``: (checkpoint, {category: mean}) in order.
    """
    bad = []
    for name, cats in categories:
        for cat, v in sorted(cats.items()):
            bound = embedding_level if cat == "embedding" else level
            if math.isfinite(v) and v >= bound.value:
                bad.append(f"{name} {cat} {v:.3f} ≥ {bound.value} ({bound.where})")
    jumps = [(b[0], b[1] - a[1]) for a, b in zip(profile, profile[1:])]
    worst = max(jumps, key=lambda j: j[1]) if jumps else None
    if worst is not None and worst[1] > jump.value:
        bad.append(f"similarity jumps by +{worst[1]:.3f} at {worst[0]} (> {jump.value} allowed, {jump.where})")
    top = max((v for _, v in profile), default=math.nan)
    if bad:
        message = f"the chain moves toward {reference!r}: " + "; ".join(bad[:6]) + (" ..." if len(bad) > 6 else "")
    else:
        message = (f"no checkpoint approaches {reference!r}: highest mean centred similarity {top:.3f}"
                   + (f", largest step {worst[1]:+.3f} at {worst[0]}" if worst else "")
                   + f" (categories < {level.value} / embedding < {embedding_level.value}, steps ≤ +{jump.value}; "
                     f"{level.where}, {jump.where})")
    return _verdict(bool(bad), message, "no checkpoint jumps toward the reference",
                    {"max_level": top, "max_jump": None if worst is None else worst[1]},
                    f"< {level.value} / jump ≤ {jump.value}", f"{level.where}; {jump.where}")


def first_loss(log, below: Bound, above: Bound) -> Judgement:
    """From scratch: the first loss sits within [ln V - below, ln V + above]; initialised from a trained model:
    below ln V - below."""
    x, lnv, off = log.first_loss, log.ln_vocab, log.first_offset
    scratch = log.claim.start == "scratch"
    where = f"{below.where}; {above.where}" if scratch else below.where
    head = f"log {log.name!r}: first logged loss {x:.3f} at step {log.first_step} vs ln({log.vocab_size:,}) = {lnv:.3f}"
    if scratch:
        failed = off < -below.value or off > above.value
        if off < -below.value:
            why = (f"{-off:.3f} below ln(V) (a from-scratch run starts at ≥ ln(V) − {below.value}, {below.where}): "
                   f"the run was initialised from a trained model")
        elif off > above.value:
            why = (f"{off:.3f} above ln(V) (> {above.value} allowed, {above.where}): not the first loss of a "
                   f"standard initialisation with this vocabulary")
        else:
            why = (f"offset {off:+.3f} within [−{below.value}, +{above.value}] ({where}): consistent with a "
                   f"from-scratch start")
        bound = f"ln(V) − {below.value} ≤ first loss ≤ ln(V) + {above.value}"
    else:
        failed = not off < -below.value
        why = (f"offset {off:+.3f} {'≥' if failed else '<'} −{below.value} ({below.where}): "
               + (f"a start at the from-scratch level, not from the trained {log.claim.start!r}" if failed
                  else f"consistent with a start from the trained {log.claim.start!r}"))
        bound = f"first loss < ln(V) − {below.value}"
    return _verdict(failed, f"{head}: {why}", "first logged loss fits the claimed start", off, bound, where)


def loss_falls(log) -> Judgement:
    """The loss falls over the run: the mean of the last tenth of logged values below the first tenth's."""
    failed = not log.falls
    message = (f"log {log.name!r}: mean loss of the first tenth of rows {log.start_mean:.3f}, of the last tenth "
               f"{log.end_mean:.3f}" + (": the loss does not fall" if failed else ""))
    return _verdict(failed, message, "logged loss falls", log.end_mean - log.start_mean, "< 0",
                    "exact (a training run lowers its loss)")


def tokens_per_step(log, bound: Bound) -> Judgement:
    """Logged tokens per step against the claimed batch size × sequence length."""
    claimed, seen = log.claim.tokens_per_step, log.tokens_per_step
    rel = abs(seen - claimed) / claimed
    failed = rel > bound.value
    message = (f"log {log.name!r}: {seen:,.0f} logged tokens per step vs claimed batch {log.claim.batch_size} × "
               f"sequence {log.claim.sequence_length} = {claimed:,} (off by {rel:.2%}; "
               f"{'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where})")
    return _verdict(failed, message, "logged tokens per step match the claim", rel, f"≤ {bound.value}", bound.where)


def steps_match(log) -> Judgement:
    """The log covers the claimed number of optimizer steps."""
    covered = log.last_step - log.first_step + 1
    failed = covered != log.claim.steps
    message = (f"log {log.name!r}: logged steps {log.first_step}-{log.last_step} ({covered:,}) vs claimed "
               f"{log.claim.steps:,} steps" + (": the log does not cover the claimed run" if failed else ""))
    return _verdict(failed, message, "logged steps match the claim", covered, f"= {log.claim.steps}",
                    "exact (the plan's [[log]].steps)")


def lr_schedule(log, bound: Bound) -> Judgement:
    dev = log.lr_max_deviation
    failed = dev > bound.value
    c = log.claim
    message = (f"log {log.name!r}: logged learning rate deviates at most {dev:.1%} of the claimed peak {c.lr:g} "
               f"from the claimed schedule (warm-up {c.warmup_steps or 0}, {c.schedule} to {c.min_lr:g}; worst at "
               f"step {log.lr_deviation_step}; {'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where}); "
               f"logged peak {log.lr_peak:g} at step {log.lr_peak_step}")
    return _verdict(failed, message, "learning-rate schedule matches the claim", dev, f"≤ {bound.value}", bound.where)


def logged_tokens_claim(total: float, claimed: float, parts: str, bound: Bound) -> Judgement:
    rel = abs(total - claimed) / claimed
    failed = rel > bound.value
    message = (f"logs account for {total:,.0f} training tokens ({parts}) vs claimed {claimed:,.0f} "
               f"(off by {rel:.2%}; {'>' if failed else '≤'} {bound.value:.0%} allowed, {bound.where})")
    return _verdict(failed, message, "logged tokens match [claims].training_tokens", rel, f"≤ {bound.value}",
                    bound.where)
