#!/usr/bin/env python
"""Time and memory of the independence test on Llama-3-8B-sized blocks (hidden 4096, MLP 14 336, GQA 32/8).

Writes synthetic one-block F16 checkpoints to ``--workdir``: a reference, a *derived* copy (weights
plus 10% noise, MLP neurons, query heads within KV groups and residual dimensions permuted, channels
rescaled through the norm gains) and an *independent* model, then times
:func:`modellineage.independence.measure_independence` for both pairs and reports peak RSS.

With ``--aligned`` it also times :func:`modellineage.weights.aligned.compare_aligned` (the weight audit's
similarity in the frame the test aligned) on both pairs and prints its not-fitted category means.

Usage::

    python benchmarks/bench_independence.py --workdir /tmp/bench_indep [--layers 1] [--aligned]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H, N, HEADS, KV, HD, VOCAB = 4096, 14336, 32, 8, 128, 8192


def _config(layers: int) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": H, "intermediate_size": N,
            "num_hidden_layers": layers, "num_attention_heads": HEADS, "num_key_value_heads": KV, "head_dim": HD,
            "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "torch_dtype": "float16"}


def _random_model(rng, layers: int) -> dict[str, np.ndarray]:
    t = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, H), dtype=np.float32) * 0.02,
         "model.norm.weight": 1 + 0.1 * rng.standard_normal(H, dtype=np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(H, dtype=np.float32)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(H, dtype=np.float32)
        for name, shape in (("self_attn.q_proj", (HEADS * HD, H)), ("self_attn.k_proj", (KV * HD, H)),
                            ("self_attn.v_proj", (KV * HD, H)), ("self_attn.o_proj", (H, HEADS * HD)),
                            ("mlp.gate_proj", (N, H)), ("mlp.up_proj", (N, H)), ("mlp.down_proj", (H, N))):
            t[p + name + ".weight"] = rng.standard_normal(shape, dtype=np.float32) * 0.02
    return t


def _derive(ref: dict[str, np.ndarray], rng, layers: int) -> dict[str, np.ndarray]:
    t = {k: v + 0.1 * np.std(v) * rng.standard_normal(v.shape, dtype=np.float32) for k, v in ref.items()}
    res = rng.permutation(H)
    t["model.embed_tokens.weight"] = t["model.embed_tokens.weight"][:, res]
    t["model.norm.weight"] = t["model.norm.weight"][res]
    group = HEADS // KV
    for i in range(layers):
        p = f"model.layers.{i}."
        s = np.exp(rng.uniform(-1, 1, H)).astype(np.float32)
        for norm, readers in (("input_layernorm", ("q", "k", "v")), ("post_attention_layernorm", ("gate", "up"))):
            t[p + norm + ".weight"] = (t[p + norm + ".weight"] * s)[res]
            for r in readers:
                key = p + ("self_attn." if r in "qkv" else "mlp.") + f"{r}_proj.weight"
                t[key] = (t[key] / s)[:, res]
        for key in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            t[p + key] = t[p + key][res]
        perm = rng.permutation(N)
        t[p + "mlp.gate_proj.weight"] = t[p + "mlp.gate_proj.weight"][perm]
        t[p + "mlp.up_proj.weight"] = t[p + "mlp.up_proj.weight"][perm]
        t[p + "mlp.down_proj.weight"] = t[p + "mlp.down_proj.weight"][:, perm]
        heads = [g * group + int(x) for g in range(KV) for x in rng.permutation(group)]
        rows = np.concatenate([np.arange(h * HD, (h + 1) * HD) for h in heads])
        t[p + "self_attn.q_proj.weight"] = t[p + "self_attn.q_proj.weight"][rows]
        t[p + "self_attn.o_proj.weight"] = t[p + "self_attn.o_proj.weight"][:, rows]
    return t


def _save(tensors: dict[str, np.ndarray], out: Path, layers: int) -> None:
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    # ascontiguousarray: `x[:, perm]` may come back in Fortran order, and save_file writes the buffer as it lies
    save_file({k: np.ascontiguousarray(v, dtype=np.float16) for k, v in tensors.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(_config(layers)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/bench_independence")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--aligned", action="store_true", help="also time the aligned weight comparison")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    if not (work / "independent" / "model.safetensors").exists():
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        ref = _random_model(rng, args.layers)
        _save(ref, work / "reference", args.layers)
        _save(_derive(ref, rng, args.layers), work / "derived", args.layers)
        del ref
        _save(_random_model(np.random.default_rng(1), args.layers), work / "independent", args.layers)
        print(f"wrote synthetic models in {time.perf_counter() - t0:.0f}s")

    from modellineage.independence.matching import measure_independence
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    pairs = [(i, i) for i in range(VOCAB)]
    ref = Model("reference", resolve_source(str(work / "reference")))
    for name in ("derived", "independent"):
        target = Model(name, resolve_source(str(work / name)))
        t0 = time.perf_counter()
        result = measure_independence(target, ref, token_pairs=pairs)
        wall = time.perf_counter() - t0
        unit = result.layers[0].units[0]
        print(f"{name:12s} {args.layers} block(s) of {H}x{N}: {wall:.1f}s ({wall / args.layers:.1f}s per block), "
              f"p = 10^{result.combined.log10_p:.1f}, rho {unit.rho:+.3f}, matcher {unit.matcher}, "
              f"sketch {result.features}, heads stored→matched "
              f"{result.layers[0].attention.as_stored_similarity:.2f}→{result.layers[0].attention.matched_similarity:.2f}")
        if args.aligned:
            from modellineage.weights.aligned import compare_aligned
            from modellineage.weights.similarity import summarise

            t0 = time.perf_counter()
            aligned = compare_aligned(target, ref, result)
            fitted = set(aligned.fitted)
            means = {g.group: round(g.mean_centred, 3) for g in summarise(
                [p for p in aligned.comparison.pairs if p.key not in fitted], lambda p: p.category)}
            print(f"{'':12s} aligned comparison: {time.perf_counter() - t0:.1f}s, "
                  f"{aligned.comparison.bytes_read / 2**20:.0f} MiB read, not-fitted centred {means}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
