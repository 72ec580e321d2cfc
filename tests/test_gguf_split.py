"""Split GGUF files (llama.cpp's gguf-split: ``name-00001-of-00003.gguf`` ..., each shard with its own header
and ``split.no`` / ``split.count`` / ``split.tensors.count``) read as one model source. The demo's finetune is
converted by our own converter (tests/gguf_convert.py) and split by the ``gguf`` package's ``GGUFWriter``
(``split_max_tensors``), as gguf-split writes them."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from modellineage.errors import CorruptCheckpoint, LineageError, Refused, SourceNotFound
from modellineage.reading.gguf_weights import GGUFStore, read_gguf_header
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.weights.reuse import measure_exact_reuse

sys.path.insert(0, str(Path(__file__).parent))
from gguf_convert import convert  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "fixtures" / "demo" / "finetune"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("split")
    out = {}
    for name, per in (("single", 0), ("three", 15), ("other", 14), ("four", 12)):
        (tmp / name).mkdir()
        out[name] = convert(FINETUNE, tmp / name / "ft.gguf", "Q8_0", split_max_tensors=per)  # 0: one file
    return out


def _shards(first: Path) -> list[Path]:
    return sorted(first.parent.glob("ft-*-of-*.gguf"))


def test_the_writer_wrote_what_gguf_split_writes(made):
    shards = _shards(made["three"])
    assert [p.name for p in shards] == ["ft-00001-of-00003.gguf", "ft-00002-of-00003.gguf", "ft-00003-of-00003.gguf"]
    headers = [read_gguf_header(p) for p in shards]
    assert [(h.metadata["split.no"], h.metadata["split.count"], h.metadata["split.tensors.count"]) for h in headers] \
        == [(0, 3, 39), (1, 3, 39), (2, 3, 39)]
    assert headers[0].architecture == "llama" and headers[1].architecture is None  # metadata in the first only


@pytest.mark.parametrize("named", [0, 2])
def test_a_split_gguf_reads_as_its_single_file(made, named):
    shards = _shards(made["three"])
    source = resolve_source(str(shards[named]))  # any shard names the model
    assert source.weight_files == tuple(shards) and source.tokenizer_files == (shards[0],)
    assert source.root == shards[0].parent
    split, single = Model("split", source), Model("single", resolve_source(str(made["single"])))
    assert split.config == single.config  # config facts from the first shard, tensors of every shard
    assert split.store.names() == single.store.names()
    for name in split.store.names():
        a, b = split.store.info(name), single.store.info(name)
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        np.testing.assert_array_equal(split.store.read_row_range(name, 0, a.rows),
                                      single.store.read_row_range(name, 0, b.rows))
    assert split.store.info("model.layers.2.self_attn.q_proj.weight").row_map is not None  # llama's q/k order
    # digested per shard file, the same tensors: every counted tensor reused byte for byte
    assert {d.name: d.sha256 for d in split.tensor_digests()} == {d.name: d.sha256 for d in single.tensor_digests()}
    reuse = measure_exact_reuse(split.tensor_digests(), single.tensor_digests())
    assert reuse.reused_count == reuse.counted_tensors > 30
    assert split.vocabulary.size == single.vocabulary.size


def _copy(made, tmp_path, parts: dict[str, Path]) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir(parents=True)
    for name, src in parts.items():
        shutil.copyfile(src, folder / name)
    return folder


def _weights_error(first: Path) -> LineageError:
    model = Model("m", resolve_source(str(first)))
    with pytest.raises(LineageError) as info:
        model.store  # noqa: B018
    return info.value


def test_missing_or_foreign_shards_are_refused_naming_the_file(made, tmp_path):
    three, other, four = (_shards(made[k]) for k in ("three", "other", "four"))
    names = [p.name for p in three]
    # a shard missing
    folder = _copy(made, tmp_path / "a", {names[0]: three[0], names[2]: three[2]})
    err = _weights_error(folder / names[0])
    assert isinstance(err, SourceNotFound) and names[1] in str(err)
    # a shard of another split (4 shards) under this split's name: split.count disagrees
    folder = _copy(made, tmp_path / "b", {names[0]: three[0], names[1]: four[1], names[2]: three[2]})
    err = _weights_error(folder / names[0])
    assert isinstance(err, CorruptCheckpoint) and f"{folder / names[1]}: split.count = 4" in str(err)
    # shards swapped: split.no disagrees with the name
    folder = _copy(made, tmp_path / "c", {names[0]: three[0], names[1]: three[2], names[2]: three[1]})
    err = _weights_error(folder / names[0])
    assert isinstance(err, CorruptCheckpoint) and f"{folder / names[1]}: split.no = 2" in str(err)
    # shards of two splits with the same count: the tensors they hold disagree with split.tensors.count
    folder = _copy(made, tmp_path / "d", {names[0]: three[0], names[1]: other[1], names[2]: other[2]})
    err = _weights_error(folder / names[0])
    assert isinstance(err, CorruptCheckpoint) and "split.tensors.count = 39, but the 3 shard(s) hold 40" in str(err)
    # one shard renamed as an ordinary GGUF: its header says it is one of three
    folder = _copy(made, tmp_path / "e", {"ft.gguf": three[0]})
    err = _weights_error(folder / "ft.gguf")
    assert isinstance(err, CorruptCheckpoint) and "split.count = 3" in str(err) and "first shard" in str(err)
    with pytest.raises(CorruptCheckpoint, match="ft-00002-of-00003.gguf: split.count = 3"):
        GGUFStore([three[1]])


def test_a_shard_outside_the_folder_is_refused(made, tmp_path):
    three = _shards(made["three"])
    folder = tmp_path / "linked"
    folder.mkdir()
    shutil.copyfile(three[0], folder / three[0].name)
    shutil.copyfile(three[2], folder / three[2].name)
    os.symlink(three[1], folder / three[1].name)  # a link out of the folder
    source = resolve_source(str(folder / three[0].name))
    assert not source.weight_files and [r.entry for r in source.refusals("weights")] == [three[1].name]
    with pytest.raises(Refused, match=three[1].name):
        source.require_weights()
