"""Hostile bytes at every parser boundary: a typed error naming the file, bounded memory, the run completes.

Issue 9, classes 3 and 4. Every hostile file is built here from the demo models (no blobs checked in).
Fast unit tests call the parsers directly; three end-to-end runs (``tests/hostile.py``) put many hostile
models into one audit each, as references (the target where only the target's config is read), and check
that the run reaches a verdict, writes evidence and report, names each offending file in that model's
audits, and stays under the peak-RSS bound.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import time
from pathlib import Path

import pytest

from modellineage.architecture.compare import check_config_against_weights, facts_from_weights
from modellineage.errors import CorruptCheckpoint, LineageError, UnsupportedFormat
from modellineage.reading.boundary import (
    MAX_JSON_DEPTH,
    MAX_TOKENIZER_ENTRIES,
    guard,
    loads_json,
    quote,
    read_json,
    rust_call,
)
from modellineage.reading.config import normalise_config
from modellineage.reading.model import Model
from modellineage.reading.naming import canonicalize
from modellineage.reading.sources import resolve_source
from modellineage.reading.tensors import read_header
from modellineage.tokenizer.vocab import load_vocabulary

from .hostile import DEMO, PEAK_RSS_LIMIT, assert_contained, copy_demo, run_audit
from .tokenizer_files import real

pytestmark = pytest.mark.hostile

ST = "model.safetensors"


# ----------------------------------------------------------------------------------------- builders
def demo_parts(model: str = "base") -> tuple[dict, bytes]:
    """The demo model's safetensors header (as a dict) and its data section."""
    raw = (DEMO / model / ST).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_st(path: Path, header: dict | bytes, data: bytes) -> Path:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def demo_header_text() -> str:
    header, _ = demo_parts()
    return json.dumps(header)


def _extra(name: str, shape: list, payload: bytes = b"", dtype: str = "F32"):
    def build(folder: Path) -> None:
        header, data = demo_parts()
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(payload)]}
        write_st(folder / ST, header, data + payload)
    return build


def _raw_header(make_blob):
    def build(folder: Path) -> None:
        _, data = demo_parts()
        write_st(folder / ST, make_blob(), data)
    return build


FIRST_SHAPE = '"shape": [1024, 64]'

# Headers no parser may trust: each is a CorruptCheckpoint naming the file, never a bare exception.
BAD_HEADERS = {
    "5000-digit-shape": _raw_header(lambda: demo_header_text().replace(FIRST_SHAPE, '"shape": [' + "9" * 5000 + ", 64]",
                                                                      1).encode()),
    "deep-array": _raw_header(lambda: b"[" * 100_000 + b"]" * 100_000),
    "deep-object": _raw_header(lambda: b'{"a":' * 100_000 + b"1" + b"}" * 100_000),
    "deep-entry": _raw_header(lambda: demo_header_text().replace(FIRST_SHAPE, '"shape": ' + "[" * 100_000 + "]" * 100_000,
                                                                 1).encode()),
    "bad-utf8": _raw_header(lambda: demo_header_text().replace("lm_head", "lm\udcffhead", 1).encode("utf-8",
                                                                                                    "surrogateescape")),
    "top-level-list": _raw_header(lambda: b"[1, 2]"),
    "top-level-string": _raw_header(lambda: b'"model"'),
    "float-dimension": _raw_header(lambda: demo_header_text().replace(FIRST_SHAPE, '"shape": [1024.0, 64]', 1).encode()),
    "bool-dimension": _raw_header(lambda: demo_header_text().replace(FIRST_SHAPE, '"shape": [true, 64]', 1).encode()),
    "infinite-dimension": _raw_header(lambda: demo_header_text().replace(FIRST_SHAPE, '"shape": [Infinity, 64]',
                                                                         1).encode()),
    "overflowing-dimensions": _extra("model.extra.weight", [2**62, 2**62], b"\0" * 8),
    "u64-overflow": _extra("model.extra.weight", [2**64 + 1, 1], b"\0" * 4),
    "empty-tensor-declaring-1e8-rows": _extra("model.layers.0.mlp.experts.gate_up_proj", [100_000_000, 0, 64]),
    "empty-tensor-declaring-2e64": _extra("model.extra.weight", [2**63 - 1, 2**63 - 1, 0]),
    "rank-100": _extra("model.extra.weight", [1] * 100, b"\0" * 4),
    "huge-offset": _raw_header(lambda: demo_header_text().replace('"data_offsets": [0, 262144]',
                                                                  '"data_offsets": [0, ' + "1" * 30 + "]", 1).encode()),
    "dtype-object": _raw_header(lambda: demo_header_text().replace('"dtype": "F32"', '"dtype": {"a": 1}', 1).encode()),
}

