"""Behaviour family: probe sets, measures, the local backend on the demo models, and a real OpenAI-compatible
server on loopback (`transformers serve`, the [serving] extra) audited end to end.

Bad endpoints (a timeout, malformed JSON, HTTP 500) are small real HTTP servers started here: they stand for a
broken deployment, not for the thing under test (the client and the audits).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from modellineage.behaviour import EndpointError, HttpBackend, LocalBackend, compare, load_probes, profile
from modellineage.behaviour.measures import (
    compare_continuations,
    contains_answer,
    estimate_cutoff,
    is_refusal,
    jsd_bits,
    linear_cka,
    ngram_cosine,
)
from modellineage.behaviour.backends import Completion
from modellineage.behaviour.probes import SETS
from modellineage.errors import PlanError, UnsupportedFormat
from modellineage.plan import plan_from_mapping
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
PROBES = ROOT / "fixtures" / "probes" / "behaviour"


# ----------------------------------------------------------------------------------------- probe sets
def test_probe_sets_are_versioned_and_every_item_names_its_source():
    probes = load_probes()
    for s in probes.sets():
        assert s.version >= 1 and len(s.sha256) == 64
        assert all(item.source and item.prompt for item in s.items), s.name
    months = sorted({i.month for i in probes.events.items})
    years = sorted({m[:4] for m in months})
    assert len(years) >= 4 and len(months) == 12 * len(years)  # every month: a cutoff located to within a quarter
    for lang in ("en", "ko"):
        assert sorted(i.month for i in probes.events.items if i.lang == lang) == months
    kinds = {i.kind for i in probes.refusal.items}
    assert kinds == {"benign-edgy", "disallowed"}
    assert len({i.lang for i in probes.multilingual.items}) >= 5


def test_tokenizer_probe_corpus_is_untouched():
    from modellineage.tokenizer.compare import load_probes as tokenizer_probes

    assert len(tokenizer_probes(ROOT / "fixtures" / "probes")) == 41


# ----------------------------------------------------------------------------------------- measures
def test_answers_are_matched_as_words_and_across_scripts():
    assert contains_answer(" the European Union on 31 January", ["European Union", "EU"])
    assert not contains_answer(" Aberdeen, Scotland", ["Abe"])
    assert contains_answer(" 유럽연합이다.", ["유럽연합"])


def test_cutoff_is_located_with_an_interval_and_not_located_without_knowledge():
    months = [f"{y}-{m:02d}" for y in range(2020, 2025) for m in range(1, 13)]
    known = [(m, i < 40) for i, m in enumerate(months) for _ in range(2)]  # knows every event to 2023-04
    est = estimate_cutoff(known, seed=0)
    assert est.located and est.month == "2023-04" and est.interval[0] <= "2023-04" <= est.interval[1]
    assert est.p_value < 0.01
    none = estimate_cutoff([(m, False) for m in months], seed=0)
    assert not none.located and none.reason.startswith("cannot locate") and none.month is None
    rng = np.random.default_rng(1)
    noise = estimate_cutoff([(m, bool(rng.random() < 0.3)) for m in months for _ in range(2)], seed=0)
    assert not noise.located and "not significant" in noise.reason


def test_cka_is_invariant_to_permutation_rotation_and_scale_of_features():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert linear_cka(x, 3.0 * x[:, rng.permutation(16)]) == pytest.approx(1.0)
    assert linear_cka(x, x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(50, 16))) < 0.6


def test_jsd_refusals_and_continuations():
    p = np.array([0.5, 0.5, 0.0])
    assert jsd_bits(p, p) == 0.0 and jsd_bits(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(1.0)
    assert is_refusal("I'm sorry, but I can't help with that.") and is_refusal("죄송하지만 도와드릴 수 없습니다.")
    assert not is_refusal("Sure. First, open the terminal.")
    assert ngram_cosine("I cannot help with that", "I cannot help with that") == pytest.approx(1.0)
    a = [Completion("a b c", (1, 2, 3)), Completion("x", (7,))]
    b = [Completion("a b d", (1, 2, 4)), Completion("x", (7,))]
    tok = compare_continuations(["p1", "p2"], a, b, same_tokenizer=True)
    assert tok.level == "token" and tok.prefix == 1.5 and tok.agreement == pytest.approx((2 / 3 + 1) / 2)
    assert compare_continuations(["p1", "p2"], a, b, same_tokenizer=False).level == "text"


# ----------------------------------------------------------------------------------------- plan
def test_plan_reads_serving_and_never_holds_the_key(tmp_path):
    plan = plan_from_mapping({"target": {"source": "x", "endpoint": "http://127.0.0.1:9/v1", "api_key_env": "MY_KEY"},
                              "claims": {"knowledge_cutoff": "2023-04"}, "behaviour": {"run": True}},
                             origin="p.toml", base_dir=tmp_path)
    assert plan.serving["target"].endpoint == "http://127.0.0.1:9/v1" and plan.behaviour["run"]
    assert plan.as_dict()["serving"]["target"]["api_key_env"] == "MY_KEY"
    for bad, fragment in [({"target": {"source": "x", "endpoint": "ftp://h"}}, "http"),
                          ({"target": {"source": "x", "api_key_env": "sk-123"}}, "need 'endpoint'"),
                          ({"target": {"source": "x", "endpoint": "http://h", "api_key_env": "sk-123"}}, "environment"),
                          ({"claims": {"knowledge_cutoff": "April 2023"}}, "YYYY-MM"),
                          ({"behaviour": {"runs": True}}, "unknown")]:
        with pytest.raises(PlanError, match=fragment):
            plan_from_mapping(bad, origin="p.toml", base_dir=tmp_path)


# ----------------------------------------------------------------------------------------- local backend
def _small_probes(tmp_path: Path, per_set: int) -> Path:
    """The bundled probe sets cut to their first items (events: the first months, both languages)."""
    out = tmp_path / "probes"
    out.mkdir()
    for name in SETS:
        doc = json.loads((PROBES / f"{name}.json").read_text(encoding="utf-8"))
        if name == "events":
            months = sorted({i["month"] for i in doc["items"]})[:per_set]
            doc["items"] = [i for i in doc["items"] if i["month"] in months]
        else:
            doc["items"] = doc["items"][:per_set]
        (out / f"{name}.json").write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def small_probes(tmp_path_factory):
    return load_probes(_small_probes(tmp_path_factory.mktemp("probes"), 6))


@pytest.fixture(scope="module")
def local_base():
    return LocalBackend(Model("base", resolve_source(str(DEMO / "base"))))


def test_local_profile_is_deterministic_and_the_demo_cannot_locate_a_cutoff(local_base, small_probes):
    one, two = profile(local_base, small_probes), profile(local_base, small_probes)
    assert one.as_dict() == two.as_dict()
    assert one.continuations[0][1].text  # the demo base continues text
    est = one.cutoff()
    assert not est.located and est.reason.startswith("cannot locate")
    scratch = profile(LocalBackend(Model("scratch", resolve_source(str(DEMO / "scratch")))), small_probes)
    c = compare(one, scratch)
    assert c.continuation.level == "token" and c.next_token.shared_tokens > 1000
    assert 0.0 < c.next_token.mean_jsd < 1.0 and len(c.representation.layers) == 5


def test_local_backend_refuses_a_config_that_declares_more_than_the_weights_hold(tmp_path):
    folder = tmp_path / "big"
    shutil.copytree(DEMO / "base", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 10 ** 7}))
    with pytest.raises(UnsupportedFormat, match="more than the .* bytes of weights"):
        LocalBackend(Model("big", resolve_source(str(folder))))
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10 ** 9}))
    with pytest.raises(UnsupportedFormat, match="num_hidden_layers"):
        LocalBackend(Model("big", resolve_source(str(folder))))


# ----------------------------------------------------------------------------------------- HTTP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Broken(http.server.BaseHTTPRequestHandler):
    mode = "500"

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.server.mode == "slow":
            time.sleep(3)
        if self.server.mode == "500":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"internal error")
            return
        body = b'{"choices": [{"text": "unterminated' if self.server.mode == "malformed" else b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def broken_server():
    servers = []

    def start(mode: str) -> str:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
        server.mode = mode
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("mode, fragment", [("500", "HTTP 500"), ("malformed", "malformed JSON"),
                                            ("slow", "no answer within 1 s"), ("empty", "without choices")])
def test_bad_endpoints_raise_a_clear_reason(broken_server, mode, fragment):
    backend = HttpBackend("m", broken_server(mode), "m", timeout=1.0)
    with pytest.raises(EndpointError, match=fragment):
        backend.complete("hello", 4)


def _serve(folder: Path, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("transformers")
    if not exe.exists() or shutil.which(str(exe)) is None:
        pytest.skip("`transformers serve` is not installed (pip install 'transformers[serving]')")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(exe), "serve", str(folder), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu"], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`transformers serve` exited with {proc.returncode}: {log.read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("`transformers serve` did not become healthy within 180 s")


@pytest.fixture(scope="module")
def served_base(tmp_path_factory):
    """`transformers serve` on the demo base, loopback only; stopped (by its pid) after the module."""
    port = _free_port()
    proc = _serve(DEMO / "base", port, tmp_path_factory.mktemp("serve") / "serve.log")
    yield f"http://127.0.0.1:{port}", str(DEMO / "base")
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_served_model_gives_the_local_measures(served_base, local_base, small_probes, tmp_path):
    endpoint, model_id = served_base
    http_backend = HttpBackend("base", endpoint, model_id, cache_dir=tmp_path / "cache", timeout=60)
    remote = profile(http_backend, small_probes)
    local = profile(local_base, small_probes)
    assert [c.text for _, c in remote.continuations] == [c.text for _, c in local.continuations]
    assert [e[:4] for e in remote.events] == [e[:4] for e in local.events]
    assert [r[2] for r in remote.refusals] == [r[2] for r in local.refusals]
    assert remote.next_tokens is None and "no logprobs" in remote.next_tokens_reason  # transformers serve gives none
    assert remote.hidden is None
    assert remote.cutoff().as_dict() == local.cutoff().as_dict()
    c = compare(remote, local)
    assert c.continuation.level == "text" and c.continuation.identical == 1.0
    # The cache answers the second run: same exchanges (request and response hashes), no new cache entry.
    cached = sorted((tmp_path / "cache").iterdir())
    again = profile(HttpBackend("base", endpoint, model_id, cache_dir=tmp_path / "cache"), small_probes)
    assert again.as_dict() == remote.as_dict() and sorted((tmp_path / "cache").iterdir()) == cached
    assert len(cached) == len(set(remote.exchanges))


def _audit(tmp_path: Path, plan: Path, name: str, *extra: str):
    evidence = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", "audits/", "-p", "no:cacheprovider", "-q", "-rs",
                           "--audit", str(plan), "--evidence", str(evidence), "--html", str(tmp_path / f"{name}.html"),
                           "--behaviour", *extra], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc, json.loads(evidence.read_text()) if evidence.exists() else None


def _outcomes(doc, test: str) -> dict:
    return {r["subject"]: (r["outcome"], r["message"]) for r in doc["audits"] if f"::{test}[" in r["nodeid"]}


def test_audit_through_a_served_model_and_a_broken_endpoint(served_base, broken_server, tmp_path):
    endpoint, model_id = served_base
    probes = _small_probes(tmp_path, 4)
    plan = tmp_path / "audit.toml"
    plan.write_text(f"""
