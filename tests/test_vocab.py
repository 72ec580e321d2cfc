"""modellineage.tokenizer.vocab: every tokenizer format into one normalised vocabulary (real files, no mocks)."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modellineage.errors import CorruptCheckpoint, UnsupportedFormat
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.tokenizer.vocab import (
    byte_level_to_bytes,
    bytes_to_byte_level,
    derive_merges,
    load_from_files,
    load_vocabulary,
    metaspace_to_bytes,
    wordpiece_to_bytes,
)

from .tokenizer_files import (
    ROOT,
    real,
    real_vocab,
    trained_json,
    trained_sentencepiece,
    write_gguf,
    write_gpt2_pair,
    write_hf_directory,
    write_trained,
)

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


def _merges_by_plain_bpe(units, mergeable=None):
    """An independent oracle: BPE over each token with only lower ranks, written as plainly as possible."""
    rank = {}
    for r, tok in enumerate(units):
        rank.setdefault(tok, r)
    merges, irregular = [], 0
    for r, tok in enumerate(units):
        if len(tok) < 2 or rank[tok] != r or (mergeable is not None and not mergeable[r]):
            continue
        parts = [tok[i:i + 1] for i in range(len(tok))]
        while len(parts) > 2:
            ranks = [min(rank.get(a + b, r), r) for a, b in zip(parts, parts[1:])]
            if min(ranks) >= r:
                break
            i = ranks.index(min(ranks))
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        else:
            irregular += 1
    return merges, irregular


@st.composite
def bpe_like_vocabularies(draw):
    """A two- or three-letter alphabet, then tokens that each join two earlier ones (as BPE training adds
    them), some ranks swapped: ties between equal pairs, repeated tokens, tokens no lower-rank merges make."""
    units = [bytes([c]) for c in draw(st.sampled_from([b"ab", b"abc"]))]
    for _ in range(draw(st.integers(0, 50))):
        a, b = draw(st.integers(0, len(units) - 1)), draw(st.integers(0, len(units) - 1))
        units.append(units[a] + units[b])
    for a, b in draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200)), max_size=4)):
        a, b = a % len(units), b % len(units)
        units[a], units[b] = units[b], units[a]
    return units


@given(bpe_like_vocabularies(), st.data())
def test_vectorised_derivation_equals_plain_bpe_on_any_rank_order(units, data):
    flags = data.draw(st.none() | st.lists(st.booleans(), min_size=len(units), max_size=len(units)))
    assert derive_merges(units, flags) == _merges_by_plain_bpe(units, flags)
    text = [u.decode() for u in units]  # the same over characters (SentencePiece pieces)
    assert derive_merges(text, flags) == _merges_by_plain_bpe(text, flags)


@given(bpe_like_vocabularies())
def test_hash_collisions_never_change_a_derived_merge(units):
    """With base 1 the piece hash is a sum of units, so anagrams collide (between tokens, and between a
    token and a piece that is none): such tokens must go to the plain BPE, with the same result."""
    from modellineage.tokenizer import vocab

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vocab, "_HASH_BASE", 1)
        assert derive_merges(units) == _merges_by_plain_bpe(units)


def test_vectorised_derivation_equals_plain_bpe_on_real_vocabularies():
    qwen = real_vocab("qwen")
    ranks = [b for i, b in zip(qwen.ids, qwen.normalised) if i < 40000]
    assert derive_merges(ranks) == _merges_by_plain_bpe(ranks)
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()  # the v1 pieces in score order, as _load_sentencepiece orders them
    proto.ParseFromString(real("mistral-v1").read_bytes())
    normal = sorted((i for i, p in enumerate(proto.pieces) if p.type == p.NORMAL),
                    key=lambda i: (-proto.pieces[i].score, i))
    pieces = [proto.pieces[i].piece for i in normal]
    assert derive_merges(pieces) == _merges_by_plain_bpe(pieces)


def test_tokens_beyond_the_vectorised_length_run_in_plain_python():
    units = [b"a" * (1 << k) for k in range(10)]  # a, aa, aaaa, ..., 512 a's: each the double of the last
    merges, irregular = derive_merges(units)
    assert merges == [(u[:len(u) // 2], u[len(u) // 2:]) for u in units[1:]] and irregular == 0


def test_derive_merges_follows_bpe_not_the_first_valid_split():
    # 'abcd': bc (rank 4) merges first, then bcd (rank 7) — so the merge of abcd is a + bcd, although ab + cd
    # is also a split into known tokens (with lower ranks, 5 and 6).
    units = [b"a", b"b", b"c", b"d", b"bc", b"ab", b"cd", b"bcd", b"abcd"]
    merges, irregular = derive_merges(units)
    assert merges[-1] == (b"a", b"bcd") and irregular == 0


# ----------------------------------------------------------------------------------------- other formats
def test_tokenizer_json_wins_over_vocab_json_and_merges_txt_beside_it(tmp_path):
    """GPT-2, Qwen2/2.5/3 and RoBERTa repos ship tokenizer.json AND vocab.json + merges.txt."""
    directory = write_hf_directory(tmp_path / "hf", "shakespeare_the_tempest.txt")
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    source = resolve_source(str(directory))
    assert {p.name for p in source.tokenizer_files} == {"tokenizer.json", "vocab.json", "merges.txt",
                                                        "tokenizer_config.json"}
    vocab = Model("hf", source).vocabulary  # the path the audits take
    assert vocab.format == "tokenizer.json" and vocab.path == directory / "tokenizer.json"
    assert [p.name for p in vocab.files] == ["tokenizer.json", "tokenizer_config.json"]
    assert dict(vocab.special_tokens)["eos"] == "</s>"
    pair = load_vocabulary(directory / "vocab.json")  # the pair alone still reads (merges.txt found beside it)
    assert pair.format == "vocab.json+merges.txt" and pair.files == (directory / "vocab.json", directory / "merges.txt")
    assert set(pair.normalised) == set(vocab.normalised) and pair.merges == vocab.merges


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
    text = "Give me the liberty to know, to utter, and to argue freely"
    assert txt.encode(text) == js.encode(text) and b"".join(txt.encode(text)) == text.encode()


def test_unigram_tokenizer_json_reads_metaspace_pieces(tmp_path):
    vocab = load_vocabulary(write_trained(tmp_path, "shakespeare_the_tempest.txt", 800, "unigram"))
    assert vocab.model_type == "Unigram" and vocab.merges is None
    assert b" the" in vocab.id_of_bytes()


def test_gguf_vocabulary(tmp_path):
    vocab = load_vocabulary(write_gguf(tmp_path / "m.gguf", trained_json("shakespeare_the_tempest.txt")))
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


def test_a_merge_whose_result_is_not_in_the_vocab_is_an_error_not_a_crash(tmp_path):
    # tokenizers' BPE.from_file panics (a BaseException) on this pair; the audit must name the file instead
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(CorruptCheckpoint, match=f"{tmp_path / 'merges.txt'}: 1 merge rule"):
        load_vocabulary(tmp_path / "vocab.json")


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


def test_an_unreadable_tokenizer_is_read_once_and_fails_every_audit_that_asks(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    model = Model("broken", resolve_source(str(tmp_path)))
    with pytest.raises(CorruptCheckpoint, match="tokenizer.json") as first:
        model.vocabulary
    (tmp_path / "tokenizer.json").unlink()  # not read again: the same error comes back without the file
    with pytest.raises(CorruptCheckpoint) as again:
        model.vocabulary
    assert again.value is first.value


def test_tokenizer_only_directory_is_a_full_source(tmp_path):
    shutil.copy(real("mistral-v1"), tmp_path / "tokenizer.model")
    vocab = Model("mistral", resolve_source(str(tmp_path))).vocabulary
    assert vocab.format == "sentencepiece" and vocab.path == tmp_path / "tokenizer.model"


def test_as_dict_is_deterministic_and_names_the_file():
    a = load_from_files([DEMO / "base" / "tokenizer.json"]).as_dict()
    b = load_from_files([DEMO / "base" / "tokenizer.json"]).as_dict()
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["file"].endswith("tokenizer.json") and a["merges"] == 765


def test_the_record_names_the_file_read_inside_the_directory_as_given(monkeypatch):
    """A directory given relative to the working directory is recorded relative, down to the file read."""
    monkeypatch.chdir(ROOT)
    vocab = load_vocabulary("fixtures/demo/base")
    assert vocab.path == Path("fixtures/demo/base/tokenizer.json")
    assert vocab.files == (Path("fixtures/demo/base/tokenizer.json"), Path("fixtures/demo/base/tokenizer_config.json"))
    assert vocab.as_dict()["file"] == "fixtures/demo/base/tokenizer.json"


# ----------------------------------------------------------------------------------------- special and added tokens
def test_tokenizer_json_roles_come_from_its_model_post_processor_and_side_files(tmp_path):
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(trained_json("shakespeare_the_tempest.txt"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tok.save(str(tmp_path / "tokenizer.json"))
    alone = load_vocabulary(tmp_path)
    # Byte-level BPE has no unk and this file no padding: honestly unknown, not guessed.
    assert dict(alone.special_tokens) == {"bos": "<s>", "eos": "</s>", "pad": None, "unk": None}
    assert "bos: tokenizer.json post-processor" in alone.notes[-1]
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "</s>"}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin|>", "pad_token": "<s>"}))
    sided = load_vocabulary(tmp_path)
    # A config file's explicit role beats the post-processor's; special_tokens_map.json beats tokenizer_config.json.
    assert dict(sided.special_tokens) == {"bos": "<|begin|>", "eos": "</s>", "pad": "</s>", "unk": None}
    assert [p.name for p in sided.files] == ["tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"]


def test_side_files_add_the_tokens_a_sentencepiece_model_lacks(tmp_path):
    shutil.copy(real("mistral-v1"), tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<pad>": 32000, "<sep>": 32001, "<bogus>": 5}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": "<pad>"}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"added_tokens_decoder": {"1": {"content": "<s>", "special": True},
                                  "32002": {"content": "<tool>", "special": True}}}))
    vocab = Model("m", resolve_source(str(tmp_path))).vocabulary
    assert vocab.size == 32003 and vocab.raw[-3:] == ("<pad>", "<sep>", "<tool>")
    assert vocab.added_tokens == ((32000, "<pad>", True), (32001, "<sep>", False), (32002, "<tool>", True))
    assert {32000, 32002} <= vocab.special_ids and 32001 not in vocab.special_ids
    assert dict(vocab.special_tokens) == {"bos": "<s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"}
    assert vocab.id_of_bytes()[b"<sep>"] == 32001  # literal text, like any added token
    assert any("'<bogus>' at id 5" in n for n in vocab.notes)  # a clash is noted, the model's token kept
    assert vocab.raw[5] == "<0x02>"


@pytest.mark.parametrize("name, content, defect", [
    ("tokenizer_config.json", "{", "not valid JSON"),
    ("added_tokens.json", json.dumps({"<pad>": "x"}), "no valid id"),
    ("tokenizer_config.json", json.dumps({"added_tokens_decoder": {"x": {"content": "a"}}}), "not id -> token"),
])
def test_a_broken_side_file_names_the_file(tmp_path, name, content, defect):
    write_trained(tmp_path, "shakespeare_the_tempest.txt")
    (tmp_path / name).write_text(content)
    with pytest.raises(CorruptCheckpoint, match=f"{tmp_path / name}: .*{defect}"):
        load_vocabulary(tmp_path)


def test_sentencepiece_added_tokens_use_the_models_own_special_ids(tmp_path):
    """Trained with unk/bos/eos at ids 2-4, a control symbol at 0 and a user-defined one at 1."""
    model = trained_sentencepiece("shakespeare_the_tempest.txt", control_symbols=("<ctl>",),
                                  user_defined_symbols=("<usr>",), unk_id=2, bos_id=3, eos_id=4, pad_id=-1)
    (tmp_path / "spiece.model").write_bytes(model)
    vocab = load_vocabulary(tmp_path)
    assert vocab.raw[:5] == ("<ctl>", "<usr>", "<unk>", "<s>", "</s>")
    assert vocab.added_tokens == ((0, "<ctl>", True), (1, "<usr>", False))
    assert dict(vocab.special_tokens) == {"bos": "<s>", "eos": "</s>", "pad": None, "unk": "<unk>"}
