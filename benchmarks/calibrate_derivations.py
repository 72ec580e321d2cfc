"""Calibrate the judging of derivations that change shape on models of known lineage that we train ourselves.

The models are ``benchmarks/calibrate_weights.py``'s: ``--bases`` demo-like Llamas (the demo's tokenizer,
architecture, base recipe and batch order; init seeds ``0 .. bases-1``; seeds 0 and 1 reproduce the demo's
``base`` and ``scratch`` byte for byte) and their fine-tunes. A ``--workdir`` that already holds
``base{i}`` / ``ft{i}`` from that script is re-used (the run records every model's SHA-256 and whether base0 /
base1 are the demo's bytes); missing ones are trained with the same recipes.

- **Depth** (issue 13-A.2): the layer correspondence matches a target layer to a reference layer when their
  sampled centred similarity reaches ``min_match`` (``[weights].derived_min_centred``); any reference layer,
  any number of times. Measured: the largest layer × layer cell over every independent pair (base~base,
  ft~other base) — the chance that an unrelated stack gets any layer matched — and the smallest matched cell of
  each depth-up-scaled derivative (base i with its middle block repeated, healed 15 steps).
- **Width pruning** (issue 13-A.1): each base and fine-tune pruned by magnitude (``tests/weight_builders.py``
  ``pruned``: residual channels, MLP neurons, query heads) at two strengths and healed 15 steps
  (``heal``). Derived pairs: pruned base i ~ base i, pruned ft i ~ base i. Independent pairs of the reduced
  shape: pruned base i ~ base j, pruned ft i ~ base j (i ≠ j). For each: the independence test's combined and
  per-layer p-values (rectangular matching) and the aligned centred figures of the tensors the matching is not
  fitted on (o, down), i.e. what ``audits/test_weights.py`` judges when every tensor changed shape.
- **Merges** (issue 13-A.3): see ``modellineage.weights.merges``; linear, SLERP and TIES merges of two
  fine-tunes of one base, and of two independent bases, decomposed against candidate parents.

    .venv/bin/python -m benchmarks.calibrate_derivations --bases 8 --workdir /tmp/calw8 \\
        --out benchmarks/results/calibrate_derivations.json

CPU only, one thread, deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"
PRUNINGS = {"light": dict(hidden=0.75, neurons=0.65, heads_per_group=1),
            "strong": dict(hidden=0.5, neurons=0.5, heads_per_group=1)}
UPSCALED = [0, 1, 2, 1, 2, 3]


def _model(path: Path, name: str):
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    return Model(name, resolve_source(str(path)))


def ensure_models(bases: int, work: Path) -> tuple[list[Path], list[Path]]:
    """base{i} / ft{i} in ``work``, trained with calibrate_weights' recipes where missing."""
    need = [s for s in range(bases) if not (work / f"base{s}" / "model.safetensors").exists()
            or not (work / f"ft{s}" / "model.safetensors").exists()]
    if need:
        from benchmarks.calibrate_weights import _build_demo, demo_token_ids, train

        bd = _build_demo()
        bd.setup_determinism()
        tok, ids = demo_token_ids(bd)
        for s in need:
            train(bd, tok, ids, work / f"base{s}", recipe=dict(bd.RECIPES["base"], init_seed=s))
            train(bd, tok, ids, work / f"ft{s}", recipe=dict(bd.RECIPES["finetune"], frozen=[]), init=work / f"base{s}")
    return [work / f"base{s}" for s in range(bases)], [work / f"ft{s}" for s in range(bases)]


def sha(p: Path) -> str:
    return hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()