# Valid headers whose names or shapes declare far more than the file holds: cheap, and read correctly.
BIG_DECLARATIONS = {
    "layer-1e9": _extra("model.layers.1000000000.mlp.up_proj.weight", [2], b"\0" * 8),
    "layer-5000-digits": _extra("model.layers." + "9" * 5000 + ".mlp.up_proj.weight", [2], b"\0" * 8),
    "expert-1e9": _extra("model.layers.0.mlp.experts.1000000000.up_proj.weight", [2, 1], b"\0" * 8),
    "fused-experts-1e6-of-one-byte": _extra("model.layers.0.mlp.experts.down_proj", [1_000_000, 1, 1],
                                            b"\0" * 1_000_000, dtype="I8"),
}


def test_every_bad_header_is_a_corrupt_checkpoint_naming_the_file(tmp_path):
    for case, build in BAD_HEADERS.items():
        folder = tmp_path / case
        folder.mkdir()
        build(folder)
        with pytest.raises(LineageError) as info:
            read_header(folder / ST)
        message = str(info.value)
        assert message.startswith(f"{folder / ST}: "), (case, message)
        assert len(message) < 600, (case, len(message))  # a short reason, never the header itself


@pytest.fixture
def bounded_memory():
    """Caps this process's address space 2 GiB above its current size for the test, so a regression that
    allocates per declared entry fails with a MemoryError instead of exhausting the machine."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    vm = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
              if line.startswith("VmSize:"))
    cap = vm + (2 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_big_declarations_cost_what_the_bytes_cost(tmp_path, bounded_memory):
    for case, build in BIG_DECLARATIONS.items():
        folder = copy_demo(tmp_path / case)
        build(folder)
        model = Model(case, resolve_source(str(folder)))
        start = time.perf_counter()
        facts = model.weight_facts
        assert time.perf_counter() - start < 10, case
        assert facts.total_parameters >= 312896 // 2, case
    model = Model("layer", resolve_source(str(tmp_path / "layer-1e9")))
    assert model.weight_facts.num_layers == 1_000_000_001
    assert any("[4, 5, 6, 7, 8, 9, 10, 11, 12, 13] missing" in n for n in model.weight_facts.notes)
    fused = Model("fused", resolve_source(str(tmp_path / "fused-experts-1e6-of-one-byte")))
    assert "model.layers.0.mlp.experts.down_proj" in fused.name_map.unknown
    digits = Model("digits", resolve_source(str(tmp_path / "layer-5000-digits")))
    assert any(n.startswith("model.layers.999") for n in digits.name_map.unknown)


def test_tensor_count_is_capped_per_file_and_per_model(tmp_path, monkeypatch):
    from modellineage.reading import tensors

    monkeypatch.setattr(tensors, "MAX_TENSORS", 30)  # the demo holds 39 tensors
    with pytest.raises(CorruptCheckpoint, match=rf"^{DEMO / 'base' / ST}: header declares 39 tensors, above"):
        read_header(DEMO / "base" / ST)
    header, data = demo_parts()
    names = sorted(header.keys() - {"__metadata__"})
    for part, chosen in enumerate((names[:20], names[20:])):
        write_st(tmp_path / f"model-{part}.safetensors", {n: header[n] for n in chosen}, data)
    with pytest.raises(CorruptCheckpoint, match=r"model-1.safetensors: the shards up to this one hold 39 tensors"):
        tensors.TensorStore([tmp_path / "model-0.safetensors", tmp_path / "model-1.safetensors"])


def test_layer_gaps_are_listed_from_the_indices_present(bounded_memory):
    shapes = {f"model.layers.{i}.mlp.up_proj.weight": (4, 2) for i in (0, 1, 5, 10**9)}
    facts = facts_from_weights(canonicalize(shapes))
    assert facts.num_layers == 10**9 + 1
    assert "layer indices have gaps: [2, 3, 4, 6, 7, 8, 9, 10, 11, 12] missing" in facts.notes


# ----------------------------------------------------------------------------------------- JSON and guard
@pytest.mark.parametrize("text, reason", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON (RecursionError"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), f"nests deeper than {MAX_JSON_DEPTH} levels"),
    ('{"a": ' + "7" * 5000 + "}", "not valid JSON (ValueError: 'Exceeds the limit"),
    ("[1, 2]", "is JSON but not an object (found array)"),
    ('"\\ud800 text"', "is JSON but not an object (found string)"),
    ("{\"a\": 1", "not valid JSON (JSONDecodeError"),
])
def test_loads_json_names_the_file(tmp_path, text, reason):
    path = tmp_path / "config.json"
    with pytest.raises(CorruptCheckpoint, match=rf"^{path}: .*") as info:
        loads_json(text, path, "config.json")
    assert reason in str(info.value)


def test_read_json_refuses_bad_utf8_and_oversized_files(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"model_type": "\xff\xfe"}')
    with pytest.raises(CorruptCheckpoint, match=rf"^{path}: not valid JSON \(UnicodeDecodeError"):
        read_json(path, "config.json")
    path.write_bytes(b"{}")
    with pytest.raises(CorruptCheckpoint, match=r"above the safety limit of 1 bytes"):
        read_json(path, "config.json", limit=1)


def test_guard_turns_anything_into_the_typed_error_but_passes_interrupts(tmp_path):
    for exc in (ValueError("x"), RecursionError("deep"), MemoryError(), OverflowError("big"), KeyError("k")):
        with pytest.raises(CorruptCheckpoint, match=rf"^{tmp_path}: parsing \({type(exc).__name__}"):
            with guard(tmp_path, "parsing"):
                raise exc
    with pytest.raises(KeyboardInterrupt):
        with guard(tmp_path, "parsing"):
            raise KeyboardInterrupt
    with pytest.raises(UnsupportedFormat, match="own"):  # the library's own errors pass unchanged
        with guard(tmp_path, "parsing"):
            raise UnsupportedFormat("own")


def test_a_rust_panic_is_one_typed_line_without_a_backtrace(tmp_path, capfd, monkeypatch):
    from tokenizers import models

    # merges.txt names a merge whose result the vocabulary lacks: BPE.from_file panics (pyo3 PanicException,
    # a BaseException) instead of raising an error.
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    monkeypatch.setenv("RUST_BACKTRACE", "1")
    with pytest.raises(CorruptCheckpoint, match=rf"^{tmp_path / 'merges.txt'}: reading \(PanicException"):
        with rust_call(tmp_path / "merges.txt", "reading"):
            models.BPE.from_file(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    err = capfd.readouterr().err
    assert "stack backtrace" not in err and len(err.splitlines()) <= 4, err


def test_quote_shows_values_short_and_escaped():
    assert quote([1024, 64]) == "[1024, 64]" and quote(float("nan")) == "nan"
    assert quote("a\nb") == "'a\\nb'"
    long = quote([1] * 1000)
    assert len(long) < 80 and "chars" in long


# ----------------------------------------------------------------------------------------- config.json
CONFIG_VALUES = [
    ("hidden_size", "sixty-four"), ("num_hidden_layers", math.inf), ("num_attention_heads", math.nan),
    ("vocab_size", 1e400), ("intermediate_size", -172), ("head_dim", True), ("num_key_value_heads", 2.5),
    ("max_position_embeddings", 10**40), ("rms_norm_eps", "tiny"), ("rope_theta", [1]), ("num_local_experts", {}),
    ("model_type", ["llama"]), ("hidden_act", "x" * 10_000), ("tie_word_embeddings", "false"),
    ("num_experts_per_tok", -1), ("qk_rope_head_dim", "64"), ("partial_rotary_factor", math.inf),
]


@pytest.mark.parametrize("key, value", CONFIG_VALUES, ids=[k for k, _ in CONFIG_VALUES])
def test_invalid_config_values_are_absent_and_reported(key, value):
    raw = json.loads((DEMO / "base" / "config.json").read_text())
    raw[key] = value
    if key == "qk_rope_head_dim":
        raw["qk_nope_head_dim"] = 32
    cfg = normalise_config(raw)
    assert key in dict(cfg.invalid), cfg.invalid
    assert len(dict(cfg.invalid)[key]) <= 80
    model = Model("m", resolve_source(str(DEMO / "base")))
    agreements = check_config_against_weights(cfg, model.weight_facts)
    bad = [a for a in agreements if a.field == key]
    assert bad and bad[0].agrees is False and "config.json" in bad[0].note
    json.dumps(cfg.as_dict(), allow_nan=False)  # the evidence can record it


def test_valid_integral_float_counts_are_accepted():
    raw = json.loads((DEMO / "base" / "config.json").read_text())
    raw["hidden_size"] = 64.0
    cfg = normalise_config(raw)
    assert cfg.hidden_size == 64 and cfg.invalid == ()


# ----------------------------------------------------------------------------------------- tokenizer files
def _tok_json() -> dict:
    return json.loads((DEMO / "base" / "tokenizer.json").read_text())


def _json_file(name: str, make):
    def build(folder: Path) -> str:
        value = make()
        (folder / name).write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
        return name
    return build


def _with(obj: dict, path: tuple, value) -> dict:
    node = obj
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


def _gguf(tokens_blob: bytes, count: int, *, magic: bytes = b"GGUF", version: int = 3) -> bytes:
    def s(b: bytes) -> bytes:
        return struct.pack("<Q", len(b)) + b
    kv = s(b"tokenizer.ggml.model") + struct.pack("<I", 8) + s(b"llama")
    kv += s(b"tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, count) + tokens_blob
    return magic + struct.pack("<IQQ", version, 0, 2) + kv


# Each builder writes one hostile tokenizer file into a tokenizer-only folder and returns its name.
BAD_TOKENIZERS = {
    "json-top-level-list": _json_file("tokenizer.json", lambda: [1, 2]),
    "json-deep": _json_file("tokenizer.json", lambda: b"[" * 100_000 + b"]" * 100_000),
    "json-bad-utf8": _json_file("tokenizer.json", lambda: json.dumps(_tok_json()).replace('"<s>"', '"<\\u00ff>"', 1)
                                .encode().replace(b"<\\u00ff>", b"<\xff>", 1)),
    "json-model-is-a-string": _json_file("tokenizer.json", lambda: _with(_tok_json(), ("model",), "BPE")),
    "json-vocab-values-are-strings": _json_file("tokenizer.json", lambda: _with(_tok_json(), ("model", "vocab"),
                                                                               {"a": "zero", "b": 1})),
    "json-5000-digit-id": _json_file("tokenizer.json", lambda: json.dumps(_tok_json()).replace(
        '"<s>": 0', '"<s>": ' + "9" * 5000, 1).encode()),
    "json-too-many-merges": _json_file("tokenizer.json", lambda: _with(_tok_json(), ("model", "merges"),
                                                                      [0] * (MAX_TOKENIZER_ENTRIES + 1))),
    "json-bad-regex": _json_file("tokenizer.json", lambda: _with(_tok_json(), ("pre_tokenizer",),
                                                                {"type": "Split", "pattern": {"Regex": "(["},
                                                                 "behavior": "Isolated", "invert": False})),
    "tekken-wrong-types": _json_file("tekken.json", lambda: {"config": {"pattern": 5, "default_num_special_tokens": "x"},
                                                             "vocab": [{"rank": "0", "token_bytes": 7}]}),
    "tekken-huge-special-count": _json_file("tekken.json", lambda: {
        "config": {"pattern": ".", "default_num_special_tokens": 10**12, "default_vocab_size": 10**12 + 1},
        "vocab": [{"rank": 0, "token_bytes": "YQ=="}]}),
    "vocab-json-is-a-list": lambda f: (_json_file("merges.txt", lambda: b"#version: 0.2\n")(f),
                                       _json_file("vocab.json", lambda: ["a"])(f))[1],
    "merges-bad-utf8": lambda f: (_json_file("vocab.json", lambda: {"a": 0, "b": 1, "ab": 2})(f),
                                  _json_file("merges.txt", lambda: b"a b\n\xff\xfe\n")(f))[1],
    "vocab-txt-bad-utf8": _json_file("vocab.txt", lambda: b"[UNK]\nhello\n\xff\n"),
    "tiktoken-malformed-line": _json_file("tok.tiktoken", lambda: b"YQ== 0\nYg== one\n"),
    "tiktoken-bad-base64": _json_file("tok.tiktoken", lambda: b"YQ== 0\n!!!! 1\n"),
    "tiktoken-5000-digit-rank": _json_file("tok.tiktoken", lambda: b"YQ== 0\nYg== " + b"9" * 5000 + b"\n"),
    "sentencepiece-garbage": _json_file("tokenizer.model", lambda: b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 64),
    "sentencepiece-truncated": _json_file("tokenizer.model", lambda: real("mistral-v1").read_bytes()[:5000]),
    "gguf-bad-magic": _json_file("m.gguf", lambda: _gguf(b"", 0, magic=b"GGUG")),
    "gguf-truncated": _json_file("m.gguf", lambda: _gguf(struct.pack("<Q", 10) + b"abc", 1)),
    "gguf-string-longer-than-file": _json_file("m.gguf", lambda: _gguf(struct.pack("<Q", 2**60), 1)),
    "gguf-version-1": _json_file("m.gguf", lambda: _gguf(b"", 0, version=1)),
    "gguf-bad-utf8-token": _json_file("m.gguf", lambda: _gguf(struct.pack("<Q", 2) + b"\xff\xfe", 1)),
}

# Side files beside a valid tokenizer.json: a hostile one fails the tokenizer read, naming the side file.
BAD_SIDE_FILES = {
    "tokenizer-config-list": ("tokenizer_config.json", [1]),
    "tokenizer-config-deep": ("tokenizer_config.json", b"[" * 100_000 + b"]" * 100_000),
    "added-tokens-decoder-key": ("tokenizer_config.json", {"added_tokens_decoder": {"9" * 5000: {"content": "x"}}}),
    "added-tokens-decoder-huge-id": ("tokenizer_config.json", {"added_tokens_decoder": {"99999999999": {"content": "x"}}}),
    "added-tokens-decoder-not-object": ("tokenizer_config.json", {"added_tokens_decoder": [1]}),
    "added-tokens-string-id": ("added_tokens.json", {"x": "1"}),
    "added-tokens-float-id": ("added_tokens.json", {"x": 1e300}),
    "special-tokens-map-list": ("special_tokens_map.json", ["<s>"]),
    "special-tokens-map-bad-utf8": ("special_tokens_map.json", b'{"bos_token": "\xff"}'),
}


def _tokenizer_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    folder = tmp_path / case
    folder.mkdir(parents=True)
    if case in BAD_SIDE_FILES:
        name, value = BAD_SIDE_FILES[case]
        shutil.copy(DEMO / "base" / "tokenizer.json", folder / "tokenizer.json")
        _json_file(name, lambda: value)(folder)
        return folder, name
    return folder, BAD_TOKENIZERS[case](folder)


@pytest.mark.parametrize("case", [*BAD_TOKENIZERS, *BAD_SIDE_FILES])
def test_a_bad_tokenizer_file_is_a_typed_error_naming_it(tmp_path, case):
    folder, name = _tokenizer_folder(tmp_path, case)
    start = time.perf_counter()
    with pytest.raises(LineageError) as info:
        vocab = load_vocabulary(folder)
        vocab.merges  # merge rules are read lazily: their errors name the file too
        vocab.encode("Full fathom five thy father lies")
    assert str(info.value).startswith(f"{folder / name}: "), str(info.value)
    assert len(str(info.value)) < 600
    assert time.perf_counter() - start < 30


# ----------------------------------------------------------------------------------------- parsers we wrote
def test_gguf_metadata_reader_agrees_with_the_gguf_library(tmp_path):
    from gguf import GGUFReader

    from modellineage.tokenizer.vocab import _gguf_metadata

    from .tokenizer_files import trained_json, write_gguf

    path = write_gguf(tmp_path / "m.gguf", trained_json("shakespeare_the_tempest.txt"))
    ours = _gguf_metadata(path)
    reader = GGUFReader(str(path), "r")
    theirs = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    assert ours.keys() == theirs.keys() and len(ours["tokenizer.ggml.tokens"]) > 900
    for key in ours:
        assert ours[key] == theirs[key], key


def test_tiktoken_reader_agrees_with_tiktoken(tmp_path):
    from tiktoken.load import load_tiktoken_bpe

    from modellineage.tokenizer.vocab import _tiktoken_ranks

    path = real("qwen")
    assert _tiktoken_ranks(path) == load_tiktoken_bpe(str(path))


# ----------------------------------------------------------------------------------------- end to end
def _copy_base(tmp_path: Path, case: str) -> Path:
    return copy_demo(tmp_path / "models" / case)


def _records_of(run, subject: str) -> list[dict]:
    return [a for a in run.evidence["audits"] if a["subject"] == subject]


def _assert_named(run, subject: str, name: str) -> None:
    """At least one audit of ``subject`` failed (or, for a format refused, skipped) naming the offending file."""
    failed = [a["message"] for a in _records_of(run, subject) if a["outcome"] in ("failed", "skipped")]
    assert any(name in m for m in failed), (subject, name, failed)


def test_hostile_headers_indexes_and_configs_in_one_run(tmp_path):
    refs, named = [], {}
    for case, build in BAD_HEADERS.items():
        folder = _copy_base(tmp_path, case)
        build(folder)
        refs.append(f"{case}={folder}")
        named[case] = ST
    for case, build in BIG_DECLARATIONS.items():
        folder = _copy_base(tmp_path, case)
        build(folder)
        refs.append(f"{case}={folder}")
    index_cases = {
        "index-deep": b"[" * 100_000 + b"]" * 100_000,
        "index-list": b"[]",
        "index-weight-map-list": json.dumps({"weight_map": ["model.safetensors"]}).encode(),
        "index-weight-map-ints": json.dumps({"weight_map": {"lm_head.weight": 5}}).encode(),
        "index-5000-digits": b'{"metadata": {"total_size": ' + b"9" * 5000 + b"}, \"weight_map\": {}}",
    }
    for case, blob in index_cases.items():
        folder = _copy_base(tmp_path, case)
        (folder / "model.safetensors.index.json").write_bytes(blob)
        refs.append(f"{case}={folder}")
        named[case] = "model.safetensors.index.json"
    config_cases = {
        "config-5000-digits": b'{"model_type": "llama", "hidden_size": ' + b"9" * 5000 + b"}",
        "config-deep-rope": b'{"rope_scaling": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "config-list": b"[64]",
        "config-bad-utf8": b'{"model_type": "\xff"}',
    }
    for case, blob in config_cases.items():
        folder = _copy_base(tmp_path, case)
        (folder / "config.json").write_bytes(blob)
        refs.append(f"{case}={folder}")
        named[case] = "config.json"
    # The target's own config states garbage: architecture, compute, catalog and naming all read it.
    target = copy_demo(tmp_path / "models" / "target", "finetune")
    config = json.loads((target / "config.json").read_text())
    config.update(hidden_size="sixty-four", num_hidden_layers=math.inf, num_attention_heads=math.nan,
                  intermediate_size=-172, head_dim=True, rms_norm_eps="tiny", max_position_embeddings=1e300,
                  num_experts_per_tok="two", model_type={"a": 1}, tie_word_embeddings="false")
    (target / "config.json").write_text(json.dumps(config))
    args = [a for r in refs for a in ("--reference", r)]
    run = run_audit(tmp_path, "--target", str(target), *args, "--expect", "derived")
    assert_contained(run)
    assert run.proc.returncode == 1
    for case, name in named.items():
        _assert_named(run, case, name)
    _assert_named(run, "target", "config.json gives 'sixty-four', not a valid value for hidden_size")
    for case in BIG_DECLARATIONS:  # valid files: every audit of theirs reached an outcome
        assert all(a["outcome"] in ("passed", "failed", "skipped") for a in _records_of(run, case)), case


def test_hostile_tokenizer_files_in_one_run(tmp_path):
    refs, named = [], {}
    for case in [*BAD_TOKENIZERS, *BAD_SIDE_FILES]:
        folder, name = _tokenizer_folder(tmp_path / "models", case)
        refs.append(f"{case}={folder}")
        named[case] = name
    args = [a for r in refs for a in ("--reference", r)]
    run = run_audit(tmp_path, "--target", str(DEMO / "finetune"), *args, "--expect", "derived")
    assert_contained(run)
    for case, name in named.items():
        _assert_named(run, case, name)


def test_memory_is_bounded_by_the_bytes_present(tmp_path):
    """Files that declare millions of entries (or 1e8 rows, or layer 10^9) in a few bytes: refused or read
    at the cost of their bytes; one run over all of them stays under the peak-RSS bound."""
    refs, named = [], {}

    def tokenizer_folder(case: str, files: dict[str, bytes], name: str) -> None:
        folder = tmp_path / "models" / case
        folder.mkdir(parents=True)
        for fname, blob in files.items():
            (folder / fname).write_bytes(blob)
        refs.append(f"{case}={folder}")
        named[case] = name

    for case, build in (("layer-1e9", BIG_DECLARATIONS["layer-1e9"]),
                        ("empty-1e8-rows", BAD_HEADERS["empty-tensor-declaring-1e8-rows"]),
                        ("fused-1e6-experts", BIG_DECLARATIONS["fused-experts-1e6-of-one-byte"])):
        folder = _copy_base(tmp_path, case)
        build(folder)
        refs.append(f"{case}={folder}")
    named["empty-1e8-rows"] = ST
    tokenizer_folder("gguf-5M-empty-tokens", {"m.gguf": _gguf(struct.pack("<Q", 0) * 5_000_000, 5_000_000)}, "m.gguf")
    tokenizer_folder("merges-200MB", {"vocab.json": b'{"a": 0, "b": 1, "ab": 2}', "merges.txt": b"a b\n" * 50_000_000},
                     "merges.txt")
    tokenizer_folder("merges-3M", {"vocab.json": b'{"a": 0, "b": 1, "ab": 2}', "merges.txt": b"a b\n" * 3_000_000},
                     "merges.txt")
    tokenizer_folder("sentencepiece-10M-pieces", {"tokenizer.model": b"\x0a\x00" * 10_000_000}, "tokenizer.model")
    tokenizer_folder("tiktoken-3M-lines", {"tok.tiktoken": b"YQ== 0\n" * 3_000_000}, "tok.tiktoken")
    tokenizer_folder("vocab-txt-3M-lines", {"vocab.txt": b"a\n" * 3_000_000}, "vocab.txt")
    data = _tok_json()
    data["model"]["merges"] = [["a", "b"]] * 2_500_000
    tokenizer_folder("tokenizer-json-2500k-merges", {"tokenizer.json": json.dumps(data).encode()}, "tokenizer.json")
    args = [a for r in refs for a in ("--reference", r)]
    start = time.perf_counter()
    run = run_audit(tmp_path, "--target", str(DEMO / "finetune"), *args, "--expect", "derived", timeout=300)
    elapsed = time.perf_counter() - start
    assert_contained(run)
    assert run.peak_rss is not None and run.peak_rss < PEAK_RSS_LIMIT
    for case, name in named.items():
        _assert_named(run, case, name)
    assert elapsed < 180, elapsed


def test_a_deeply_nested_audit_plan_is_a_plan_error(tmp_path):
    from modellineage.errors import PlanError
    from modellineage.plan import load_plan

    path = tmp_path / "audit.toml"
    path.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PlanError, match=rf"^{path}: not a readable TOML file \(RecursionError"):
        load_plan(path)


def test_an_unreadable_config_leaves_the_weights_readable(tmp_path):
    folder = copy_demo(tmp_path / "m")
    (folder / "config.json").write_text("[64]")
    model = Model("m", resolve_source(str(folder)))
    with pytest.raises(CorruptCheckpoint, match="config.json: config.json is JSON but not an object"):
        model.arch
    assert len(model.name_map.refs) == 39 and model.weight_facts.hidden_size == 64


# ----------------------------------------------------------------------------------------- runaway regexes
def _backtracking_tokenizer(folder: Path) -> Path:
    """A valid tokenizer.json whose pre-tokenizer pattern backtracks: Oniguruma's per-match retry limit
    still lets it spend ~1 ms per character of 'aaa…ab' text (measured), hours on a probe corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated",
                          "invert": False},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1, "[UNK]": 2}, "unk_token": "[UNK]"}}))
    return path


