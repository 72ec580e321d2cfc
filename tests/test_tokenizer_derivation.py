"""Vocabularies built on another one: re-numbered, extended by tens of thousands of tokens, still derived.

Real cases: Qwen's vocabulary starts from cl100k_base (Qwen technical report) and re-numbers it (Jaccard
0.65, 72% of the ids at one offset); Llama 3's keeps cl100k_base's ids. Built here: DeepSeek-V4's
byte-level BPE with every id shuffled, 1% of its leaf tokens dropped and 40,000 merges continued from it
on other text, interleaved at random positions (tests/tokenizer_files.py: ``renumbered_extension_json``).
Independent controls: every other packaged byte-level BPE of similar size (Qwen, tekken, Llama 3,
Llama 4, Qwen3.6 against DeepSeek-V4), and independent vocabularies whose containment is high only
because one side is much larger or tiny (prefixes of real merge lists: the BPE the same data trains to
that size).
"""

from __future__ import annotations

import json

import pytest

from audits.criteria import load_thresholds, not_a_catalog_tokenizer
from audits.tokenizer_criteria import (
    CONTAINMENT,
    ID_ALIGNMENT,
    MERGE_ORDER,
    OVERLAP,
    containment_shows_derivation,
    derivation_signals,
    merge_order_shows_derivation,
    merge_rules,
    not_an_extension,
    verdict_sentence,
    vocabulary_overlap,
)
from modellineage.catalog.entries import TokenizerMatch, vocabulary_tokens
from modellineage.tokenizer.compare import (
    measure_extension,
    measure_id_alignment,
    measure_merges,
    measure_overlap,
    merge_order,
)
from modellineage.tokenizer.fingerprint import exact_overlap
from modellineage.tokenizer.vocab import load_vocabulary

from .test_audit_runs import outcomes, record, run_audit
from .tokenizer_files import (
    ROOT,
    cl100k_base_file,
    real,
    real_vocab,
    renumbered_extension_json,
    write_renumbered_extension,
)

THRESHOLDS = load_thresholds(ROOT / "thresholds.toml")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("derivation")


@pytest.fixture(scope="module")
def built(work):
    """DeepSeek-V4 re-numbered + 40,000 continued merges (tokenizer.json), and its Vocabulary."""
    path = write_renumbered_extension(work / "built")
    return path, load_vocabulary(path)


@pytest.fixture(scope="module")
def cl100k(work):
    path = cl100k_base_file(work / "cl100k")
    if path is None:
        pytest.skip("llama-models is not installed (test extra: pip install -e '.[test]')")
    return load_vocabulary(path)


_MEASURED: dict = {}


def measures(target, reference):
    """(overlap, id alignment, extension, merges) of a pair, measured once per test process."""
    key = (target.path, reference.path)
    if key not in _MEASURED:
        alignment = measure_id_alignment(target, reference)
        _MEASURED[key] = (measure_overlap(target, reference), alignment,
                          measure_extension(target, reference, alignment=alignment), measure_merges(target, reference))
    return _MEASURED[key]


def shown(target, reference) -> set[str]:
    """The kinds of evidence that show derivation for a pair."""
    return {s.name for s in derivation_signals(*measures(target, reference), THRESHOLDS, "ref") if s.shows_derivation}


def judged(target, reference) -> dict[str, bool]:
    """Which tokenizer audits fail, under each claim."""
    overlap, alignment, extension, merges = measures(target, reference)
    return {"overlap|independent": vocabulary_overlap(overlap, alignment, extension, merges, THRESHOLDS, "ref",
                                                      "independent").failed,
            "overlap|derived": vocabulary_overlap(overlap, alignment, extension, merges, THRESHOLDS, "ref",
                                                  "derived").failed,
            "extension|independent": not_an_extension(extension, alignment, THRESHOLDS, "ref").failed,
            "merges|independent": merge_rules(merges, THRESHOLDS, "ref").failed}


DERIVED = {"overlap|independent": True, "overlap|derived": False, "extension|independent": True,
           "merges|independent": True}
INDEPENDENT = {"overlap|independent": False, "overlap|derived": True, "extension|independent": False,
               "merges|independent": False}


