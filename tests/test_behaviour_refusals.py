"""Refusals: phrasing similarity against its baseline (character n-grams and sentence embeddings), the sentence
encoder (the real all-MiniLM-L6-v2 the test extra ships, packaged or as a folder named in the plan), the
refusing fixtures (fixtures/refusers, trained on CPU by fixtures/build_refusers.py), and refusals asked
through a real `transformers serve` chat endpoint on loopback (a copy of a refuser given a chat template).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modellineage.behaviour import HttpBackend, LocalBackend, compare, load_encoder, load_probes, profile
from modellineage.behaviour.embed import NO_EMBEDDER, SentenceEncoder
from modellineage.behaviour.measure import PLAIN_CHAT
from modellineage.behaviour.measures import compare_refusals, is_refusal, paired_similarity
from modellineage.errors import LineageError
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source

from . import bert_builders as bb
from .test_behaviour import _audit, _free_port, _serve, _small_probes

ROOT = Path(__file__).resolve().parents[1]
REFUSERS = ROOT / "fixtures" / "refusers"
#: A chat template that renders one user message exactly as the plain-completion wrapper does (PLAIN_CHAT),
#: BOS included as the local tokenizer adds it, so the chat endpoint and the local backend see the same ids.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


# ----------------------------------------------------------------------------------------- measures
def test_paired_similarity_is_measured_against_mismatched_pairs():
    same = np.eye(6) * 0.6 + 0.3  # each answer is closest to the other model's answer to the same prompt
    s = paired_similarity(same, "x", permutations=999, seed=0)
    assert s.mean == pytest.approx(0.9) and s.baseline == pytest.approx(0.3)
    assert s.p_value < 0.01  # only re-pairings that keep every pair reach it
    flat = paired_similarity(np.full((6, 6), 0.8), "x")  # one refusal for everything: style, no pairing
    assert flat.mean == pytest.approx(0.8) and flat.baseline == pytest.approx(0.8) and flat.p_value == 1.0
    one = paired_similarity(np.array([[0.5]]), "x")
    assert one.baseline is None and one.p_value is None
    r = compare_refusals(["a", "a"], ["I'm sorry, I can't.", "Sure."], ["Sure.", "I cannot help."],
                         embedder_reason=NO_EMBEDDER)
    assert r.both_refused == 0 and r.phrasing is None and r.embedding is None and r.embedding_reason == NO_EMBEDDER


def test_continuation_agreement_is_set_against_continuations_of_other_prompts():
    from modellineage.behaviour.backends import Completion
    from modellineage.behaviour.measures import compare_continuations

    a = [Completion("", (1, 2, 3, 4)), Completion("", (5, 6, 7, 8)), Completion("", (1, 9, 9, 9))]
    b = [Completion("", (1, 2, 3, 0)), Completion("", (5, 6, 0, 0)), Completion("", (1, 0, 0, 0))]
    c = compare_continuations(["p", "q", "r"], a, b, same_tokenizer=True)
    assert c.agreement == pytest.approx((3 / 4 + 2 / 4 + 1 / 4) / 3)
    # mismatched pairs agree only on the shared leading token 1 (prompts p and r): 2 x 1/4 over 6 pairs
    assert c.baseline == pytest.approx(2 * 0.25 / 6) and c.excess == pytest.approx(c.agreement - c.baseline)


def test_refusal_dialogues_hold_none_of_the_audit_probes():
    sys.path.insert(0, str(ROOT / "fixtures"))
    import build_refusers

    asked = {i.prompt.casefold() for i in load_probes().refusal.items}
    trained = {q.casefold() for q in build_refusers.requests()}
    assert trained and not asked & trained


# ----------------------------------------------------------------------------------------- encoder
@pytest.fixture(scope="module")
def encoder():
    enc, reason = load_encoder(None)
    if enc is None:
        pytest.skip(reason)
    return enc


def test_packaged_encoder_places_paraphrased_refusals_together(encoder, tmp_path):
    texts = ["I'm sorry, but I can't help with that.", "Sorry, I cannot assist with this request.",
             "The ship sailed into the storm at dawn."]
    v = encoder.embed(texts)
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1.0)
    sim = v @ v.T
    assert sim[0, 1] > 0.5 > 0.1 > sim[0, 2]
    # The same checkpoint as a folder named in the plan (read through the reading layer) gives the same vectors.
    folder = bb.extract(bb.minilm_zip(), tmp_path / "minilm")
    again, reason = load_encoder(str(folder))
    assert "minilm" in reason and np.allclose(again.embed(texts), v, atol=1e-6)
    assert again.weights_sha256 == encoder.weights_sha256
    (folder / "tokenizer.json").unlink()
    with pytest.raises(LineageError, match="needs tokenizer.json"):
        SentenceEncoder.from_folder(folder)
    assert load_encoder("none") == (None, 'not measured: [behaviour].embedder = "none"')


# ----------------------------------------------------------------------------------------- refusers
def _refusal_probes(tmp_path: Path) -> Path:
    """Every refusal prompt; the other sets cut to their first items (they are not what these tests measure)."""
    out = _small_probes(tmp_path, 2)
    (out / "refusal.json").write_text((ROOT / "fixtures/probes/behaviour/refusal.json").read_text(encoding="utf-8"),
                                      encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def refusal_probes(tmp_path_factory):
    return load_probes(_refusal_probes(tmp_path_factory.mktemp("probes")))


@pytest.fixture(scope="module")
def refusal_profiles(refusal_probes):
    probes = refusal_probes
    return {name: profile(LocalBackend(Model(name, resolve_source(str(REFUSERS / name)))), probes)
            for name in ("refuser", "other")}


def test_refusers_refuse_in_their_own_words(refusal_profiles, encoder):
    mine, theirs = refusal_profiles["refuser"], refusal_profiles["other"]
    for p in (mine, theirs):
        assert sum(is_refusal(t) for _, _, t in p.refusals) >= 10
    c = compare(mine, theirs, embedder=encoder).refusal
    assert c.both_refused >= 5 and c.embedder["name"] == "all-MiniLM-L6-v2"
    # Different phrasings: low n-gram similarity, and no closer for the same request than for different ones.
    assert c.phrasing.mean < 0.3 and c.phrasing.p_value > 0.05
    assert c.embedding.mean < 0.6 and c.embedding.p_value > 0.05
    same = compare(mine, mine, embedder=encoder).refusal
    assert same.phrasing.mean == pytest.approx(1.0) and same.embedding.mean == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- chat endpoint
@pytest.fixture(scope="module")
def served_chat(tmp_path_factory):
    """`transformers serve` on a copy of the refuser given a chat template, loopback only; stopped by its pid."""
    folder = tmp_path_factory.mktemp("chat") / "refuser-chat"
    shutil.copytree(REFUSERS / "refuser", folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": CHAT_TEMPLATE}, indent=2))
    port = _free_port()
    proc = _serve(folder, port, folder.parent / "serve.log")
    yield f"http://127.0.0.1:{port}", str(folder)
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_chat_endpoint_gives_the_local_refusals(served_chat, refusal_profiles, refusal_probes, encoder, tmp_path):
    endpoint, model_id = served_chat
    backend = HttpBackend("refuser", endpoint, model_id, chat=True, cache_dir=tmp_path / "cache", timeout=60)
    remote = profile(backend, refusal_probes)
    local = refusal_profiles["refuser"]  # the plain-completion wrapper, which the chat template renders
    assert "User: {prompt}\nAssistant:" == PLAIN_CHAT
    assert [r[2] for r in remote.refusals] == [r[2] for r in local.refusals]
    chats = [json.loads(p.read_text())["request"] for p in (tmp_path / "cache").iterdir()]
    assert sum(r["url"].endswith("/v1/chat/completions") for r in chats) == len(refusal_probes.refusal.items)
    c = compare(remote, local, embedder=encoder).refusal
    assert c.target_rate == c.reference_rate > 0.3 and c.agreement == 1.0
    assert c.phrasing.mean == pytest.approx(1.0) and c.embedding.mean == pytest.approx(1.0)


def test_audit_of_a_served_chat_model_measures_refusal_embeddings(served_chat, tmp_path):
    endpoint, model_id = served_chat
    minilm = bb.extract(bb.minilm_zip(), tmp_path / "encoder")
    plan = tmp_path / "audit.toml"
    plan.write_text(f"""
