"""Hostile model folders that try to make the audit read outside them (issue 9, class 2).

Each case copies a demo model, plants a canary file outside it (and the canary in the child's
environment, for ``/proc/self/environ``), points an entry of the folder at something it must not read,
and runs the whole audit in a subprocess (``tests/hostile.py``). Every run must reach a verdict with its
evidence and report written, never show the canary, refuse the entry with a message naming it, list the
refusal in the evidence, and fail the audits that needed the refused file while the rest still run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from .hostile import CANARY, DEMO, assert_contained, copy_demo, plant_canary, run_audit

pytestmark = pytest.mark.hostile

#: A run must end well within this (a FIFO opened for reading would block forever).
TIMEOUT = 300


@pytest.fixture
def scene(tmp_path, monkeypatch):
    """(target folder copied from the demo base model, the canary file outside it, an outside folder)."""
    monkeypatch.setenv("HOSTILE_CANARY", CANARY)  # what /proc/self/environ of the child would show
    outside = tmp_path / "outside"
    canary = plant_canary(outside)
    target = copy_demo(tmp_path / "target", "finetune")
    return target, canary, outside


def audit(tmp_path: Path, target: str | Path, name: str = "hostile"):
    return run_audit(tmp_path, "--target", str(target), "--reference", f"base={DEMO / 'base'}",
                     "--expect", "derived", timeout=TIMEOUT, name=name)


def refusals(run) -> dict[str, dict]:
    """entry -> refusal record, over every source of the run's evidence."""
    return {r["entry"]: r for source in run.evidence["sources"].values() for r in source.get("refused", [])}


def failed_messages(run) -> list[str]:
    return [a["message"] for a in run.evidence["audits"] if a["outcome"] == "failed"]


def assert_refused(run, entry: str, *, family: str, outside: Path | None = None) -> None:
    """The hostile-run invariants, the refusal in the evidence, and a failed audit of ``family`` naming it.

    ``outside``: a file outside the source whose SHA-256 must not appear either (a digest of a secret is a
    confirmable copy of it).
    """
    assert_contained(run, names=entry)
    if outside is not None:
        digest = hashlib.sha256(outside.read_bytes()).hexdigest()
        assert all(digest not in text for text in run.texts()), f"{outside.name} was hashed into the output"
    found = refusals(run)
    assert entry in found, (found, run.output[-3000:])
    failing = [a for a in run.evidence["audits"] if a["outcome"] == "failed" and a["family"] == family
               and entry in a["message"] and "refused" in a["message"]]
    assert failing, (failed_messages(run), run.output[-3000:])


def link(path: Path, target: Path | str) -> None:
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)


# ----------------------------------------------------------------------------------------- tokenizer files
def _vocab_txt(target: Path, canary: Path) -> None:
    (target / "tokenizer.json").unlink()
    link(target / "vocab.txt", canary)


def _tokenizer_json(target: Path, canary: Path) -> None:
    link(target / "tokenizer.json", canary)


def _tokenizer_model(target: Path, canary: Path) -> None:
    (target / "tokenizer.json").unlink()
    link(target / "tokenizer.model", canary)


def _merges_txt(target: Path, canary: Path) -> None:
    data = json.loads((target / "tokenizer.json").read_text())
    (target / "tokenizer.json").unlink()
    (target / "vocab.json").write_text(json.dumps(data["model"]["vocab"]))
    link(target / "merges.txt", canary)


def _side_file(target: Path, canary: Path) -> None:
    link(target / "tokenizer_config.json", canary)


@pytest.mark.parametrize("plant, entry", [
    (_vocab_txt, "vocab.txt"),
    (_tokenizer_json, "tokenizer.json"),
    (_tokenizer_model, "tokenizer.model"),
    (_merges_txt, "merges.txt"),
    (_side_file, "tokenizer_config.json"),
], ids=["vocab.txt", "tokenizer.json", "tokenizer.model", "merges.txt", "tokenizer_config.json"])
def test_a_tokenizer_file_linked_outside_is_refused(scene, tmp_path, plant, entry):
    target, canary, _ = scene
    plant(target, canary)

    run = audit(tmp_path, target)

    assert_refused(run, entry, family="tokenizer", outside=canary)
    assert refusals(run)[entry]["points_to"] == str(canary)
    # The rest still runs: the weight audits read the target's (untouched) weights.
    assert any(a["family"] == "weights" and a["outcome"] == "passed" for a in run.evidence["audits"])


def test_config_json_linked_outside_is_refused(scene, tmp_path):
    target, canary, _ = scene
    link(target / "config.json", canary)

    run = audit(tmp_path, target)

    assert_refused(run, "config.json", family="architecture", outside=canary)
    assert any(a["family"] == "tokenizer" and a["outcome"] == "passed" for a in run.evidence["audits"])


# ----------------------------------------------------------------------------------------- weights
def test_the_weights_linked_to_a_file_outside_are_refused(scene, tmp_path):
    """Even a valid safetensors file (it would parse) is not read when the link leads out of the folder."""
    target, _, outside = scene
    shutil.copy(DEMO / "scratch" / "model.safetensors", outside / "elsewhere.safetensors")
    link(target / "model.safetensors", outside / "elsewhere.safetensors")

    run = audit(tmp_path, target)

    assert_refused(run, "model.safetensors", family="weights", outside=outside / "elsewhere.safetensors")