def rank_prefix(directory, name: str, rank_file, lines: int):
    """The first ``lines`` ranks of a tiktoken rank file: the BPE its data trains to that size."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.tiktoken"
    path.write_bytes(b"".join(rank_file.read_bytes().splitlines(keepends=True)[:lines]))
    return load_vocabulary(path)


# ----------------------------------------------------------------------------------------- the built case
def test_the_built_vocabulary_is_a_renumbered_extension_of_real_merges(built):
    from tokenizers import Tokenizer

    path, vocab = built
    base = real_vocab("deepseek")
    overlap, alignment, extension, merges = measures(vocab, base)
    assert 30_000 <= extension.added <= 40_000 and extension.removed > 1000  # tens of thousands added, 1% dropped
    assert 0.985 <= extension.reference_in_target < 0.995 and overlap.jaccard < 0.8
    assert alignment.dominant_share < 0.02                                    # ids re-numbered
    assert merges.common_prefix < 200 and merges.share_of_reference > 0.98   # base rules kept, new ones interleaved
    # every rule joins two tokens of the vocabulary, and the new rules fire when encoding (real merges)
    model = json.loads(renumbered_extension_json())["model"]
    assert all(a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"]
               for a, b in (m.split(" ") for m in model["merges"]))
    new_ids = {vocab.id_of_bytes()[t] for t in set(vocab.id_of_bytes()) - set(base.id_of_bytes())}
    pieces = Tokenizer.from_file(str(path)).encode(
        "    def __init__(self, *args, **kwargs):\n        return self._default_factory()").ids
    assert new_ids & set(pieces)


def test_a_renumbered_extension_is_derived_by_containment_and_merge_order(built):
    _, vocab = built
    base = real_vocab("deepseek")
    assert shown(vocab, base) == {CONTAINMENT, MERGE_ORDER}
    assert judged(vocab, base) == DERIVED
    overlap, alignment, extension, merges = measures(vocab, base)
    derived = vocabulary_overlap(overlap, alignment, extension, merges, THRESHOLDS, "deepseek", "derived")
    assert "carried by containment and merge order" in derived.message
    assert "thresholds.toml [tokenizer].contained_min_share" in derived.source
    prefix_share = merges.common_prefix / min(merges.target_merges, merges.reference_merges)
    assert prefix_share < THRESHOLDS["tokenizer", "independent_max_merge_prefix_share"].value  # the prefix misses it
    assert "carried by merge order" in merge_rules(merges, THRESHOLDS, "deepseek").message
    assert "carried by containment" in not_an_extension(extension, alignment, THRESHOLDS, "deepseek").message
    sentence = verdict_sentence(derivation_signals(overlap, alignment, extension, merges, THRESHOLDS, "deepseek"),
                                "deepseek")
    assert sentence.startswith("Tokenizer derived from deepseek's, carried by containment (")
    assert "not shown by overlap (Jaccard" in sentence and "id alignment (" in sentence


def test_qwen_built_on_cl100k_base_is_derived_and_llama_3_keeps_its_ids(cl100k):
    """The documented real cases: Qwen re-numbers cl100k_base and adds ~51K tokens; Llama 3 appends 28K."""
    qwen, llama3 = real_vocab("qwen"), real_vocab("llama3")
    overlap, alignment, extension, merges = measures(qwen, cl100k)
    assert overlap.jaccard < 0.66 and extension.reference_in_target > 0.985 and alignment.dominant_share < 0.9
    assert merges.kendall == pytest.approx(1.0) and merges.common_prefix < 200
    assert shown(qwen, cl100k) == {CONTAINMENT, MERGE_ORDER}
    assert judged(qwen, cl100k) == DERIVED
    assert shown(llama3, cl100k) == {CONTAINMENT, ID_ALIGNMENT, MERGE_ORDER}


@pytest.mark.parametrize("target", ["qwen", "tekken", "llama3", "llama4", "qwen3.6"])
def test_independent_vocabularies_of_similar_size_are_not_derived(target):
    """Every other packaged byte-level BPE of 128k-248k tokens against DeepSeek-V4's 129k."""
    assert shown(real_vocab(target), real_vocab("deepseek")) == set()
    assert judged(real_vocab(target), real_vocab("deepseek")) == INDEPENDENT


