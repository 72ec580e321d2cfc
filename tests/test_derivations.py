"""Derivations that change shape, end to end and in the library: depth up-scaling (a reference layer matched
more than once), width pruning (neurons, heads and hidden channels matched to a subset of the reference's),
merges of several parents.

Every derivative is built here from the demo models (tests/weight_builders.py) and healed briefly on CPU; the
unrelated controls are the same operations applied to the independent demo ``scratch``.
"""

from __future__ import annotations

import numpy as np
import pytest

from modellineage import open_model
from modellineage.weights.alignment import correspond_layers
from modellineage.weights.signatures import model_signatures

from . import weight_builders as wb
from .test_audit_runs import DEMO, outcomes, record, run_audit

pytest.importorskip("torch")
pytest.importorskip("transformers")

#: Depth up-scaling of the 4-layer demo: the middle block (layers 1, 2) stacked twice, SOLAR-style.
UPSCALED = [0, 1, 2, 1, 2, 3]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("derivations")
    return {"upscaled": wb.heal(wb.relayered(tmp / "upscaled", UPSCALED, noise=0.0)),
            "scratch-upscaled": wb.heal(wb.relayered(tmp / "scratch-upscaled", UPSCALED, noise=0.0,
                                                     source=DEMO / "scratch"))}


# ------------------------------------------------------------------------------------------------ depth
def test_depth_upscaled_base_places_both_copies_of_the_repeated_block(built):
    base = open_model(DEMO / "base")
    layers = correspond_layers(model_signatures(open_model(built["upscaled"])), model_signatures(base),
                               min_match=0.3)
    assert layers.path == tuple(enumerate(UPSCALED)), layers.path
    assert layers.repeated == {1: (1, 3), 2: (2, 4)} and layers.unmatched_target == ()
    assert layers.beats_index
    control = correspond_layers(model_signatures(open_model(built["scratch-upscaled"])), model_signatures(base),
                                min_match=0.3)
    assert control.path == () and not control.beats_index


