"""modellineage.independence: metamorphic tests on the demo fine-tune, and the null on independent pairs.

Each transformation below computes exactly the same function as the demo `finetune` (its logits are
checked), yet defeats a naive same-name comparison. The test asserts, in the same body, that the
independence statistic still detects the fine-tune's dependence on `base` (p < 1e-6) and that the
naive centred cosine of the touched tensors no longer does — so the robustness is real, not assumed.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from modellineage.independence.matching import match_rows, measure_independence  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402
from modellineage.weights.metrics import similarity  # noqa: E402

from .reparametrise import everything, flip_signs, permute_mlp, permute_residual, rescale_channels, shuffle_heads  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
NAIVE_MAX = 0.2  # a naive comparison "detects" nothing when |centred cosine| of the touched tensors is below this


def _model(path: Path, name: str) -> Model:
    return Model(name, resolve_source(str(path)))


@pytest.fixture(scope="module")
def finetune_sd():
    m = transformers.LlamaForCausalLM.from_pretrained(DEMO / "finetune")
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def base_sd():
    m = transformers.LlamaForCausalLM.from_pretrained(DEMO / "base")
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.fixture(scope="module")
def base_model():
    return _model(DEMO / "base", "base")


# ----------------------------------------------------------------------------------------- helpers
_TOKENS = torch.tensor([[0, 5, 17, 300, 42, 999, 7, 64, 128, 512, 3, 1000, 77, 250, 600, 8]])


def _logits(sd) -> torch.Tensor:
    m = transformers.LlamaForCausalLM.from_pretrained(DEMO / "finetune")
    m.load_state_dict(sd)
    m.eval()
    with torch.no_grad():
        return m(input_ids=_TOKENS).logits


def _save(sd, out: Path) -> Model:
    m = transformers.LlamaForCausalLM.from_pretrained(DEMO / "finetune")
    m.load_state_dict(sd)
    m.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO / "finetune" / f, out / f)
    return _model(out, out.name)


def _touched(sd_before, sd_after) -> list[str]:
    return [k for k in sd_before if not torch.equal(sd_before[k], sd_after[k])]


def _naive(sd, base_sd, names) -> float:
    """Mean |centred cosine| of same-named tensors (what a naive weight comparison looks at)."""
    return float(np.mean([abs(similarity(sd[k].double().numpy(), base_sd[k].double().numpy()).centred_cosine)
                          for k in names]))


TRANSFORMS = {"permute_mlp": permute_mlp, "permute_residual": permute_residual, "rescale_channels": rescale_channels,
              "shuffle_heads": lambda sd, rng: shuffle_heads(sd, rng)[0], "flip_signs": flip_signs,
              "everything": everything}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_output_preserving_transformation_is_detected_and_naive_cosine_is_not(name, finetune_sd, base_sd,
                                                                              base_model, tmp_path):
    rng = np.random.default_rng(sorted(TRANSFORMS).index(name) + 11)
    sd = dict(finetune_sd)
    TRANSFORMS[name](sd, rng)

    # the function is unchanged ...
    torch.testing.assert_close(_logits(sd), _logits(finetune_sd), atol=1e-4, rtol=1e-4)
    touched = _touched(finetune_sd, sd)
    assert touched, "the transformation changed nothing"
    if name == "shuffle_heads":  # the MLP statistic cannot be the only thing that survives a head shuffle
        assert all("self_attn" in k for k in touched)

    # ... the independence test still detects the fine-tune's dependence on base ...
    result = measure_independence(_save(sd, tmp_path / name), base_model)
    assert result.combined.p < 1e-6, result.combined
    assert all(layer.pvalue.p < 1e-6 for layer in result.layers)

    # ... while a naive same-name comparison of the touched tensors no longer does (but did before).
    assert _naive(finetune_sd, base_sd, touched) > 0.5
    assert _naive(sd, base_sd, touched) < NAIVE_MAX, (name, _naive(sd, base_sd, touched))


def test_head_shuffle_is_undone_by_the_head_alignment(finetune_sd, base_model, tmp_path):
    sd = dict(finetune_sd)
    _, applied = shuffle_heads(sd, np.random.default_rng(3))
    result = measure_independence(_save(sd, tmp_path / "heads"), base_model)
    for layer, order in zip(result.layers, applied):
        att = layer.attention
        assert list(att.head_permutation) == order  # target head h holds base head order[h]
        assert att.matched_similarity > 0.9 > 0.5 > att.as_stored_similarity


def test_residual_permutation_and_flips_are_recovered(finetune_sd, base_model, tmp_path):
    sd = dict(finetune_sd)
    rng = np.random.default_rng(4)
    flip_signs(sd, rng)
    result = measure_independence(_save(sd, tmp_path / "flips"), base_model)
    assert result.hidden.matched_abs_corr == pytest.approx(1.0)
    assert 0.3 < result.hidden.negative_share < 0.7
    assert result.layers[0].units[0].neuron_order_kept > 0.9


# ----------------------------------------------------------------------------------------- matchers and hooks
def test_sparse_matcher_and_sketch_agree_with_the_dense_exact_path(tmp_path):
    target, base = _model(DEMO / "finetune", "finetune"), _model(DEMO / "base", "base")
    dense = measure_independence(target, base)
    sparse = measure_independence(target, base, dense_max=16, top_k=8, max_features=32)
    assert sparse.projected and sparse.features == 32 and not dense.projected
    assert {u.matcher for r in sparse.layers for u in r.units} == {"sparse top-k"}
    assert sparse.combined.p < 1e-6
    assert [r.units[0].neuron_order_kept for r in sparse.layers] == pytest.approx(
        [r.units[0].neuron_order_kept for r in dense.layers], abs=0.05)


def test_match_rows_recovers_a_planted_permutation_both_ways():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 40))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    perm = rng.permutation(300)
    signs = rng.choice([-1.0, 1.0], 300)[:, None]
    for dense_max in (1000, 10):
        got, sims, matcher = match_rows(x, x[perm] * signs, absolute=True, dense_max=dense_max)
        # target row i is reference row j with perm[j] == i
        assert np.array_equal(perm[got], np.arange(300)), matcher
        assert np.allclose(np.abs(sims), 1.0)


def test_explicit_token_pairs_hook(finetune_sd, base_model, tmp_path):
    """A target whose token ids are shuffled is aligned through explicit (target_id, reference_id) pairs."""
    sd = dict(finetune_sd)
    rng = np.random.default_rng(5)
    ids = rng.permutation(1024)  # target row i holds base token ids[i]
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][torch.from_numpy(ids)]
    sd["lm_head.weight"] = sd["lm_head.weight"][torch.from_numpy(ids)]
    target = _save(sd, tmp_path / "ids")
    pairs = [(i, int(ids[i])) for i in range(1024)]
    result = measure_independence(target, base_model, token_pairs=pairs)
    assert result.hidden.token_source == "explicit pairs" and result.hidden.matched_abs_corr == pytest.approx(1.0)
    assert result.combined.p < 1e-6


# ----------------------------------------------------------------------------------------- the null
def test_independent_random_models_are_not_accused(tmp_path):
    """Sanity check of the null (the full calibration is benchmarks/calibrate_independence.py):
    untrained models from independent seeds get unremarkable p-values."""
    cfg = transformers.LlamaConfig.from_pretrained(DEMO / "base")
    ps = []
    for k in range(4):
        models = []
        for side in (0, 1):
            torch.manual_seed(100 + 2 * k + side)
            m = transformers.LlamaForCausalLM(cfg)
            with torch.no_grad():  # untrained norms are all ones; give them some spread like trained ones
                for name, p in m.named_parameters():
                    if name.endswith("norm.weight"):
                        p.mul_(1 + 0.1 * torch.randn_like(p))
            out = tmp_path / f"p{k}{side}"
            m.save_pretrained(out)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(DEMO / "base" / f, out / f)
            models.append(_model(out, f"p{k}{side}"))
        ps.append(measure_independence(*models).combined.p)
    assert min(ps) > 1e-3, ps


def test_records_serialise_and_carry_provenance(base_model):
    result = measure_independence(_model(DEMO / "scratch", "scratch"), base_model)
    d = result.as_dict()
    assert d["combined"]["min_p"] < 1e-100 and d["hidden"]["token_source"].startswith("identical")
    assert any("model.safetensors" in f for f in d["files"])
    unit = d["layers"][0]["units"][0]
    assert unit["tensors"][0] == "model.layers.0.mlp.gate_proj.weight" and unit["matcher"] == "dense"
