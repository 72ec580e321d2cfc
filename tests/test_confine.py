"""The confinement rule itself (modellineage.reading.confine) and the excerpt rule for messages (modellineage.errors)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modellineage.errors import EXCERPT_CHARS, Refused, describe, excerpt
from modellineage.reading import confine
from modellineage.reading.sources import resolve_source

SECRET = "TOKEN=do-not-show-this-secret-0123456789"


@pytest.fixture
def folder(tmp_path):
    """(a source folder with one regular file, a secret file outside it)."""
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text("{}")
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return root, secret


@pytest.fixture
def no_hang():
    """Fail instead of hanging when an open blocks (a FIFO without O_NONBLOCK)."""
    old = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked opening a FIFO"))
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def vet(path: Path, root: Path):
    return confine.vet(path, confine.bounds_for(root), entry=path.name, role="config")


# ----------------------------------------------------------------------------------------- vet
def test_a_regular_file_and_a_link_inside_are_accepted(folder):
    root, _ = folder
    (root / "sub").mkdir()
    (root / "sub" / "real.json").write_text("{}")
    (root / "tokenizer.json").symlink_to(Path("sub", "real.json"))
    assert vet(root / "config.json", root) is None
    assert vet(root / "tokenizer.json", root) is None


def test_a_link_outside_is_refused_naming_entry_and_target(folder):
    root, secret = folder
    (root / "vocab.txt").symlink_to(secret)
    refusal = vet(root / "vocab.txt", root)
    assert refusal.entry == "vocab.txt" and refusal.target == str(secret)
    assert "outside the source folder" in refusal.reason
    assert refusal.message.startswith(f"vocab.txt -> {secret}: refused")


def test_a_chain_of_links_that_ends_outside_is_refused(folder):
    root, secret = folder
    (root / "hop").symlink_to(secret)
    (root / "vocab.txt").symlink_to("hop")  # the first hop stays inside
    assert "outside" in vet(root / "vocab.txt", root).reason


def test_a_linked_subfolder_is_outside(folder, tmp_path):
    root, secret = folder
    (root / "sub").symlink_to(tmp_path)
    assert "outside" in vet(root / "sub" / "secret.txt", root).reason


@pytest.mark.parametrize("make, why", [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: os.mkfifo(p), "a FIFO"),
    (lambda p: p.symlink_to(p.parent / "missing"), "dangling"),
    (lambda p: p.symlink_to(p.name), "loops"),
])
def test_what_is_not_a_regular_file_is_refused(folder, make, why):
    root, _ = folder
    make(root / "tokenizer.json")
    assert why in vet(root / "tokenizer.json", root).reason


def test_devices_and_proc_files_are_outside_any_model_folder(folder):
    root, _ = folder
    (root / "tokenizer.model").symlink_to("/dev/zero")
    (root / "vocab.txt").symlink_to("/proc/self/environ")
    assert "outside" in vet(root / "tokenizer.model", root).reason
    refusal = vet(root / "vocab.txt", root)
    assert refusal.target == "/proc/self/environ"  # the link's text, not /proc/<pid>/...: evidence is stable


def test_a_single_file_is_its_own_root(folder, tmp_path):
    root, secret = folder
    shutil_copy = (root / "m.safetensors")
    shutil_copy.write_bytes(b"x")
    (root / "link.safetensors").symlink_to("m.safetensors")
    assert vet(root / "m.safetensors", root / "m.safetensors") is None
    # A link named as the source leads to another file, even in the same folder: refused.
    assert "the file named as the source" in vet(root / "link.safetensors", root / "link.safetensors").reason


def _hub(tmp_path: Path, name: str) -> tuple[Path, Path]:
    repo = tmp_path / "hub" / f"models--org--{name}"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs" / "h1").write_text("{}")
    return repo, snapshot


def test_hub_snapshot_links_into_their_own_blobs_only(tmp_path):
    repo, snapshot = _hub(tmp_path, "a")
    other, _ = _hub(tmp_path, "b")
    (snapshot / "config.json").symlink_to(Path("..", "..", "blobs", "h1"))
    (snapshot / "tokenizer.json").symlink_to(other / "blobs" / "h1")
    (snapshot / "vocab.txt").symlink_to(Path("..", "..", "refs"))  # inside the repo, but not a blob
    (repo / "refs").write_text("x")
    bounds = confine.bounds_for(snapshot)
    assert bounds == (snapshot.resolve(), (repo / "blobs").resolve())
    assert vet(snapshot / "config.json", snapshot) is None
    assert "Hugging Face cache repo" in vet(snapshot / "tokenizer.json", snapshot).reason
    assert "outside" in vet(snapshot / "vocab.txt", snapshot).reason
    # A single file named inside a snapshot may be such a link too.
    assert vet(snapshot / "config.json", snapshot / "config.json") is None


def test_a_hub_blobs_folder_that_is_a_link_adds_no_bounds(tmp_path):
    repo, snapshot = _hub(tmp_path, "a")
    (tmp_path / "elsewhere").mkdir()
    os.rename(repo / "blobs", tmp_path / "elsewhere" / "blobs")
    (repo / "blobs").symlink_to(tmp_path / "elsewhere" / "blobs")
    assert confine.bounds_for(snapshot) == (snapshot.resolve(),)


# ----------------------------------------------------------------------------------------- index entries
@pytest.mark.parametrize("name, why", [
    ("../secret.txt", "climbs"), ("a/../../secret.txt", "climbs"), ("/etc/passwd", "absolute"),
    ("~/secret", "absolute"), ("a\x00b", "NUL"), ("", "not a file name"), (3, "not a file name"),
])
def test_index_entries_are_refused_by_their_text(tmp_path, name, why):
    path, refusal = confine.entry_path(tmp_path, name, role="weights")
    assert path is None and why in refusal.reason


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["a", "b.safetensors", "..", ".", "", "/", "~", "x\x00"]), min_size=1, max_size=6))
def test_an_accepted_index_entry_never_leaves_the_folder_lexically(parts):
    name = "/".join(parts)
    root = Path("/models/m")
    path, refusal = confine.entry_path(root, name, role="weights")
    assert (path is None) != (refusal is None)
    if path is not None:
        assert os.path.normpath(path).startswith(str(root) + os.sep) or os.path.normpath(path) == str(root)
        assert ".." not in PurePosixPath(name).parts


# ----------------------------------------------------------------------------------------- opening
def test_open_refuses_a_fifo_without_blocking(tmp_path, no_hang):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(Refused, match="FIFO"):
        confine.open_fd(tmp_path / "pipe")


def test_open_refuses_a_directory(tmp_path):
    with pytest.raises(Refused, match="directory"):
        confine.open_fd(tmp_path)


def test_a_file_replaced_after_vetting_is_refused(folder, tmp_path):
    root, secret = folder
    assert vet(root / "config.json", root) is None
    os.replace(secret, root / "config.json")  # another inode now stands where the vetted file was
    with pytest.raises(Refused, match="replaced"):
        confine.read_bytes(root / "config.json")


def test_a_hub_link_swapped_after_vetting_is_refused(tmp_path):
    repo, snapshot = _hub(tmp_path, "a")
    (snapshot / "config.json").symlink_to(Path("..", "..", "blobs", "h1"))
    assert vet(snapshot / "config.json", snapshot) is None
    (tmp_path / "secret").write_text(SECRET)
    (repo / "blobs" / "h1").unlink()
    (repo / "blobs" / "h1").symlink_to(tmp_path / "secret")  # the vetted real path is now a link
    with pytest.raises(Refused, match="symbolic link"):
        confine.read_bytes(snapshot / "config.json")


def test_the_vetted_file_is_read(folder):
    root, _ = folder
    assert vet(root / "config.json", root) is None
    assert confine.read_text(root / "config.json") == "{}"


# ----------------------------------------------------------------------------------------- sources
def test_a_source_lists_refusals_and_keeps_the_rest(folder):
    root, secret = folder
    (root / "vocab.txt").symlink_to(secret)
    (root / "notes.md").symlink_to(secret)  # never read by the audit: not even looked at
    src = resolve_source(str(root))
    assert src.config_file == root / "config.json" and src.tokenizer_files == ()
    assert [r.entry for r in src.refused] == ["vocab.txt"]
    assert src.as_dict()["refused"] == [{"entry": "vocab.txt", "points_to": str(secret),
                                         "reason": "it resolves outside the source folder", "role": "tokenizer"}]
    with pytest.raises(Refused, match="vocab.txt"):
        src.check_readable("tokenizer")
    src.check_readable("config")


def test_the_index_names_only_vetted_shards(folder, tmp_path):
    root, secret = folder
    (root / "a.safetensors").write_bytes(b"x")
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "a.safetensors", "b": "../secret.txt", "c": str(secret)}}))
    src = resolve_source(str(root))
    assert [p.name for p in src.weight_files] == ["a.safetensors"]
    assert sorted(r.entry for r in src.refusals("weights")) == ["../secret.txt", str(secret)]
    with pytest.raises(Refused, match=r"\.\./secret\.txt"):
        src.require_weights()


def test_a_source_of_refused_files_only_is_still_a_source(folder):
    root, secret = folder
    (root / "config.json").unlink()
    (root / "tokenizer.json").symlink_to(secret)
    src = resolve_source(str(root))
    assert src.refused and not src.files()


# ----------------------------------------------------------------------------------------- excerpts
@given(st.text(max_size=500))
def test_an_excerpt_is_short_and_one_escaped_line(text):
    shown = excerpt(text)
    assert "\n" not in shown and "\r" not in shown and shown.isascii()
    assert len(shown) <= len(ascii(text[:EXCERPT_CHARS])) + len(f"... ({len(text):,} chars)")


def test_describe_quotes_no_json_or_utf8_text():
    for bad in (SECRET.encode() + b"\xff", (SECRET + " {").encode()):
        try:
            json.loads(bad.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            assert "secret" not in describe(exc)


def test_describe_cuts_a_parser_message_quoting_the_file():
    message = describe(ValueError("Error parsing line " + repr(SECRET * 10)))
    assert len(message) < 200 and message.count("secret") <= 2


def test_a_bad_tiktoken_line_is_quoted_as_an_excerpt(tmp_path):
    from modellineage.tokenizer.vocab import load_vocabulary

    path = tmp_path / "x.tiktoken"
    path.write_text("IQ== 0\n" + "A" * 500 + " not-a-rank\n")
    with pytest.raises(Exception) as info:
        load_vocabulary(path)
    assert "line 2" in str(info.value) and "A" * (EXCERPT_CHARS + 1) not in str(info.value)


def test_a_shard_both_listed_and_indexed_is_refused_once(folder):
    root, _ = folder
    os.mkfifo(root / "pipe.safetensors")
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "pipe.safetensors"}}))
    src = resolve_source(str(root))
    assert [(r.entry, r.reason) for r in src.refused] == [("pipe.safetensors", "a FIFO, not a regular file")]
