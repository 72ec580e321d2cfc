"""Catalog evidence: which well-known base models does the target resemble, before any reference is at hand?

Runs with or without references. The nearest architectures are recorded, never judged (several
from-scratch models use a famous model's exact config). The tokenizer is judged only under
``[catalog] expect = "independent"`` (or ``--against-catalog independent``): a tokenizer identical to a
catalog tokenizer, overlapping it in the extension/reuse band, containing one (an extension: target ⊇
catalog + K, re-numbered or not) or contained in one (a pruned copy) contradicts that claim; containment
counts where it is evidence on its own (thresholds.toml [tokenizer]: size ratio and size bounds).
"""

from __future__ import annotations

import pytest

from modellineage.reporting import report
from modellineage.catalog.entries import (fingerprint_tokens, load_catalog, nearest_architectures,
                                          nearest_tokenizers, vocabulary_tokens)
from modellineage.errors import LineageError, UnsupportedFormat

from .criteria import not_a_catalog_tokenizer

pytestmark = pytest.mark.catalog

TOP = 5


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _mark(agrees) -> str:
    return {True: "=", False: "≠", None: "?"}[agrees]


def _value(f) -> str:
    if f.stated_by is None:
        return "not stated"
    return f"{f.target} (weights)" if f.stated_by == "weights" else str(f.target)


def _weight_facts(target):
    """Facts from the safetensors headers (MoE fields of a checkpoint without experts), or None."""
    try:
        return target.weight_facts
    except (LineageError, OSError):
        return None


def test_nearest_known_architectures(target, catalog, evidence):
    """Informational: the catalog entries whose public configs agree most with the target's config."""
    if target.arch is None:
        raise UnsupportedFormat(f"{target.source.root}: no config.json to compare with the catalog")
    matches = nearest_architectures(target.arch, catalog, top=TOP, weights=_weight_facts(target))
    evidence.measured("catalog", catalog.as_dict())
    evidence.measured("nearest_architectures", [m.as_dict() for m in matches])
    evidence.html(report.table(
        ["rank", "known model", "family", "fields agreeing", "differing fields", "config source"],
        [[i + 1, m.name, m.family, f"{m.agreeing}/{m.compared}",
          ", ".join(f.field for f in m.fields if f.agrees is False) or "none", m.source]
         for i, m in enumerate(matches)],
        caption=f"{target.name}: nearest known architectures (only fields both the target's config and the catalog "
                "entry state are compared)"))
    head = matches[:3]
    evidence.html(report.table(
        ["field", target.name] + [m.name for m in head],
        [[f.field, _value(f)] + [f"{_mark(m.fields[i].agrees)} {m.fields[i].catalog}" for m in head]
         for i, f in enumerate(head[0].fields)],
        caption="Field by field (= agrees, ≠ differs, ? not compared: the target's config or the catalog entry "
                "does not state it; '(weights)': no routed-expert tensors in the checkpoint, so no experts)"))
    best = matches[0]
    evidence.says(f"Nearest known architecture: {best.name} ({best.agreeing} of {best.compared} fields agree"
                  f"{'; identical config' if best.identical else ''}); a shared config is not evidence on its own.")


def test_tokenizer_not_from_catalog(target, catalog, catalog_plan, thresholds, evidence):
    """Under [catalog] expect = independent: the tokenizer is no known model's tokenizer, nor an extension of one."""
    vocab = target.vocabulary
    fingerprint = fingerprint_tokens(vocabulary_tokens(vocab), whole=True)  # sharper containment estimates
    matches = nearest_tokenizers(fingerprint, catalog)
    evidence.measured("tokenizer_fingerprint", {"file": vocab.path.name, "format": vocab.format,
                                                "sha256": fingerprint.sha256, "distinct": fingerprint.distinct,
                                                "sketch_k": fingerprint.sketch.k})
    evidence.measured("nearest_tokenizers", [m.as_dict() for m in matches])
    evidence.html(report.table(
        ["catalog tokenizer", "used by", "identical", "est. Jaccard", "est. share of target in it",
         "est. share of it in target", "tokens (it / target)"],
        [[m.tokenizer_id, ", ".join(m.models) or "—", "YES" if m.identical else "no",
          f"{m.overlap.jaccard:.1%} ± {m.overlap.stderr:.1%}",
          f"{m.overlap.share_of_target:.1%} ± {m.overlap.share_of_target_stderr:.1%}",
          f"{m.overlap.share_of_other:.1%} ± {m.overlap.share_of_other_stderr:.1%}",
          f"{m.overlap.other_distinct:,} / {m.overlap.target_distinct:,}"]
         for m in matches],
        caption=f"{target.name}: nearest known tokenizers ({vocab.path.name}, {fingerprint.distinct:,} distinct "
                "non-special tokens, sketched whole; catalog tokenizers as bottom-k MinHash sketches). Containment "
                "is judged on the smaller vocabulary: the catalog's in the target (extension) or the target's in "
                "the catalog's (pruned copy)."))
    judgement = not_a_catalog_tokenizer(target.name, matches, *(thresholds["tokenizer", key] for key in (
        "extension_min_overlap", "contained_min_share", "contained_max_size_ratio", "contained_min_tokens")))
    said = judgement.message.split(": ", 1)[1]
    evidence.says(said[:1].upper() + said[1:] + ".")  # not str.capitalize(): it lowercases "Jaccard"
    if catalog_plan.get("expect") != "independent":
        pytest.skip(f"recorded, not judged: no [catalog] expect = \"independent\" in the plan "
                    f"(or --against-catalog independent). {judgement.message}")
    evidence.judged(judgement)
    assert not judgement.failed, judgement.message
