"""Weight similarity on real files: the demo, derived copies built from it, independent models trained on CPU."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modellineage.errors import IncompatibleShapes, NonFiniteWeights
from modellineage.reading.model import Model
from modellineage.reading.naming import TensorRef, canonicalize
from modellineage.reading.sources import resolve_source
from modellineage.reading.tensors import TensorStore
from modellineage.weights.alignment import (
    correspond_layers,
    detect_upcycling,
    match_experts,
    many_to_one_alignment,
    monotone_alignment,
    project_layers,
)
from modellineage.weights.embeddings import embedding_stats, shared_token_rows, vocabulary_of
from modellineage.weights.metrics import similarity
from modellineage.weights.sampling import BOOTSTRAP_REPLICATES, BootstrapAccumulator, choose_rows, row_stats
from modellineage.weights.signatures import compare_signatures, model_signatures
from modellineage.weights.similarity import (
    ROTATION_SKETCH,
    compare_pair,
    compare_weights,
    read_canonical_rows,
    remap_key,
    row_plan,
    summarise,
)

from . import weight_builders as wb

BOUND_SCRATCH = 0.3  # the design's from-scratch band, as in thresholds.toml [weights].independent_max_centred


def model(path: Path, name: str | None = None) -> Model:
    return Model(name or Path(path).name, resolve_source(str(path), base_dir=Path(".")))


@pytest.fixture(scope="module")
def demo():
    return {n: model(wb.DEMO / n, n) for n in ("base", "finetune", "scratch")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("built")
    return {
        "relayered": wb.relayered(tmp / "relayered", [0, 1, 2, 3, 1, 2, 3]),
        "permuted": wb.relayered(tmp / "permuted", [2, 3, 0, 1]),
        "upcycled": wb.upcycled(tmp / "upcycled"),
        "shifted": wb.vocab_shifted(tmp / "shifted"),
        "narrow": wb.narrow(tmp / "narrow"),
    }


# ----------------------------------------------------------------------------------------- demo
def test_finetune_keeps_high_centred_similarity_in_every_category(demo):
    comp = compare_weights(demo["finetune"], demo["base"])
    cats = {g.group: g for g in comp.by_category}
    assert set(cats) == {"embedding", "attention", "mlp", "norm", "lm_head"}
    assert all(g.mean_centred > 0.9 for g in cats.values()), cats
    assert cats["embedding"].mean_centred == 1.0  # frozen during the fine-tune
    assert comp.bytes_read == 2 * sum(demo["base"].store.info(n).nbytes for n in demo["base"].store.names())


def test_scratch_is_low_in_every_category_and_norms_show_the_trap(demo):
    comp = compare_weights(demo["scratch"], demo["base"])
    cats = {g.group: g for g in comp.by_category}
    assert all(g.mean_centred < BOUND_SCRATCH for g in cats.values()), cats
    assert cats["embedding"].mean_centred < 0.1
    norms = [p for p in comp.pairs if p.category == "norm"]
    assert norms and all(p.similarity.cosine > 0.99 for p in norms)  # raw cosine reads "copied" ...
    assert abs(cats["norm"].mean_centred) < 0.1  # ... the centred statistic does not


def test_figures_match_a_one_shot_numpy_computation(demo):
    comp = compare_weights(demo["finetune"], demo["base"], keys=["layers.2.mlp_up.weight"], chunk_bytes=4096)
    (pair,) = comp.pairs
    a = demo["finetune"].store.read_row_range("model.layers.2.mlp.up_proj.weight", 0, 172)
    b = demo["base"].store.read_row_range("model.layers.2.mlp.up_proj.weight", 0, 172)
    ref = similarity(a, b)
    assert math.isclose(pair.similarity.centred_cosine, ref.centred_cosine, rel_tol=1e-12)
    assert math.isclose(pair.similarity.rel_l2, ref.rel_l2, rel_tol=1e-12)
    assert pair.centred_ci.exact and pair.rows_read == pair.rows_total == 172


@pytest.mark.parametrize("family", ["phi3", "gpt_neox", "gpt2", "fused_experts"])
def test_row_plans_read_exactly_the_canonical_tensor(family, tmp_path):
    """Fused qkv / gate_up, per-head interleaving, Conv1D transposition and stacked experts read only their rows."""
    from .tiny_models import tiny

    if family == "fused_experts":  # the transformers-v5 in-memory layout: experts stacked, gate|up fused
        rng = np.random.default_rng(0)
        arrays = {"model.layers.0.mlp.experts.gate_up_proj": rng.standard_normal((4, 64, 64)).astype(np.float32),
                  "model.layers.0.mlp.experts.down_proj": rng.standard_normal((4, 64, 32)).astype(np.float32)}
        cfg = tiny("qwen3_moe").config
    else:
        t = tiny(family)
        arrays, cfg = t.saved, t.config
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp_path / "m.safetensors"))
    store = TensorStore([tmp_path / "m.safetensors"])
    nm = canonicalize({n: store.info(n).shape for n in store.names()}, cfg)
    checked = 0
    for ref in nm.refs.values():
        plan = row_plan(ref, store.info(ref.source))
        got = read_canonical_rows(store, plan, np.arange(plan.shape[0]))
        got = got.T if plan.transpose else got
        want = ref.apply(arrays[ref.source].astype(np.float64))
        assert got.size == want.size and np.array_equal(got.reshape(want.shape), want), ref.key
        checked += not ref.is_whole
    assert checked, "no fused or transposed tensor was exercised"


def test_different_width_raises_incompatible_shapes_naming_both_files(demo, built):
    with pytest.raises(IncompatibleShapes) as info:
        compare_weights(model(built["narrow"]), demo["base"])
    assert "model.safetensors" in str(info.value) and "different widths" in str(info.value)


def test_nan_weights_are_refused_with_the_file(demo, tmp_path):
    t = wb.load(wb.DEMO / "finetune")
    t["model.layers.1.mlp.up_proj.weight"][5, 3] = np.nan
    path = wb.write_model(tmp_path / "nan", t, wb.config(wb.DEMO / "base"))
    with pytest.raises(NonFiniteWeights, match="model.safetensors"):
        compare_weights(model(path), demo["base"])


# ----------------------------------------------------------------------------------------- sampling
def test_sampled_intervals_contain_the_full_data_value(demo):
    """Coverage of the 95 % bootstrap intervals over 12 seeds, per tensor and per category (fraction 0.1)."""
    for other in ("finetune", "scratch"):
        full = compare_weights(demo[other], demo["base"])
        by_key = {p.key: p.similarity.centred_cosine for p in full.pairs}
        by_cat = {g.group: g.mean_centred for g in full.by_category}
        hits = total = cat_hits = cat_total = 0
        for seed in range(12):
            comp = compare_weights(demo[other], demo["base"], fraction=0.1, seed=seed)
            assert comp.bytes_read < 0.3 * full.bytes_read
            for p in comp.pairs:
                if not p.exact:
                    total += 1
                    hits += p.centred_ci.contains(by_key[p.key])
            for g in comp.by_category:
                if not g.centred_ci.exact:
                    cat_total += 1
                    cat_hits += g.centred_ci.contains(by_cat[g.group])
        assert total > 300 and hits / total >= 0.9, (other, hits, total)
        assert cat_total >= 36 and cat_hits / cat_total >= 0.9, (other, cat_hits, cat_total)


def test_sampling_is_seeded_and_reads_the_same_rows_on_both_sides(demo):
    a = compare_weights(demo["finetune"], demo["base"], fraction=0.2, seed=3)
    b = compare_weights(demo["finetune"], demo["base"], fraction=0.2, seed=3)
    c = compare_weights(demo["finetune"], demo["base"], fraction=0.2, seed=4)
    assert [p.as_dict() for p in a.pairs] == [p.as_dict() for p in b.pairs]
    assert [p.as_dict() for p in a.pairs] != [p.as_dict() for p in c.pairs]
    embed = next(p for p in a.pairs if p.key == "embed.weight")
    assert math.isclose(embed.similarity.centred_cosine, 1.0, rel_tol=1e-12) and embed.rows_read == math.ceil(0.2 * 1024)


def test_choose_rows_reads_small_tensors_whole():
    rng = np.random.default_rng(0)
    assert choose_rows(10, 0.1, rng).tolist() == list(range(10))
    rows = choose_rows(1000, 0.1, rng)
    assert rows.size == 100 and np.all(np.diff(rows) > 0)
    with pytest.raises(ValueError):
        choose_rows(10, 0.0, rng)


# ----------------------------------------------------------------------------------------- independent, trained
@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    return wb.train_tiny(tmp / "one", seed=1), wb.train_tiny(tmp / "two", seed=2)


def test_independent_trained_models_have_raw_norm_cosine_near_one_but_centred_near_zero(trained_pair):
    one, two = (model(p) for p in trained_pair)
    comp = compare_weights(one, two)
    norms = [p for p in comp.pairs if p.category == "norm"]
    assert len(norms) == 5
    assert all(p.similarity.cosine > 0.95 for p in norms), [p.similarity.cosine for p in norms]
    cats = {g.group: g.mean_centred for g in comp.by_category}
    assert all(v < BOUND_SCRATCH for v in cats.values()), cats


# ----------------------------------------------------------------------------------------- layer correspondence
def test_monotone_alignment_small_cases():
    m = np.array([[0.9, 0.0, 0.0], [0.0, 0.0, 0.95], [0.0, 0.8, 0.0]])
    assert monotone_alignment(m, 0.3) == [(0, 0), (1, 2)]  # (2, 1) would break monotonicity; 0.95 > 0.8
    dup = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.9]])
    assert monotone_alignment(dup, 0.3) == [(0, 0), (1, 1), (2, 1)]  # duplicated layer maps to the same one
    assert monotone_alignment(np.full((3, 3), 0.1), 0.3) == []  # nothing above the bound: nothing matched


def test_many_to_one_alignment_small_cases():
    # SOLAR-style: rows 0-2 are reference 0-2, rows 3-4 repeat reference 1-2 (the monotone map drops one copy)
    solar = np.array([[0.9, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.0, 0.9], [0.0, 0.8, 0.0], [0.0, 0.0, 0.8]])
    assert many_to_one_alignment(solar, 0.3) == [(0, 0), (1, 1), (2, 2), (3, 1), (4, 2)]
    assert len(monotone_alignment(solar, 0.3)) == 4
    new_layer = np.array([[0.9, 0.0], [0.1, 0.2], [np.nan, 0.9]])  # row 1: a new layer, row 2: NaN never wins
    assert many_to_one_alignment(new_layer, 0.3) == [(0, 0), (2, 1)]
    assert many_to_one_alignment(np.full((3, 3), 0.1), 0.3) == []


def test_depth_upscaled_copy_is_aligned_and_beats_index(demo, built):
    target = model(built["relayered"])
    ts, rs = model_signatures(target), model_signatures(demo["base"])
    layers = correspond_layers(ts, rs, min_match=BOUND_SCRATCH)
    order = [0, 1, 2, 3, 1, 2, 3]
    # every layer of the stack is placed where it came from, both copies of the repeated block included
    assert len(layers.path) == 7 and all(order[t] == r for t, r in layers.path), layers.path
    assert layers.repeated == {1: (1, 4), 2: (2, 5), 3: (3, 6)} and layers.unmatched_target == ()
    assert "reference layer 1 matched by target layers 1, 4" in layers.describe()
    assert layers.beats_index  # index alignment pairs target layers 0-3 only
    # the index pairs 4->?, 5->?, 6->? do not exist in a 4-layer reference; alignment recovers 6 -> 3
    aligned = compare_weights(target, demo["base"], layer_map=layers.layer_map)
    assert min(g.mean_centred for g in aligned.by_layer) > 0.9


def test_permuted_layers_are_caught_only_by_correspondence(demo, built):
    target = model(built["permuted"])
    index = compare_weights(target, demo["base"])
    assert max(g.mean_centred for g in index.by_category if g.group in ("attention", "mlp")) < BOUND_SCRATCH
    layers = correspond_layers(model_signatures(target), model_signatures(demo["base"]), min_match=BOUND_SCRATCH)
    # every layer found where it came from (a monotone map could place only two of [2, 3, 0, 1])
    assert layers.beats_index and layers.path == ((0, 2), (1, 3), (2, 0), (3, 1))
    aligned = compare_weights(target, demo["base"], layer_map=layers.layer_map)
    assert {g.group: g.mean_centred for g in aligned.by_category}["attention"] > 0.9


def test_same_depth_finetune_keeps_index_alignment(demo):
    layers = correspond_layers(model_signatures(demo["finetune"]), model_signatures(demo["base"]),
                               min_match=BOUND_SCRATCH)
    assert layers.is_identity and not layers.beats_index
    scratch = correspond_layers(model_signatures(demo["scratch"]), model_signatures(demo["base"]),
                                min_match=BOUND_SCRATCH)
    assert scratch.path == () and not scratch.beats_index


def test_pca_projects_both_models_layers(demo):
    proj = project_layers(model_signatures(demo["finetune"]), model_signatures(demo["base"]))
    assert proj.target_xy.shape == (4, 2) and proj.reference_xy.shape == (4, 2)
    # each fine-tuned layer lies nearest to its own base layer
    d = np.linalg.norm(proj.target_xy[:, None, :] - proj.reference_xy[None, :, :], axis=2)
    assert d.argmin(axis=1).tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------- MoE
def test_upcycled_moe_shows_every_expert_matching_the_dense_mlp(demo, built):
    moe = model(built["upcycled"])
    ups = detect_upcycling(model_signatures(moe), model_signatures(demo["base"]))
    assert len(ups) == 4
    assert all(len(u.experts) == 4 and min(u.similarity) > 0.9 for u in ups)
    scratch_ups = detect_upcycling(model_signatures(moe), model_signatures(demo["scratch"]))
    assert all(max(u.similarity) < BOUND_SCRATCH for u in scratch_ups)


def test_upcycled_experts_are_compared_with_the_dense_mlp_in_full(demo, tmp_path):
    """Experts = base's dense MLP + 10 % noise, everything else from the independent scratch model."""
    moe = model(wb.upcycled(tmp_path / "up", noise=0.1, others_from=wb.DEMO / "scratch"))
    comp = compare_weights(moe, demo["base"])
    experts = [p for p in comp.pairs if p.category == "routed_expert"]
    assert len(experts) == 4 * 4 * 3 and all(p.against_dense for p in experts)
    assert {p.reference_key for p in experts if p.key == "layers.2.experts.3.expert_down.weight"} == \
        {"layers.2.mlp_down.weight"}
    cats = {g.group: g.mean_centred for g in comp.by_category}
    assert cats["routed_expert"] == pytest.approx(1 / math.sqrt(1.01), abs=0.002)  # noise of 10 % of the std
    assert cats["attention"] < BOUND_SCRATCH  # the rest really is independent
    assert [s.key for s in comp.skipped] == [f"layers.{i}.router.weight" for i in range(4)]  # base has no router
    per_expert = {g.group: g.mean_centred for g in comp.by_expert()}
    assert len(per_expert) == 16 and "layers.0.experts.1 ~ layers.0.mlp" in per_expert
    # against an independent dense model the same experts are unrelated
    other = {g.group: g.mean_centred for g in compare_weights(moe, demo["scratch"]).by_category}
    assert abs(other["routed_expert"]) < 0.1


