"""Calibrate the weight-similarity bounds on model pairs of known lineage that we train ourselves.

The setting is the demo's (``fixtures/build_demo.py``): the demo's 1024-token byte-level BPE tokenizer
(``fixtures/demo/base/tokenizer.json``, trained on *The Tempest*), its architecture (Llama, hidden 64,
4 layers, untied lm_head) and its recipes. ``--bases`` models are trained from init seeds
``0 .. bases-1`` with the base recipe (500 AdamW steps on *The Tempest*, warm-up and cosine decay) and
the **same batch sequence** (data seed 100), as the demo's ``scratch`` shares ``base``'s: the hardest
independent case (same tokenizer, same data, same order). Seeds 0 and 1 are the demo's ``base`` and
``scratch`` recipes; the run reports whether it reproduced their bytes. Each base is then fine-tuned
with the demo's fine-tune recipe (150 steps on *Areopagitica*), without freezing the embeddings (the
demo freezes them, which would make the derived embedding trivially 1.0).

Pairs: independent = every two bases, every fine-tune against every other base, every two fine-tunes
(the last two kinds re-use the lineage of a base pair: ``unique_lineages`` counts the base pairs);
derived = each fine-tune against its base. For every pair: the per-category mean centred similarity
(``modellineage.weights.similarity.compare_weights``), and for the token matrices (embedding, lm_head) the
element-wise centred cosine, its row-centred, column-centred and top-component-deflated variants (to
test the per-token-offset explanation) and the rotation null (``PairSimilarity.rotation_null_sd``,
``rotation_z``).

Aligned figures (issue 14): for every pair also the independence test (``measure_independence``, seed 0)
and the centred similarity in the frame it aligned (``modellineage.weights.aligned.compare_aligned``), split
into the tensors the alignment was fitted on (embedding, q/k/v, gate, up) and those it was not (o,
down, lm_head). A matching fitted on noise makes the fitted tensors of an independent pair look
similar; this run measures how much, and checks that the not-fitted ones stay in the independent
band. ``hidden`` pairs apply the tests' output-preserving re-parametrisation (``tests/reparametrise.py``
``hide_origin``: neurons and heads permuted, q/k, v/o, up/down rescaled with signs, gains folded to
ones, residual permuted and sign-flipped; logits checked) to every fine-tune and compare it with its
own base (derived) and every other base (independent). Writes a JSON summary (run as a module so the
checkout's packages are imported):

    .venv/bin/python -m benchmarks.calibrate_weights --bases 8 --out benchmarks/results/calibrate_weights.json

CPU only, one thread, deterministic (the demo's settings).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
TOKEN_KEYS = ("embed.weight", "lm_head.weight")
TOKEN_DETAIL = True  # the token-matrix variants (off for the re-parametrised pairs: their columns are permuted)


def _build_demo():
    spec = importlib.util.spec_from_file_location("build_demo", ROOT / "fixtures" / "build_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train(bd, tok, ids, path: Path, *, recipe: dict, init: Path | None = None) -> tuple[Path, float]:
    """One model with a demo recipe (``bd``: fixtures/build_demo.py); returns its folder and final loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if init is None:
        torch.manual_seed(recipe["init_seed"])
        model = LlamaForCausalLM(LlamaConfig(**bd.ARCH))
    else:
        model = LlamaForCausalLM.from_pretrained(str(init))
    model.to(torch.float32)
    losses = bd.train(model, ids[recipe["text"]], recipe)
    bd.save_model(model, tok, path)  # as the demo saves (safetensors + the demo tokenizer)
    return path, sum(losses[-10:]) / 10


