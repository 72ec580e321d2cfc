"""Training evidence: the target's disclosed checkpoint chain ([[checkpoint]]) and training logs ([[log]]).

A from-scratch claim is best supported by the run itself: an earliest checkpoint that is an
initialisation, checkpoints that drift smoothly, a released model that descends from the last one, no
checkpoint that jumps toward a reference (a spliced-in model), and logs whose first loss sits at
ln(vocabulary size), whose tokens and learning rate match the claimed recipe. The chain is measured once
per session with the streamed weight comparison (modellineage.training.chain), each log once
(modellineage.training.logs).
"""

from __future__ import annotations

import pytest

from modellineage.errors import LineageError, UnsupportedFormat
from modellineage.reporting import report
from modellineage.reporting import training_plots as plots
from modellineage.training.chain import Checkpoint, measure_chain
from modellineage.training.logs import measure_log

from . import training_criteria as tc
from .plugin import SAMPLE_SEED, _session, once
from .shared import pair_cache

pytestmark = pytest.mark.training


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``link`` over the plan's checkpoints after the first and ``log_spec`` over its logs."""
    session = _session(metafunc.config)
    if session is None:
        return
    if "link" in metafunc.fixturenames:
        names = [c.name for c in session.plan.checkpoints[1:]] or [None]
        metafunc.parametrize("link", names, ids=[n or "no-chain" for n in names])
    if "log_spec" in metafunc.fixturenames:
        logs = list(session.plan.logs) or [None]
        metafunc.parametrize("log_spec", logs, ids=[log.name if log else "no-log" for log in logs])


# ----------------------------------------------------------------------------------------- measuring
def _chain(config, audit_session, target):
    """The chain's evidence, once per session (UnsupportedFormat without checkpoints)."""
    plan = audit_session.plan

    def measure():
        if not plan.checkpoints:
            raise UnsupportedFormat("no [[checkpoint]] entries in the audit plan: no training chain to audit")
        if audit_session.budget is not None:  # every checkpoint and the target compared whole, link by link
            raise UnsupportedFormat(f"not measured under --budget {audit_session.budget.text}: the training chain "
                                    f"compares every checkpoint, the target and the references in full (no budgeted "
                                    f"form yet; --sample reads a share of rows)")
        chain = []
        for spec in plan.checkpoints:
            source, error = audit_session.checkpoint_sources[spec.name]
            chain.append(Checkpoint(spec.name, spec.step, audit_session.checkpoint_model(spec.name), error))
        references = {r.name: audit_session.model(r.name) for r in plan.references}
        if audit_session.sample is not None:
            audit_session.seeds["training.sample"] = SAMPLE_SEED
        return measure_chain(chain, target=target, references=references, fraction=audit_session.sample,
                             seed=SAMPLE_SEED)

    return once(pair_cache(config), ("training", "chain"), measure)


def _vocab_size(audit_session, target) -> int | None:
    for model in [target] + [audit_session.checkpoint_model(c.name) for c in audit_session.plan.checkpoints]:
        try:
            if model is not None and model.arch is not None and model.arch.vocab_size:
                return int(model.arch.vocab_size)
        except LineageError:
            continue
    return None


def _log(config, audit_session, target, spec):
    def measure():
        return measure_log(audit_session.log_paths[spec.name], name=spec.name,
                           vocab_size=_vocab_size(audit_session, target), claim=spec.claim)

    return once(pair_cache(config), ("training", "log", spec.name), measure)


def _need_log(log_spec):
    if log_spec is None:
        pytest.skip("no [[log]] entries in the audit plan: no training log to audit")
    return log_spec


