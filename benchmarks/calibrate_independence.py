#!/usr/bin/env python
"""Calibrate the independence test: p-values of independently initialised pairs must be uniform.

Trains ``--pairs`` pairs of tiny Llama models with the demo's architecture and recipe
(fixtures/build_demo.py: same tokenizer, text A, AdamW, cosine schedule) on CPU. The two models of
a pair differ **only in their initialisation seed**: they see the same batches in the same order —
the hardest honest null (the demo's `scratch` is built the same way). Every pair uses fresh seeds, so
the pairs are independent of each other. For each pair it runs
:func:`modellineage.independence.measure_independence` twice — the audited statistic (up rows
decoupled from their neuron's gate row) and the plain φ_MATCH statistic (``decouple=False``) — and
finally reports, for both, the Kolmogorov–Smirnov p-value of the combined p-values (and of the
per-layer p-values) against Uniform(0, 1). Only the audited statistic has to be uniform; the plain
one shows why the decoupling is there.

``--finetune`` adds a second null family: side ``a`` fine-tuned as the demo's `finetune` is (text B,
embeddings frozen, 150 steps) against ``b`` — the demo's `finetune` vs `scratch` configuration.

Usage::

    python benchmarks/calibrate_independence.py --pairs 30 --steps 500 --workers 2 --finetune \\
        --workdir /tmp/calib --out benchmarks/results/calibrate_independence.json

Runs in ~30 minutes on 2 CPU cores at the demo's 500 steps (``--reuse`` keeps trained models). A script, not a test
(tests/test_independence.py runs a few untrained pairs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "fixtures"))


def _pvalues(a, b) -> dict:
    """Both statistics for one pair: the audited (decoupled) one and the plain φ_MATCH."""
    from modellineage.independence.matching import measure_independence

    t1 = time.perf_counter()
    result = measure_independence(a, b, seed=0)
    test_s = time.perf_counter() - t1
    plain = measure_independence(a, b, seed=0, decouple=False)
    units = [u for layer in result.layers for u in layer.units]
    return {"p": result.combined.p, "layer_p": [layer.pvalue.p for layer in result.layers],
            "rho": [u.rho for u in units], "plain_p": plain.combined.p,
            "plain_layer_p": [layer.pvalue.p for layer in plain.layers],
            "gate_up_coupling": [round(sum(u.gate_up_coupling) / 2, 4) for u in units],
            "hidden_matched_abs_corr": result.hidden.matched_abs_corr, "test_s": round(test_s, 2)}


def train_pair(args: tuple[int, int, int, str, bool, bool]) -> dict:
    """Train the two models of pair ``k`` (or reuse them) and test them; returns the p-values.

    With ``finetune``, side ``a`` is also fine-tuned as the demo's `finetune` is (text B, embeddings
    frozen) and the fine-tune is tested against ``b``: still an independent pair, and the demo's
    configuration of `finetune` against `scratch`.
    """
    k, steps, base_seed, workdir, finetune, reuse = args
    import build_demo as bd  # sets offline env vars; noqa: E402
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(ROOT / "fixtures" / "demo" / "base" / "tokenizer.json"))
    texts = {t: torch.tensor(tok.encode((bd.TEXT_DIR / name).read_text(encoding="utf-8"),
                                        add_special_tokens=False).ids, dtype=torch.long)
             for t, name in (("A", bd.TEXT_A), ("B", bd.TEXT_B))}
    config = LlamaConfig(**bd.ARCH)
    out = Path(workdir) / f"pair{k:03d}"
    data_seed = base_seed + 10_000 + k
    t0 = time.perf_counter()
    final_loss = None
    for side, init_seed in (("a", base_seed + 2 * k), ("b", base_seed + 2 * k + 1)):
        if reuse and (out / side / "model.safetensors").is_file():
            continue  # deterministic in its seeds: a kept model is the model this run would train
        torch.manual_seed(init_seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        recipe = dict(bd.RECIPES["scratch"], init_seed=init_seed, data_seed=data_seed, steps=steps)
        losses = bd.train(model, texts["A"], recipe)
        final_loss = round(sum(losses[-10:]) / 10, 4)
        bd.save_model(model, tok, out / side)
    a, b = (Model(s, resolve_source(str(out / s))) for s in ("a", "b"))
    row = {"pair": k, "init_seeds": [base_seed + 2 * k, base_seed + 2 * k + 1], "data_seed": data_seed,
           "final_loss": final_loss, "train_s": round(time.perf_counter() - t0, 1), **_pvalues(a, b)}
    if finetune:
        model = LlamaForCausalLM.from_pretrained(str(out / "a")).to(torch.float32)
        recipe = dict(bd.RECIPES["finetune"], data_seed=data_seed + 50_000)
        bd.train(model, texts[recipe["text"]], recipe)
        bd.save_model(model, tok, out / "a_ft")
        row["finetuned"] = _pvalues(Model("a_ft", resolve_source(str(out / "a_ft"))), b)
    return row


def _ks(rows: list[dict], prefix: str = "") -> dict:
    """Kolmogorov–Smirnov of the combined and per-layer p-values (keys ``{prefix}p``, ``{prefix}layer_p``)."""
    from scipy import stats as sps

    ps = [r[prefix + "p"] for r in rows]
    layer_ps = [p for r in rows for p in r[prefix + "layer_p"]]
    ks, ks_layers = sps.kstest(ps, "uniform"), sps.kstest(layer_ps, "uniform")
    return {"ks_combined": {"statistic": ks.statistic, "pvalue": ks.pvalue},
            "ks_layers": {"statistic": ks_layers.statistic, "pvalue": ks_layers.pvalue, "n": len(layer_ps)},
            "min_p": min(ps), "share_below_0.05": sum(p < 0.05 for p in ps) / len(ps),
            "share_below_1e-3": sum(p < 1e-3 for p in ps) / len(ps)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=500, help="training steps per model (the demo's 500)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000, help="first init seed; pair k uses seed+2k, seed+2k+1")
    ap.add_argument("--finetune", action="store_true",
                    help="also fine-tune side a as the demo's finetune (text B, embeddings frozen) and test it against b")
    ap.add_argument("--reuse", action="store_true", help="keep models already in --workdir (same seeds, same models)")
    ap.add_argument("--workdir", default="/tmp/calibrate_independence")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    jobs = [(k, args.steps, args.seed, args.workdir, args.finetune, args.reuse) for k in range(args.pairs)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = sorted(pool.map(train_pair, jobs), key=lambda r: r["pair"])
    for r in rows:
        ft = f"  fine-tuned a vs b: p = {r['finetuned']['p']:.4f} (plain {r['finetuned']['plain_p']:.4f})" \
            if "finetuned" in r else ""
        print(f"pair {r['pair']:3d}  p = {r['p']:.4f} (plain {r['plain_p']:.4f})  layers "
              f"{' '.join(f'{p:.3f}' for p in r['layer_p'])}  hidden |corr| {r['hidden_matched_abs_corr']:.3f}{ft}")
    rhos = [x for r in rows for x in r["rho"]]
    couplings = [c for r in rows for c in r["gate_up_coupling"]]
    summary = {"pairs": len(rows), "steps": args.steps, "seed": args.seed, **_ks(rows),
               "plain": _ks(rows, "plain_"), "rho_mean": sum(rhos) / len(rhos),
               "gate_up_coupling_mean": sum(couplings) / len(couplings)}
    if args.finetune:
        ft_rows = [r["finetuned"] for r in rows]
        summary["finetuned"] = {**_ks(ft_rows), "plain": _ks(ft_rows, "plain_")}
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    summary["rows"] = rows

    def line(what: str, d: dict) -> str:
        return (f"{what}: KS vs uniform of combined p: D = {d['ks_combined']['statistic']:.3f}, "
                f"p = {d['ks_combined']['pvalue']:.3g}; of {d['ks_layers']['n']} per-layer p: "
                f"p = {d['ks_layers']['pvalue']:.3g}; smallest combined p {d['min_p']:.3g}")

    print(f"\n{len(rows)} independent pairs ({args.steps} steps each), {summary['wall_s']} s; "
          f"mean within-neuron |cos(gate, up)| {summary['gate_up_coupling_mean']:.3f}")
    print(line("audited statistic", summary))
    print(line("plain statistic (up rows not decoupled)", summary["plain"]))
    if args.finetune:
        print(line("fine-tuned a vs b, audited", summary["finetuned"]))
        print(line("fine-tuned a vs b, plain", summary["finetuned"]["plain"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    ok = summary["ks_combined"]["pvalue"] > 0.01 and (not args.finetune or
                                                     summary["finetuned"]["ks_combined"]["pvalue"] > 0.01)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
