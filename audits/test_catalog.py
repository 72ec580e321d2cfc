"""Catalog evidence: which well-known base models does the target resemble, before any reference is at hand?

Runs with or without references. The nearest architectures are recorded, never judged (several
from-scratch models use a famous model's exact config). The tokenizer is judged only under
``[catalog] expect = "independent"`` (or ``--against-catalog independent``): a tokenizer identical to a
catalog tokenizer, or overlapping it in the extension/reuse band, contradicts that claim.
"""

from __future__ import annotations

import pytest

from modellineage import report
from modellineage.catalog import fingerprint_tokens, load_catalog, nearest_architectures, nearest_tokenizers, \
    vocabulary_tokens
from modellineage.errors import UnsupportedFormat

from .criteria import not_a_catalog_tokenizer

pytestmark = pytest.mark.catalog

TOP = 5


@pytest.fixture(scope="module")
def catalog():
    return load_catalog()


def _mark(agrees) -> str:
    return {True: "=", False: "≠", None: "?"}[agrees]


def test_nearest_known_architectures(target, catalog, evidence):
    """Informational: the catalog entries whose public configs agree most with the target's config."""
    if target.arch is None:
        raise UnsupportedFormat(f"{target.source.root}: no config.json to compare with the catalog")
    matches = nearest_architectures(target.arch, catalog, top=TOP)
    evidence.measured("catalog", catalog.as_dict())
    evidence.measured("nearest_architectures", [m.as_dict() for m in matches])
    evidence.html(report.table(
        ["rank", "known model", "family", "fields agreeing", "differing fields", "config source"],
        [[i + 1, m.name, m.family, f"{m.agreeing}/{m.compared}",
          ", ".join(f.field for f in m.fields if f.agrees is False) or "none", m.source]
         for i, m in enumerate(matches)],
        caption=f"{target.name}: nearest known architectures (fields a catalog entry leaves unknown are not compared)"))
    head = matches[:3]
    evidence.html(report.table(
        ["field", target.name] + [m.name for m in head],
        [[f.field, f.target] + [f"{_mark(m.fields[i].agrees)} {m.fields[i].catalog}" for m in head]
         for i, f in enumerate(head[0].fields)],
        caption="Field by field (= agrees, ≠ differs, ? not given in the catalog)"))
    best = matches[0]
    evidence.says(f"Nearest known architecture: {best.name} ({best.agreeing} of {best.compared} fields agree"
                  f"{'; identical config' if best.identical else ''}); a shared config is not evidence on its own.")


def test_tokenizer_not_from_catalog(target, catalog, catalog_plan, thresholds, evidence):
    """Under [catalog] expect = independent: the tokenizer is no known model's tokenizer, nor an extension of one."""
    vocab = target.vocabulary
    fingerprint = fingerprint_tokens(vocabulary_tokens(vocab))
    matches = nearest_tokenizers(fingerprint, catalog)
    evidence.measured("tokenizer_fingerprint", {"file": vocab.path.name, "format": vocab.format,
                                                "sha256": fingerprint.sha256, "distinct": fingerprint.distinct,
                                                "sketch_k": fingerprint.sketch.k})
    evidence.measured("nearest_tokenizers", [m.as_dict() for m in matches])
    evidence.html(report.table(
        ["catalog tokenizer", "used by", "identical", "est. Jaccard", "± s.e.", "est. share of target",
         "est. share of catalog tokenizer"],
        [[m.tokenizer_id, ", ".join(m.models) or "—", "YES" if m.identical else "no", f"{m.overlap.jaccard:.1%}",
          f"{m.overlap.stderr:.1%}", f"{m.overlap.share_of_target:.1%}", f"{m.overlap.share_of_other:.1%}"]
         for m in matches],
        caption=f"{target.name}: nearest known tokenizers ({vocab.path.name}, {fingerprint.distinct:,} distinct "
                f"non-special tokens; overlaps estimated from bottom-{fingerprint.sketch.k} MinHash sketches)"))
    extension = thresholds["tokenizer", "extension_min_overlap"]
    judgement = not_a_catalog_tokenizer(target.name, matches, extension)
    evidence.says(judgement.message.split(": ", 1)[1].capitalize() + ".")
    if catalog_plan.get("expect") != "independent":
        pytest.skip(f"recorded, not judged: no [catalog] expect = \"independent\" in the plan "
                    f"(or --against-catalog independent). {judgement.message}")
    evidence.judged(judgement)
    assert not judgement.failed, judgement.message