# ----------------------------------------------------------------------------------------- chain audits
def test_first_checkpoint_is_initialisation(target, thresholds, evidence, audit_session, pytestconfig):
    """The earliest readable checkpoint has the init scheme's per-role spread and unit norm gains."""
    chain = evidence.measured("chain", _chain(pytestconfig, audit_session, target))
    unreadable = [f"{n}: {e}" for n, _, e in chain.checkpoints if e is not None]
    if chain.init is None:
        raise UnsupportedFormat(f"the first readable checkpoint {chain.first} cannot be measured: {chain.init_error}")
    init = chain.init
    evidence.html(report.table(
        ["role", "kind", "tensors", "mean", "s.d.", "init scheme", "expected s.d.", "deviation"],
        [[r.role, r.kind, r.tensors, f"{r.mean:.4g}", f"{r.std:.4g}", r.scheme,
          "—" if r.expected_std is None else f"{r.expected_std:.4g}",
          "—" if r.kind == "vector" else (f"{r.deviation:.1%}" if r.kind == "matrix" else f"{r.deviation:.3g}")]
         for r in init.roles],
        caption=f"Earliest readable checkpoint {init.checkpoint}: per-role statistics (initializer_range "
                f"{init.initializer_range:g}: {init.range_source})"))
    judgement = evidence.judged(tc.initialisation(init, thresholds["training", "init_max_std_deviation"],
                                                  thresholds["training", "init_max_gain_deviation"]))
    evidence.says(judgement.message + (f" Unreadable checkpoints: {'; '.join(unreadable)}." if unreadable else ""))
    assert not judgement.failed, judgement.message


def test_checkpoint_link(link, target, thresholds, evidence, audit_session, pytestconfig):
    """Each later checkpoint continues its predecessor and moves no closer to the initialisation."""
    if link is None:
        pytest.skip("no checkpoint chain of two or more [[checkpoint]] entries in the audit plan")
    chain = _chain(pytestconfig, audit_session, target)
    if link == chain.first:
        pytest.skip(f"{link} is the first readable checkpoint (the ones before it cannot be read): judged by "
                    "test_first_checkpoint_is_initialisation")
    found = [x for x in chain.links if x.checkpoint == link]
    if not found:
        reason = next((e for n, _, e in chain.checkpoints if n == link and e), "it precedes the first readable one")
        pytest.skip(f"checkpoint {link} cannot be audited: {reason}")
    item = evidence.measured("link", found[0])
    if item.skipped is not None:
        pytest.skip(f"checkpoint {link} cannot be read, its link is skipped (the next checkpoint is compared with "
                    f"{item.previous}): {item.skipped}")
    measured = [x for x in chain.links if x.skipped is None]
    index = measured.index(item)
    previous_to_first = 1.0 if index == 0 else measured[index - 1].to_first.matrix_centred
    judgement = evidence.judged(tc.smooth_link(item, previous_to_first, thresholds["training", "min_neighbour_centred"],
                                               thresholds["training", "max_rise_to_first"]))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message


def test_target_descends_from_last_checkpoint(target, thresholds, evidence, audit_session, pytestconfig):
    """The released target is derived from the chain's last readable checkpoint; draws the drift profile."""
    chain = _chain(pytestconfig, audit_session, target)
    evidence.html(_chain_table(chain))
    evidence.png(_profile_plot(chain, audit_session), "checkpoint drift profile")
    if chain.target_to_last is None:
        raise UnsupportedFormat(f"{target.name} cannot be compared with the last checkpoint {chain.last}: "
                                f"{chain.target_error}")
    cmp = evidence.measured("target_to_last", chain.target_to_last)
    judgement = evidence.judged(tc.descends(target.name, cmp, thresholds["weights", "derived_min_centred"]))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message


def test_no_jump_toward_reference(target, reference, thresholds, evidence, audit_session, pytestconfig):
    """Under `independent`: no checkpoint approaches the reference (a spliced-in model shows as a jump)."""
    chain = _chain(pytestconfig, audit_session, target)
    if reference.name in chain.reference_errors:
        raise UnsupportedFormat(f"the chain cannot be compared with {reference.name}: "
                                f"{chain.reference_errors[reference.name]}")
    profile = evidence.measured("profile", chain.reference_profile(reference.name))
    categories = [(chain.first, dict(chain.first_to_references[reference.name].by_category))]
    categories += [(x.checkpoint, dict(x.to_references[reference.name].by_category)) for x in chain.links
                   if x.skipped is None and reference.name in x.to_references]
    evidence.measured("categories", categories)
    evidence.html(report.table(["checkpoint", "mean centred (matrices)"] + sorted(categories[0][1]),
                               [[name, f"{v:.3f}"] + [f"{cats.get(c, float('nan')):.3f}" for c in sorted(categories[0][1])]
                                for (name, v), (_, cats) in zip(profile, categories)],
                               caption=f"Similarity of every checkpoint to {reference.name}"))
    if reference.expectation("training") == "derived":
        pytest.skip(f"recorded, not judged: {reference.name} is claimed as an ancestor, so the chain may approach it "
                    f"(highest mean centred similarity {max(v for _, v in profile):.3f})")
    judgement = evidence.judged(tc.no_jump_toward(
        reference.name, profile, categories, thresholds["weights", "independent_max_centred"],
        thresholds["weights", "independent_max_embedding_centred"], thresholds["training", "max_jump_toward_reference"]))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message


