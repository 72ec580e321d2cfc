"""Exact tensor reuse: byte-identical tensors are the plainest evidence of copying."""

from __future__ import annotations

import pytest

from modellineage.reporting import report
from modellineage.weights.reuse import SAMPLED_ROWS_MEANING, constant_replacements, measure_exact_reuse

from .criteria import no_exact_reuse

pytestmark = pytest.mark.reuse


def test_no_exact_tensor_reuse(target, reference, thresholds, evidence):
    models = (target, reference.model)
    digests = [m.tensor_digests() for m in models]
    sampled = {m.name: m.digest_coverage for m in models if m.digest_coverage is not None}
    coverage = None if not sampled else {**SAMPLED_ROWS_MEANING,
                                         "models": {name: c.as_dict() for name, c in sampled.items()}}
    reuse = evidence.measured("exact_reuse", measure_exact_reuse(
        digests[0], digests[1], buffers=target.name_map.buffers, layer_of=target.name_map.layer_of,
        unchecked=[f"{target.name}: {n}" for n in target.unchecked_tensors]
        + [f"{reference.name}: {n}" for n in reference.model.unchecked_tensors], coverage=coverage))
    why = "; ".join(f"{m.name}: {m.unchecked_reason}" for m in models if m.unchecked_tensors)
    constants = evidence.measured("constant_where_reference_trained", constant_replacements(target, reference.model))
    evidence.says(f"The target reuses {reuse.reused_count} of its {reuse.counted_tensors} non-constant tensors "
                  f"byte for byte from {reference.name} ({reuse.reused_bytes_share:.1%} of those bytes)."
                  + (f" {len(constants)} target tensor(s) hold one value where {reference.name}'s are trained "
                     f"(zeroed, reset or folded; evidence of neither derivation nor independence): "
                     + "; ".join(c.line for c in constants[:4]) + (" ..." if len(constants) > 4 else "") + "."
                     if constants else "")
                  + (f" Under the read budget each tensor was digested on one seeded row (1-D tensors whole): a "
                     f"match shows those rows are byte-identical, not the rest of the tensor; a mismatch shows the "
                     f"tensors differ." if coverage else "")
                  + (f" {len(reuse.unchecked)} tensor(s) could not be checked ({why}): "
                     f"{', '.join(reuse.unchecked[:4])}" + (" ..." if len(reuse.unchecked) > 4 else "") + "."
                     if reuse.unchecked else ""))
    evidence.html(_reuse_table(reuse, reference.name) + _constant_table(constants, reference.name))
    if reuse.by_layer:
        labels = [row.label for row in reuse.by_layer]
        shares = [row.reused / row.counted for row in reuse.by_layer]
        evidence.png(report.bar_plot(labels, shares, title=f"Share of target tensors byte-identical in "
                                     f"{reference.name}, by layer", ylabel="share reused", ylim=(0, 1)),
                     "reuse by layer")
    if reference.expectation("reuse") == "derived":
        pytest.skip(f"recorded, not judged: a derivative may change every tensor; the target reuses "
                    f"{reuse.reused_count} of {reuse.counted_tensors} non-constant tensors of {reference.name!r}")
    if reuse.unchecked and not reuse.counted_tensors:
        pytest.skip(f"no target tensor could be checked for reuse: {len(reuse.unchecked)} tensor(s) were not read "
                    f"({why}; a full read or --verify-hashes checks them)")
    judgement = evidence.judged(no_exact_reuse(reuse, thresholds["reuse", "independent_max_reused_tensors"],
                                               reference.name))
    assert not judgement.failed, judgement.message


def _reuse_table(reuse, reference: str) -> str:
    rows = [[r.target_name, ", ".join(r.reference_names), f"{r.nbytes:,}", "yes" if r.same_name else "no"]
            for r in reuse.reused[:50]]
    head = report.table(
        ["target tensors", "counted (float, non-constant)", "reused", "share", "bytes share", "excluded",
         "excluded but matching"],
        [[reuse.target_tensors, reuse.counted_tensors, reuse.reused_count, f"{reuse.reused_share:.1%}",
          f"{reuse.reused_bytes_share:.1%}", _kinds(reuse.excluded), _kinds(reuse.excluded_matches)]],
        caption=f"Exact reuse of {reference}'s tensors")
    if not rows:
        return head
    more = f" (first 50 of {reuse.reused_count})" if reuse.reused_count > 50 else ""
    return head + report.table(["target tensor", f"identical in {reference}", "bytes", "same name"], rows,
                               caption="Byte-identical tensors" + more)


def _constant_table(constants, reference: str) -> str:
    if not constants:
        return ""
    return report.table(["target tensor", "file", "value", f"{reference} tensor (not constant)", "file"],
                        [[c.target_tensor, c.target_file, f"{c.value:g}", c.reference_tensor, c.reference_file]
                         for c in constants[:50]],
                        caption=f"Constant target tensors where {reference}'s are trained (recorded, not judged: a "
                                "zeroed or reset tensor is evidence of neither derivation nor independence)")


def _kinds(counts: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"