def test_the_weights_linked_to_a_secret_are_refused_without_reading_its_header(scene, tmp_path):
    """The 8 'header length' bytes of a secret file must not reach a message (they encode its first bytes)."""
    target, canary, _ = scene
    link(target / "model.safetensors", canary)

    run = audit(tmp_path, target)

    assert_refused(run, "model.safetensors", family="weights", outside=canary)
    n = int.from_bytes(canary.read_bytes()[:8], "little")
    assert all(str(n) not in text for text in run.texts())


def _index(target: Path, entry: str) -> None:
    (target / "model.safetensors").rename(target / "model-00001-of-00001.safetensors")
    (target / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"model.embed_tokens.weight": entry,
                                        "model.norm.weight": "model-00001-of-00001.safetensors"}}))


def _outside_shard(outside: Path) -> Path:
    shard = outside / "secret.safetensors"
    shutil.copy(DEMO / "scratch" / "model.safetensors", shard)
    return shard


@pytest.mark.parametrize("case", ["dotdot", "absolute", "proc", "directory", "fifo", "linked-subfolder",
                                  "dangling"])
def test_an_index_entry_outside_or_not_a_regular_file_is_refused(scene, tmp_path, case):
    target, canary, outside = scene
    shard = _outside_shard(outside)
    if case == "dotdot":
        entry = "../outside/secret.safetensors"
    elif case == "absolute":
        entry = str(shard)
    elif case == "proc":
        entry = "/proc/self/environ"
    elif case == "directory":
        entry = "shards.safetensors"
        (target / entry).mkdir()
    elif case == "fifo":
        entry = "pipe.safetensors"
        os.mkfifo(target / entry)
    elif case == "linked-subfolder":
        entry = "sub/secret.safetensors"
        (target / "sub").symlink_to(outside)
    else:
        entry = "gone.safetensors"
        (target / entry).symlink_to(outside / "never-there.safetensors")
    _index(target, entry)

    run = audit(tmp_path, target)

    assert_refused(run, entry, family="weights", outside=shard)


def test_a_fifo_as_a_listed_file_is_refused_not_waited_on(scene, tmp_path):
    target, _, _ = scene
    (target / "tokenizer.json").unlink()
    os.mkfifo(target / "tokenizer.json")

    run = audit(tmp_path, target)

    assert_refused(run, "tokenizer.json", family="tokenizer")
    assert "FIFO" in refusals(run)["tokenizer.json"]["reason"]


def test_the_index_itself_linked_outside_is_refused(scene, tmp_path):
    target, _, outside = scene
    _outside_shard(outside)
    (outside / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "secret.safetensors"}}))
    link(target / "model.safetensors.index.json", outside / "model.safetensors.index.json")

    run = audit(tmp_path, target)

    assert_refused(run, "model.safetensors.index.json", family="weights")


def test_a_single_file_source_that_links_elsewhere_is_refused(scene, tmp_path):
    """Named explicitly, the file is still the source's root: a link out of it is the publisher's choice."""
    target, _, outside = scene
    shard = _outside_shard(outside)
    link(target / "model.safetensors", shard)

    run = audit(tmp_path, target / "model.safetensors")

    assert_refused(run, "model.safetensors", family="weights", outside=shard)


# ----------------------------------------------------------------------------------------- HF hub cache
def _hub_repo(hub: Path, repo_id: str, model: str = "finetune") -> Path:
    """A Hugging Face cache entry of a demo model: blobs named by SHA-256, snapshot links into them."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / rev
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for file in sorted((DEMO / model).iterdir()):
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, repo / "blobs" / digest)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", digest))
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch):
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub


def test_the_hub_cache_layout_still_works(scene, hub, tmp_path):
    _hub_repo(hub, "hostile-org/demo")

    run = audit(tmp_path, "hostile-org/demo")

    assert_contained(run)
    assert run.proc.returncode == 0, run.output[-3000:]
    assert refusals(run) == {}
    source = next(s for s in run.evidence["sources"].values() if s["kind"] == "hf-cache")
    assert source["weight_files"] == ["model.safetensors"] and "tokenizer.json" in source["tokenizer_files"]
    assert not any(a["outcome"] == "failed" for a in run.evidence["audits"])


def test_a_hub_snapshot_link_out_of_its_repo_is_refused(scene, hub, tmp_path):
    _, canary, _ = scene
    snapshot = _hub_repo(hub, "hostile-org/demo")
    _hub_repo(hub, "other-org/other", "scratch")  # another repo's blobs are outside this repo too
    digest = hashlib.sha256((DEMO / "scratch" / "model.safetensors").read_bytes()).hexdigest()
    other = hub / "models--other-org--other" / "blobs" / digest
    link(snapshot / "tokenizer.json", canary)
    link(snapshot / "model.safetensors", other)

    run = audit(tmp_path, "hostile-org/demo")

    assert_refused(run, "tokenizer.json", family="tokenizer", outside=canary)
    assert_refused(run, "model.safetensors", family="weights", outside=other)
    assert "Hugging Face cache repo" in refusals(run)["tokenizer.json"]["reason"]