def _distinct_moe(built, tmp_path):
    """The upcycled demo MoE with distinct random experts (an upcycled model's experts are all alike)."""
    t = wb.load(built["upcycled"])
    rng = np.random.default_rng(5)
    distinct = {k: (rng.standard_normal(v.shape).astype(np.float32) * 0.02 if ".experts." in k else v)
                for k, v in t.items()}
    return wb.write_model(tmp_path / "ref", distinct, wb.config(built["upcycled"]))


def test_permuted_experts_are_matched_by_assignment(built, tmp_path):
    src = model(built["upcycled"])
    ref_path = _distinct_moe(built, tmp_path)
    perm = [2, 0, 3, 1]
    tgt_path = wb.permuted_experts(ref_path, tmp_path / "perm", perm)
    ts, rs = model_signatures(model(tgt_path)), model_signatures(model(ref_path))
    matches = match_experts(ts, rs)
    assert [dict(m.assignment) for m in matches] == [dict(enumerate(perm))] * 4
    expert_map = {(m.layer, t): r for m in matches for t, r in m.assignment}
    keys = [k for k in model(tgt_path).name_map.refs if ".experts." in k]
    comp = compare_weights(model(tgt_path), model(ref_path), expert_map=expert_map, keys=keys)
    cats = {g.group: g.mean_centred for g in comp.by_category}
    assert cats["routed_expert"] > 0.99
    plain = {g.group: g.mean_centred for g in compare_weights(model(tgt_path), model(ref_path), keys=keys).by_category}
    assert plain["routed_expert"] < BOUND_SCRATCH
    assert src.name_map.refs["layers.0.router.weight"].shape == (4, 64)