def _chain_table(chain) -> str:
    rows = [[chain.first, "—", "—", "1.000", ", ".join(f"{k} {v.matrix_centred:.3f}"
                                                        for k, v in sorted(chain.first_to_references.items())), ""]]
    for x in chain.links:
        if x.skipped is not None:
            rows.append([x.checkpoint, x.step, "", "", "", f"skipped: {x.skipped}"])
            continue
        rows.append([x.checkpoint, x.step, f"{x.neighbour.matrix_centred:.3f}", f"{x.to_first.matrix_centred:.3f}",
                     ", ".join(f"{k} {v.matrix_centred:.3f}" for k, v in sorted(x.to_references.items())),
                     f"bridges {', '.join(x.bridged)}" if x.bridged else ""])
    head = [n for n, _, e in chain.checkpoints if e is not None and n not in {x.checkpoint for x in chain.links}]
    note = f" Unreadable before the first readable checkpoint: {', '.join(head)}." if head else ""
    return report.table(["checkpoint", "step", "to previous", "to first", "to references", "note"], rows,
                        caption="Checkpoint chain: mean centred similarity of weight matrices." + note)


def _profile_plot(chain, audit_session) -> str:
    measured = [x for x in chain.links if x.skipped is None]
    labels = [chain.first] + [x.checkpoint for x in measured]
    lines = {"to previous checkpoint": [None] + [x.neighbour.matrix_centred for x in measured],
             "to first checkpoint": [1.0] + [x.to_first.matrix_centred for x in measured]}
    for ref in audit_session.plan.references:
        if ref.name in chain.first_to_references:
            lines[f"to {ref.name} ({ref.expectation('training')})"] = \
                [chain.first_to_references[ref.name].matrix_centred] + \
                [x.to_references[ref.name].matrix_centred if ref.name in x.to_references else None for x in measured]
    if chain.target_to_last is not None:
        labels.append(f"target {chain.target}")
        lines = {k: v + [None] for k, v in lines.items()}
        lines[f"target to {chain.last}"] = [None] * (len(labels) - 1) + [chain.target_to_last.matrix_centred]
    return plots.drift_profile(labels, lines, title="Checkpoint drift profile")


# ----------------------------------------------------------------------------------------- log audits
def test_log_first_loss(log_spec, target, thresholds, evidence, audit_session, pytestconfig):
    """From scratch: the first loss is ≈ ln(V); initialised from a trained model: clearly below it."""
    spec = _need_log(log_spec)
    log = evidence.measured("log", _log(pytestconfig, audit_session, target, spec))
    evidence.png(plots.loss_curve(log, title=f"{spec.name}: training loss ({spec.claim.start})"), "loss vs tokens")
    if log.ln_vocab is None:
        pytest.skip(f"recorded, not judged: the vocabulary size is unknown (no config.json vocab_size in {target.name} "
                    f"or a checkpoint); first logged loss {log.first_loss:.3f}")
    judgement = evidence.judged(tc.first_loss(log, thresholds["training", "scratch_max_first_loss_below_lnv"],
                                              thresholds["training", "scratch_max_first_loss_above_lnv"]))
    base = next((b for b in audit_session.plan.logs if b.name == spec.claim.start), None)
    extra = ""
    if base is not None:
        try:
            before = _log(pytestconfig, audit_session, target, base)
            evidence.measured("base_final_loss", before.end_mean)
            extra = (f" The run it starts from ({base.name}) ended at a mean loss of {before.end_mean:.3f} (last tenth "
                     f"of its rows; on its own data): the first loss here is {log.first_loss - before.end_mean:+.3f} "
                     "from it (recorded, not judged: the data may differ).")
        except LineageError as exc:
            extra = f" The log it starts from ({base.name}) cannot be read: {exc}."
    evidence.says(judgement.message + extra)
    assert not judgement.failed, judgement.message