def depth(bases: list[Path], tunes: list[Path], work: Path, min_match: float) -> dict:
    from modellineage.weights.alignment import correspond_layers
    from modellineage.weights.signatures import model_signatures
    from tests import weight_builders as wb

    sigs = {p.name: model_signatures(_model(p, p.name)) for p in bases + tunes}
    cells = []
    for a, b in [(f"base{i}", f"base{j}") for i, j in itertools.permutations(range(len(bases)), 2)] + \
            [(f"ft{i}", f"base{j}") for i, j in itertools.permutations(range(len(bases)), 2)]:
        m = correspond_layers(sigs[a], sigs[b], min_match=min_match).matrix
        cells.append({"pair": f"{a}~{b}", "max_cell": round(float(np.nanmax(m)), 4)})
    derived = []
    for i, base in enumerate(bases):
        up = wb.heal(wb.relayered(work / f"upscaled{i}", UPSCALED, noise=0.0, source=base), seed=i)
        for ref in bases:
            corr = correspond_layers(model_signatures(_model(up, "up")), sigs[ref.name], min_match=min_match)
            row = {"pair": f"upscaled{i}~{ref.name}", "path": [list(p) for p in corr.path],
                   "repeated": {str(k): list(v) for k, v in corr.repeated.items()},
                   "max_cell": round(float(np.nanmax(corr.matrix)), 4)}
            if ref == base:
                row["min_matched_cell"] = round(min(float(corr.matrix[t, r]) for t, r in corr.path), 4)
                derived.append(row)
            else:
                cells.append(row)
    return {"min_match": min_match, "independent_pairs": len(cells),
            "independent_max_cell": max(c["max_cell"] for c in cells),
            "independent_with_any_match": sum(c.get("path", []) != [] and c["max_cell"] >= min_match for c in cells),
            "derived_min_matched_cell": min(d["min_matched_cell"] for d in derived),
            "derived_all_placed": all(d["path"] == [[t, r] for t, r in enumerate(UPSCALED)] for d in derived),
            "independent": cells, "derived": derived}


def _measure_pruned(target: Path, reference: Path) -> dict:
    from modellineage.independence.matching import measure_independence
    from modellineage.weights.aligned import compare_aligned
    from modellineage.weights.similarity import summarise

    t, r = _model(target, "t"), _model(reference, "r")
    test = measure_independence(t, r, seed=0)
    aligned = compare_aligned(t, r, test)
    fitted = set(aligned.fitted)
    held = {g.group: round(g.mean_centred, 4) for g in summarise(
        [p for p in aligned.comparison.pairs if p.key not in fitted], lambda p: p.category)}
    return {"log10_p": round(test.combined.log10_p, 3), "p": test.combined.p,
            "layer_p": [layer.pvalue.p for layer in test.layers], "not_fitted": held,
            "hidden_matched_abs_corr": round(test.hidden.matched_abs_corr, 4)}


def _ks_uniform(ps: list[float]) -> float:
    from scipy.stats import kstest

    return float(kstest(ps, "uniform").pvalue)


def pruning(bases: list[Path], tunes: list[Path], work: Path) -> dict:
    from tests import weight_builders as wb

    out = {}
    for name, spec in PRUNINGS.items():
        pruned = {}
        for kind, models in (("base", bases), ("ft", tunes)):
            for i, src in enumerate(models):
                pruned[f"{kind}{i}"] = wb.heal(wb.pruned(work / f"pruned-{name}-{kind}{i}", source=src, **spec), seed=i)
        independent, derived = [], []
        for key, path in pruned.items():
            own = int(key.removeprefix("base").removeprefix("ft"))
            for j, ref in enumerate(bases):
                row = {"pair": f"pruned {key}~base{j}", **_measure_pruned(path, ref)}
                (derived if j == own else independent).append(row)
                print(name, row["pair"], row["log10_p"], row["not_fitted"], flush=True)
        ind_p = [r["p"] for r in independent]
        out[name] = {
            "spec": spec, "independent_pairs": len(independent), "derived_pairs": len(derived),
            "independent_min_log10_p": min(r["log10_p"] for r in independent),
            "independent_below_1e-3": sum(r["p"] < 1e-3 for r in independent),
            "independent_ks_uniform_p": round(_ks_uniform(ind_p), 4),
            "independent_layer_ks_uniform_p": round(_ks_uniform([p for r in independent for p in r["layer_p"]]), 4),
            "independent_not_fitted_max": {c: max(r["not_fitted"].get(c, -1) for r in independent)
                                           for c in ("attention", "mlp")},
            "derived_max_log10_p": max(r["log10_p"] for r in derived),
            "derived_not_fitted_min": {c: min(r["not_fitted"].get(c, 2) for r in derived) for c in ("attention", "mlp")},
            "independent": independent, "derived": derived}
    return out