def test_router_rows_follow_the_expert_assignment(built, tmp_path):
    """Experts and router rows permuted consistently: the router, paired by the assignment, is a copy too."""
    ref_path = _distinct_moe(built, tmp_path)
    tgt_path = wb.permuted_experts(ref_path, tmp_path / "perm", [2, 0, 3, 1])
    target, reference = model(tgt_path), model(ref_path)
    expert_map = {(m.layer, t): r for m in match_experts(model_signatures(target), model_signatures(reference))
                  for t, r in m.assignment}
    routers = [f"layers.{i}.router.weight" for i in range(4)]
    comp = compare_weights(target, reference, expert_map=expert_map, keys=routers)
    assert all(p.similarity.centred_cosine > 0.99 for p in comp.pairs), [p.similarity.centred_cosine for p in comp.pairs]
    assert all("reordered by the expert assignment (4 moved)" in p.row_alignment for p in comp.pairs)
    index = compare_weights(target, reference, keys=routers)  # row i with row i: a different expert's router
    assert all(abs(p.similarity.centred_cosine) < BOUND_SCRATCH for p in index.pairs)


def test_unassigned_experts_are_skipped_not_paired_twice(built, tmp_path):
    """Target 4 experts, reference 3 (= target experts 2, 0, 3): target expert 1 has no partner."""
    tgt_path = _distinct_moe(built, tmp_path)
    ref_path = wb.permuted_experts(tgt_path, tmp_path / "three", [2, 0, 3])
    target, reference = model(tgt_path), model(ref_path)
    matches = match_experts(model_signatures(target), model_signatures(reference))
    assert [dict(m.assignment) for m in matches] == [{2: 0, 0: 1, 3: 2}] * 4
    expert_map = {(m.layer, t): r for m in matches for t, r in m.assignment}
    comp = compare_weights(target, reference, expert_map=expert_map)
    experts = [p for p in comp.pairs if p.category == "routed_expert"]
    assert len(experts) == 4 * 3 * 3 and all(p.expert != 1 for p in experts)
    partners = [(p.layer, p.reference_expert, p.role) for p in experts]
    assert len(partners) == len(set(partners))  # no reference expert compared twice
    assert all(p.similarity.centred_cosine > 0.99 for p in experts)
    left = [s for s in comp.skipped if ".experts.1." in s.key]
    assert len(left) == 4 * 3 and all("not assigned to a reference expert" in s.reason for s in left)
    routers = [p for p in comp.pairs if p.category == "router"]  # (4, 64) vs (3, 64): the 3 assigned rows
    assert len(routers) == 4 and all(p.rows_total == 3 and p.similarity.centred_cosine > 0.99 for p in routers)