def _model(path: Path, name: str):
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    return Model(name, resolve_source(str(path)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _deflate(a: np.ndarray) -> np.ndarray:
    a = a - a.mean()
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    return a - s[0] * np.outer(u[:, 0], vt[0])


def _means(pairs) -> dict:
    from modellineage.weights.similarity import summarise

    return {g.group: round(g.mean_centred, 4) for g in summarise(pairs, lambda p: p.category)
            if math.isfinite(g.mean_centred)}


def measure(a: Path, b: Path) -> dict:
    """Category means of one pair (name-aligned and aligned), the independence test's p-value, and the
    token-matrix variants (tiny models: read whole here)."""
    from modellineage.independence.matching import measure_independence
    from modellineage.weights.aligned import compare_aligned
    from modellineage.weights.similarity import compare_weights

    ta, tb = _model(a, "a"), _model(b, "b")
    comp = compare_weights(ta, tb)
    test = measure_independence(ta, tb, seed=0)
    aligned = compare_aligned(ta, tb, test)
    fitted = set(aligned.fitted)
    out = {"categories": _means(comp.pairs), "token_matrices": {},
           "independence_log10_p": round(test.combined.log10_p, 3),
           "aligned": {"not_fitted": _means(p for p in aligned.comparison.pairs if p.key not in fitted),
                       "fitted": _means(p for p in aligned.comparison.pairs if p.key in fitted),
                       "all": _means(aligned.comparison.pairs)},
           "alignment": {"hidden_matched_abs_corr": round(aligned.quality.hidden_matched_abs_corr, 4),
                         "neuron_gate_cos": round(aligned.quality.neuron_gate_cos, 4)}}
    if not TOKEN_DETAIL:
        return out
    for p in comp.pairs:
        if p.key not in TOKEN_KEYS:
            continue
        x = ta.store.read_row_range(p.target_tensor, 0, p.rows_total)
        y = tb.store.read_row_range(p.reference_tensor, 0, p.rows_total)
        out["token_matrices"][p.key] = {
            "centred": round(p.similarity.centred_cosine, 4),
            "row_centred": round(_pearson(x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)), 4),
            "column_centred": round(_pearson(x - x.mean(axis=0), y - y.mean(axis=0)), 4),
            "top_component_removed": round(_pearson(_deflate(x), _deflate(y)), 4),
            "rotation_null_sd": round(p.rotation_null_sd, 4),
            "rotation_z": round(p.rotation_z, 3),
        }
    return out


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"n": int(v.size), "min": round(float(v.min()), 4), "max": round(float(v.max()), 4),
            "mean": round(float(v.mean()), 4), "sd": round(float(v.std(ddof=1)), 4) if v.size > 1 else None,
            "max_abs": round(float(np.abs(v).max()), 4)}


def _aligned_summary(independent: list[dict], derived: list[dict]) -> dict:
    """Aligned category means: largest over independent pairs, smallest over derived; p-values of both."""
    out = {}
    for part in ("not_fitted", "fitted", "all"):
        cats = sorted({c for r in independent + derived for c in r["aligned"][part]})
        out[part] = {"independent_max": {c: max(r["aligned"][part][c] for r in independent if c in r["aligned"][part])
                                         for c in cats},
                     "derived_min": {c: min(r["aligned"][part][c] for r in derived if c in r["aligned"][part])
                                     for c in cats if any(c in r["aligned"][part] for r in derived)}}
    ps = [r["independence_log10_p"] for r in independent]
    out["independent_log10_p"] = {"min": min(ps), "below_alpha_1e-3": sum(p < -3 for p in ps), "n": len(ps)}
    out["derived_log10_p_max"] = max(r["independence_log10_p"] for r in derived)
    return out


def hide(source: Path, out: Path, seed: int) -> Path:
    """``source`` re-parametrised by the tests' ``hide_origin`` (same function: logits checked), saved as the demo saves."""
    import shutil

    import torch
    from transformers import LlamaForCausalLM

    from tests.reparametrise import hide_origin

    model = LlamaForCausalLM.from_pretrained(str(source)).eval()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hide_origin(sd, np.random.default_rng(seed))
    hidden = LlamaForCausalLM.from_pretrained(str(source)).eval()
    hidden.load_state_dict(sd)
    probe = torch.arange(5, 69).reshape(1, 64)
    with torch.no_grad():
        torch.testing.assert_close(hidden(probe).logits, model(probe).logits, atol=1e-4, rtol=1e-4)
    hidden.save_pretrained(out)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / f, out / f)
    return out


def summarise(independent: list[dict], derived: list[dict]) -> dict:
    cats = sorted({c for r in independent + derived for c in r["categories"]})
    base_pairs = [r for r in independent if r["kind"] == "base~base"]
    summary = {
        "independent_pairs": len(independent), "unique_lineages": len(base_pairs), "derived_pairs": len(derived),
        "independent_max": {c: max(r["categories"][c] for r in independent) for c in cats},
        "independent_max_base_pairs": {c: max(r["categories"][c] for r in base_pairs) for c in cats},
        "derived_min": {c: min(r["categories"][c] for r in derived) for c in cats},
        "aligned": _aligned_summary(independent, derived),
        "token_matrices": {},
    }
    for key in TOKEN_KEYS:
        block = {}
        for fig in ("centred", "row_centred", "column_centred", "top_component_removed", "rotation_null_sd",
                    "rotation_z"):
            block[fig] = {"independent": _stats([r["token_matrices"][key][fig] for r in independent]),
                          "independent_base_pairs": _stats([r["token_matrices"][key][fig] for r in base_pairs]),
                          "derived": _stats([r["token_matrices"][key][fig] for r in derived])}
        cent = [r["token_matrices"][key]["centred"] for r in independent]
        block["independent_at_or_above"] = {str(b): sum(c >= b for c in cent) for b in (0.1, 0.2, 0.3)}
        summary["token_matrices"][key] = block
    return summary


