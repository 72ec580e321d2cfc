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

Usage::

    python benchmarks/calibrate_independence.py --pairs 30 --steps 500 --workers 2 \\
        --workdir /tmp/calib --out benchmarks/results/calibrate_independence.json

Runs in ~20 minutes on 2 CPU cores at the demo's 500 steps. A script, not a test
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


def train_pair(args: tuple[int, int, int, str]) -> dict:
    """Train the two models of pair ``k`` and test them; returns the p-values."""
    k, steps, base_seed, workdir = args
    import build_demo as bd  # sets offline env vars; noqa: E402
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from modellineage.independence import measure_independence
    from modellineage.model import Model
    from modellineage.sources import resolve_source

    torch.set_num_threads(1)
    tok = Tokenizer.from_file(str(ROOT / "fixtures" / "demo" / "base" / "tokenizer.json"))
    ids = torch.tensor(tok.encode((bd.TEXT_DIR / bd.TEXT_A).read_text(encoding="utf-8"),
                                  add_special_tokens=False).ids, dtype=torch.long)
    config = LlamaConfig(**bd.ARCH)
    out = Path(workdir) / f"pair{k:03d}"
    data_seed = base_seed + 10_000 + k
    t0 = time.perf_counter()
    for side, init_seed in (("a", base_seed + 2 * k), ("b", base_seed + 2 * k + 1)):
        torch.manual_seed(init_seed)
        model = LlamaForCausalLM(config).to(torch.float32)
        recipe = dict(bd.RECIPES["scratch"], init_seed=init_seed, data_seed=data_seed, steps=steps)
        losses = bd.train(model, ids, recipe)
        bd.save_model(model, tok, out / side)
    trained = time.perf_counter() - t0
    a, b = (Model(s, resolve_source(str(out / s))) for s in ("a", "b"))
    t1 = time.perf_counter()
    result = measure_independence(a, b, seed=0)
    test_s = time.perf_counter() - t1
    plain = measure_independence(a, b, seed=0, decouple=False)
    units = [u for layer in result.layers for u in layer.units]
    return {"pair": k, "init_seeds": [base_seed + 2 * k, base_seed + 2 * k + 1], "data_seed": data_seed,
            "final_loss": round(sum(losses[-10:]) / 10, 4), "p": result.combined.p,
            "layer_p": [layer.pvalue.p for layer in result.layers], "rho": [u.rho for u in units],
            "plain_p": plain.combined.p, "plain_layer_p": [layer.pvalue.p for layer in plain.layers],
            "gate_up_coupling": [round(sum(u.gate_up_coupling) / 2, 4) for u in units],
            "hidden_matched_abs_corr": result.hidden.matched_abs_corr, "train_s": round(trained, 1),
            "test_s": round(test_s, 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--steps", type=int, default=500, help="training steps per model (the demo's 500)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000, help="first init seed; pair k uses seed+2k, seed+2k+1")
    ap.add_argument("--workdir", default="/tmp/calibrate_independence")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    from scipy import stats as sps

    t0 = time.perf_counter()
    jobs = [(k, args.steps, args.seed, args.workdir) for k in range(args.pairs)]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = sorted(pool.map(train_pair, jobs), key=lambda r: r["pair"])
    ps = [r["p"] for r in rows]
    layer_ps = [p for r in rows for p in r["layer_p"]]
    rhos = [x for r in rows for x in r["rho"]]
    ks = sps.kstest(ps, "uniform")
    ks_layers = sps.kstest(layer_ps, "uniform")
    plain = sps.kstest([r["plain_p"] for r in rows], "uniform")
    plain_layers = sps.kstest([p for r in rows for p in r["plain_layer_p"]], "uniform")
    couplings = [c for r in rows for c in r["gate_up_coupling"]]
    for r in rows:
        print(f"pair {r['pair']:3d}  p = {r['p']:.4f}  layers {' '.join(f'{p:.3f}' for p in r['layer_p'])}  "
              f"hidden |corr| {r['hidden_matched_abs_corr']:.3f}  loss {r['final_loss']:.3f}  "
              f"train {r['train_s']}s test {r['test_s']}s")
    summary = {
        "pairs": len(rows), "steps": args.steps, "seed": args.seed,
        "ks_combined": {"statistic": ks.statistic, "pvalue": ks.pvalue},
        "ks_layers": {"statistic": ks_layers.statistic, "pvalue": ks_layers.pvalue, "n": len(layer_ps)},
        "min_p": min(ps), "share_below_0.05": sum(p < 0.05 for p in ps) / len(ps),
        "share_below_1e-3": sum(p < 1e-3 for p in ps) / len(ps),
        "rho_mean": sum(rhos) / len(rhos), "wall_s": round(time.perf_counter() - t0, 1),
        "plain": {"ks_combined": {"statistic": plain.statistic, "pvalue": plain.pvalue},
                  "ks_layers": {"statistic": plain_layers.statistic, "pvalue": plain_layers.pvalue},
                  "min_p": min(r["plain_p"] for r in rows),
                  "share_below_0.05": sum(r["plain_p"] < 0.05 for r in rows) / len(rows)},
        "gate_up_coupling_mean": sum(couplings) / len(couplings), "rows": rows,
    }
    print(f"\n{len(rows)} independent pairs ({args.steps} steps each): KS vs uniform of combined p: "
          f"D = {ks.statistic:.3f}, p = {ks.pvalue:.3f}; of {len(layer_ps)} per-layer p: D = {ks_layers.statistic:.3f}, "
          f"p = {ks_layers.pvalue:.3f}; smallest combined p {min(ps):.4f}; mean rho {summary['rho_mean']:+.4f}; "
          f"{summary['wall_s']} s")
    print(f"plain statistic (up rows not decoupled): KS of combined p: D = {plain.statistic:.3f}, "
          f"p = {plain.pvalue:.3g}; of per-layer p: p = {plain_layers.pvalue:.3g}; smallest combined p "
          f"{summary['plain']['min_p']:.3g}; mean within-neuron |cos(gate, up)| {summary['gate_up_coupling_mean']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0 if ks.pvalue > 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