# ----------------------------------------------------------------------------------------- signatures
def test_signature_bands_for_copy_finetune_and_scratch(demo):
    base = model_signatures(demo["base"])
    same = compare_signatures(base, base)
    assert all(m.best_hamming == 0.0 and m.best_jaccard == 1.0 and not m.moved for m in same.matches)
    scratch = compare_signatures(model_signatures(demo["scratch"]), base)
    assert all(m.same_key_hamming > 0.2 and m.same_key_jaccard < 0.2 for m in scratch.matches)
    fine = compare_signatures(model_signatures(demo["finetune"]), base)
    # fine-tuned tensors (centred ≈ 0.95, a heavy fine-tune) are far closer than scratch ones and never elsewhere
    assert all(m.same_key_hamming < 0.2 and not m.moved for m in fine.matches)
    assert min(m.same_key_jaccard for m in fine.matches) > max(m.same_key_jaccard for m in scratch.matches)


def test_moved_tensor_is_found_under_its_new_key(demo, tmp_path):
    t = wb.load(wb.DEMO / "scratch")
    b = wb.load(wb.DEMO / "base")
    t["model.layers.3.self_attn.q_proj.weight"] = b["model.layers.1.self_attn.q_proj.weight"] * np.float32(1.001)
    path = wb.write_model(tmp_path / "moved", t, wb.config(wb.DEMO / "base"))
    sigs = compare_signatures(model_signatures(model(path)), model_signatures(demo["base"]))
    hit = [m for m in sigs.matching(0.02, 0.85)]
    assert [(m.key, m.best_key) for m in hit] == [("layers.3.attn_q.weight", "layers.1.attn_q.weight")]
    assert hit[0].moved