def test_log_loss_falls(log_spec, target, evidence, audit_session, pytestconfig):
    """The logged loss falls over the run."""
    spec = _need_log(log_spec)
    log = evidence.measured("log", _log(pytestconfig, audit_session, target, spec))
    judgement = evidence.judged(tc.loss_falls(log))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message


def test_log_tokens_and_steps(log_spec, target, thresholds, evidence, audit_session, pytestconfig):
    """Logged tokens per step match the claimed batch size × sequence length; logged steps the claimed steps."""
    spec = _need_log(log_spec)
    log = evidence.measured("log", _log(pytestconfig, audit_session, target, spec))
    judged = []
    if log.claim.tokens_per_step and log.tokens_per_step is not None:
        judged.append(tc.tokens_per_step(log, thresholds["training", "tokens_per_step_rel_tol"]))
    if log.claim.steps:
        judged.append(tc.steps_match(log))
    missing = []
    if not log.claim.tokens_per_step:
        missing.append("no claimed batch_size and sequence_length")
    if log.tokens_per_step is None:
        missing.append(f"the log has no token column (looked for {', '.join(('tokens', 'train/tokens', '...'))})")
    if not log.claim.steps:
        missing.append("no claimed steps")
    note = f" Not checked: {'; '.join(missing)}." if missing else ""
    if not judged:
        pytest.skip(f"recorded, not judged: {'; '.join(missing)}; tokens trained: {log.tokens_basis}")
    failed = [j for j in judged if j.failed]
    evidence.judged(failed[0] if failed else judged[0])
    evidence.measured("judgements", [j.as_dict() for j in judged])
    message = " ".join(j.message for j in judged) + note
    evidence.says(message)
    assert not failed, message


def test_log_lr_schedule(log_spec, target, thresholds, evidence, audit_session, pytestconfig):
    """The logged learning rate follows the claimed warm-up and decay."""
    spec = _need_log(log_spec)
    log = evidence.measured("log", _log(pytestconfig, audit_session, target, spec))
    if log.columns.get("lr") is None:
        pytest.skip(f"recorded, not judged: log {spec.name!r} has no learning-rate column")
    if log.lr_max_deviation is None:
        pytest.skip(f"recorded, not judged: no claimed lr and schedule for log {spec.name!r} (logged peak "
                    f"{log.lr_peak:g} at step {log.lr_peak_step})")
    judgement = evidence.judged(tc.lr_schedule(log, thresholds["training", "lr_max_deviation"]))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message


def test_logged_tokens_match_claim(target, claims, thresholds, evidence, audit_session, pytestconfig):
    """The logs together account for [claims].training_tokens."""
    specs = audit_session.plan.logs
    if not specs:
        pytest.skip("no [[log]] entries in the audit plan")
    if "training_tokens" not in claims:
        pytest.skip("no [claims].training_tokens in the audit plan")
    parts, total = [], 0.0
    for spec in specs:
        log = _log(pytestconfig, audit_session, target, spec)
        if log.tokens_trained is None:
            pytest.skip(f"recorded, not judged: log {spec.name!r} gives no token count ({log.tokens_basis})")
        total += log.tokens_trained
        parts.append(f"{spec.name} {log.tokens_trained:,.0f}: {log.tokens_basis}")
    evidence.measured("logged_tokens", {"total": total, "parts": parts})
    judgement = evidence.judged(tc.logged_tokens_claim(total, float(claims["training_tokens"]), "; ".join(parts),
                                                       thresholds["training", "tokens_claim_rel_tol"]))
    evidence.says(judgement.message)
    assert not judgement.failed, judgement.message