[target]
name = "refuser"
source = "{REFUSERS / 'refuser'}"
endpoint = "{endpoint}"
served_model = "{model_id}"
chat = true

[[reference]]
name = "other"
source = "{REFUSERS / 'other'}"
expect = "independent"
tokenizer = "derived"

[behaviour]
run = true
probes = "{_refusal_probes(tmp_path)}"
embedder = "{minilm}"
""")
    proc, doc = _audit(tmp_path, plan, "chat", "-m", "behaviour")
    assert proc.returncode == 0, proc.stdout[-3000:]
    record = next(r for r in doc["audits"] if "::test_refusal_behaviour[" in r["nodeid"])
    refusal = record["measurements"]["refusal"]
    assert refusal["embedder"]["origin"] == str(minilm) and refusal["embedding"]["pairs"] == refusal["both_refused"]
    assert refusal["embedding"]["baseline"] is not None and "embedding cosine" in record["message"]
    assert doc["plan"]["serving"]["refuser"]["chat"] is True


# ----------------------------------------------------------------------------------------- verdict cards
def test_verdict_card_carries_behaviour_beside_an_unchanged_lineage_verdict():
    from modellineage.reporting import headline

    coverage = [{"subject": "base", "relation": "independent", "refinement": None, "families": ["reuse"],
                 "judged_by": ["a::test_no_exact_tensor_reuse[base]"], "not_judged": [], "label": "claimed independent"}]
    reuse = {"nodeid": "a::test_no_exact_tensor_reuse[base]", "family": "reuse", "subject": "base",
             "expectation": "independent", "outcome": "passed",
             "judgement": {"failed": False, "claim": "no copy", "measured": 0, "bound": "0", "where": "x"}}
    cont = {"nodeid": "b::test_continuation_agreement[base]", "family": "behaviour", "subject": "base",
            "expectation": "independent", "outcome": "skipped",
            "measurements": {"continuation": {"level": "token", "agreement": 0.188},
                             "independent_bound": {"value": 0.16, "side": "max", "where": "thresholds.toml"}}}
    not_run = {**cont, "nodeid": "b::test_next_token_divergence[base]", "measurements": {}}
    (without,) = headline.claim_verdicts("student", coverage, [reuse])
    (with_,) = headline.claim_verdicts("student", coverage, [reuse, cont, not_run])
    assert without.behaviour is None and with_.outcome == without.outcome == "holds"
    assert with_.as_dict() | {"behaviour": None} == without.as_dict()  # the lineage verdict is untouched
    line = with_.behaviour
    assert line["close"] is True and line["audits"] == [cont["nodeid"]]
    assert line["text"] == ("behaviour: continuation agreement 0.188 (independent models ≤ 0.16) — close: closer "
                            "than independent models are, consistent with fine-tuning or distillation")
    cont["measurements"]["continuation"]["agreement"] = 0.05
    assert headline.behaviour_summary("base", [cont])["text"].endswith("within what independent models show")


def test_refusal_phrasing_is_not_judged_for_the_calibrated_reason():
    """The audit's reason quotes benchmarks/results/calibrate_refusals.json: derivatives and independent models
    taught the same refusals overlap (so no bound), while other refusals stay apart."""
    from audits.test_behaviour import REFUSAL_CALIBRATION

    s = json.loads((ROOT / "benchmarks/results/calibrate_refusals.json").read_text())["summary"]
    derived, same, other = s["derived"], s["independent, same phrasing"], s["independent, other phrasing"]
    for figure in ("ngram_mean", "embedding_mean"):
        assert same[figure]["max"] >= derived[figure]["min"]  # overlap: a bound would accuse independent models
        assert other[figure]["max"] < derived[figure]["min"]
        for rel in (derived, same, other):
            assert f"{rel[figure]['min']:.2f}-{rel[figure]['max']:.2f}" in REFUSAL_CALIBRATION
