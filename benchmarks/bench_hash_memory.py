"""Peak memory and throughput of hashing and streaming synthetic sharded models.

For each size, writes two synthetic models (shards of about ``--shard-gb``, BF16 and F32
tensors, written piece by piece so the generator stays small), then in a fresh
subprocess scans every shard with ``scan_safetensors`` and streams every tensor once
with ``TensorStore.iter_rows``. The child reports peak RSS (``VmHWM`` from
``/proc/self/status``) and throughput. Peak RSS should not grow with model size.

By default written shards are evicted from the page cache (fsync + POSIX_FADV_DONTNEED)
so the child reads from disk; ``--warm`` keeps them cached.

Usage:
    python benchmarks/bench_hash_memory.py --sizes-gb 0.5 1 2 4 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
PIECE_ELEMS = 1 << 21  # elements written per piece (8 MiB of float32)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


# ---- synthetic models -----------------------------------------------------------------------


def _plan(total_bytes: int, shard_bytes: int) -> list[list[tuple[str, str, tuple[int, ...]]]]:
    """Shards as lists of (name, dtype, shape), transformer-like layers until total_bytes is reached."""
    layer = [
        ("mlp.up_proj.weight", "BF16", (4096, 2048)),  # 16 MiB
        ("mlp.down_proj.weight", "BF16", (2048, 4096)),  # 16 MiB
        ("self_attn.qkv.weight", "F32", (1024, 2048)),  # 8 MiB
        ("input_layernorm.weight", "F32", (2048,)),
    ]
    itemsize = {"BF16": 2, "F32": 4}
    shards: list[list[tuple[str, str, tuple[int, ...]]]] = [[]]
    shard_used = written = 0
    i = 0
    while written < total_bytes:
        for suffix, dtype, shape in layer:
            if written >= total_bytes:
                break
            nbytes = itemsize[dtype] * math.prod(shape)
            if shard_used and shard_used + nbytes > shard_bytes:
                shards.append([])
                shard_used = 0
            shards[-1].append((f"model.layers.{i}.{suffix}", dtype, shape))
            shard_used += nbytes
            written += nbytes
        i += 1
    return shards


def _write_shard(path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], seed: int, drop_cache: bool) -> int:
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = (rng.standard_normal(PIECE_ELEMS * 2) * 0.02).astype(np.float32)
    itemsize = {"BF16": 2, "F32": 4}
    header: dict = {"__metadata__": {"format": "pt", "generator": "bench_hash_memory"}}
    offset = 0
    for name, dtype, shape in tensors:
        nbytes = itemsize[dtype] * int(np.prod(shape))
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)) + blob)
        for _name, dtype, shape in tensors:
            left = int(np.prod(shape))
            scale = np.float32(rng.uniform(0.5, 1.5))
            while left:
                n = min(left, PIECE_ELEMS)
                start = int(rng.integers(0, pool.size - n + 1))
                piece = pool[start : start + n] * scale
                if dtype == "BF16":
                    piece = (piece.view(np.uint32) >> 16).astype("<u2")
                fh.write(piece.astype(piece.dtype.newbyteorder("<"), copy=False).tobytes())
                left -= n
        fh.flush()
        if drop_cache:
            os.fsync(fh.fileno())
            os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path.stat().st_size


def write_model(root: Path, total_bytes: int, shard_bytes: int, seed: int, drop_cache: bool) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    shards = _plan(total_bytes, shard_bytes)
    files = []
    for k, tensors in enumerate(shards):
        path = root / f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(path, tensors, seed * 1000 + k, drop_cache)
        files.append(path)
    return files


# ---- measuring child ------------------------------------------------------------------------


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def child(spec: dict) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from modellineage.reading.hashing import scan_safetensors
    from modellineage.reading.tensors import TensorStore

    baseline = _status_kib("VmHWM")
    models = [[Path(p) for p in files] for files in spec["models"]]
    total = sum(p.stat().st_size for files in models for p in files)

    t0 = time.perf_counter()
    ntensors = 0
    for files in models:
        for path in files:
            ntensors += len(scan_safetensors(path).tensors)
    scan_s = time.perf_counter() - t0
    after_scan = _status_kib("VmHWM")

    t0 = time.perf_counter()
    tensor_bytes = 0
    for files in models:
        with TensorStore(files) as store:
            for name in store.names():
                for _first, block in store.iter_rows(name):
                    pass
                tensor_bytes += store.info(name).nbytes
    rows_s = time.perf_counter() - t0
    return {
        "bytes": total,
        "tensor_bytes": tensor_bytes,
        "files": sum(len(f) for f in models),
        "tensors": ntensors,
        "scan_s": scan_s,
        "rows_s": rows_s,
        "baseline_kib": baseline,
        "peak_scan_kib": after_scan,
        "peak_kib": _status_kib("VmHWM"),
    }


# ---- driver ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-gb", type=_positive_float, nargs="+", default=[0.5, 1, 2], help="size of each model, GiB")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--shard-gb", type=_positive_float, default=1.0, help="shard size, GiB")
    parser.add_argument("--warm", action="store_true", help="leave written shards in the page cache")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    rows = []
    for size in args.sizes_gb:
        root = args.workdir / f"{size:g}gib"
        try:
            models = [
                write_model(root / name, int(size * GIB), int(args.shard_gb * GIB), seed, not args.warm)
                for seed, name in enumerate(("model_a", "model_b"), start=1)
            ]
            spec = json.dumps({"models": [[str(p) for p in m] for m in models]})
            out = subprocess.run(
                [sys.executable, __file__, "--child", spec], check=True, capture_output=True, text=True
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        rows.append((size, result))
        print(f"done {size:g} GiB: {result}", file=sys.stderr)

    mb = 1e6
    print("| model size (GiB, x2 models) | files | tensors | bytes read | scan MB/s | iter_rows MB/s "
          "| RSS after imports (MiB) | peak RSS scan (MiB) | peak RSS total (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size, r in rows:
        print(
            f"| {size:g} | {r['files']} | {r['tensors']} | {r['bytes'] / GIB:.2f} GiB "
            f"| {r['bytes'] / mb / r['scan_s']:.0f} | {r['tensor_bytes'] / mb / r['rows_s']:.0f} "
            f"| {r['baseline_kib'] / 1024:.0f} | {r['peak_scan_kib'] / 1024:.0f} | {r['peak_kib'] / 1024:.0f} |"
        )
    cache = "warm" if args.warm else "evicted after writing, so the scan reads from disk; iter_rows then reads what the scan cached"
    print(f"\npage cache: {cache}. iter_rows MB/s counts stored tensor bytes decoded to float64 (32 MiB chunks).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