def test_depth_upscaled_audits(tmp_path, built):
    """Claimed independent, the up-scaled base fails on the many-to-one map; the up-scaled scratch passes."""
    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "similarity", "--target", str(built["upscaled"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    sim = record(evidence, "test_weight_similarity[base]")
    assert sim["outcome"] == "failed"
    assert "reference layer 1 matched by target layers 1, 3; reference layer 2 matched by target layers 2, 4" \
        in sim["message"]
    m = sim["measurements"]
    assert m["layer_correspondence"]["repeated_reference_layers"] == {"1": [1, 3], "2": [2, 4]}
    assert m["weight_similarity"]["layer_map"] == {str(t): r for t, r in enumerate(UPSCALED)}
    assert min(g["mean_centred"] for g in m["weight_similarity"]["by_layer"] if g["layer"] is not None) > 0.9

    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "similarity", "--target", str(built["scratch-upscaled"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent", name="control")
    assert proc.returncode == 0, proc.stdout
    assert outcomes(evidence)["test_weight_similarity[base]"] == "passed"
    assert record(evidence, "test_weight_similarity[base]")["measurements"]["layer_correspondence"]["path"] == []


# ------------------------------------------------------------------------------------------------ width
@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """The demo base and the independent scratch pruned alike (3/4 of the channels, 65% of the neurons, one query
    head per KV group, by magnitude) and healed 15 steps: every tensor changes shape."""
    tmp = tmp_path_factory.mktemp("pruned")
    return {"base": wb.heal(wb.pruned(tmp / "pruned-base")),
            "scratch": wb.heal(wb.pruned(tmp / "pruned-scratch", source=DEMO / "scratch"))}


def test_pruned_models_are_matched_to_a_subset_of_the_reference(pruned):
    from modellineage.independence.matching import measure_independence
    from modellineage.weights.aligned import compare_aligned

    base = open_model(DEMO / "base")
    derived = open_model(pruned["base"])
    test = measure_independence(derived, base)
    assert test.combined.log10_p < -50
    assert test.hidden.reference_dims == 64 and test.hidden.matched_dims == 48
    # the kept channels are found where they came from: the pruned embedding's columns are base's kept ones
    emb = wb.load(DEMO / "base")["model.embed_tokens.weight"]
    kept = sorted(np.argsort(-np.linalg.norm(emb, axis=0), kind="stable")[:48])
    assert list(test.hidden.permutation) == kept
    assert all(u.neurons == 112 for layer in test.layers for u in layer.units)
    assert all(-1 not in layer.attention.head_permutation for layer in test.layers)
    aligned = compare_aligned(derived, base, test)
    held = {p.role: p.similarity.centred_cosine for p in aligned.comparison.pairs if p.key not in aligned.fitted}
    assert min(held.values()) > 0.9 and set(held) == {"attn_o", "mlp_down"}

    control = measure_independence(open_model(pruned["scratch"]), base)
    assert control.combined.p > 1e-3
    held = [p.similarity.centred_cosine for p in compare_aligned(open_model(pruned["scratch"]), base, control)
            .comparison.pairs if p.role in ("attn_o", "mlp_down")]
    assert max(abs(x) for x in held) < 0.1


def test_pruned_base_is_judged_and_pruned_scratch_is_not_accused(tmp_path, pruned):
    proc, evidence = run_audit(tmp_path, "-m", "weights or independence", "--target", str(pruned["base"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "derived")
    assert proc.returncode == 0, proc.stdout
    sim = record(evidence, "test_weight_similarity[base]")
    assert sim["outcome"] == "passed" and "attention (aligned)" in sim["message"]
    assert sim["measurements"]["weight_similarity"]["compared"] == 0  # every tensor changed shape
    assert outcomes(evidence)["test_independence_pvalue[base]"] == "passed"

    proc, evidence = run_audit(tmp_path, "-m", "weights or independence", "--target", str(pruned["scratch"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent", name="control")
    assert proc.returncode == 0, proc.stdout
    sim = record(evidence, "test_weight_similarity[base]")
    assert sim["outcome"] == "passed" and "judged on the matched sub-matrices" in sim["message"]
    assert outcomes(evidence)["test_independence_pvalue[base]"] == "passed"


# ------------------------------------------------------------------------------------------------ merges
@pytest.fixture(scope="module")
def merges(tmp_path_factory):
    """Merges of two fine-tunes of base (the demo's and one more on The Tempest) and of base with scratch."""
    tmp = tmp_path_factory.mktemp("merges")
    ft2 = wb.heal(wb.copy_model(DEMO / "base", tmp / "ft2"), steps=40, lr=1e-3, seed=5,
                  text="shakespeare_the_tempest.txt")
    return {"ft2": ft2,
            "linear": wb.merged(tmp / "linear", [DEMO / "finetune", ft2], weights=[0.6, 0.4]),
            "slerp": wb.merged(tmp / "slerp", [DEMO / "base", DEMO / "scratch"], method="slerp", t=0.3),
            "ties": wb.merged(tmp / "ties", [DEMO / "finetune", ft2], method="ties", base=DEMO / "base",
                              density=0.3)}


def test_merge_decomposition_recovers_the_parents(merges):
    from modellineage.weights.merges import decompose

    candidates = [open_model(DEMO / "finetune"), open_model(merges["ft2"]), open_model(DEMO / "scratch")]
    linear = decompose(open_model(merges["linear"]), candidates)
    w = {m.key: m.weights for m in linear.tensors if m.category == "mlp"}
    assert all(abs(x[0] - 0.6) < 1e-3 and abs(x[1] - 0.4) < 1e-3 and x[2] < 1e-3 for x in w.values()), w
    assert min(m.explained for m in linear.tensors) > 0.999
    assert linear.largest_layer_share("scratch")[1] < 1e-3

    ties = decompose(open_model(merges["ties"]), candidates)
    assert ties.share("finetune") > 0.2 and ties.share("ft2") > 0.1 and ties.largest_layer_share("scratch")[1] < 1e-3
    assert 0.9 < min(row["explained"] for row in ties.by_layer().values()) < 0.9999  # TIES leaves a residual

    slerp = decompose(open_model(merges["slerp"]), [open_model(DEMO / "base"), open_model(DEMO / "scratch")])
    assert slerp.share("base") > 0.5 and slerp.share("scratch") > 0.1
    assert min(m.explained for m in slerp.tensors if m.category in ("attention", "mlp")) > 0.999
    # an independent model is explained by neither
    control = decompose(open_model(DEMO / "scratch"), [open_model(DEMO / "base"), open_model(DEMO / "finetune")])
    assert max(control.largest_layer_share(p)[1] for p in control.parents) < 1e-3


def test_merge_of_independent_models_fails_against_both_parents(tmp_path, merges):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "merge", "--target", str(merges["slerp"]),
                               "--reference", f"base={DEMO / 'base'}", "--reference", f"scratch={DEMO / 'scratch'}",
                               "--reference", f"ft2={merges['ft2']}", "--expect", "independent")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    results = outcomes(evidence)
    assert results["test_merge_decomposition[base]"] == "failed"
    assert results["test_merge_decomposition[scratch]"] == "failed"
    assert "looks like a merge with 'scratch'" in record(evidence, "test_merge_decomposition[scratch]")["message"]
    # ft2 (a fine-tune of base, not a parent of this merge) shares base's variance with base: NNLS gives it
    # whatever base does not take; the sum is what is determined
    m = record(evidence, "test_merge_decomposition[base]")["measurements"]["merge_decomposition"]
    assert m["share"]["base"] + m["share"]["ft2"] > 0.5


# ------------------------------------------------------------------------------------------------ fine-grained experts
def test_fine_grained_experts_cut_from_a_dense_mlp_are_caught(tmp_path):
    """Experts built from blocks of base's MLP neurons (shuffled), everything else from scratch: only the expert
    audit can see it; experts cut from scratch's MLP are not accused."""
    from modellineage.weights.slices import match_expert_slices

    cut = wb.fine_grained(tmp_path / "cut", others_from=DEMO / "scratch")
    control = wb.fine_grained(tmp_path / "control", source=DEMO / "scratch")
    base = open_model(DEMO / "base")
    slices = match_expert_slices(open_model(cut), base)
    assert len(slices) == 16 and min(s.down_centred for s in slices) > 0.99 and min(s.gate_matched_cos for s in slices) > 0.99
    assert max(s.down_centred for s in match_expert_slices(open_model(control), base)) < 0.1

    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "moe or similarity", "--target", str(cut),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    results = outcomes(evidence)
    assert results["test_moe_experts[base]"] == "failed" and results["test_weight_similarity[base]"] == "passed"
    assert "fine-grained upcycling" in record(evidence, "test_moe_experts[base]")["message"]
    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "moe", "--target", str(control),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent", name="control")
    assert proc.returncode == 0, proc.stdout
    assert outcomes(evidence)["test_moe_experts[base]"] == "passed"


def test_depth_upscaled_independence_pairs_layers_by_the_correspondence(built, tmp_path):
    """By index, target layer 3 (a copy of base layer 1) meets base layer 3 and layers 4-5 are never tested; paired by
    the signatures' layer correspondence every base layer meets its own copy, once (the second copies of layers 1
    and 2 are left out so each unit p-value comes from a distinct pair of layers)."""
    from modellineage.independence.matching import depth_layer_map, measure_independence

    base, up = open_model(DEMO / "base"), open_model(built["upscaled"])
    layer_map = depth_layer_map(up, base, min_match=0.3)
    assert layer_map == dict(enumerate(UPSCALED))
    test = measure_independence(up, base, layer_map=layer_map, heads=False)
    assert test.layer_pairing == "by layer correspondence"
    pairs = [(x.layer, x.layer if x.reference_layer is None else x.reference_layer) for x in test.layers]
    assert pairs == [(0, 0), (1, 1), (2, 2), (5, 3)]
    assert all(x.pvalue.log10_p < -6 for x in test.layers), [x.pvalue.log10_p for x in test.layers]
    by_index = measure_independence(up, base, heads=False)
    assert by_index.layer_pairing == "by index" and [x.layer for x in by_index.layers] == [0, 1, 2, 3]
    assert by_index.layers[3].pvalue.p > 1e-3  # base layer 3 against a copy of base layer 1: no dependence seen
    assert test.combined.log10_p < by_index.combined.log10_p
    # the independent control finds no correspondence: index pairing, and no accusation
    control = open_model(built["scratch-upscaled"])
    assert depth_layer_map(control, base, min_match=0.3) is None
    assert measure_independence(control, base, heads=False).combined.p > 1e-3
    # the audit pairs them the same way and says so
    proc, evidence = run_audit(tmp_path, "-m", "independence", "--target", str(built["upscaled"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "derived")
    assert proc.returncode == 0, proc.stdout
    rec = record(evidence, "test_independence_pvalue[base]")
    assert rec["outcome"] == "passed"
    assert rec["measurements"]["independence"]["layer_pairing"] == "by layer correspondence"
    assert [x.get("reference_layer", x["layer"]) for x in rec["measurements"]["independence"]["layers"]] == [0, 1, 2, 3]
