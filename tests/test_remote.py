"""Remote sources (``hf://``, ``https://``) over real HTTP servers on loopback.

The servers are real socket servers (``tests/range_server.py``: Python's threaded ``http.server`` with
``Range`` support and deliberate faults, and nginx when installed) serving the real demo models; nothing of
the client is mocked. Every test gets its own ``HF_HOME`` (the range cache lives under it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modellineage.errors import SourceNotFound
from modellineage.reading import remote
from modellineage.reading.hashing import scan_safetensors
from modellineage.reading.model import DigestCache, Model
from modellineage.reading.remote import RemoteError
from modellineage.reading.sources import resolve_source
from modellineage.reading.tensors import TensorStore

from .range_server import NGINX, Nginx, RangeServer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
MODELS = ("base", "finetune", "scratch")


@pytest.fixture(scope="module")
def server():
    with RangeServer(DEMO, hub={f"demo/{m}": DEMO / m for m in MODELS}) as srv:
        yield srv


@pytest.fixture(autouse=True)
def hf_home(tmp_path, monkeypatch, request):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    if "server" in request.fixturenames:
        srv = request.getfixturevalue("server")
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        srv.fault, srv.fault_times = None, 0
        srv.reset_counts()
    return tmp_path / "hf"


def _all_rows(store: TensorStore) -> dict[str, np.ndarray]:
    return {n: store.read_row_range(n, 0, store.info(n).rows) for n in store.names() if store.info(n).is_float}


def _assert_same_tensors(remote_store: TensorStore, local_file: Path) -> None:
    local = TensorStore([local_file])
    assert remote_store.names() == local.names()
    for name, values in _all_rows(local).items():
        assert np.array_equal(remote_store.read_row_range(name, 0, values.shape[0]), values, equal_nan=True), name


# ----------------------------------------------------------------------------------------- reading
def test_remote_tensors_equal_local_and_a_second_read_fetches_nothing(server):
    source = resolve_source(f"{server.url}/finetune/", allow_download=True)
    assert source.kind == "url" and source.config_file is not None and source.tokenizer_files
    size = (DEMO / "finetune" / "model.safetensors").stat().st_size
    with TensorStore(source.weight_files) as store:
        _assert_same_tensors(store, DEMO / "finetune" / "model.safetensors")
        rows = [5, 1, 700, 3, 1023]  # scattered, repeated order: coalesced runs, same values as local
        assert np.array_equal(store.read_rows("model.embed_tokens.weight", rows),
                              TensorStore([DEMO / "finetune" / "model.safetensors"]).read_rows(
                                  "model.embed_tokens.weight", rows))
    small = sum((DEMO / "finetune" / p.name).stat().st_size for p in source.tokenizer_files) \
        + (DEMO / "finetune" / "config.json").stat().st_size
    assert server.body_bytes <= size + small + 1  # no byte of the weights fetched twice (+1: the size probe)

    server.reset_counts()
    again = resolve_source(f"{server.url}/finetune/", allow_download=False)  # offline: listing and bytes cached
    with TensorStore(again.weight_files) as store:
        _assert_same_tensors(store, DEMO / "finetune" / "model.safetensors")
    assert server.connections == 0 and server.body_bytes == 0


def test_nothing_is_fetched_without_allow_download(server, hf_home):
    for spec in (f"{server.url}/base/", f"{server.url}/base/model.safetensors", "hf://demo/base"):
        with pytest.raises(SourceNotFound, match="--allow-download"):
            resolve_source(spec, allow_download=False)
    assert server.connections == 0


def test_uncached_bytes_are_not_fetched_without_allow_download(server):
    TensorStore(resolve_source(f"{server.url}/base/", allow_download=True).weight_files).close()  # headers only
    server.reset_counts()
    source = resolve_source(f"{server.url}/base/", allow_download=False)
    with TensorStore(source.weight_files) as store:  # the header is in the range cache
        with pytest.raises(RemoteError, match="not in the range cache.*--allow-download"):
            store.read_row_range("model.layers.0.mlp.down_proj.weight", 0, 1)
    assert server.connections == 0


@pytest.mark.parametrize("fault", ["drop", "short"])
def test_dropped_connections_and_short_bodies_are_resumed(server, fault):
    source = resolve_source(f"{server.url}/scratch/model.safetensors", allow_download=True)
    server.fault, server.fault_times = fault, 3
    before = remote.network_stats().retries
    with TensorStore(source.weight_files) as store:
        _assert_same_tensors(store, DEMO / "scratch" / "model.safetensors")
    assert server.fault_times == 0 and remote.network_stats().retries - before >= 3


@pytest.mark.parametrize("fault, message", [("drop", "could not be fetched"), ("short", "could not be fetched"),
                                            ("ignore-range", "ignores HTTP Range")])
def test_a_server_that_keeps_failing_gives_a_clear_error_never_a_number(server, fault, message, monkeypatch):
    monkeypatch.setattr(remote, "_backoff", lambda failures: None)  # the retries themselves, without their waits
    source = resolve_source(f"{server.url}/base/model.safetensors", allow_download=True)
    with TensorStore(source.weight_files) as store:
        server.fault, server.fault_times, server.fault_min_bytes = fault, 1000, 0  # every response fails
        with pytest.raises(RemoteError, match=message) as err:
            store.read_row_range("lm_head.weight", 0, store.info("lm_head.weight").rows)
        assert f"{server.url}/base/model.safetensors" in str(err.value)
        far = remote.lookup(source.weight_files[0])
        info = store.info("lm_head.weight")
        assert not far.is_cached(info.begin, info.end)  # a partial range is never recorded as present
    server.fault_times, server.fault_min_bytes = 0, 4096
    with TensorStore(source.weight_files) as store:  # once the server behaves, the right numbers
        _assert_same_tensors(store, DEMO / "base" / "model.safetensors")


def test_a_file_changed_on_the_server_is_refused(server, tmp_path):
    folder = tmp_path / "served"
    shutil.copytree(DEMO / "scratch", folder)
    with RangeServer(tmp_path) as own:
        source = resolve_source(f"{own.url}/served/", allow_download=True)
        with TensorStore(source.weight_files) as store:
            os.utime(folder / "model.safetensors", (1, 1))  # a new ETag: the server's file is another one now
            with pytest.raises(RemoteError, match="ETag changed"):
                store.read_row_range("lm_head.weight", 0, store.info("lm_head.weight").rows)


def test_a_server_ignoring_range_is_refused_when_listed(tmp_path):
    with RangeServer(DEMO) as own:
        own.fault, own.fault_min_bytes, own.fault_times = "ignore-range", 0, 1000
        with pytest.raises(RemoteError, match="ignores HTTP Range"):
            resolve_source(f"{own.url}/base/model.safetensors", allow_download=True)
        assert own.body_bytes <= 2 * (DEMO / "base" / "model.safetensors").stat().st_size  # read, not kept


def test_redirects_are_followed_on_the_same_host_only(server):
    source = resolve_source(f"{server.url}/redirect-here/scratch/", allow_download=True)
    with TensorStore(source.weight_files) as store:
        _assert_same_tensors(store, DEMO / "scratch" / "model.safetensors")
    with pytest.raises(RemoteError, match="redirected to another host \\(localhost\\); refused"):
        resolve_source(f"{server.url}/redirect-away/scratch/", allow_download=True)


def test_a_remote_index_naming_files_outside_its_folder_fails_the_weights_only(tmp_path):
    folder = tmp_path / "served" / "model"
    shutil.copytree(DEMO / "base", folder)
    (tmp_path / "served" / "secret.safetensors").write_bytes(b"not for the audit")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "../secret.safetensors", "model.norm.weight": "model.safetensors"}}))
    with RangeServer(tmp_path / "served") as own:
        source = resolve_source(f"{own.url}/model/", allow_download=True)
        assert source.config_file is not None and source.tokenizer_files  # the other families still run
        with pytest.raises(Exception, match="not plain \\*.safetensors file names"):
            source.require_weights()
        assert not any("secret" in r for r in own.requests)


# ----------------------------------------------------------------------------------------- hashing
def test_hub_sha256_comes_from_lfs_metadata_without_reading_the_file(server):
    source = resolve_source("hf://demo/base", allow_download=True)
    assert source.kind == "hf" and source.revision == server.commit
    path = source.weight_files[0]
    local = scan_safetensors(DEMO / "base" / "model.safetensors")
    partial = DigestCache(full_read=False)
    record = partial.input_record(path)
    assert record["sha256"] == local.sha256 and record["sha256_source"] == remote.SHA_HUB
    assert remote.lookup(path).cached_bytes() < 300_000  # the header probe, not the 1.2 MB file

    verified = DigestCache(verify=True).input_record(path)  # --verify-hashes: fetched, hashed, compared
    assert verified["sha256"] == local.sha256 and verified["sha256_source"] == remote.SHA_COMPUTED
    assert verified["sha256_matches"] == remote.SHA_HUB and "error" not in verified


def test_a_hub_file_already_in_the_local_hub_cache_is_read_from_there(server, hf_home):
    local = scan_safetensors(DEMO / "scratch" / "model.safetensors")
    blobs = hf_home / "hub" / "models--demo--scratch" / "blobs"
    blobs.mkdir(parents=True)
    shutil.copy(DEMO / "scratch" / "model.safetensors", blobs / local.sha256)
    source = resolve_source("hf://demo/scratch", allow_download=True)
    with TensorStore(source.weight_files) as store:
        _assert_same_tensors(store, DEMO / "scratch" / "model.safetensors")
    assert not [r for r in server.requests if "model.safetensors" in r]  # not one byte of it fetched
    record = DigestCache().input_record(source.weight_files[0])
    assert record["sha256"] == local.sha256 and record["sha256_source"] == remote.SHA_HUB
    checked = DigestCache(verify=True).input_record(source.weight_files[0])  # the blob hashed, against the hub
    assert checked["sha256_source"] == remote.SHA_COMPUTED and checked["sha256_matches"] == remote.SHA_HUB


def test_partial_read_digests_only_the_tensors_read_and_names_the_others(server, monkeypatch):
    import modellineage.reading.model as model_module

    monkeypatch.setattr(model_module, "SMALL_TENSOR_BYTES", 1024)  # the demo's norm gains (256 B), no matrix
    source = resolve_source(f"{server.url}/finetune/", allow_download=True)
    model = Model("finetune", source, DigestCache(full_read=False))
    read = "model.layers.1.self_attn.q_proj.weight"
    model.store.read_row_range(read, 0, model.store.info(read).rows)  # what a measurement read
    digests = {d.name: d for d in model.tensor_digests()}
    local = {d.name: d for d in scan_safetensors(DEMO / "finetune" / "model.safetensors").tensors}
    small = {n for n, d in local.items() if d.nbytes <= 1024}
    # read + small ones fetched for their digests (+ neighbours that came in the same coalesced range or the
    # header's first 256 KiB), never the whole file
    assert small and set(digests) >= small | {read} and len(digests) < len(local)
    assert all(digests[n] == local[n] for n in digests)
    assert set(model.unchecked_tensors) == set(local) - set(digests) and "lm_head.weight" in model.unchecked_tensors
    record = model.digests.input_record(source.weight_files[0])
    assert record["sha256"] is None and "--verify-hashes" in record["error"]  # no hub metadata, not all read
    model.close()


def test_hf_cache_blob_name_is_the_sha256_verified_on_request(tmp_path):
    blob_sha = scan_safetensors(DEMO / "base" / "model.safetensors").sha256
    repo = tmp_path / "hub" / "models--demo--base"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    shutil.copy(DEMO / "base" / "model.safetensors", repo / "blobs" / blob_sha)
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to(f"../../blobs/{blob_sha}")
    shutil.copy(DEMO / "base" / "config.json", repo / "snapshots" / "abc" / "config.json")
    source = resolve_source(str(repo / "snapshots" / "abc"))
    weights = source.weight_files[0]
    record = DigestCache().input_record(weights)
    assert record == {"size": weights.stat().st_size, "sha256": blob_sha, "sha256_source": remote.SHA_BLOB}
    checked = DigestCache(verify=True).input_record(weights)
    assert checked["sha256_source"] == remote.SHA_COMPUTED and checked["sha256_matches"] == remote.SHA_BLOB
    # a blob whose name is not its content's SHA-256 is caught when verified
    wrong = "0" * 64
    (repo / "blobs" / blob_sha).rename(repo / "blobs" / wrong)
    (repo / "snapshots" / "abc" / "model.safetensors").unlink()
    (repo / "snapshots" / "abc" / "model.safetensors").symlink_to(f"../../blobs/{wrong}")
    source = resolve_source(str(repo / "snapshots" / "abc"))
    record = DigestCache(verify=True).input_record(source.weight_files[0])
    assert "differs from the HF cache blob name" in record["error"]


# ----------------------------------------------------------------------------------------- nginx
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)")
def test_nginx_serves_the_same_tensors():
    with Nginx(DEMO) as nginx:
        source = resolve_source(f"{nginx.url}/base/", allow_download=True)
        with TensorStore(source.weight_files) as store:
            _assert_same_tensors(store, DEMO / "base" / "model.safetensors")
        ranged = [line for line in nginx.access_log() if '" 206 ' in line]
        assert ranged, "nginx answered no range request"


# ----------------------------------------------------------------------------------------- audits
def _run(tmp_path: Path, name: str, *args: str, env: dict | None = None):
    evidence = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "audits/", "-p", "no:cacheprovider", "-q", "--evidence", str(evidence),
         "--html", str(tmp_path / f"{name}.html"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    return proc, (json.loads(evidence.read_text()) if evidence.exists() else None)


def test_remote_and_local_audits_give_the_same_evidence(server, tmp_path, hf_home):
    """The demo plan with every source remote (the target from a hub, one reference as a directory URL, one
    as a directory URL without its trailing slash) gives the same audits, numbers and verdicts as on disk."""
    plan = (ROOT / "audit.toml").read_text()
    plan = plan.replace('"fixtures/demo/finetune"', '"hf://demo/finetune"')
    plan = plan.replace('"fixtures/demo/base"', f'"{server.url}/base/"')
    plan = plan.replace('"fixtures/demo/scratch"', f'"{server.url}/scratch"')
    plan = plan.replace('"fixtures/chain/', f'"{ROOT}/fixtures/chain/')  # the training chain stays on disk
    (tmp_path / "remote.toml").write_text(plan)
    env = {"HF_HOME": str(hf_home), "HF_ENDPOINT": server.url}

    proc, _ = _run(tmp_path, "offline", "--audit", str(tmp_path / "remote.toml"), env=env)
    assert proc.returncode == 4 and "--allow-download" in proc.stdout + proc.stderr
    assert server.connections == 0  # nothing fetched, not even a listing

    local_proc, local = _run(tmp_path, "local")
    proc, far = _run(tmp_path, "remote", "--audit", str(tmp_path / "remote.toml"), "--allow-download", env=env)
    assert local_proc.returncode == 0 and proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]

    text = json.dumps(far["audits"], sort_keys=True)
    text = text.replace(f"hf://demo/finetune@{server.commit}/", "fixtures/demo/finetune/")
    for m in ("base", "scratch"):
        text = text.replace(f"{server.url}/{m}/", f"fixtures/demo/{m}/")
    assert json.loads(text) == json.loads(json.dumps(local["audits"], sort_keys=True))

    inputs = {(i["model"], i["path"]): i for i in far["inputs"]}
    for i in local["inputs"]:
        if i["model"].startswith(("checkpoint ", "log ")):  # the training chain and logs stayed on disk
            continue
        got = inputs[(i["model"], Path(i["path"]).name)]
        assert (got["size"], got["sha256"]) == (i["size"], i["sha256"])
    weights = inputs[("finetune", "model.safetensors")]
    assert weights["bytes_read"] == weights["size"]  # the full audit read every byte once ...
    assert weights["sha256_matches"] == remote.SHA_HUB  # ... so the hub's SHA-256 was checked for free
    fetched = {f["url"]: f for f in far["network"]["files"]}
    assert all(f["bytes_fetched"] == f["size"] for f in fetched.values())


def test_budgeted_digests_of_a_remote_model_fetch_one_row_per_tensor(server):
    """Under --budget a remote model's tensor digests fetch one seeded row per tensor (the same digests as the
    local copy's); without --allow-download, rows not in the range cache are named with that reason."""
    from modellineage.weights.budget import parse_budget

    budget = parse_budget("100%")  # 10% of it for the digests: one row of every demo tensor fits
    source = resolve_source(f"{server.url}/finetune/", allow_download=True)
    model = Model("finetune", source, DigestCache(full_read=False, budget=budget))
    local = Model("local", resolve_source(str(DEMO / "finetune")), DigestCache(full_read=False, budget=budget))
    digests = model.tensor_digests()
    assert digests == local.tensor_digests() and not model.unchecked_tensors
    assert any(d.rows for d in digests)
    far = remote.lookup(source.weight_files[0])
    assert far.cached_bytes() < far.size // 2  # headers (first 256 KiB) and the rows, not the file
    model.close()
    Model("s", resolve_source(f"{server.url}/scratch/", allow_download=True)).store.close()  # listing, header cached
    offline = Model("scratch", resolve_source(f"{server.url}/scratch/"), DigestCache(full_read=False, budget=budget))
    found = {d.name for d in offline.tensor_digests()}
    assert offline.unchecked_tensors and not found & set(offline.unchecked_tensors)
    assert "not in the remote source's range cache (pass --allow-download)" in offline.unchecked_reason
    offline.close()
