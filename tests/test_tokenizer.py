"""modellineage.tokenizer measures on real tokenizer pairs of known lineage, judged by the audit bands.

Known lineage: Mistral v3 = v1 + 768 control tokens inserted at ids 3-770 (an extension with an id
shift); Qwen's and DeepSeek-V4's tokenizers are independent; tokenizers trained here on two different
texts are independent; a tokenizer extended here by K tokens is an extension.
"""

from __future__ import annotations

import json

import pytest

from audits.criteria import load_thresholds
from audits.tokenizer_criteria import (
    EXTENSION,
    INDEPENDENT,
    REUSED,
    extension_detected,
    id_alignment,
    merge_rules,
    not_an_extension,
    overlap_band,
    vocabulary_overlap,
)
from modellineage.errors import CorruptCheckpoint, UnsupportedFormat
from modellineage.reporting.evidence import to_jsonable
from modellineage.tokenizer.compare import (
    Probe,
    boundary_f1,
    compare_tokenizers,
    load_probes,
    measure_encoding,
    measure_extension,
    measure_id_alignment,
    measure_merges,
    measure_overlap,
    measure_special_tokens,
)
from modellineage.tokenizer.vocab import load_vocabulary

from .tokenizer_files import ROOT, real_vocab, write_extended, write_trained

THRESHOLDS = load_thresholds(ROOT / "thresholds.toml")
PROBES = load_probes(ROOT / "fixtures" / "probes")


def verdicts(target, reference):
    """(band, overlap judgement under independent, under derived, extension judgement) for a pair."""
    overlap, alignment = measure_overlap(target, reference), measure_id_alignment(target, reference)
    ext = measure_extension(target, reference, alignment=alignment)
    merges = measure_merges(target, reference) if target.merges and reference.merges else None
    return (overlap_band(overlap.jaccard, THRESHOLDS),
            vocabulary_overlap(overlap, alignment, ext, merges, THRESHOLDS, "ref", "independent"),
            vocabulary_overlap(overlap, alignment, ext, merges, THRESHOLDS, "ref", "derived"),
            not_an_extension(ext, alignment, THRESHOLDS, "ref"))


# ----------------------------------------------------------------------------------------- real pairs
def test_mistral_v3_reads_as_an_extension_of_v1_with_the_768_id_shift():
    v1, v3 = real_vocab("mistral-v1"), real_vocab("mistral-v3")
    overlap = measure_overlap(v3, v1)
    assert overlap.share_of_reference == 1.0 and overlap.share_of_target == pytest.approx(32000 / 32768, abs=1e-3)
    alignment = measure_id_alignment(v3, v1)
    assert alignment.dominant_offset == 768 and alignment.dominant_share > 0.999
    assert dict(alignment.histogram) == {768: 31997 - 125, 0: 3}  # 125 byte tokens double as pieces
    ext = measure_extension(v3, v1, alignment=alignment)
    assert ext.contained == "target ⊇ reference" and ext.added == 768 and ext.removed == 0
    assert ext.added_id_runs == ((3, 770, 768),)
    assert "reference ids 3–31999 at offset +768" in ext.summary
    band, as_independent, as_derived, extension = verdicts(v3, v1)
    assert band == EXTENSION
    assert as_independent.failed and not as_derived.failed and extension.failed
    assert "+768" in extension.message and "thresholds.toml [tokenizer]" in as_independent.message


def test_mistral_v1_merges_are_v3_merges():
    merges = measure_merges(real_vocab("mistral-v3"), real_vocab("mistral-v1"))
    assert merges.shared == merges.reference_merges == merges.common_prefix > 20000
    assert merges.spearman == pytest.approx(1.0) and merges.kendall == pytest.approx(1.0)
    assert merge_rules(merges, THRESHOLDS, "v1").failed


def test_qwen_and_deepseek_read_as_independent():
    qwen, ds = real_vocab("qwen"), real_vocab("deepseek")
    band, as_independent, as_derived, extension = verdicts(qwen, ds)
    assert band == INDEPENDENT
    assert not as_independent.failed and as_derived.failed and not extension.failed
    alignment = measure_id_alignment(qwen, ds)
    assert not id_alignment(alignment, THRESHOLDS, "deepseek").failed
    merges = measure_merges(qwen, ds)
    assert merges.common_prefix < 100 and not merge_rules(merges, THRESHOLDS, "deepseek").failed
    enc = measure_encoding(qwen, ds, PROBES)
    assert enc.identical_share < 0.5 and enc.mean_boundary_f1 < 0.95