# ----------------------------------------------------------------------------------------- embeddings
def test_shifted_vocabulary_is_caught_through_shared_tokens(demo, built):
    shifted = model(built["shifted"])
    index = compare_weights(shifted, demo["base"], keys=["embed.weight"])
    assert index.pairs[0].similarity.centred_cosine < 0.1  # row i vs row i: unrelated tokens
    tv, rv = vocabulary_of(shifted), vocabulary_of(demo["base"])
    align = shared_token_rows(tv, rv, 1024, 1024)
    assert align.shared == 1024 and align.moved > 1000
    comp = compare_weights(shifted, demo["base"], keys=["embed.weight", "lm_head.weight"],
                           row_alignments={k: (align.target_rows, align.reference_rows, align.description)
                                           for k in ("embed.weight", "lm_head.weight")})
    assert [p.similarity.centred_cosine for p in comp.pairs] == pytest.approx([1.0, 1.0], abs=1e-12)
    assert "shared normalised tokens" in comp.pairs[0].row_alignment


def test_extended_vocabulary_pairs_the_shared_rows(demo, tmp_path):
    t = wb.load(wb.DEMO / "base")
    extra = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32) * 0.02
    t["model.embed_tokens.weight"] = np.vstack([t["model.embed_tokens.weight"], extra])
    t["lm_head.weight"] = np.vstack([t["lm_head.weight"], extra])
    tok = __import__("json").loads((wb.DEMO / "base" / "tokenizer.json").read_text())
    for k in range(8):
        tok["model"]["vocab"][f"NEWTOKEN{k}"] = 1024 + k
    path = wb.write_model(tmp_path / "ext", t, dict(wb.config(wb.DEMO / "base"), vocab_size=1032), tokenizer_json=tok)
    ext = model(path)
    align = shared_token_rows(vocabulary_of(ext), vocabulary_of(demo["base"]), 1032, 1024)
    assert align.shared == 1024 and align.moved == 0
    comp = compare_weights(ext, demo["base"], keys=["embed.weight"],
                           row_alignments={"embed.weight": (align.target_rows, align.reference_rows, "shared")})
    assert comp.pairs[0].similarity.centred_cosine == 1.0
    with pytest.raises(IncompatibleShapes):  # without an alignment the shapes differ
        compare_weights(ext, demo["base"], keys=["embed.weight"])


def test_embedding_statistics(demo):
    ref = demo["base"].name_map.refs["embed.weight"]
    stats = embedding_stats(demo["base"].store, ref, chunk_bytes=4096)
    full = demo["base"].store.read_row_range(ref.source, 0, 1024)
    assert stats.shape == (1024, 64)
    assert math.isclose(stats.variance, float(full.var()), rel_tol=1e-10)
    assert math.isclose(stats.row_norm_quantiles["p50"], float(np.median(np.linalg.norm(full, axis=1))), rel_tol=1e-12)


# ----------------------------------------------------------------------------------------- streaming edge cases
def _store(tmp_path, name: str, arrays: dict) -> TensorStore:
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}, str(tmp_path / name))
    return TensorStore([tmp_path / name])