def test_the_built_vocabulary_is_independent_of_the_vocabularies_it_was_not_built_on(built):
    _, vocab = built
    for other in ("qwen", "llama4"):
        assert judged(vocab, real_vocab(other)) == INDEPENDENT, other


def test_siblings_built_on_one_base_share_its_merge_order():
    """Qwen and Llama 3 both start from cl100k_base: neither contains the other, but the merges they share
    keep cl100k_base's order; independent BPEs trained on overlapping web text do not."""
    qwen, llama3 = real_vocab("qwen"), real_vocab("llama3")
    assert shown(qwen, llama3) == {MERGE_ORDER}
    merges = measure_merges(qwen, real_vocab("deepseek"))
    assert merges.kendall < 0.5 and not merge_order_shows_derivation(merges, THRESHOLDS)


# ----------------------------------------------------------------------------------------- where containment is no evidence
def test_containment_in_a_much_larger_vocabulary_is_no_evidence_alone(work):
    """The BPE Llama 4's data trains to 8,000 tokens is ≥ 98% inside DeepSeek-V4's 129k independent tokens."""
    small = rank_prefix(work / "prefix", "llama4-8000", real("llama4"), 8000)
    overlap, alignment, extension, merges = measures(real_vocab("deepseek"), small)
    assert extension.contained_share >= THRESHOLDS["tokenizer", "contained_min_share"].value
    assert extension.size_ratio > 10 and not containment_shows_derivation(extension, THRESHOLDS)
    judgement = not_an_extension(extension, alignment, THRESHOLDS, "llama4-8000")
    assert not judgement.failed and "no evidence alone: the larger vocabulary is" in judgement.message
    assert not vocabulary_overlap(overlap, alignment, extension, merges, THRESHOLDS, "llama4-8000",
                                  "independent").failed


def test_containment_of_a_tiny_vocabulary_is_no_evidence_alone(work, cl100k):
    """cl100k_base's first 600 tokens are 98.7% inside Llama 4's first 1,200: the common core of any BPE."""
    small = rank_prefix(work / "prefix", "cl100k-600", cl100k.path, 600)
    large = rank_prefix(work / "prefix", "llama4-1200", real("llama4"), 1200)
    extension = measure_extension(large, small)
    assert extension.contained_share >= 0.98 and extension.size_ratio <= 2.0
    assert not containment_shows_derivation(extension, THRESHOLDS)
    assert "the common core of any vocabulary" in not_an_extension(
        extension, measure_id_alignment(large, small), THRESHOLDS, "cl100k-600").message


def test_merge_order_needs_most_of_the_shorter_list_and_enough_rules():
    rules = [(bytes([i]), bytes([j])) for i in range(40) for j in range(5)]   # 200 distinct rules
    same = merge_order(rules, rules)
    assert same.kendall == pytest.approx(1.0) and same.share_of_shorter == 1.0 and same.common_prefix == 200
    interleaved = [r for pair in zip(rules, [(b"x", bytes([i])) for i in range(200)]) for r in pair]
    order = merge_order(interleaved, rules)                                   # 200 new rules between the old ones
    assert order.kendall == pytest.approx(1.0) and order.share_of_reference == 1.0 and order.common_prefix == 1
    reversed_order = merge_order(rules[::-1], rules)
    assert reversed_order.kendall == pytest.approx(-1.0)
    few = merge_order(rules[:50] + [(b"y", bytes([i])) for i in range(150)], rules)
    assert few.share_of_reference == 0.25 and few.kendall == pytest.approx(1.0)
    short = merge_order(rules[:60], rules[:60])
    assert short.kendall == pytest.approx(1.0) and short.shared == 60
    # in order, over most of the shorter list and at least merge_order_min_shared (100) rules: derivation
    assert merge_order_shows_derivation(same, THRESHOLDS) and merge_order_shows_derivation(order, THRESHOLDS)
    assert not merge_order_shows_derivation(reversed_order, THRESHOLDS)
    assert not merge_order_shows_derivation(few, THRESHOLDS)      # a quarter of the list
    assert not merge_order_shows_derivation(short, THRESHOLDS)    # 60 rules: not calibrated