MERGES = {"linear 0.5": dict(method="linear", weights=[0.5, 0.5]), "linear 0.8/0.2": dict(method="linear", weights=[0.8, 0.2]),
          "linear 0.9/0.1": dict(method="linear", weights=[0.9, 0.1]), "slerp 0.5": dict(method="slerp", t=0.5),
          "slerp 0.2": dict(method="slerp", t=0.2)}


def _shares(target: Path, candidates: list[Path]) -> dict:
    from modellineage.weights.merges import decompose

    d = decompose(_model(target, "t"), [_model(c, c.name) for c in candidates])
    return {c.name: {"share": round(d.share(c.name), 6), "largest_layer_share": round(d.largest_layer_share(c.name)[1], 6)}
            for c in candidates} | {"min_explained": round(min(m.explained for m in d.tensors
                                                                if m.category in ("attention", "mlp")), 4)}


def merges(bases: list[Path], tunes: list[Path], work: Path) -> dict:
    """Independent shares (a target against candidates it does not descend from) and the parents' shares in
    linear / SLERP merges of independent bases and linear / SLERP / TIES merges of two fine-tunes of one base."""
    from tests import weight_builders as wb

    n = len(bases)
    independent, parents = [], []
    for i in range(n):  # every base and fine-tune against every other base at once
        for kind, target in (("base", bases[i]), ("ft", tunes[i])):
            others = [b for j, b in enumerate(bases) if j != i]
            row = _shares(target, others)
            for c in others:
                independent.append({"target": f"{kind}{i}", "candidate": c.name, **row[c.name]})
    for i in range(0, n - 1, 2):  # merges of two independent bases, against both and two unrelated candidates
        a, b = bases[i], bases[i + 1]
        unrelated = [bases[(i + 2) % n], tunes[(i + 3) % n]]
        for name, spec in MERGES.items():
            m = wb.merged(work / f"merge-{i}-{name.replace(' ', '_').replace('/', '-')}", [a, b], **spec)
            row = _shares(m, [a, b] + unrelated)
            parents.append({"target": f"{name}(base{i}, base{i + 1})", "kind": "independent parents",
                            "minor_parent_share": min(row[a.name]["share"], row[b.name]["share"]),
                            "min_explained": row["min_explained"], **{k: v for k, v in row.items() if k != "min_explained"}})
            independent += [{"target": parents[-1]["target"], "candidate": c.name, **row[c.name]} for c in unrelated]
    for i in range(n):  # merges of two fine-tunes of base i
        ft2 = wb.heal(wb.copy_model(bases[i], work / f"ft2-{i}"), steps=40, lr=1e-3, seed=100 + i,
                      text="shakespeare_the_tempest.txt")
        unrelated = [bases[(i + 1) % n]]
        for name, spec in list(MERGES.items()) + [("ties 0.5", dict(method="ties", base=bases[i], density=0.5)),
                                                  ("ties 0.2", dict(method="ties", base=bases[i], density=0.2))]:
            m = wb.merged(work / f"ftmerge-{i}-{name.replace(' ', '_').replace('/', '-')}", [tunes[i], ft2], **spec)
            row = _shares(m, [tunes[i], ft2] + unrelated)
            parents.append({"target": f"{name}(ft{i}, ft2-{i})", "kind": "fine-tunes of one base",
                            "parents_share_sum": round(row[tunes[i].name]["share"] + row[ft2.name]["share"], 6),
                            "min_explained": row["min_explained"], **{k: v for k, v in row.items() if k != "min_explained"}})
            independent += [{"target": parents[-1]["target"], "candidate": c.name, **row[c.name]} for c in unrelated]
        print("merges", i, parents[-1], flush=True)
    return {"independent_pairs": len(independent),
            "independent_max_share": max(r["share"] for r in independent),
            "independent_max_largest_layer_share": max(r["largest_layer_share"] for r in independent),
            "independent_parent_merges_min_minor_share": {
                name: min(p["minor_parent_share"] for p in parents if p["target"].startswith(name + "(base"))
                for name in MERGES},
            "finetune_merges_min_parents_share_sum": {
                name: min(p["parents_share_sum"] for p in parents if p["target"].startswith(name + "(ft"))
                for name in list(MERGES) + ["ties 0.5", "ties 0.2"]},
            "independent": independent, "merges": parents}