def test_group_interval_when_the_only_sampled_tensor_has_no_centred_value(tmp_path):
    """Regression: a sampled constant tensor (centred undefined) next to a tensor read whole crashed the summary."""
    rng = np.random.default_rng(0)
    arrays = {"const": np.ones((64, 8)), "vec": rng.standard_normal(8)}
    a = _store(tmp_path, "a.safetensors", arrays)
    b = _store(tmp_path, "b.safetensors", {"const": np.ones((64, 8)) * 2, "vec": rng.standard_normal(8)})
    refs = [TensorRef("layers.0.mlp_up.weight", "const", (64, 8), "mlp_up", "weight", 0),
            TensorRef("layers.0.mlp_down.weight", "vec", (8,), "mlp_down", "weight", 0)]
    gen = np.random.default_rng(1)
    pairs = [compare_pair(a, r, b, r, fraction=0.5, rng=gen) for r in refs]
    assert pairs[0].replicates is not None and math.isnan(pairs[0].similarity.centred_cosine)
    assert pairs[1].replicates is None  # one row: read whole
    (group,) = summarise(pairs, lambda p: "mlp")
    assert group.undefined == 1 and group.centred_ci.exact
    assert group.mean_centred == pairs[1].similarity.centred_cosine == group.centred_ci.low


def test_bootstrap_memory_does_not_grow_with_sampled_rows():
    """400 replicates over 60,000 sampled rows fed in blocks (as compare_pair does): a (400, n) weight
    matrix alone would be 192 MB; the accumulator keeps one (400, 1024) block and (400, 13) sums."""
    import tracemalloc

    rng = np.random.default_rng(0)
    a = rng.standard_normal((60_000, 4))
    b = a + 0.1 * rng.standard_normal(a.shape)
    blocks = [row_stats(a[i:i + 5000], b[i:i + 5000]) for i in range(0, 60_000, 5000)]
    boot = BootstrapAccumulator(np.random.default_rng(1))
    tracemalloc.start()
    for block in blocks:
        boot.update(block)
    figures = boot.figures()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak
    assert boot.rows == 60_000 and figures["centred_cosine"].shape == (BOOTSTRAP_REPLICATES,)
    point = similarity(a, b).centred_cosine  # the replicates scatter narrowly around the plain figure
    assert np.all(np.abs(figures["centred_cosine"] - point) < 0.005)


@pytest.mark.parametrize("fraction", [None, 0.3])
def test_transposed_side_is_streamed_by_columns(tmp_path, fraction):
    """GPT-2 Conv1D (stored (in, out), fused q|k|v) against linear copies: same figures as numpy, in small blocks."""
    from .tiny_models import tiny

    t = tiny("gpt2")
    conv = _store(tmp_path, "conv.safetensors", t.saved)
    nm = canonicalize({k: v.shape for k, v in t.saved.items()}, t.config)
    transposed = [r for r in nm.refs.values() if r.transpose]
    assert any(r.selections for r in transposed)  # the fused c_attn parts are among them
    rng = np.random.default_rng(0)
    linear = {r.key: r.apply(t.saved[r.source].astype(np.float64)) + 0.01 * rng.standard_normal(r.shape)
              for r in transposed}
    lin = _store(tmp_path, "lin.safetensors", linear)
    for ref in transposed:
        lref = TensorRef(ref.key, ref.key, ref.shape, ref.role, ref.kind, ref.layer)
        pair = compare_pair(conv, ref, lin, lref, fraction=fraction, rng=np.random.default_rng(3), chunk_bytes=2048)
        rows = choose_rows(ref.shape[0], fraction, np.random.default_rng(3)) if fraction else np.arange(ref.shape[0])
        want = similarity(ref.apply(t.saved[ref.source].astype(np.float64))[rows], lin.read_rows(ref.key, rows))
        assert math.isclose(pair.similarity.centred_cosine, want.centred_cosine, rel_tol=1e-10), ref.key
        assert math.isclose(pair.similarity.rel_l2, want.rel_l2, rel_tol=1e-10), ref.key
        assert pair.rows_read == rows.size and pair.exact == (fraction is None)
        if fraction:
            assert pair.centred_ci.contains(pair.similarity.centred_cosine) and not pair.centred_ci.exact


# ----------------------------------------------------------------------------------------- rotation null
def _rotation_sd(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.linalg.norm(a.T @ b) / (math.sqrt(a.shape[1]) * np.linalg.norm(a) * np.linalg.norm(b)))