def test_mistral_v7_is_v3_reused():
    band, as_independent, as_derived, _ = verdicts(real_vocab("mistral-v7"), real_vocab("mistral-v3"))
    assert band == REUSED and as_independent.failed and not as_derived.failed


def test_special_tokens_side_by_side():
    special = measure_special_tokens(real_vocab("mistral-v3"), real_vocab("mistral-v1"))
    assert special.roles[0] == ("bos", "<s>", "<s>", True)
    assert special.target_added_count == 768 and special.reference_added_count == 0
    assert special.target_added[0] == (3, "[INST]", True)


# ----------------------------------------------------------------------------------------- synthetic pairs
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    return {
        "tempest": load_vocabulary(write_trained(tmp / "a", "shakespeare_the_tempest.txt")),
        "milton": load_vocabulary(write_trained(tmp / "b", "milton_areopagitica.txt")),
        "tempest+50": load_vocabulary(write_extended(tmp / "c", "shakespeare_the_tempest.txt", 50)),
        "tempest+400": load_vocabulary(write_extended(tmp / "d", "shakespeare_the_tempest.txt", 400)),
    }


def test_tokenizers_trained_on_different_texts_are_independent(trained):
    overlap = measure_overlap(trained["milton"], trained["tempest"])
    assert overlap.jaccard < 0.9
    band, as_independent, as_derived, extension = verdicts(trained["milton"], trained["tempest"])
    assert band == INDEPENDENT and not as_independent.failed and as_derived.failed and not extension.failed


def test_a_vocabulary_extended_by_k_tokens_is_in_the_extension_band(trained):
    overlap = measure_overlap(trained["tempest+50"], trained["tempest"])
    assert overlap.jaccard == pytest.approx(1000 / 1050)
    band, as_independent, as_derived, extension = verdicts(trained["tempest+50"], trained["tempest"])
    assert band == EXTENSION and as_independent.failed and not as_derived.failed and extension.failed
    ext = measure_extension(trained["tempest+50"], trained["tempest"])
    assert ext.added == 50 and ext.added_id_runs == ((1000, 1049, 50),) and ext.dominant_offset == 0


def test_a_large_extension_below_90_percent_still_reads_as_derived_through_its_ids(trained):
    """Chinese-LLaMA-style: many tokens added, overlap < 90%, but every reference id kept."""
    target, ref = trained["tempest+400"], trained["tempest"]
    band, as_independent, as_derived, extension = verdicts(target, ref)
    assert band == INDEPENDENT and not as_derived.failed and "carried by containment, id alignment" in as_derived.message
    assert extension.failed  # under `independent` the kept ids still give it away
    assert extension_detected(measure_extension(target, ref), measure_id_alignment(target, ref), THRESHOLDS)


def test_encoding_agreement_tells_a_kept_tokenizer_from_an_independent_one(trained):
    """Extensions (K tokens appended; Mistral's 768 control tokens inserted) cut every probe as before;
    independent tokenizers, trained or real, do not."""
    for target, reference in ((trained["tempest+50"], trained["tempest"]),
                              (real_vocab("mistral-v3"), real_vocab("mistral-v1"))):
        kept = measure_encoding(target, reference, PROBES)
        assert kept.identical == kept.probes == len(PROBES) and kept.mean_boundary_f1 == 1.0
        assert kept.stream_mismatch == 0 and not kept.differences
    for target, reference in ((trained["milton"], trained["tempest"]), (real_vocab("qwen"), real_vocab("deepseek"))):
        own = measure_encoding(target, reference, PROBES)
        assert own.identical < own.probes and own.mean_boundary_f1 < 1.0 and own.differences
        assert {c for c, n, k, f in own.by_category if k < n}  # some category cut differently


# ----------------------------------------------------------------------------------------- small exact cases
def test_boundary_f1_exact_cases():
    assert boundary_f1([b"ab", b"cd"], [b"ab", b"cd"]) == 1.0
    assert boundary_f1([b"abcd"], [b"abcd"]) == 1.0
    assert boundary_f1([b"ab", b"cd"], [b"a", b"bcd"]) == 0.0
    assert boundary_f1([b"a", b"b", b"cd"], [b"ab", b"cd"]) == pytest.approx(2 * 1 / 3)