# ----------------------------------------------------------------------------------------- catalog
def _match(target_tokens, other_vocab, name: str) -> TokenizerMatch:
    return TokenizerMatch(name, name, (), False, exact_overlap(target_tokens, vocabulary_tokens(other_vocab)))


def test_the_catalog_check_reads_containment_with_the_same_bounds(built, work):
    bounds = tuple(THRESHOLDS["tokenizer", k] for k in ("extension_min_overlap", "contained_min_share",
                                                        "contained_max_size_ratio", "contained_min_tokens"))
    _, vocab = built
    derived = not_a_catalog_tokenizer("built", [_match(vocabulary_tokens(vocab), real_vocab("deepseek"), "ds")],
                                      *bounds)
    assert derived.failed and "an extension: target ⊇ ds + K" in derived.message
    small = rank_prefix(work / "prefix", "llama4-8000", real("llama4"), 8000)
    independent = not_a_catalog_tokenizer("small", [_match(vocabulary_tokens(small), real_vocab("deepseek"), "ds")],
                                          *bounds)
    assert not independent.failed and "containment is no evidence on its own" in independent.message


# ----------------------------------------------------------------------------------------- end to end
def _plan(path, target, references) -> str:
    lines = ["[target]", 'name = "built"', f'source = "{target}"']
    for name, source, expect in references:
        lines += ["", "[[reference]]", f'name = "{name}"', f'source = "{source}"', f'expect = "{expect}"']
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def references(work):
    """DeepSeek-V4's tokenizer.json and Qwen's rank file, each alone in a directory."""
    out = {}
    for name, file in (("deepseek", "tokenizer.json"), ("qwen", "qwen.tiktoken")):
        (work / name).mkdir(exist_ok=True)
        (work / name / file).write_bytes(real(name).read_bytes())
        out[name] = work / name
    return out


@pytest.mark.parametrize("claims, code", [({"deepseek": "derived", "qwen": "independent"}, 0),
                                          ({"deepseek": "independent", "qwen": "derived"}, 1)])
def test_audit_run_calls_the_built_vocabulary_derived_from_its_base_only(tmp_path, built, references, claims, code):
    target = built[0].parent
    plan = _plan(tmp_path / "audit.toml", target, [(n, references[n], e) for n, e in claims.items()])
    proc, evidence = run_audit(tmp_path, "--audit", plan, "-m", "tokenizer")
    assert proc.returncode == code, proc.stdout + proc.stderr
    results = outcomes(evidence)
    if claims["deepseek"] == "derived":
        assert results["test_vocabulary_overlap[deepseek]"] == "passed"
        assert results["test_vocabulary_overlap[qwen]"] == "passed"
        for audit in ("test_id_alignment", "test_vocabulary_extension", "test_merge_rules"):
            assert results[f"{audit}[qwen]"] == "passed", audit
        rec = record(evidence, "test_vocabulary_overlap[deepseek]")
        assert rec["summary"].startswith("Tokenizer derived from deepseek's, carried by containment (")
        assert "carried by containment and merge order" in rec["message"]
        signals = {s["name"]: s["shows_derivation"] for s in rec["measurements"]["derivation_signals"]}
        assert signals == {OVERLAP: False, CONTAINMENT: True, ID_ALIGNMENT: False, MERGE_ORDER: True}
        html = (tmp_path / "run.html").read_text()
        assert "Tokenizer derived from deepseek&#x27;s, carried by containment" in html
    else:
        for audit in ("test_vocabulary_overlap", "test_vocabulary_extension", "test_merge_rules"):
            assert results[f"{audit}[deepseek]"] == "failed", audit
        assert results["test_id_alignment[deepseek]"] == "passed"  # re-numbered: the ids alone would miss it
        assert results["test_vocabulary_overlap[qwen]"] == "failed"
        rec = record(evidence, "test_vocabulary_overlap[qwen]")
        assert rec["summary"].startswith("Tokenizer shows no evidence of derivation from qwen's")
        assert "none of overlap, containment, id alignment and merge order" in rec["message"]
        assert "merge rules derive from 'deepseek'" in record(evidence, "test_merge_rules[deepseek]")["message"]