def test_rotation_null_of_the_demo_token_matrices(demo):
    comp = compare_weights(demo["scratch"], demo["base"], keys=["embed.weight", "lm_head.weight"], chunk_bytes=8192)
    for p in comp.pairs:
        a = demo["scratch"].store.read_row_range(p.target_tensor, 0, 1024)
        b = demo["base"].store.read_row_range(p.reference_tensor, 0, 1024)
        assert p.rotation_null_sd == pytest.approx(_rotation_sd(a, b), rel=1e-9)
    lm = next(p for p in comp.pairs if p.key == "lm_head.weight")
    # independent, yet 0.12: a shared token-frequency direction seen through random hidden bases (sd ≈ 0.10)
    assert lm.similarity.centred_cosine > 0.1 and 0.08 < lm.rotation_null_sd < 0.12 and abs(lm.rotation_z) < 2
    derived = compare_weights(demo["finetune"], demo["base"], keys=["lm_head.weight"]).pairs[0]
    assert derived.rotation_z > 8  # a copy sits sqrt(H) = 8 or more null deviations out
    assert all(p.rotation_null_sd is None for p in compare_weights(demo["scratch"], demo["base"],
                                                                   keys=["layers.0.attn_q.weight"]).pairs)


def test_rotation_null_is_the_spread_of_unrelated_hidden_bases(tmp_path):
    """Property: matrices sharing a token-frequency direction but with independent hidden bases. Their
    centred cosine is not small (H = 32), but in units of the rotation null it scatters with s.d. ≈ 1."""
    rng = np.random.default_rng(0)
    tokens, width = 400, 32
    freq = np.log(rng.zipf(1.3, tokens).clip(max=10**6)).astype(np.float64)
    ref = TensorRef("lm_head.weight", "w", (tokens, width), "lm_head", "weight")
    zs, raw = [], []
    for k in range(60):
        sides = []
        for side in range(2):
            u = rng.standard_normal(width)
            sides.append(np.outer(freq - freq.mean(), u) + 0.5 * rng.standard_normal((tokens, width)))
        a, b = (_store(tmp_path, f"{k}{s}.safetensors", {"w": w}) for s, w in enumerate(sides))
        pair = compare_pair(a, ref, b, ref, rotation_null=True, chunk_bytes=4096)
        zs.append(pair.rotation_z)
        raw.append(pair.similarity.centred_cosine)
    assert np.std(raw) > 0.1  # a fixed bound of 0.1 would accuse a third of these unrelated pairs
    assert abs(np.mean(zs)) < 0.4 and 0.7 < np.std(zs) < 1.3, (np.mean(zs), np.std(zs))


def test_rotation_null_sketch_is_close_to_exact(tmp_path):
    """Above 2 x ROTATION_SKETCH columns the cross product is sketched: within 20 % of the exact value."""
    rng = np.random.default_rng(2)
    tokens, width = 600, 2 * ROTATION_SKETCH + 44
    f = rng.standard_normal(tokens)
    a = np.outer(f, rng.standard_normal(width)) + rng.standard_normal((tokens, width))
    b = np.outer(f, rng.standard_normal(width)) + rng.standard_normal((tokens, width))
    ref = TensorRef("embed.weight", "w", (tokens, width), "embed", "weight")
    pair = compare_pair(_store(tmp_path, "a.safetensors", {"w": a}), ref, _store(tmp_path, "b.safetensors", {"w": b}),
                        ref, rotation_null=True, chunk_bytes=100_000)
    exact = _rotation_sd(a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64))
    assert pair.rotation_null_sd == pytest.approx(exact, rel=0.2)


def test_sampled_embedding_statistics_read_only_the_sample(demo):
    ref = demo["base"].name_map.refs["lm_head.weight"]
    stats = embedding_stats(demo["base"].store, ref, fraction=0.1, rng=np.random.default_rng(4), chunk_bytes=4096)
    rows = choose_rows(1024, 0.1, np.random.default_rng(4))
    part = demo["base"].store.read_rows(ref.source, rows)
    assert stats.rows_read == rows.size == math.ceil(0.1 * 1024) and stats.rows_total == 1024
    assert stats.fraction == 0.1 and stats.as_dict()["rows_read"] == rows.size
    assert math.isclose(stats.variance, float(part.var()), rel_tol=1e-10)
    assert math.isclose(stats.row_norm_quantiles["p50"], float(np.median(np.linalg.norm(part, axis=1))), rel_tol=1e-12)


def test_shared_expert_without_a_reference_counterpart_is_compared_with_the_dense_mlp(tmp_path):
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    dense = rng.standard_normal((48, 16))
    t_store = _store(tmp_path, "t.safetensors", {"s": dense + 0.1 * rng.standard_normal(dense.shape),
                                                 "e": rng.standard_normal((48, 16))})
    r_store = _store(tmp_path, "r.safetensors", {"d": dense})
    t_refs = {"layers.0.shared_up.weight": TensorRef("layers.0.shared_up.weight", "s", (48, 16), "shared_up",
                                                     "weight", 0),
              "layers.0.experts.0.expert_up.weight": TensorRef("layers.0.experts.0.expert_up.weight", "e", (48, 16),
                                                               "expert_up", "weight", 0, 0)}
    r_refs = {"layers.0.mlp_up.weight": TensorRef("layers.0.mlp_up.weight", "d", (48, 16), "mlp_up", "weight", 0)}
    target = SimpleNamespace(name="t", store=t_store, name_map=SimpleNamespace(refs=t_refs))
    reference = SimpleNamespace(name="r", store=r_store, name_map=SimpleNamespace(refs=r_refs))
    comp = compare_weights(target, reference)
    shared, expert = comp.pairs
    assert shared.reference_key == expert.reference_key == "layers.0.mlp_up.weight"
    assert "shared expert against the reference's dense MLP" in shared.row_alignment and not shared.against_dense
    assert shared.similarity.centred_cosine > 0.99 and expert.against_dense and abs(expert.similarity.centred_cosine) < 0.3
    assert remap_key(t_refs["layers.0.experts.0.expert_up.weight"], None, None, r_refs) == "layers.0.mlp_up.weight"
    assert remap_key(t_refs["layers.0.experts.0.expert_up.weight"], None, {(0, 1): 0}, None) is None  # not assigned