def test_wordpiece_pieces_sit_where_byte_level_pieces_sit(tmp_path):
    """WordPiece strings carry no spaces; its pieces are the text each token covers, a space going with
    the word after it and none before punctuation, so boundaries line up with byte-level BPE's."""
    from modellineage.tokenizer.vocab import text_pieces

    assert text_pieces("ab, cd  e", [(0, 2), (2, 3), (4, 6), (8, 9)]) == [b"ab", b",", b" cd", b"  e"]
    assert text_pieces("\ufb01x", [(0, 1), (0, 1), (1, 2)]) == ["\ufb01".encode(), b"x"]  # one char, two tokens
    wordpiece = load_vocabulary(write_trained(tmp_path / "wp", "milton_areopagitica.txt", 600, "wordpiece"))
    bytelevel = load_vocabulary(write_trained(tmp_path / "bpe", "milton_areopagitica.txt", 600))
    text = "Lords and Commons of England, consider what Nation it is!"
    pieces = wordpiece.encode(text)
    assert b"".join(pieces) == text.encode() and b" England" in b"".join(pieces)
    assert b"," in pieces and b" ," not in pieces
    enc = measure_encoding(wordpiece, bytelevel, [Probe("t", 0, text)])
    assert enc.stream_mismatch == 0 and enc.mean_boundary_f1 > 0.5


def test_sentencepiece_dummy_prefix_does_not_count_as_a_difference():
    v1, qwen = real_vocab("mistral-v1"), real_vocab("qwen")
    enc = measure_encoding(v1, qwen, [Probe("t", 0, "Hello world")])
    assert enc.identical == 1 and enc.stream_mismatch == 0


def test_probe_corpus_covers_the_languages_and_keeps_whitespace():
    cats = {p.category for p in PROBES}
    assert cats == {"chinese", "code", "emoji", "english", "german", "japanese", "korean", "numbers", "whitespace"}
    texts = {p.text for p in PROBES}
    assert "line one\n\nline three after a blank line\n" in texts and "trailing spaces   " in texts
    assert "\ttab at the start\tand\t\tbetween" in texts
    assert "mixed \t \n \r\n whitespace" in texts  # the CRLF survives reading (fixtures/probes/README.md)


def test_probe_texts_keep_carriage_returns_verbatim(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"windows\r\nline\n%%\nold mac\rline\r\n%%\nlast\r\n")
    assert [p.text for p in load_probes(tmp_path)] == ["windows\r\nline", "old mac\rline\r", "last\r"]


def test_probe_files_with_crlf_separator_lines_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "english.txt"
    path.write_bytes(b"one\r\n%%\r\ntwo\r\n")
    with pytest.raises(CorruptCheckpoint, match=f"{path}: separator lines"):
        load_probes(tmp_path)


def test_a_probe_corpus_without_texts_names_the_directory(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UnsupportedFormat, match=f"{tmp_path}: the probe files \\(empty.txt\\) hold no texts"):
        load_probes(tmp_path)
    v1 = real_vocab("mistral-v1")
    with pytest.raises(UnsupportedFormat, match=f"{tmp_path}: no probe texts to encode"):
        measure_encoding(v1, v1, (), corpus=tmp_path)
    corpus = ROOT / "fixtures" / "probes"
    assert measure_encoding(v1, v1, PROBES, corpus=corpus).as_dict()["probe_corpus"] == str(corpus)


def test_comparison_is_deterministic_and_json_ready(trained):
    a = json.dumps(to_jsonable(compare_tokenizers(trained["milton"], trained["tempest"], PROBES)), sort_keys=True)
    b = json.dumps(to_jsonable(compare_tokenizers(trained["milton"], trained["tempest"], PROBES)), sort_keys=True)
    assert a == b and '"jaccard"' in a and "tokenizer.json" in a


def test_merges_need_a_merge_model(tmp_path, trained):
    unigram = load_vocabulary(write_trained(tmp_path, "shakespeare_the_tempest.txt", 800, "unigram"))
    with pytest.raises(UnsupportedFormat, match="tokenizer.json: a Unigram vocabulary has no merge rules"):
        measure_merges(unigram, trained["tempest"])
    comparison = compare_tokenizers(unigram, trained["tempest"])
    assert comparison.merges is None and comparison.skipped[0][0] == "merges"
