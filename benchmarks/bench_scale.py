"""Verdicts at a 1 % read budget vs the full read, per-byte and per-tensor costs, and an extrapolation to a
Solar-Open-100B-sized pair.

1. Writes three synthetic Qwen2-MoE-style BF16 models of ``--size-gb`` per side (benchmarks/bench_weights.py's
   generator): ``reference``, ``target`` (reference + 10 % noise: derived) and ``independent`` (the same
   distributions from other seeds).
2. With the page cache hot (every file read once first), for the derived and the independent pair:
   the weight measurement (``modellineage.weights.measure``) and the independence test, every byte, then
   at ``--budget`` (default 1 %) through ``modellineage.weights.budget.plan_budget``. Records wall and CPU
   seconds, bytes read (the stores' own counts) and the verdicts the audits would give: each category's
   mean centred similarity against ``thresholds.toml`` ([weights] derived_min_centred / independent_max_*)
   and the independence p-value against α = [independence].alpha. Token pairs are the identity (the
   synthetic models carry no tokenizer).
3. Costs, CPU seconds per core: the streamed comparison per byte (non-token tensors), per tensor (1-D
   tensors, whose bytes are negligible), the rotation null per token-matrix element, signatures per
   tensor, the independence test per MLP unit; the budgeted comparison per byte read.
4. Extrapolation: a header-only Solar-Open-100B-shaped pair (sparse files: 48 layers, 128 routed experts of
   width 1280 + one shared expert, hidden 4096, 64 heads / 8 KV heads of 128, vocabulary 196,608, BF16;
   ~200 GB per side; nothing is read from them) gives the tensor count, the bytes, and the budget's plan
   (``plan_budget`` on its headers); the costs above give the time, full and at the budget, on one core.

    .venv/bin/python benchmarks/bench_scale.py --size-gb 2 --workdir /tmp/bench_scale \\
        --out benchmarks/results/bench_scale.json

``--only independence`` measures instead the independence test's cost per unit on one layer of Solar's
real shape (hidden 4096, routed experts of 1280 neurons; ``--experts`` of them + the shared expert),
derived and independent, on one thread and on ``default_workers()`` threads (records must be identical),
and gives the Solar-sized time for every unit (6,192) and for the default expert cap::

    .venv/bin/python benchmarks/bench_scale.py --only independence --workdir /tmp/bench_scale \\
        --out benchmarks/results/bench_scale_independence.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_weights as bw  # noqa: E402

from modellineage.independence.matching import measure_independence  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402
from modellineage.weights.budget import parse_budget, plan_budget  # noqa: E402
from modellineage.weights.pipeline import measure  # noqa: E402
from modellineage.weights.similarity import compare_weights  # noqa: E402

THRESHOLDS = tomllib.loads((ROOT / "thresholds.toml").read_text())


# ---- models ----------------------------------------------------------------------------------------
def write_models(root: Path, size_gb: float, shard_bytes: int = 1 << 30) -> dict[str, Path]:
    """reference, target (derived) and independent, each ``size_gb`` per side (written once, reused)."""
    out = {s: root / s for s in ("reference", "target", "independent")}
    if all((d / "config.json").exists() for d in out.values()):
        return out
    t, r, _ = bw.write_pair(root, int(size_gb * bw.GIB), shard_bytes)
    ind = out["independent"]
    ind.mkdir(parents=True, exist_ok=True)
    index = json.loads((r / "model.safetensors.index.json").read_text())
    by_file: dict[str, list[str]] = {}
    for name, fname in index["weight_map"].items():
        by_file.setdefault(fname, []).append(name)
    from safetensors import safe_open

    for fname, names in sorted(by_file.items()):
        with safe_open(str(r / fname), "np") as fh:  # the reference's shard layout and shapes
            shapes = {n: tuple(fh.get_slice(n).get_shape()) for n in fh.keys()}
        order = list(shapes)
        bw._write_shard(ind / fname, [(n, shapes[n]) for n in order], "independent")
    (ind / "model.safetensors.index.json").write_text((r / "model.safetensors.index.json").read_text())
    (ind / "config.json").write_text((r / "config.json").read_text())
    return out


def warm(paths) -> None:
    for p in paths:
        bw._plain_read(sorted(Path(p).glob("*.safetensors")))


# ---- verdicts ---------------------------------------------------------------------------------------
def weight_verdict(evidence, expect: str) -> dict:
    w = THRESHOLDS["weights"]
    cats = {g.group: g.mean_centred for g in evidence.comparison.by_category}
    if expect == "derived":
        bound = w["derived_min_centred"]["value"]
        ok = any(v >= bound for v in cats.values())  # some category reaches the derived bound
    else:
        ok = all(v < (w["independent_max_embedding_centred"]["value"] if k == "embedding"
                      else w["independent_max_centred"]["value"]) for k, v in cats.items() if k != "routed_expert")
    return {"categories": {k: round(v, 4) for k, v in cats.items()}, "claim_holds": bool(ok),
            "intervals": {g.group: [round(g.centred_ci.low, 4), round(g.centred_ci.high, 4)]
                          for g in evidence.comparison.by_category}}


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def run_pair(target: Model, reference: Model, expect: str, budget_text: str, tokens: list[tuple[int, int]]) -> dict:
    alpha = THRESHOLDS["independence"]["alpha"]["value"]
    stores = (target.store, reference.store)

    def read() -> int:
        return sum(s.bytes_read for s in stores)

    present = sum(s.info(n).nbytes for s in stores for n in s.names())
    out: dict = {"expect": expect, "bytes_present": present}
    b0 = read()
    full, wall, cpu = timed(lambda: measure(target, reference, min_layer_match=0.5))
    out["full_weights"] = {"seconds": wall, "cpu_seconds": cpu, "bytes_read": read() - b0, **weight_verdict(full, expect)}
    b0 = read()
    test, wall, cpu = timed(lambda: measure_independence(target, reference, token_pairs=tokens))
    out["full_independence"] = {"seconds": wall, "cpu_seconds": cpu, "bytes_read": read() - b0,
                                "log10_p": test.combined.log10_p, "units": sum(len(x.units) for x in test.layers),
                                "claim_holds": (test.combined.p < alpha) == (expect == "derived")}
    plan = plan_budget(target, reference, parse_budget(budget_text))
    out["plan"] = plan.as_dict()
    b0 = read()
    cheap, wall, cpu = timed(lambda: measure(target, reference, min_layer_match=0.5, budget=plan))
    out["budget_weights"] = {"seconds": wall, "cpu_seconds": cpu, "bytes_read": read() - b0,
                             "comparison_bytes": cheap.comparison.bytes_read, **weight_verdict(cheap, expect)}
    if plan.independence_layers is not None:
        b0 = read()
        test, wall, cpu = timed(lambda: measure_independence(
            target, reference, token_pairs=tokens, layers=plan.independence_layers,
            experts_per_layer=plan.experts_per_layer, heads=False, max_tokens=plan.align_tokens,
            shared_units=plan.shared_units))
        out["budget_independence"] = {"seconds": wall, "cpu_seconds": cpu, "bytes_read": read() - b0,
                                      "log10_p": test.combined.log10_p,
                                      "units": sum(len(x.units) for x in test.layers),
                                      "claim_holds": (test.combined.p < alpha) == (expect == "derived")}
    else:
        out["budget_independence"] = {"skipped": plan.independence_reason}
    total = out["budget_weights"]["bytes_read"] + out["budget_independence"].get("bytes_read", 0)
    out["budget_share_read"] = total / present
    out["verdicts_agree"] = (out["full_weights"]["claim_holds"] == out["budget_weights"]["claim_holds"]
                             and out["full_independence"]["claim_holds"]
                             == out["budget_independence"].get("claim_holds", None))
    return out


# ---- costs ------------------------------------------------------------------------------------------
def costs(target: Model, reference: Model, repeat: int = 2) -> dict:
    refs = target.name_map.refs
    token = [k for k in ("embed.weight", "lm_head.weight") if k in refs]
    flat = [k for k, r in refs.items() if len(r.shape) == 1]
    mats = [k for k, r in refs.items() if len(r.shape) == 2 and k not in token]

    def best(keys):
        runs = []
        for _ in range(repeat):
            c, wall, cpu = timed(lambda: compare_weights(target, reference, keys=keys, workers=1))
            runs.append((cpu, wall, c))
        cpu, wall, c = min(runs, key=lambda x: x[0])
        return cpu, wall, c

    cpu_m, wall_m, cm = best(mats)
    cpu_f, _, cf = best(flat)
    cpu_t, _, ct = best(token)
    per_byte = cpu_m / cm.bytes_read
    tok_elems = sum(int(np.prod(refs[k].shape)) for k in token)
    from modellineage.weights.signatures import model_signatures

    sig, _, cpu_s = timed(lambda: model_signatures(target))
    return {
        "comparison_cpu_s_per_gb": per_byte * 1e9, "comparison_gb_per_s_per_core": cm.bytes_read / cpu_m / 1e9,
        "comparison_wall_gb_per_s": cm.bytes_read / wall_m / 1e9, "matrix_pairs": len(mats),
        "per_tensor_cpu_s": cpu_f / max(1, len(flat)),
        "rotation_null_cpu_s_per_element": max(0.0, cpu_t - per_byte * ct.bytes_read) / max(1, tok_elems),
        "signature_cpu_s_per_tensor": cpu_s / max(1, len(sig)),
    }


# ---- Solar-sized pair (headers only) ----------------------------------------------------------------
SOLAR = {"layers": 48, "experts": 128, "moe_inter": 1280, "shared_inter": 1280, "hidden": 4096, "heads": 64,
         "kv_heads": 8, "head_dim": 128, "vocab": 196_608}


def _solar_tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, q, kv = c["hidden"], c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    out = [("model.embed_tokens.weight", (c["vocab"], h))]
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "self_attn.q_proj.weight", (q, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, q)),
                (p + "mlp.gate.weight", (c["experts"], h)), (p + "mlp.shared_expert_gate.weight", (1, h))]
        for proj, shape in (("gate_proj", (c["shared_inter"], h)), ("up_proj", (c["shared_inter"], h)),
                            ("down_proj", (h, c["shared_inter"]))):
            out.append((f"{p}mlp.shared_expert.{proj}.weight", shape))
        for e in range(c["experts"]):
            for proj, shape in (("gate_proj", (c["moe_inter"], h)), ("up_proj", (c["moe_inter"], h)),
                                ("down_proj", (h, c["moe_inter"]))):
                out.append((f"{p}mlp.experts.{e}.{proj}.weight", shape))
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (c["vocab"], h))]
    return out


def write_header_only(root: Path, c: dict = SOLAR) -> Path:
    """A sparse safetensors checkpoint: real headers, holes for data (no disk space, nothing to read)."""
    if (root / "config.json").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tensors = _solar_tensors(c)
    per_file = max(1, len(tensors) // 50)
    weight_map = {}
    for k in range(0, len(tensors), per_file):
        part = tensors[k:k + per_file]
        fname = f"model-{k // per_file + 1:05d}.safetensors"
        header, offset = {}, 0
        for name, shape in part:
            n = int(np.prod(shape)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(root / fname, "wb") as fh:
            fh.write(len(raw).to_bytes(8, "little") + raw)
            fh.truncate(8 + len(raw) + offset)
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (root / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": c["hidden"],
        "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"],
        "head_dim": c["head_dim"], "num_experts": c["experts"], "moe_intermediate_size": c["moe_inter"],
        "shared_expert_intermediate_size": c["shared_inter"], "intermediate_size": c["shared_inter"],
        "num_experts_per_tok": 8, "vocab_size": c["vocab"], "tie_word_embeddings": False}))
    return root


def extrapolate(root: Path, cost: dict, unit_cpu_s: float, budget_text: str, budget_s_per_tensor: float) -> dict:
    a = Model("solar-a", resolve_source(str(write_header_only(root / "a"))))
    b = Model("solar-b", resolve_source(str(write_header_only(root / "b"))))
    refs = a.name_map.refs
    present = sum(m.store.info(n).nbytes for m in (a, b) for n in m.store.names())
    tensors = len(refs)
    token_elems = sum(int(np.prod(refs[k].shape)) for k in ("embed.weight", "lm_head.weight") if k in refs)
    from modellineage.independence.matching import EXPERTS_PER_LAYER

    all_units = SOLAR["layers"] * (SOLAR["experts"] + 1)
    units = SOLAR["layers"] * (min(SOLAR["experts"], EXPERTS_PER_LAYER) + 1)  # the full read's default cap
    per_gb = cost["comparison_cpu_s_per_gb"]
    measured = ROOT / "benchmarks" / "results" / "bench_scale_independence.json"
    if measured.exists():  # measured on units of Solar's own shape (--only independence)
        ind = json.loads(measured.read_text())["independence"]
        unit_range = tuple(sorted(ind[n]["unit_cpu_s"] for n in ("target", "independent")))
        unit_source = "benchmarks/results/bench_scale_independence.json (Solar-shaped units)"
    else:
        # a unit's cost grows with its neurons and hidden size: linearly for reading and sketching, cubically in
        # neurons for the dense assignment; the synthetic units are bw.MOE_INTER x bw.HIDDEN
        ratio = SOLAR["moe_inter"] / bw.MOE_INTER * SOLAR["hidden"] / bw.HIDDEN
        unit_range = (unit_cpu_s * ratio, unit_cpu_s * ratio * (SOLAR["moe_inter"] / bw.MOE_INTER) ** 2)
        unit_source = "this run's units scaled to Solar's shape"
    full = {"comparison_s": present / 1e9 * per_gb + tensors * cost["per_tensor_cpu_s"]
            + token_elems * cost["rotation_null_cpu_s_per_element"],
            "signatures_s": 2 * tensors * cost["signature_cpu_s_per_tensor"],
            "independence_s": units * unit_range[0], "independence_s_if_cubic": units * unit_range[1],
            "independence_units": units, "independence_unit_cpu_s": list(unit_range), "unit_cost_from": unit_source,
            "independence_every_unit_s": [all_units * u for u in unit_range]}
    full["total_s"] = full["comparison_s"] + full["signatures_s"] + full["independence_s"]
    full["weights_only_s"] = full["comparison_s"] + full["signatures_s"]
    plan = plan_budget(a, b, parse_budget(budget_text))
    units_b = 0 if plan.independence_layers is None else len(plan.independence_layers) * (
        int(plan.shared_units) + (plan.experts_per_layer or SOLAR["experts"]))
    read_b = plan.planned_total
    # under a budget the weight measurement is per-tensor bound (a few rows each): the synthetic run's CPU
    # seconds per target tensor (signatures of both sides, sampled comparison, embedding statistics)
    cheap = {"weights_s": tensors * budget_s_per_tensor,
             "independence_s": units_b * unit_range[0], "independence_s_if_cubic": units_b * unit_range[1]}
    cheap["total_s"] = cheap["weights_s"] + cheap["independence_s"]
    return {"shape": SOLAR, "bytes_per_side": present // 2, "tensors_per_side": tensors, "mlp_units": all_units,
            "full_one_core": full, "budget_plan": plan.as_dict(), "budget_bytes_read": read_b,
            "budget_share": read_b / present, "budget_independence_units": units_b, "budget_one_core": cheap,
            "remote_at_100_mb_s": {"full_s": present / 100e6, "budget_s": read_b / 100e6}}


# ---- the independence test on Solar-shaped units (--only independence) ---------------------------------
def write_solar_slice(root: Path, experts: int) -> dict[str, Path]:
    """reference, target (reference + 10 % noise) and independent: one layer of Solar's shape (hidden 4096,
    ``experts`` routed experts of 1280 + a shared one of 1280, 64/8 heads of 128), vocabulary 8192."""
    c = {**SOLAR, "layers": 1, "experts": experts, "vocab": 8192}
    out = {s: root / s for s in ("reference", "target", "independent")}
    for side, d in out.items():
        if (d / "config.json").exists():
            continue
        header_only = write_header_only(d / "shape", c)  # its config and names; the data written below
        d.mkdir(parents=True, exist_ok=True)
        bw._write_shard(d / "model.safetensors", _solar_tensors(c), side)
        (d / "config.json").write_text((header_only / "config.json").read_text())
        for f in header_only.iterdir():
            f.unlink()
        header_only.rmdir()
    return out


def independence_units(root: Path, experts: int, workers: int, repeat: int = 2) -> dict:
    """CPU seconds per Solar-shaped MLP unit (1280 neurons x 4096), derived and independent pairs, one
    thread (the least of ``repeat`` runs: the machine is shared); the same test on ``workers`` threads (wall
    and CPU); the records must be identical either way."""
    from modellineage.independence.matching import EXPERTS_PER_LAYER, TokenPairs, align_hidden

    models = write_solar_slice(root, experts)
    warm(models.values())
    ref = Model("reference", resolve_source(str(models["reference"])))
    ids = tuple(range(8192))
    tokens = TokenPairs(ids, ids, "identity (synthetic)")
    out: dict = {"neurons": SOLAR["moe_inter"], "hidden": SOLAR["hidden"], "units_per_pair": experts + 1}
    for name in ("target", "independent"):
        t = Model(name, resolve_source(str(models[name])))
        cpu_a = min(timed(lambda: align_hidden(t, ref, tokens, max_tokens=4096, seed=0))[2] for _ in range(repeat))

        def run(w):
            return timed(lambda: measure_independence(t, ref, token_pairs=tokens, heads=False, experts_per_layer=None,
                                                      workers=w))

        ones = [run(1) for _ in range(repeat)]
        test, wall1, cpu1 = min(ones, key=lambda x: x[2])
        many, wall_w, cpu_w = run(workers)
        units = sum(len(x.units) for x in test.layers)
        out[name] = {"align_cpu_s": cpu_a, "units": units, "log10_p": test.combined.log10_p,
                     "unit_cpu_s": (cpu1 - cpu_a) / units, "one_thread_wall_s": wall1, "one_thread_cpu_s": cpu1,
                     f"wall_s_on_{workers}_threads": wall_w, f"cpu_s_on_{workers}_threads": cpu_w,
                     "records_identical": json.dumps(test.as_dict()) == json.dumps(many.as_dict())}
    unit = [min(out[n]["unit_cpu_s"] for n in ("target", "independent")),
            max(out[n]["unit_cpu_s"] for n in ("target", "independent"))]
    align = max(out[n]["align_cpu_s"] for n in ("target", "independent"))
    weights_s = None
    previous = ROOT / "benchmarks" / "results" / "bench_scale.json"
    if previous.exists():  # the full weight measurement of the same Solar-sized pair, one core (bench_scale.py)
        weights_s = json.loads(previous.read_text())["solar_open_100b"]["full_one_core"]["weights_only_s"]
    solar = {}
    for label, per_layer in (("all_units", SOLAR["experts"] + 1),
                             ("default_cap", min(SOLAR["experts"], EXPERTS_PER_LAYER) + 1)):
        units = SOLAR["layers"] * per_layer
        one = [align + units * u for u in unit]
        solar[label] = {"units": units, "one_core_s": one,
                        # both measurements spread over the cores (compare_weights and the independence
                        # units both run on default_workers() threads); ideal scaling, see measured_speedup
                        f"on_{workers}_cores_s": [x / workers for x in one],
                        f"full_audit_weights_plus_independence_on_{workers}_cores_s":
                            None if weights_s is None else [(weights_s + x) / workers for x in one]}
    out["measured_speedup_wall"] = min(out[n]["one_thread_wall_s"] / out[n][f"wall_s_on_{workers}_threads"]
                                       for n in ("target", "independent"))
    out["weights_one_core_s_from"] = None if weights_s is None else {"file": "benchmarks/results/bench_scale.json",
                                                                     "weights_only_s": weights_s}
    out["solar_open_100b"] = solar
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--budget", default="0.01")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_scale"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", choices=["independence"],
                    help="independence: only the per-unit cost on Solar-shaped units (one layer, --experts routed "
                         "experts) and the Solar-sized time from it, all units and the default expert cap")
    ap.add_argument("--experts", type=int, default=8, help="routed experts in the --only independence slice")
    args = ap.parse_args()
    started = time.time()
    if args.only == "independence":
        from modellineage.weights.similarity import default_workers

        workers = default_workers()
        result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                  "machine": bw._machine(), "load_avg_before": os.getloadavg(), "workers": workers,
                  "independence": independence_units(args.workdir / f"solar_slice_{args.experts}", args.experts,
                                                     workers)}
        result["load_avg_after"] = os.getloadavg()
        result["seconds"] = time.time() - started
        text = json.dumps(result, indent=2, default=float)
        if args.out:
            args.out.write_text(text + "\n")
        print(text)
        return
    models = write_models(args.workdir / f"{args.size_gb:g}gb", args.size_gb)
    warm(models.values())
    vocab = bw.VOCAB
    tokens = [(i, i) for i in range(vocab)]
    ref = Model("reference", resolve_source(str(models["reference"])))
    pairs = {}
    for name, expect in (("target", "derived"), ("independent", "independent")):
        t = Model(name, resolve_source(str(models[name])))
        pairs[name] = run_pair(t, ref, expect, args.budget, tokens)
    t = Model("target", resolve_source(str(models["target"])))
    cost = costs(t, ref)
    fi = pairs["target"]["full_independence"]
    unit_cpu = fi["cpu_seconds"] / max(1, fi["units"])
    bw_ = pairs["target"]["budget_weights"]
    sampled_s_per_gb = bw_["cpu_seconds"] / max(1, bw_["bytes_read"]) * 1e9
    budget_s_per_tensor = bw_["cpu_seconds"] / len(t.name_map.refs)
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
              "machine": bw._machine(), "load_avg": os.getloadavg(), "size_gb_per_side": args.size_gb,
              "budget": args.budget, "pairs": pairs, "costs": {**cost, "independence_cpu_s_per_unit": unit_cpu,
                                                                "budgeted_weights_cpu_s_per_gb_read": sampled_s_per_gb,
                                                                "budgeted_weights_cpu_s_per_tensor": budget_s_per_tensor},
              "solar_open_100b": extrapolate(args.workdir / "solar", cost, unit_cpu, args.budget,
                                             budget_s_per_tensor),
              "seconds": time.time() - started}
    text = json.dumps(result, indent=2, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