# ----------------------------------------------------------------------------------------- streaming paths
def test_threads_and_block_sizes_do_not_change_the_figures(demo):
    """Pairs compared on several threads equal the sequential run exactly; small blocks (many reads, the
    generic path) agree to rounding, and every path reads each tensor once (bytes counted by the reader)."""
    one = compare_weights(demo["finetune"], demo["base"], workers=1)
    three = compare_weights(demo["finetune"], demo["base"], workers=3)
    small = compare_weights(demo["finetune"], demo["base"], workers=1, chunk_bytes=4096)
    assert [p.as_dict() for p in one.pairs] == [p.as_dict() for p in three.pairs]
    for p, q in zip(one.pairs, small.pairs):
        for figure in ("cosine", "centred_cosine", "rel_l2"):
            assert getattr(p.similarity, figure) == pytest.approx(getattr(q.similarity, figure), rel=1e-12, abs=1e-15)
    assert one.bytes_read == small.bytes_read == 2 * sum(demo["base"].store.info(n).nbytes
                                                         for n in demo["base"].store.names())


def test_bf16_pairs_stream_exactly(tmp_path):
    """BF16 tensors (the streamed fast path: raw reads, float32 blocks widened inside the sweep) give the
    figures of their float64 values; the rotation null of a token matrix too."""
    import torch
    from safetensors.torch import save_file as torch_save

    gen = torch.Generator().manual_seed(0)
    a = (1.0 + 0.05 * torch.randn(300, 40, generator=gen)).to(torch.bfloat16)
    b = (a.float() + 0.01 * torch.randn(300, 40, generator=gen)).to(torch.bfloat16)
    e = (0.02 * torch.randn(500, 24, generator=gen)).to(torch.bfloat16)
    f = (0.02 * torch.randn(500, 24, generator=gen)).to(torch.bfloat16)
    torch_save({"w": a, "e": e}, str(tmp_path / "a.safetensors"))
    torch_save({"w": b, "e": f}, str(tmp_path / "b.safetensors"))
    sa, sb = TensorStore([tmp_path / "a.safetensors"]), TensorStore([tmp_path / "b.safetensors"])
    ref = TensorRef("layers.0.mlp_up.weight", "w", (300, 40), "mlp_up", "weight", 0)
    for chunk in (2048, 1 << 20):
        pair = compare_pair(sa, ref, sb, ref, chunk_bytes=chunk)
        want = similarity(a.double().numpy(), b.double().numpy())
        for figure in ("cosine", "centred_cosine", "rel_l2", "mean_a", "std_b"):
            assert getattr(pair.similarity, figure) == pytest.approx(getattr(want, figure), rel=1e-12), figure
        assert pair.bytes_read == 2 * 300 * 40 * 2
    tok = TensorRef("embed.weight", "e", (500, 24), "embed", "weight")
    null = compare_pair(sa, tok, sb, tok, rotation_null=True).rotation_null_sd
    assert null == pytest.approx(_rotation_sd(e.double().numpy(), f.double().numpy()), rel=1e-9)


def test_minhash_lookup_equals_hashing_every_token():
    """The table lookup of signatures._minhash gives the minima of hashing every (position, bin) token, also
    for grids whose bins are far from equiprobable (a bin missed by the precomputed heads is hashed in full)."""
    from modellineage.weights import signatures as sg

    def direct(z, seed):
        tokens = np.arange(z.size, dtype=np.uint64) * np.uint64(8) + np.searchsorted(sg._EDGES, z).astype(np.uint64)
        a, b = sg._hash_params(seed)
        with np.errstate(over="ignore"):
            return sg._mix(tokens[:, None] * a[None, :] + b[None, :]).min(axis=0)

    rng = np.random.default_rng(5)
    grids = [rng.standard_normal(2048), rng.standard_normal(100), np.zeros(2048),
             np.r_[np.zeros(2000), rng.standard_normal(48)], 3 * rng.exponential(size=2048) - 2, rng.standard_normal(1)]
    for seed in (0, 7):
        for z in grids:
            z = z.astype(np.float32)
            assert np.array_equal(sg._minhash(z, seed), direct(z, seed)), (seed, z.size)