def demo_token_ids(bd) -> tuple:
    """The demo tokenizer and the token ids of the demo's two texts under it (``bd``: fixtures/build_demo.py)."""
    import torch
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(DEMO / "base" / "tokenizer.json"))
    texts = {"A": (bd.TEXT_DIR / bd.TEXT_A).read_text(encoding="utf-8"),
             "B": (bd.TEXT_DIR / bd.TEXT_B).read_text(encoding="utf-8")}
    return tok, {k: torch.tensor(tok.encode(v, add_special_tokens=False).ids, dtype=torch.long) for k, v in texts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.perf_counter()
    bd = _build_demo()
    bd.setup_determinism()
    tok, ids = demo_token_ids(bd)
    import torch
    work = args.workdir or Path(tempfile.mkdtemp(prefix="calib-weights-"))
    bases, tunes, losses = [], [], {}
    for s in range(args.bases):
        path, losses[f"base{s}"] = train(bd, tok, ids, work / f"base{s}", recipe=dict(bd.RECIPES["base"], init_seed=s))
        bases.append(path)
        print(f"base{s}: loss {losses[f'base{s}']:.3f} ({time.perf_counter() - t0:.0f}s)", flush=True)
    ft_recipe = dict(bd.RECIPES["finetune"], frozen=[])
    for s, b in enumerate(bases):
        path, losses[f"ft{s}"] = train(bd, tok, ids, work / f"ft{s}", recipe=ft_recipe, init=b)
        tunes.append(path)
    print(f"trained {2 * args.bases} models ({time.perf_counter() - t0:.0f}s)", flush=True)

    def sha(p: Path) -> str:
        return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()

    reproduced = {name: sha(bases[s]) == sha(DEMO / name) for s, name in ((0, "base"), (1, "scratch"))
                  if s < args.bases}
    independent, derived = [], []
    for i, j in itertools.combinations(range(args.bases), 2):
        independent.append({"pair": f"base{i}~base{j}", "kind": "base~base", **measure(bases[i], bases[j])})
    for i, j in itertools.permutations(range(args.bases), 2):
        independent.append({"pair": f"ft{i}~base{j}", "kind": "ft~other base", **measure(tunes[i], bases[j])})
    for i, j in itertools.combinations(range(args.bases), 2):
        independent.append({"pair": f"ft{i}~ft{j}", "kind": "ft~ft", **measure(tunes[i], tunes[j])})
    for i in range(args.bases):
        derived.append({"pair": f"ft{i}~base{i}", "kind": "ft~own base", **measure(tunes[i], bases[i])})
    global TOKEN_DETAIL
    TOKEN_DETAIL = False
    hidden = [hide(t, work / f"hidden{s}", 1000 + s) for s, t in enumerate(tunes)]
    hidden_independent = [{"pair": f"hidden-ft{i}~base{j}", "kind": "hidden ft~other base",
                           **measure(hidden[i], bases[j])} for i, j in itertools.permutations(range(args.bases), 2)]
    hidden_derived = [{"pair": f"hidden-ft{i}~base{i}", "kind": "hidden ft~own base", **measure(hidden[i], bases[i])}
                      for i in range(args.bases)]
    for row in independent + derived + hidden_independent + hidden_derived:
        print(row["pair"], row["categories"], "aligned not fitted", row["aligned"]["not_fitted"],
              "log10 p", row["independence_log10_p"])
    import tokenizers
    import transformers

    summary = {
        "settings": {"bases": args.bases, "tokenizer": "fixtures/demo/base/tokenizer.json (byte-level BPE, 1024)",
                     "architecture": bd.ARCH, "base_recipe": bd.RECIPES["base"] | {"init_seed": "0..bases-1"},
                     "finetune_recipe": ft_recipe, "batch": bd.BATCH, "seq_len": bd.SEQ_LEN,
                     "threads": 1, "workdir": str(work)},
        "reproduced_demo_models": reproduced,
        "final_train_loss": {k: round(v, 4) for k, v in losses.items()},
        **summarise(independent, derived),
        "hidden": {"independent_pairs": len(hidden_independent), "derived_pairs": len(hidden_derived),
                   "name_aligned_independent_max": {c: max(r["categories"].get(c, -1) for r in hidden_independent)
                                                    for c in hidden_derived[0]["categories"]},
                   "name_aligned_derived_max": {c: max(r["categories"][c] for r in hidden_derived)
                                                for c in hidden_derived[0]["categories"]},
                   "aligned": _aligned_summary(hidden_independent, hidden_derived)},
        "pairs": {"independent": independent, "derived": derived, "hidden_independent": hidden_independent,
                  "hidden_derived": hidden_derived},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print("reproduced demo models:", reproduced)
    print("independent, largest category mean:", summary["independent_max"])
    print("derived, smallest category mean:   ", summary["derived_min"])
    print("aligned:", json.dumps(summary["aligned"]))
    print("hidden:", json.dumps(summary["hidden"]))
    for key in TOKEN_KEYS:
        tm = summary["token_matrices"][key]
        print(key, "independent centred", tm["centred"]["independent"], "z", tm["rotation_z"]["independent"],
              "at/above", tm["independent_at_or_above"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
