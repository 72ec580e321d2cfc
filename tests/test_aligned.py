"""modellineage.weights.aligned and the weight audit's aligned verdict, on a demo fine-tune whose origin is hidden.

``hide_origin`` (tests/reparametrise.py) re-parametrises the demo `finetune` without changing its
function (greedy generation and logits checked here): neurons and heads permuted, q/k, v/o and up/down
rescaled with signs, residual signs flipped, gains rescaled and then folded into their readers (norms
become ones), residual stream permuted. The same transformation applied to the independent `scratch`
is the control: aligning an independent pair through a matching fitted on noise must not make it look
derived.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import html as html_lib  # noqa: E402

from audits.criteria import load_thresholds  # noqa: E402
from modellineage.independence.matching import measure_independence  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402
from modellineage.reporting.verdicts import combine  # noqa: E402
from modellineage.weights.aligned import compare_aligned  # noqa: E402
from modellineage.weights.similarity import compare_weights, summarise  # noqa: E402

from .reparametrise import hide_origin  # noqa: E402
from .test_audit_runs import outcomes, record, run_audit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
THRESHOLDS = load_thresholds(ROOT / "thresholds.toml")
ALPHA = THRESHOLDS["independence", "alpha"].value
DERIVED_MIN = THRESHOLDS["weights", "derived_min_centred"].value
INDEPENDENT_MAX = THRESHOLDS["weights", "independent_max_centred"].value
PROMPT = torch.tensor([[0, 5, 17, 300, 42, 999, 7, 64]])


def _load(folder: Path):
    return transformers.LlamaForCausalLM.from_pretrained(folder).eval()


def _hidden_copy(source: Path, out: Path, seed: int) -> Path:
    """``source`` re-parametrised by hide_origin, saved as safetensors with the demo tokenizer; function checked."""
    model = _load(source)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hide_origin(sd, np.random.default_rng(seed))
    hidden = _load(source)
    hidden.load_state_dict(sd)
    hidden.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / f, out / f)
    with torch.no_grad():
        before = model.generate(PROMPT, max_new_tokens=24, do_sample=False, pad_token_id=2)
        after = _load(out).generate(PROMPT, max_new_tokens=24, do_sample=False, pad_token_id=2)
        torch.testing.assert_close(_load(out)(PROMPT).logits, model(PROMPT).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(before, after), "greedy generation changed"
    return out


@pytest.fixture(scope="module")
def hidden(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hidden")
    return {"finetune": _hidden_copy(DEMO / "finetune", tmp / "finetune-hidden", 7),
            "scratch": _hidden_copy(DEMO / "scratch", tmp / "scratch-hidden", 7)}


def _model(path: Path, name: str) -> Model:
    return Model(name, resolve_source(str(path)))


def _categories(pairs) -> dict[str, float]:
    return {g.group: g.mean_centred for g in summarise(pairs, lambda p: p.category)}


def test_hidden_copy_defeats_names_but_not_the_alignment(hidden):
    target, base = _model(hidden["finetune"], "hidden"), _model(DEMO / "base", "base")
    st = target.store
    norms = [r for r in target.name_map.refs.values() if r.role.endswith("norm")]
    assert norms and all(np.all(st.read_row_range(r.source, 0, 1) == 1.0) for r in norms)  # gains folded

    test = measure_independence(target, base)
    assert test.combined.p < ALPHA
    named = compare_weights(target, base)
    assert max(abs(g.mean_centred) for g in named.by_category if g.mean_centred == g.mean_centred) < 0.2
    aligned = compare_aligned(target, base, test)
    held_out = _categories(p for p in aligned.comparison.pairs if p.key not in set(aligned.fitted))
    assert set(held_out) == {"attention", "mlp"}
    assert min(held_out.values()) > 0.9 > DERIVED_MIN  # o and down as close as the plain fine-tune's
    every = _categories(aligned.comparison.pairs)
    assert min(every.values()) > 0.9
    assert set(aligned.fitted) >= {"embed.weight", "layers.0.mlp_gate.weight", "layers.0.attn_q.weight"}
    assert "layers.0.attn_o.weight" not in aligned.fitted and "layers.3.mlp_down.weight" not in aligned.fitted
    assert "lm_head.weight" in aligned.fitted  # its columns follow the matching fitted on the embedding
    assert "layers.0.mlp_norm.weight" in aligned.folded


def test_aligning_an_independent_pair_does_not_make_it_derived(hidden):
    """The matching fits its own tensors (embedding and through it lm_head, gate, q/k/v, up rows) on noise too; the
    tensors it did not fit (o, down) stay in the independent band, and the alignment is not significant."""
    target, base = _model(hidden["scratch"], "scratch-hidden"), _model(DEMO / "base", "base")
    test = measure_independence(target, base)
    assert test.combined.p >= ALPHA
    aligned = compare_aligned(target, base, test)
    held_out = _categories(p for p in aligned.comparison.pairs if p.key not in set(aligned.fitted))
    assert max(abs(v) for v in held_out.values()) < INDEPENDENT_MAX, held_out
    fitted = _categories(p for p in aligned.comparison.pairs if p.key in set(aligned.fitted))
    # the selection is real (why fitted tensors are never judged), yet below the derivation bound here
    assert fitted["embedding"] > 0.1 and max(fitted.values()) < DERIVED_MIN, fitted


@pytest.mark.parametrize("which", ["finetune", "scratch"])
def test_aligned_figures_do_not_see_the_re_parametrisation(hidden, which):
    """The alignment undoes the hiding: o and down compare alike before and after it, derived or independent."""
    base = _model(DEMO / "base", "base")

    def held_out(model):
        aligned = compare_aligned(model, base, measure_independence(model, base))
        return {p.key: p.similarity.centred_cosine for p in aligned.comparison.pairs if p.key not in aligned.fitted}

    plain, hidden_copy = held_out(_model(DEMO / which, which)), held_out(_model(hidden[which], "hidden"))
    assert plain.keys() == hidden_copy.keys() and len(plain) == 8
    for key, value in plain.items():
        assert hidden_copy[key] == pytest.approx(value, abs=1e-3), key


def test_plain_finetune_aligned_equals_name_aligned():
    """Nothing to undo: the alignment is the identity and the aligned figures are the name-aligned ones."""
    target, base = _model(DEMO / "finetune", "finetune"), _model(DEMO / "base", "base")
    test = measure_independence(target, base)
    assert test.hidden.identity_share == 1.0 and all(u.neuron_order_kept == 1.0 for r in test.layers for u in r.units)
    aligned = {p.key: p.similarity.centred_cosine for p in compare_aligned(target, base, test).comparison.pairs}
    named = {p.key: p.similarity.centred_cosine for p in compare_weights(target, base).pairs}
    for key in ("lm_head.weight", "layers.1.attn_o.weight", "layers.2.mlp_down.weight", "layers.3.mlp_gate.weight"):
        assert aligned[key] == pytest.approx(named[key], abs=0.02)  # fitted row scales move figures a little


def _audit(tmp_path, target: Path, expect: str):
    """The weight and independence audits of ``target`` against the demo base, claiming ``expect``."""
    proc, evidence = run_audit(tmp_path, "--target", str(target), "--reference", f"base={DEMO / 'base'}",
                               "-m", "weights or independence", "--expect", expect, name=expect)
    return proc, evidence, record(evidence, "test_weight_similarity[base]")


def test_audit_judges_the_hidden_copy_on_aligned_figures(hidden, tmp_path):
    proc, _, sim = _audit(tmp_path, hidden["finetune"], "derived")
    assert proc.returncode == 0, proc.stdout
    assert sim["measurements"]["aligned_similarity"]["judged_on"] == "aligned"
    assert "alignment significant" in sim["message"] and "attention (aligned) 0.9" in sim["message"]
    named = {g["group"]: g["mean_centred"] for g in sim["measurements"]["weight_similarity"]["by_category"]}
    assert max(abs(v) for v in named.values() if isinstance(v, float)) < 0.2  # ... reported beside the verdict
    proc, evidence, sim = _audit(tmp_path, hidden["finetune"], "independent")
    assert proc.returncode == 1 and sim["outcome"] == "failed"
    assert outcomes(evidence)["test_independence_pvalue[base]"] == "failed"
    # similarity (aligned) and independence agree on derived; the signature match and the merge decomposition,
    # both by name, find nothing and are outranked, said in one sentence
    (combined,) = combine("base", evidence["audits"])
    assert combined.verdict == "derived" and combined.deciding.family == "independence"
    assert sorted(f.audit for f in combined.contradicted_by) == ["test_merge_decomposition",
                                                                 "test_no_tensor_signature_matches"]
    assert combined.sentence in html_lib.unescape((tmp_path / "independent.html").read_text())


def test_audit_keeps_the_hidden_independent_model_independent(hidden, tmp_path):
    proc, _, sim = _audit(tmp_path, hidden["scratch"], "independent")
    assert proc.returncode == 0, proc.stdout
    assert sim["measurements"]["aligned_similarity"]["judged_on"] == "name"
    assert "not significant" in sim["message"]
    proc, _, sim = _audit(tmp_path, hidden["scratch"], "derived")
    assert proc.returncode == 1 and sim["outcome"] == "failed"
