"""Memory, speed and bytes read of the weight audit's measurement on synthetic sharded MoE pairs.

For each size, writes a Qwen2-MoE-style BF16 reference in shards (routed experts, router, shared
expert and its gate, attention with q/k/v biases, norms, embeddings, lm_head) and a derived target
(reference + 10 % noise), then, each in a fresh subprocess started with both models evicted from
the page cache (``POSIX_FADV_DONTNEED``), measures:

- ``read``: a plain sequential read (16 MiB ``preadv`` s) of every safetensors byte of both models;
- ``audit``: the weight audit's measurement itself, ``modellineage.weights.measure`` (signatures of
  both models, layer correspondence, expert assignment, the streamed comparison of every tensor
  pair, embedding statistics, signature comparison, upcycling check, PCA; the same library calls
  in the same order, because it *is* the audit's function), every row read;
- ``sample``: the same with ``--sample 0.1``;
- ``audit_warm``: ``audit`` with both models already in the page cache (no disk: the rate the CPU
  allows, to say what bounds the cold figure);
- ``naive`` (sizes ≤ ``--naive-max-gb``): the design's naive approach, both models through
  ``transformers.AutoModelForCausalLM.from_pretrained`` and a ``named_parameters()`` cosine loop.

Every child reports wall time, peak RSS (``VmHWM``), the per-phase times of the audit, and the bytes
it read, *measured*: by the library's reader (``TensorStore.bytes_read``, every ``pread``), and by
the kernel (``/proc/self/io``: ``rchar``, bytes through read calls; ``read_bytes``, bytes fetched
from the block device, page-granular, kernel readahead included). Throughput ratio = plain-read
seconds / audit seconds over the same bytes, in the same run (median of ``--repeat`` runs; load
averages recorded beside every run).

    .venv/bin/python benchmarks/bench_weights.py --sizes-gb 1 2 4 --naive-max-gb 1 --workdir /tmp/bench_w \\
        --out benchmarks/results/bench_weights.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
HIDDEN, MOE_INTER, SHARED_INTER, EXPERTS, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 2048, 1024, 2048, 16, 8192, 16, 4, 128
KV = KV_HEADS * HEAD_DIM


# ---- synthetic models -----------------------------------------------------------------------------
def _layer_tensors(i: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    out = [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
           (p + "self_attn.q_proj.weight", (HEADS * HEAD_DIM, HIDDEN)), (p + "self_attn.q_proj.bias", (HEADS * HEAD_DIM,)),
           (p + "self_attn.k_proj.weight", (KV, HIDDEN)), (p + "self_attn.k_proj.bias", (KV,)),
           (p + "self_attn.v_proj.weight", (KV, HIDDEN)), (p + "self_attn.v_proj.bias", (KV,)),
           (p + "self_attn.o_proj.weight", (HIDDEN, HEADS * HEAD_DIM)),
           (p + "mlp.gate.weight", (EXPERTS, HIDDEN)), (p + "mlp.shared_expert_gate.weight", (1, HIDDEN))]
    for proj, shape in (("gate_proj", (SHARED_INTER, HIDDEN)), ("up_proj", (SHARED_INTER, HIDDEN)),
                        ("down_proj", (HIDDEN, SHARED_INTER))):
        out.append((f"{p}mlp.shared_expert.{proj}.weight", shape))
    for e in range(EXPERTS):
        for proj, shape in (("gate_proj", (MOE_INTER, HIDDEN)), ("up_proj", (MOE_INTER, HIDDEN)),
                            ("down_proj", (HIDDEN, MOE_INTER))):
            out.append((f"{p}mlp.experts.{e}.{proj}.weight", shape))
    return out


def _layers_for(total_bytes: int) -> int:
    per_layer = sum(int(np.prod(s)) * 2 for _, s in _layer_tensors(0))
    return max(1, round((total_bytes - 2 * VOCAB * HIDDEN * 2) / per_layer))


def _values(name: str, shape: tuple[int, ...], side: str) -> np.ndarray:
    """Reference: norms ~ 1 ± 0.05, biases and weights ~ N(0, 0.02²); target: reference + 10 % noise;
    independent (benchmarks/bench_scale.py): the reference's distribution from other seeds."""
    rng = np.random.default_rng(zlib.crc32(name.encode() + (b"/independent" if side == "independent" else b"")))
    base = rng.standard_normal(shape, dtype=np.float32)
    base *= np.float32(0.05 if name.endswith("norm.weight") else 0.02)
    if name.endswith("norm.weight"):
        base += np.float32(1.0)
    if side == "target":
        noise = np.random.default_rng(zlib.crc32(name.encode() + b"/t")).standard_normal(shape, dtype=np.float32)
        base += np.float32(0.1 * float(base.std())) * noise
    return base


