"""modellineage.vocab: every tokenizer format into one normalised vocabulary (real files, no mocks)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modellineage.errors import CorruptCheckpoint, UnsupportedFormat
from modellineage.model import Model
from modellineage.sources import resolve_source
from modellineage.vocab import (byte_level_to_bytes, bytes_to_byte_level, derive_merges, load_from_files,
                                load_vocabulary, metaspace_to_bytes, wordpiece_to_bytes)

from .tokenizer_files import ROOT, real, real_vocab, trained_json, write_gpt2_pair, write_trained

DEMO = ROOT / "fixtures" / "demo"


# ----------------------------------------------------------------------------------------- normalisation
def test_one_token_in_four_spellings_normalises_to_the_same_bytes():
    assert metaspace_to_bytes("▁the") == byte_level_to_bytes("Ġthe") == wordpiece_to_bytes("the") == b" the"
    assert metaspace_to_bytes("<0x41>") == b"A" and metaspace_to_bytes("<0xE4>") == b"\xe4"
    assert wordpiece_to_bytes("##ing") == b"ing"
    assert byte_level_to_bytes("ĠĊ") == b" \n"
    assert byte_level_to_bytes("<|endoftext|>") == b"<|endoftext|>"  # printable ASCII maps to itself


@given(st.binary(max_size=40))
def test_byte_level_spelling_round_trips(data):
    assert byte_level_to_bytes(bytes_to_byte_level(data)) == data


def test_sentencepiece_and_tiktoken_and_byte_level_agree_on_real_files():
    spm, tik, hf = real_vocab("mistral-v1"), real_vocab("qwen"), real_vocab("deepseek")
    for vocab in (spm, tik, hf):
        assert b" the" in vocab.id_of_bytes(), vocab.path
    assert spm.raw[spm.id_of_bytes()[b" the"]] == "▁the"
    assert hf.raw[hf.id_of_bytes()[b" the"]] == "Ġthe"
    assert tik.raw[tik.id_of_bytes()[b" the"]] == "Ġthe"  # tiktoken bytes shown in the byte-level alphabet
    assert spm.raw[spm.ids.index(68)] == "<0x41>" and spm.normalised[68] == b"A"


# ----------------------------------------------------------------------------------------- real formats
def test_sentencepiece_model_reads_with_types_and_special_tokens():
    v1 = real_vocab("mistral-v1")
    assert (v1.format, v1.model_type, v1.size) == ("sentencepiece", "BPE", 32000)
    assert v1.path == real("mistral-v1") and v1.files == (real("mistral-v1"),)
    assert dict(v1.special_tokens) == {"bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>"}
    assert v1.special_ids == frozenset({0, 1, 2})
    v3 = real_vocab("mistral-v3")
    assert v3.size == 32768 and v3.raw[3] == "[INST]" and v3.raw[771] == "<0x00>"
    assert len(v3.added_tokens) == 768


def test_tiktoken_rank_file_and_tekken_json():
    qwen = real_vocab("qwen")
    assert (qwen.format, qwen.size, qwen.merges_origin) == ("tiktoken", 151643, "derived from ranks")
    assert qwen.encode("Hello world") == [b"Hello", b" world"]
    tekken = real_vocab("tekken")
    assert tekken.format == "tekken" and tekken.size == 131072 and len(tekken.special_ids) == 1000
    assert tekken.ids[1000] == 1000 and tekken.normalised[1000] == b"\x00"  # rank 0 after 1000 control ids


def test_a_tokenizer_model_file_holding_tiktoken_ranks_is_read_as_tiktoken(tmp_path):
    """Llama-3's original tokenizer.model is a tiktoken rank file despite its name: detected by content."""
    lines = real("qwen").read_text().splitlines()[:5000]
    (tmp_path / "tokenizer.model").write_text("\n".join(lines) + "\n")
    vocab = load_vocabulary(tmp_path)
    assert vocab.format == "tiktoken" and vocab.size == 5000 and vocab.path.name == "tokenizer.model"


def test_tokenizer_json_merges_are_read_and_derived_merges_reproduce_them():
    ds = real_vocab("deepseek")
    assert ds.format == "tokenizer.json" and ds.merges_origin == "file" and len(ds.merges) == 127741
    assert ds.merges[0] == (b" ", b"t")  # "Ġ t"
    base = [b for i, b in zip(ds.ids, ds.normalised) if i not in ds.special_ids]
    derived, _ = derive_merges(base)
    assert derived == list(ds.merges)  # the rank-derivation used for tiktoken/SentencePiece is exact


def test_derive_merges_follows_bpe_not_the_first_valid_split():
    # 'abcd': bc (rank 4) merges first, then bcd (rank 7) — so the merge of abcd is a + bcd, although ab + cd
    # is also a split into known tokens (with lower ranks, 5 and 6).
    units = [b"a", b"b", b"c", b"d", b"bc", b"ab", b"cd", b"bcd", b"abcd"]
    merges, irregular = derive_merges(units)
    assert merges[-1] == (b"a", b"bcd") and irregular == 0


# ----------------------------------------------------------------------------------------- other formats
def test_gpt2_vocab_and_merges_equal_the_tokenizer_json_they_came_from(tmp_path):
    text = trained_json("shakespeare_the_tempest.txt")
    write_gpt2_pair(tmp_path / "gpt2", text)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(text)
    pair, hf = load_vocabulary(tmp_path / "gpt2"), load_vocabulary(tmp_path / "hf" / "tokenizer.json")
    assert pair.format == "vocab.json+merges.txt" and pair.files[1].name == "merges.txt"
    assert set(pair.normalised) == set(hf.normalised) and pair.merges == hf.merges
    assert pair.encode("Full fathom five") == hf.encode("Full fathom five")