def slices(bases: list[Path], work: Path) -> dict:
    """Fine-grained experts cut from base i's dense MLP (4 experts per layer, shuffled neurons, 2% noise) matched
    to slices of base j's MLP: the down-projection figure test_moe_experts judges, independent (i ≠ j) and
    derived (i = j)."""
    from modellineage.weights.slices import match_expert_slices
    from tests import weight_builders as wb

    independent, derived = [], []
    for i, src in enumerate(bases):
        moe = _model(wb.fine_grained(work / f"fine-grained{i}", source=src, seed=i), "moe")
        for j, ref in enumerate(bases):
            found = match_expert_slices(moe, _model(ref, ref.name))
            row = {"pair": f"fine-grained(base{i})~base{j}",
                   "mean_down_centred": round(float(np.mean([x.down_centred for x in found])), 4),
                   "max_down_centred": round(max(x.down_centred for x in found), 4),
                   "mean_gate_matched_cos": round(float(np.mean([x.gate_matched_cos for x in found])), 4)}
            (derived if i == j else independent).append(row)
    return {"independent_pairs": len(independent), "derived_pairs": len(derived),
            "independent_max_mean_down": max(r["mean_down_centred"] for r in independent),
            "independent_max_single_expert_down": max(r["max_down_centred"] for r in independent),
            "independent_max_gate_matched_cos (fitted, not judged)": max(r["mean_gate_matched_cos"] for r in independent),
            "derived_min_mean_down": min(r["mean_down_centred"] for r in derived),
            "independent": independent, "derived": derived}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--parts", nargs="+", default=["depth", "pruning", "merges", "slices"])
    ap.add_argument("--update", action="store_true", help="keep the other parts of an existing --out file")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="calib-derivations-"))
    bases, tunes = ensure_models(args.bases, work)
    derived_dir = Path(tempfile.mkdtemp(prefix="calib-derived-"))
    summary: dict = {"settings": {"bases": args.bases, "workdir": str(work), "threads": 1,
                                  "pruning": PRUNINGS, "upscaled_layers": UPSCALED,
                                  "healing": "tests/weight_builders.py heal: 15 AdamW steps, lr 3e-4, batch 8 x 64 "
                                             "tokens of Areopagitica, seed = model index"},
                     "models_sha256": {p.name: sha(p) for p in bases + tunes},
                     "reproduced_demo_models": {n: sha(bases[s]) == sha(DEMO / n)
                                                for s, n in ((0, "base"), (1, "scratch")) if s < len(bases)}}
    if args.update and args.out and args.out.exists():
        summary = json.loads(args.out.read_text()) | {k: v for k, v in summary.items() if k != "settings"}
        summary["settings"].update({"bases": args.bases, "workdir": str(work)})
    summary.setdefault("commands", {})
    for part in args.parts:
        summary["commands"][part] = ("python -m benchmarks.calibrate_derivations --bases "
                                     f"{args.bases} --parts {part}" + (" --update" if args.update else ""))
    if "slices" in args.parts:
        summary["slices"] = slices(bases, derived_dir)
        print("slices:", {k: v for k, v in summary["slices"].items() if k not in ("independent", "derived")})
    if "depth" in args.parts:
        summary["depth"] = depth(bases, tunes, derived_dir, 0.3)
        print("depth:", {k: v for k, v in summary["depth"].items() if k not in ("independent", "derived")}, flush=True)
    if "pruning" in args.parts:
        summary["pruning"] = pruning(bases, tunes, derived_dir)
        for name, block in summary["pruning"].items():
            print("pruning", name, {k: v for k, v in block.items() if k not in ("independent", "derived")}, flush=True)
    if "merges" in args.parts:
        summary["merges"] = merges(bases, tunes, derived_dir)
    import tokenizers
    import transformers

    summary["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                           "python": platform.python_version()}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