def _bf16(x: np.ndarray) -> bytes:
    return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], side: str) -> None:
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for name, shape in tensors:
            fh.write(_bf16(_values(name, shape, side)))
        fh.flush()
        os.fsync(fh.fileno())


def write_pair(root: Path, total_bytes: int, shard_bytes: int) -> tuple[Path, Path, dict]:
    """Write reference and target (``root/reference``, ``root/target``); returns their dirs and the config."""
    layers = _layers_for(total_bytes)
    names = [("model.embed_tokens.weight", (VOCAB, HIDDEN))]
    for i in range(layers):
        names += _layer_tensors(i)
    names += [("model.norm.weight", (HIDDEN,)), ("lm_head.weight", (VOCAB, HIDDEN))]
    shards, cur, used = [], [], 0
    for name, shape in names:
        n = int(np.prod(shape)) * 2
        if cur and used + n > shard_bytes:
            shards.append(cur)
            cur, used = [], 0
        cur.append((name, shape))
        used += n
    shards.append(cur)
    config = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe", "hidden_size": HIDDEN,
              "intermediate_size": SHARED_INTER, "moe_intermediate_size": MOE_INTER,
              "shared_expert_intermediate_size": SHARED_INTER, "num_hidden_layers": layers,
              "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "num_experts": EXPERTS,
              "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": False,
              "qkv_bias": True, "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "dtype": "bfloat16"}
    out = []
    for side in ("reference", "target"):
        d = root / side
        d.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_shard(d / fname, shard, side)
            weight_map.update({n: fname for n, _ in shard})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (d / "config.json").write_text(json.dumps(config))
        out.append(d)
    shape = {"layers": layers, "shards_per_side": len(shards), "tensors_per_side": len(names),
             "routed_experts_per_layer": EXPERTS, "hidden": HIDDEN, "vocab": VOCAB}
    return out[1], out[0], shape


def _evict(paths) -> None:
    for p in paths:
        for f in Path(p).glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


# ---- children -------------------------------------------------------------------------------------
def _hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _io() -> dict[str, int]:
    out = {}
    for line in open("/proc/self/io"):
        key, value = line.split(":")
        out[key] = int(value)
    return out


def _plain_read(files: list[Path]) -> None:
    buf = bytearray(16 << 20)
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        off = 0
        while True:
            n = os.preadv(fd, [buf], off)
            if not n:
                break
            off += n
        os.close(fd)