def test_wordpiece_vocab_txt_and_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(trained_json("milton_areopagitica.txt", 600, "wordpiece"))
    vocab = tok.get_vocab()
    (tmp_path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    txt = load_vocabulary(tmp_path / "vocab.txt")
    assert txt.format == "vocab.txt" and txt.model_type == "WordPiece" and txt.merges is None
    assert b" the" in txt.id_of_bytes() and dict(txt.special_tokens)["unk"] == "[UNK]"
    write_trained(tmp_path / "wp", "milton_areopagitica.txt", 600, "wordpiece")
    js = load_vocabulary(tmp_path / "wp")
    assert js.model_type == "WordPiece" and set(js.normalised) == set(txt.normalised)


def test_unigram_tokenizer_json_reads_metaspace_pieces(tmp_path):
    vocab = load_vocabulary(write_trained(tmp_path, "shakespeare_the_tempest.txt", 800, "unigram"))
    assert vocab.model_type == "Unigram" and vocab.merges is None
    assert b" the" in vocab.id_of_bytes()


def test_gguf_vocabulary(tmp_path):
    import gguf

    hf = json.loads(trained_json("shakespeare_the_tempest.txt"))
    tokens = sorted(hf["model"]["vocab"], key=hf["model"]["vocab"].get)
    writer = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<s>", "</s>") else 1 for t in tokens])
    writer.add_token_merges(hf["model"]["merges"] if isinstance(hf["model"]["merges"][0], str)
                            else [" ".join(m) for m in hf["model"]["merges"]])
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    vocab = load_vocabulary(tmp_path / "m.gguf")
    ref = load_vocabulary(write_trained(tmp_path / "hf", "shakespeare_the_tempest.txt"))
    assert vocab.format == "gguf" and vocab.size == ref.size and vocab.normalised == ref.normalised
    assert vocab.merges == ref.merges and dict(vocab.special_tokens)["bos"] == "<s>"
    with pytest.raises(UnsupportedFormat, match="m.gguf"):
        vocab.encode("no encoder")


# ----------------------------------------------------------------------------------------- bad input
def test_corrupt_tokenizer_json_names_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text((DEMO / "base" / "tokenizer.json").read_text()[:5000])
    with pytest.raises(CorruptCheckpoint, match=f"{path}: not valid JSON"):
        load_vocabulary(path)


def test_tokenizer_json_the_library_rejects_names_the_file(tmp_path):
    data = json.loads((DEMO / "base" / "tokenizer.json").read_text())
    data["model"]["merges"] = ["no_such_token another"]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptCheckpoint, match=f"{path}: the tokenizers library cannot read"):
        load_vocabulary(path)


@pytest.mark.parametrize("name, content", [
    ("vocab.txt", "\n\n"),
    ("tokenizer.json", json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}})),
    ("empty.tiktoken", ""),
])
def test_empty_vocabulary_names_the_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CorruptCheckpoint, match=f"{path}: .*empty"):
        load_vocabulary(path)


@pytest.mark.parametrize("content", [b"", b"\x00\x01 this is not a protobuf \xff\xfe" * 20])
def test_a_file_that_is_not_sentencepiece_names_the_file(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpoint, match=f"{path}: .*not a SentencePiece model"):
        load_vocabulary(path)


def test_mismatched_vocab_and_merges_name_the_merges_file(tmp_path):
    vocab_path, merges_path = write_gpt2_pair(tmp_path, trained_json("shakespeare_the_tempest.txt"))
    other = json.loads(trained_json("milton_areopagitica.txt", 1500))["model"]["merges"]
    merges_path.write_text("#version: 0.2\n" + "\n".join(m if isinstance(m, str) else " ".join(m) for m in other))
    with pytest.raises(CorruptCheckpoint, match=str(merges_path)):
        load_vocabulary(tmp_path)


def test_bad_tiktoken_line_names_the_file(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text(base64.b64encode(b"a").decode() + " 0\nnot-a-rank-line\n")
    with pytest.raises(CorruptCheckpoint, match=f"{path}: not a valid tiktoken rank file"):
        load_vocabulary(path)


# ----------------------------------------------------------------------------------------- Model.vocabulary
def test_model_vocabulary_reads_the_source_tokenizer_and_its_side_files():
    model = Model("base", resolve_source(str(DEMO / "base")))
    vocab = model.vocabulary
    assert vocab.path.name == "tokenizer.json" and vocab.size == 1024
    assert [p.name for p in vocab.files] == ["tokenizer.json", "tokenizer_config.json"]
    assert model.vocabulary is vocab  # lazy, read once


def test_model_without_tokenizer_files_names_the_directory(tmp_path):
    shutil.copy(DEMO / "base" / "config.json", tmp_path)
    model = Model("bare", resolve_source(str(tmp_path)))
    with pytest.raises(UnsupportedFormat, match=f"{tmp_path}: no tokenizer files"):
        model.vocabulary


def test_tokenizer_only_directory_is_a_full_source(tmp_path):
    shutil.copy(real("mistral-v1"), tmp_path / "tokenizer.model")
    vocab = Model("mistral", resolve_source(str(tmp_path))).vocabulary
    assert vocab.format == "sentencepiece" and vocab.path == tmp_path / "tokenizer.model"


def test_as_dict_is_deterministic_and_names_the_file():
    a = load_from_files([DEMO / "base" / "tokenizer.json"]).as_dict()
    b = load_from_files([DEMO / "base" / "tokenizer.json"]).as_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["file"].endswith("tokenizer.json") and a["merges"] == 765


def test_path_is_kept_as_given():
    assert isinstance(load_vocabulary(DEMO / "base").path, Path)