[target]
name = "finetune"
source = "{DEMO / 'finetune'}"

[[reference]]
name = "base"
source = "{DEMO / 'base'}"
expect = "derived"
endpoint = "{endpoint}"
served_model = "{model_id}"
api_key_env = "BEHAVIOUR_TEST_KEY"

[[reference]]
name = "scratch"
source = "{DEMO / 'scratch'}"
expect = "independent"
tokenizer = "derived"
endpoint = "{broken_server('500')}"
timeout = 5

[claims]
knowledge_cutoff = "2023-04"

[behaviour]
run = true
probes = "{probes}"
""")
    os.environ["BEHAVIOUR_TEST_KEY"] = "secret-key-never-in-evidence"
    try:
        proc, doc = _audit(tmp_path, plan, "one", "-m", "behaviour or reuse")
        proc2, doc2 = _audit(tmp_path, plan, "two", "-m", "behaviour or reuse")
    finally:
        del os.environ["BEHAVIOUR_TEST_KEY"]
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = (tmp_path / "one.json").read_text()
    assert "secret-key-never-in-evidence" not in text and "BEHAVIOUR_TEST_KEY" in text
    broken = _outcomes(doc, "test_continuation_agreement")["scratch"]
    assert broken[0] == "skipped" and "HTTP 500" in broken[1]
    assert _outcomes(doc, "test_no_exact_tensor_reuse")["scratch"][0] == "passed"  # the rest of the audit ran
    served = _outcomes(doc, "test_continuation_agreement")["base"]
    assert served[0] == "skipped" and "recorded, not judged under 'derived'" in served[1]
    cutoff = next(r for r in doc["audits"] if "::test_knowledge_cutoff" in r["nodeid"])
    assert cutoff["outcome"] == "skipped" and "cannot measure the claimed knowledge cutoff 2023-04" in cutoff["message"]
    nt = _outcomes(doc, "test_next_token_divergence")["base"]
    assert nt[0] == "skipped" and "no logprobs" in nt[1]
    for d in (doc, doc2):
        d.pop("generated_at")
    assert doc == doc2  # the second run answered from the cache: identical evidence


def test_distilled_student_is_weight_independent_and_behaviour_says_how_close(tmp_path):
    """fixtures/distilled/student learnt base's outputs from its own initialisation: the weight families find it
    independent (the claim holds), the behaviour family measures it closer to base than any independent
    calibration pair agrees — yet below the calibrated bound, which is set so that no independent pair is accused."""
    proc, doc = _audit(tmp_path, ROOT / "fixtures" / "distilled" / "audit.toml", "distilled",
                       "-m", "behaviour or reuse or independence")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for test in ("test_independence_pvalue", "test_no_exact_tensor_reuse", "test_next_token_divergence",
                 "test_continuation_agreement"):
        assert _outcomes(doc, test)["base"][0] == "passed", test
    calibration = json.loads((ROOT / "benchmarks/results/calibrate_behaviour.json").read_text())
    independent = [p for p in calibration["pairs"] if p["relation"] == "independent"]
    record = next(r for r in doc["audits"] if "::test_continuation_agreement[" in r["nodeid"])
    agreement = record["measurements"]["continuation"]["agreement"]
    assert agreement > max(p["continuation_token_agreement"] for p in independent)
    assert agreement == pytest.approx(next(p["continuation_token_agreement"] for p in calibration["pairs"]
                                           if (p["target"], p["reference"]) == ("student0", "base0")), abs=1e-6)
    # Against its own baseline (continuations of different prompts) the student stands further apart from every
    # independent calibration pair (benchmarks/results/calibrate_continuation_baseline.json): recorded, not judged.
    baseline = json.loads((ROOT / "benchmarks/results/calibrate_continuation_baseline.json").read_text())
    excess = record["measurements"]["continuation"]["excess"]
    assert excess > baseline["summary"]["independent"]["excess"]["max"]
    assert excess == pytest.approx(next(p["excess"] for p in baseline["pairs"]
                                        if (p["target"], p["reference"]) == ("student0", "base0")), abs=1e-6)