def _audit(target: Path, reference: Path, sample: float | None) -> tuple[dict, dict]:
    """Run the weight audit's measurement; returns (result fields, phase seconds)."""

    import modellineage.weights.pipeline as tw
    from audits.criteria import load_thresholds
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source

    phases: dict[str, float] = {}

    def timed(label, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t0
        return wrapper

    for name, label in (("model_signatures", "signatures"), ("correspond_layers", "alignment"),
                        ("match_experts", "alignment"), ("compare_weights", "comparison"),
                        ("embedding_stats", "embedding_stats"), ("compare_signatures", "signature_matching"),
                        ("detect_upcycling", "alignment"), ("project_layers", "pca")):
        setattr(tw, name, timed(label, getattr(tw, name)))
    thresholds = load_thresholds(ROOT / "thresholds.toml")
    t = Model("target", resolve_source(str(target)))
    r = Model("reference", resolve_source(str(reference)))
    io0, t0 = _io(), time.perf_counter()
    m = tw.measure(t, r, min_layer_match=thresholds["weights", "derived_min_centred"].value, sample=sample)
    seconds, io1 = time.perf_counter() - t0, _io()
    comp = m.comparison
    result = {"seconds": seconds, "pairs": len(comp.pairs), "skipped": len(comp.skipped),
              "reader_bytes": t.store.bytes_read + r.store.bytes_read,
              "comparison_reader_bytes": comp.bytes_read,
              "rchar": io1["rchar"] - io0["rchar"], "read_bytes": io1["read_bytes"] - io0["read_bytes"],
              "layer_map_identity": m.layers.is_identity,
              "mean_centred": {g.group: round(g.mean_centred, 4) for g in comp.by_category},
              "categories": sorted(g.group for g in comp.by_category)}
    return result, phases


def child(spec: dict) -> dict:
    target, reference, mode = Path(spec["target"]), Path(spec["reference"]), spec["mode"]
    files = sorted(target.glob("*.safetensors")) + sorted(reference.glob("*.safetensors"))
    result: dict = {"mode": mode, "model_bytes": sum(f.stat().st_size for f in files)}
    if mode in ("audit", "sample", "audit_warm"):
        import scipy.optimize  # noqa: F401  (imported before the I/O counters start: its files are not model bytes)

        import modellineage.weights.pipeline  # noqa: F401
        from modellineage.tokenizer import vocab  # noqa: F401
        fields, phases = _audit(target, reference, 0.1 if mode == "sample" else None)
        result.update(fields, phases={k: round(v, 3) for k, v in phases.items()})
    elif mode == "read":
        io0, t0 = _io(), time.perf_counter()
        _plain_read(files)
        seconds, io1 = time.perf_counter() - t0, _io()
        result.update(seconds=seconds, rchar=io1["rchar"] - io0["rchar"], read_bytes=io1["read_bytes"] - io0["read_bytes"])
    elif mode == "naive":
        import torch
        import transformers

        io0, t0 = _io(), time.perf_counter()
        a = transformers.AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.bfloat16)
        b = transformers.AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.bfloat16)
        pb = dict(b.named_parameters())
        cos = {name: float(torch.nn.functional.cosine_similarity(p.float().flatten(), pb[name].float().flatten(),
                                                                 dim=0))
               for name, p in a.named_parameters()}
        seconds, io1 = time.perf_counter() - t0, _io()
        result.update(seconds=seconds, pairs=len(cos), rchar=io1["rchar"] - io0["rchar"],
                      read_bytes=io1["read_bytes"] - io0["read_bytes"])
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result["peak_rss_mib"] = _hwm_mib()
    return result


def run_child(spec: dict) -> dict:
    if spec.get("warm"):  # page cache hot: the rate the CPU allows, no disk
        _plain_read(sorted(Path(spec["target"]).glob("*.safetensors")) + sorted(Path(spec["reference"]).glob("*.safetensors")))
    else:
        _evict([spec["target"], spec["reference"]])
    load = os.getloadavg()[0]
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["load_before"], out["load_after"] = round(load, 2), round(os.getloadavg()[0], 2)
    return out


