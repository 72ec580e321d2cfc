"""Memory and speed of the weight-similarity comparison on synthetic sharded MoE pairs.

For each size, writes a Mixtral-style BF16 reference (experts, router, attention, norms, embeddings)
in shards and a derived target (reference + 10 % noise), evicts both from the page cache, then in
fresh subprocesses measures:

- ``read``: a plain sequential read (16 MiB ``pread`` s) of every safetensors byte of both models;
- ``full``: ``compare_weights`` over every canonical tensor pair (all rows): wall time, peak RSS
  (``VmHWM``), throughput relative to ``read`` (the same bytes);
- ``sample``: ``compare_weights(..., fraction=0.1)``: bytes read as a share of both models;
- ``signatures``: tensor signatures of both models, layer correspondence and expert matching;
- ``naive`` (only for sizes ≤ ``--naive-max-gb``): the design's naive approach — both models through
  ``transformers.AutoModelForCausalLM.from_pretrained`` and a ``named_parameters()`` loop of cosines.

    .venv/bin/python benchmarks/bench_weights.py --sizes-gb 1 4 --naive-max-gb 1 --workdir /tmp/bench_w
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

GIB = 1 << 30
HIDDEN, INTER, EXPERTS, VOCAB, KV = 2048, 1024, 16, 8192, 512


def _bf16(x: np.ndarray) -> bytes:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def _layer_tensors(i: int) -> list[tuple[str, tuple[int, ...]]]:
    p = f"model.layers.{i}."
    out = [(p + "input_layernorm.weight", (HIDDEN,)), (p + "post_attention_layernorm.weight", (HIDDEN,)),
           (p + "self_attn.q_proj.weight", (HIDDEN, HIDDEN)), (p + "self_attn.k_proj.weight", (KV, HIDDEN)),
           (p + "self_attn.v_proj.weight", (KV, HIDDEN)), (p + "self_attn.o_proj.weight", (HIDDEN, HIDDEN)),
           (p + "block_sparse_moe.gate.weight", (EXPERTS, HIDDEN))]
    for e in range(EXPERTS):
        q = f"{p}block_sparse_moe.experts.{e}."
        out += [(q + "w1.weight", (INTER, HIDDEN)), (q + "w2.weight", (HIDDEN, INTER)), (q + "w3.weight", (INTER, HIDDEN))]
    return out


def _layers_for(total_bytes: int) -> int:
    per_layer = sum(int(np.prod(s)) * 2 for _, s in _layer_tensors(0))
    return max(1, round((total_bytes - 2 * VOCAB * HIDDEN * 2) / per_layer))


def _write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], make) -> None:
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
            fh.write(_bf16(make(name, shape)))
        fh.flush()
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_pair(root: Path, total_bytes: int, shard_bytes: int = 1 << 30) -> tuple[Path, Path]:
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
    config = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": HIDDEN,
              "intermediate_size": INTER, "num_hidden_layers": layers, "num_attention_heads": 16,
              "num_key_value_heads": 4, "head_dim": 128, "num_local_experts": EXPERTS, "num_experts_per_tok": 2,
              "vocab_size": VOCAB, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16", "dtype": "bfloat16"}

    def reference(name, shape):
        rng = np.random.default_rng(abs(hash(name)) % (2**32))
        if len(shape) == 1:
            return 1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)
        return 0.02 * rng.standard_normal(shape, dtype=np.float32)

    def target(name, shape):
        rng = np.random.default_rng(abs(hash(name + "/t")) % (2**32))
        base = reference(name, shape)
        return base + 0.1 * float(base.std()) * rng.standard_normal(shape, dtype=np.float32)

    out = []
    for side, make in (("reference", reference), ("target", target)):
        d = root / side
        d.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for k, shard in enumerate(shards):
            fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
            _write_shard(d / fname, shard, make)
            weight_map.update({n: fname for n, _ in shard})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        (d / "config.json").write_text(json.dumps(config))
        out.append(d)
    return out[1], out[0]


def _evict(paths) -> None:
    for p in paths:
        for f in Path(p).glob("*.safetensors"):
            fd = os.open(f, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def _hwm_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    os.environ["PYTHONHASHSEED"] = "0"
    target, reference, mode = Path(spec["target"]), Path(spec["reference"]), spec["mode"]
    files = sorted(target.glob("*.safetensors")) + sorted(reference.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    t0 = time.perf_counter()
    result: dict = {"mode": mode, "bytes": total}
    if mode == "read":
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
    elif mode in ("full", "sample"):
        from modellineage.model import Model
        from modellineage.similarity import compare_weights
        from modellineage.sources import resolve_source

        comp = compare_weights(Model("t", resolve_source(str(target))), Model("r", resolve_source(str(reference))),
                               fraction=0.1 if mode == "sample" else None, seed=0)
        result["bytes_read"] = comp.bytes_read
        result["pairs"] = len(comp.pairs)
        result["mean_centred"] = {g.group: round(g.mean_centred, 4) for g in comp.by_category}
    elif mode == "signatures":
        from modellineage.alignment import correspond_layers, match_experts
        from modellineage.model import Model
        from modellineage.signatures import model_signatures
        from modellineage.sources import resolve_source

        ts = model_signatures(Model("t", resolve_source(str(target))))
        rs = model_signatures(Model("r", resolve_source(str(reference))))
        layers = correspond_layers(ts, rs, min_match=0.3)
        match_experts(ts, rs)
        result["signatures"] = len(ts) + len(rs)
        result["identity"] = layers.is_identity
    elif mode == "naive":
        import torch
        import transformers

        a = transformers.AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.bfloat16)
        b = transformers.AutoModelForCausalLM.from_pretrained(str(reference), dtype=torch.bfloat16)
        pb = dict(b.named_parameters())
        cos = {}
        for name, p in a.named_parameters():
            q = pb[name]
            cos[name] = float(torch.nn.functional.cosine_similarity(p.float().flatten(), q.float().flatten(), dim=0))
        result["pairs"] = len(cos)
    result["seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = _hwm_mib()
    return result


def run_child(spec: dict) -> dict:
    _evict([spec["target"], spec["reference"]])
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONHASHSEED="0"))
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[1.0, 4.0], help="bytes per side")
    ap.add_argument("--naive-max-gb", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_weights"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    rows = []
    for size in args.sizes_gb:
        root = args.workdir / f"{size:g}gb"
        if root.exists():
            shutil.rmtree(root)
        t0 = time.perf_counter()
        target, reference = write_pair(root, int(size * GIB))
        print(f"[{size:g} GiB/side] written in {time.perf_counter() - t0:.0f} s", flush=True)
        modes = ["read", "full", "sample", "signatures"] + (["naive"] if size <= args.naive_max_gb else [])
        res = {m: run_child({"target": str(target), "reference": str(reference), "mode": m}) for m in modes}
        for m, r in res.items():
            print(f"  {m:10s} {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  "
                  f"{r['bytes'] / r['seconds'] / 1e6:7.0f} MB/s of model bytes", flush=True)
        full, read, sample = res["full"], res["read"], res["sample"]
        summary = {"size_gb_per_side": size, "model_bytes": full["bytes"],
                   "full_vs_read_throughput": read["seconds"] / full["seconds"],
                   "sample_bytes_share": sample["bytes_read"] / sample["bytes"],
                   "full_bytes_share": full["bytes_read"] / full["bytes"], "results": res}
        if "naive" in res:
            summary["naive_vs_full"] = {"time": res["naive"]["seconds"] / full["seconds"],
                                        "peak_rss": res["naive"]["peak_rss_mib"] / full["peak_rss_mib"]}
        print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)
        rows.append(summary)
        if not args.keep:
            shutil.rmtree(root)
    (args.workdir / "bench_weights.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