def test_a_backtracking_pattern_stops_at_the_encode_allowance_naming_the_file(tmp_path, monkeypatch):
    from modellineage.reading import boundary

    path = _backtracking_tokenizer(tmp_path / "tok")
    vocab = load_vocabulary(tmp_path / "tok")
    pieces = vocab.encode("aab a")  # short texts encode as usual
    assert pieces and all(isinstance(p, bytes) for p in pieces)
    monkeypatch.setattr(boundary, "MAX_ENCODE_SECONDS", 0.5)
    vocab = load_vocabulary(tmp_path / "tok")  # a fresh clock under the patched allowance
    start = time.perf_counter()
    with pytest.raises(CorruptCheckpoint, match=rf"^{path}: encoding text took more than the 0.5 s allowed"):
        vocab.encode(("a" * 27 + "b ") * 120)  # ~4 s of backtracking
    assert time.perf_counter() - start < 3
    start = time.perf_counter()  # the allowance is spent: later calls refuse at once, the same way
    with pytest.raises(CorruptCheckpoint, match="allowed for one tokenizer"):
        vocab.encode("ab")
    assert time.perf_counter() - start < 0.2


def test_bounded_encoding_gives_the_library_s_own_encoding():
    from tokenizers import Tokenizer

    from modellineage.reading.boundary import EncodeClock

    tok = Tokenizer.from_file(str(DEMO / "base" / "tokenizer.json"))
    clock = EncodeClock(DEMO / "base" / "tokenizer.json")
    text = "Full fathom five thy father lies; of his bones are coral made. 이것은 테스트입니다."
    got, want = clock.encode(tok, text, add_special_tokens=False), tok.encode(text, add_special_tokens=False)
    assert (got.ids, got.offsets, got.tokens) == (want.ids, want.offsets, want.tokens)
