"""Sources: local directories (sharded or not), single files, HF-cache ids; never a download by default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modellineage.errors import CorruptCheckpoint, SourceNotFound, UnsupportedFormat
from modellineage.reading.sources import resolve_source


def test_missing_path_names_it(tmp_path):
    with pytest.raises(SourceNotFound, match=str(tmp_path / "nope")):
        resolve_source("nope", base_dir=tmp_path)


def test_uncached_repo_id_is_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceNotFound, match="--allow-download"):
        resolve_source("nobody-here/no-such-model-xyz", base_dir=tmp_path)


def test_directory_with_index_lists_its_shards(tmp_path):
    save_file({"a": np.zeros(2, np.float32)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": np.ones(2, np.float32)}, tmp_path / "model-00002-of-00002.safetensors")
    save_file({"c": np.ones(2, np.float32)}, tmp_path / "stray.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")

    src = resolve_source(str(tmp_path))

    assert [p.name for p in src.weight_files] == ["model-00001-of-00002.safetensors",
                                                  "model-00002-of-00002.safetensors"]
    assert src.config_file.name == "config.json" and [p.name for p in src.tokenizer_files] == ["tokenizer.json"]
    assert "stray.safetensors" in src.notes[0]


def test_index_naming_a_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    source = resolve_source(str(tmp_path))  # the source resolves; its weights fail to open, naming the shard
    with pytest.raises(SourceNotFound, match="gone.safetensors"):
        source.require_weights()


def test_corrupt_index(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    source = resolve_source(str(tmp_path))
    with pytest.raises(CorruptCheckpoint, match="model.safetensors.index.json"):
        source.require_weights()


def test_single_file_source(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": np.zeros(2, np.float32)}, path)
    src = resolve_source(str(path))
    assert src.kind == "file" and src.weight_files == (path.resolve(),)


def test_pickle_only_checkpoint_is_refused_not_opened(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    # Not even a valid pickle: proves it is never opened.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not really a pickle")
    src = resolve_source(str(tmp_path))
    with pytest.raises(UnsupportedFormat, match="pytorch_model.bin.*never unpickled"):
        src.require_weights()


def test_tokenizer_only_directory_is_a_valid_source(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    src = resolve_source(str(tmp_path))
    assert not src.has_weights
    with pytest.raises(UnsupportedFormat, match="no \\*.safetensors weights"):
        src.require_weights()


def test_empty_directory(tmp_path):
    with pytest.raises(SourceNotFound, match="no weights, config or tokenizer"):
        resolve_source(str(tmp_path))


def _fake_hf_cache(cache, repo_id: str, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """The on-disk layout huggingface_hub writes: blobs/, snapshots/<rev>/ symlinks, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({"w": np.arange(4, dtype=np.float32)}, repo / "blobs" / "aaaa")
    (repo / "blobs" / "bbbb").write_text('{"model_type": "llama"}')
    (snapshot / "model.safetensors").symlink_to(repo / "blobs" / "aaaa")
    (snapshot / "config.json").symlink_to(repo / "blobs" / "bbbb")
    return snapshot


def test_repo_id_resolves_from_the_local_cache_without_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    snapshot = _fake_hf_cache(tmp_path / "hub", "some-org/some-model")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    src = resolve_source("some-org/some-model")

    assert src.kind == "hf-cache" and src.revision == snapshot.name
    assert [p.name for p in src.weight_files] == ["model.safetensors"] and src.config_file.name == "config.json"


def test_cached_files_are_recorded_under_their_own_names(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from modellineage.reading.model import Model

    _fake_hf_cache(tmp_path / "hub", "some-org/some-model")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = Model("m", resolve_source("some-org/some-model"))

    names = sorted(Path(d.path).name for d, error in model.file_digests())
    assert names == ["config.json", "model.safetensors"]
    assert [d.name for d in model.tensor_digests()] == ["w"]


# ----------------------------------------------------------------------------------------- tokenizer files
@pytest.mark.parametrize("name, real_name, fmt", [
    ("tekken.json", "tekken", "tekken"),
    ("tokenizer.model.v3", "mistral-v3", "sentencepiece"),
    ("mistral_instruct_tokenizer_241114.model.v7", "mistral-v7", "sentencepiece"),
])
def test_a_directory_holding_only_a_mistral_tokenizer_is_a_tokenizer_only_source(tmp_path, name, real_name, fmt):
    from modellineage.reading.model import Model

    from .tokenizer_files import real

    shutil.copy(real(real_name), tmp_path / name)
    src = resolve_source(str(tmp_path))
    assert [p.name for p in src.tokenizer_files] == [name] and not src.has_weights
    vocab = Model("m", src).vocabulary
    assert vocab.format == fmt and vocab.path == tmp_path / name


def test_gguf_is_a_tokenizer_only_where_nothing_else_holds_a_vocabulary(tmp_path):
    from modellineage.reading.model import Model

    from .tokenizer_files import trained_json, write_gguf

    text = trained_json("shakespeare_the_tempest.txt")
    alone = tmp_path / "alone"
    alone.mkdir()
    write_gguf(alone / "m-Q8_0.gguf", text)
    write_gguf(alone / "m-Q4_K_M.gguf", text)
    (alone / "tokenizer_config.json").write_text("{}")
    src = resolve_source(str(alone))
    assert [p.name for p in src.tokenizer_files] == ["m-Q4_K_M.gguf", "tokenizer_config.json"]
    assert "other GGUF files not read: m-Q8_0.gguf" in src.notes[0]
    assert Model("m", src).vocabulary.format == "gguf"
    beside = tmp_path / "beside"  # a repo shipping a GGUF beside its tokenizer.json: the GGUF is not hashed
    beside.mkdir()
    (beside / "tokenizer.json").write_text(text)
    write_gguf(beside / "m.gguf", text)
    src = resolve_source(str(beside))
    assert [p.name for p in src.tokenizer_files] == ["tokenizer.json"] and "m.gguf" in src.notes[0]


def test_a_single_gguf_file_is_a_tokenizer_only_source(tmp_path):
    from modellineage.reading.model import Model

    from .tokenizer_files import trained_json, write_gguf

    path = write_gguf(tmp_path / "model.gguf", trained_json("shakespeare_the_tempest.txt"))
    src = resolve_source(str(path))
    assert src.kind == "file" and src.tokenizer_files == (path,) and not src.has_weights
    with pytest.raises(UnsupportedFormat, match="no \\*.safetensors weights"):
        src.require_weights()
    assert Model("m", src).vocabulary.size == 1000
    assert "without tensors" in src.notes[0]


def test_a_file_of_another_kind_is_no_source(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(UnsupportedFormat, match=f"{path}: not a model source"):
        resolve_source(str(path))