# ---- driver ---------------------------------------------------------------------------------------
def _machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    mem = next((int(line.split()[1]) // 1024 for line in open("/proc/meminfo") if line.startswith("MemTotal")), 0)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_mib": mem, "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform(), "commit": commit or None}


def _summary(size: float, shape: dict, runs: dict[str, list[dict]]) -> dict:
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    audit, sample, read = runs["audit"], runs["sample"], runs["read"]
    bytes_ = audit[0]["model_bytes"]
    row = {
        "size_gb_per_side": size, "model_bytes": bytes_, **shape,
        "plain_read_mb_s": bytes_ / med["read"] / 1e6,
        "audit_mb_s": bytes_ / med["audit"] / 1e6,
        "audit_vs_read_throughput": med["read"] / med["audit"],
        "comparison_vs_read_throughput": med["read"] / statistics.median(r["phases"]["comparison"] for r in audit),
        "audit_peak_rss_mib": max(r["peak_rss_mib"] for r in audit),
        "sample_peak_rss_mib": max(r["peak_rss_mib"] for r in sample),
        "audit_bytes_share": {k: audit[0][k] / bytes_ for k in ("reader_bytes", "rchar", "read_bytes")},
        "sample_bytes_share": {k: sample[0][k] / bytes_ for k in ("reader_bytes", "rchar", "read_bytes")},
        "sample_vs_read_time": med["sample"] / med["read"],
        "audit_warm_mb_s": bytes_ / med["audit_warm"] / 1e6,
        "audit_warm_vs_read_throughput": med["read"] / med["audit_warm"],
        "load_avg_range": [min(r["load_before"] for rs in runs.values() for r in rs),
                           max(r["load_after"] for rs in runs.values() for r in rs)],
    }
    if "naive" in runs:
        naive = runs["naive"]
        row["naive"] = {"seconds": med["naive"], "peak_rss_mib": max(r["peak_rss_mib"] for r in naive),
                        "time_vs_audit": med["naive"] / med["audit"],
                        "peak_rss_vs_audit": max(r["peak_rss_mib"] for r in naive) / row["audit_peak_rss_mib"]}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="GiB per side")
    ap.add_argument("--naive-max-gb", type=float, default=1.0)
    ap.add_argument("--shard-gb", type=float, default=0.5, help="GiB per shard")
    ap.add_argument("--repeat", type=int, default=3, help="runs of every mode (times: median)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_weights"))
    ap.add_argument("--out", type=Path, help="write the results JSON here (default: WORKDIR/bench_weights.json)")
    ap.add_argument("--keep", action="store_true", help="keep the written models")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if min(args.sizes_gb) <= 0 or args.shard_gb <= 0 or args.repeat < 1:
        ap.error("sizes and shard size must be positive, --repeat at least 1")
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    out_path = args.out or args.workdir / "bench_weights.json"
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": _machine(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sizes": []}
    for size in args.sizes_gb:
        root = args.workdir / f"{size:g}gb"
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        target, reference, shape = write_pair(root, int(size * GIB), int(args.shard_gb * GIB))
        print(f"[{size:g} GiB/side] {shape['shards_per_side']} shards, {shape['tensors_per_side']} tensors per side, "
              f"written in {time.perf_counter() - t0:.0f} s", flush=True)
        modes = ["read", "audit", "sample", "audit_warm"] + (["naive"] if size <= args.naive_max_gb else [])
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for _ in range(args.repeat):  # interleaved, so a change of machine load hits every mode alike
            for m in modes:
                r = run_child({"target": str(target), "reference": str(reference), "mode": m,
                               "warm": m == "audit_warm"})
                runs[m].append(r)
                print(f"  {m:7s} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB  "
                      f"{r['model_bytes'] / r['seconds'] / 1e6:6.0f} MB/s  load {r['load_before']:.2f}"
                      + (f"  phases {r['phases']}" if "phases" in r else ""), flush=True)
        row = _summary(size, shape, runs)
        print(json.dumps({k: v for k, v in row.items() if k != "runs"}, indent=None), flush=True)
        row["runs"] = runs
        doc["sizes"].append(row)
        out_path.write_text(json.dumps(doc, indent=2))
        if not args.keep:
            shutil.rmtree(root)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    out_path.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
