"""Two references, one target: one reference at a time vs one pass over the target (``measure_many``).

Writes (or reuses) benchmarks/bench_scale.py's synthetic BF16 Qwen2-MoE models of ``--size-gb`` per side:
``target`` (derived: reference + 10 % noise), ``reference`` and ``independent``. Then, each in a fresh
subprocess, the weight measurement of ``target`` against both references:

- ``sequential``: :func:`modellineage.weights.pipeline.measure` per reference, the target's signatures and
  embedding statistics measured once (what the audits did before the one-pass change);
- ``one_pass``: :func:`modellineage.weights.pipeline.measure_many` (each target byte fetched once).

with the page cache hot (every file read first) and cold (``POSIX_FADV_DONTNEED`` on every file before the
child starts), every row read and at ``--sample``. Each child reports wall and CPU seconds (``getrusage``:
every thread), peak RSS, the bytes the stores read (per model, the library's counters), ``rchar`` and
``read_bytes`` of ``/proc/self/io`` (bytes through read calls; bytes fetched from the block device) and a
SHA-256 of every record (the records of both modes must be identical). The machine is shared: the load
average is recorded beside every run; CPU seconds and bytes are the figures to compare, wall is indicative.

    .venv/bin/python benchmarks/bench_one_pass.py --size-gb 1 --repeat 3 --workdir /tmp/parallel_bench \\
        --out benchmarks/results/bench_one_pass.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MIN_LAYER_MATCH = 0.3  # thresholds.toml [weights] derived_min_centred (the audits pass it)


def _digest(records) -> str:
    from modellineage.reporting.evidence import to_jsonable

    h = hashlib.sha256()
    for m in records:
        reading = {k: v for k, v in m.reading.items() if k != "one_pass"}
        h.update(json.dumps(to_jsonable(m.comparison.as_dict()), sort_keys=True).encode())
        h.update(json.dumps(to_jsonable(reading), sort_keys=True).encode())
    return h.hexdigest()


def child(args) -> dict:
    import bench_weights as bw

    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source
    from modellineage.weights import pipeline

    def open_(p):
        return Model(p.name, resolve_source(str(p)))

    root = args.workdir
    target, refs = open_(root / "target"), [open_(root / "reference"), open_(root / "independent")]
    stores = [target.store] + [r.store for r in refs]
    io0, ru0, t0 = bw._io(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    side = pipeline.measure_target(target, sample=args.sample)
    if args.mode == "sequential":
        records = [pipeline.measure(target, r, min_layer_match=MIN_LAYER_MATCH, sample=args.sample, seed=0,
                                    target_side=side) for r in refs]
    else:
        records = pipeline.measure_many(target, refs, min_layer_match=MIN_LAYER_MATCH, sample=args.sample, seed=0,
                                        target_side=side)
    wall = time.perf_counter() - t0
    ru, io = resource.getrusage(resource.RUSAGE_SELF), bw._io()
    present = [sum(s.info(n).nbytes for n in s.names()) for s in stores]
    out = {"mode": args.mode, "cache": args.cache, "sample": args.sample, "wall_s": round(wall, 2),
           "cpu_s": round((ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime), 2),
           "peak_rss_mib": round(bw._hwm_mib(), 1),
           "bytes_read": {"target": stores[0].bytes_read, "reference": stores[1].bytes_read,
                          "independent": stores[2].bytes_read, "total": sum(s.bytes_read for s in stores)},
           "bytes_present": {"target": present[0], "each_reference": present[1], "total": sum(present)},
           "rchar": io["rchar"] - io0["rchar"], "read_bytes": io["read_bytes"] - io0["read_bytes"],
           "records_sha256": _digest(records), "loadavg_after": os.getloadavg()}
    if args.mode == "one_pass":
        out["one_pass"] = {k: v for k, v in records[0].reading["one_pass"].items() if k != "note"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/parallel_bench"))
    ap.add_argument("--samples", type=float, nargs="*", default=[0.1], help="sampled runs besides the full read")
    ap.add_argument("--caches", nargs="*", default=["hot", "cold"], choices=["hot", "cold"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode, interleaved (medians reported)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=["sequential", "one_pass"], help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--sample", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    import bench_scale as bs
    import bench_weights as bw

    t0 = time.perf_counter()
    paths = bs.write_models(args.workdir, args.size_gb)
    written = time.perf_counter() - t0
    runs = []
    plan = [(sample, cache, mode) for sample in [None, *args.samples] for cache in args.caches
            for _ in range(args.repeat) for mode in ("sequential", "one_pass")]  # modes interleaved
    for sample, cache, mode in plan:
        if cache == "hot":
            bs.warm(paths.values())
        else:
            bw._evict(paths.values())
        cmd = [sys.executable, __file__, "--child", "--workdir", str(args.workdir), "--mode", mode,
               "--cache", cache] + ([] if sample is None else ["--sample", str(sample)])
        load = os.getloadavg()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        run = json.loads(proc.stdout.strip().splitlines()[-1])
        run["loadavg_before"] = load
        runs.append(run)
        print(json.dumps({k: run[k] for k in ("mode", "cache", "sample", "wall_s", "cpu_s", "peak_rss_mib",
                                               "bytes_read", "read_bytes")}), flush=True)
    for sample in [None, *args.samples]:
        digests = {r["records_sha256"] for r in runs if r["sample"] == sample}
        assert len(digests) == 1, f"records differ between modes at sample {sample}"
    medians = []
    for sample in [None, *args.samples]:
        for cache in args.caches:
            for mode in ("sequential", "one_pass"):
                mine = [r for r in runs if (r["sample"], r["cache"], r["mode"]) == (sample, cache, mode)]
                medians.append({"sample": sample, "cache": cache, "mode": mode, "runs": len(mine),
                                **{k: statistics.median(r[k] for r in mine)
                                   for k in ("wall_s", "cpu_s", "peak_rss_mib", "rchar", "read_bytes")},
                                "bytes_read": mine[0]["bytes_read"]})
                print(json.dumps(medians[-1]), flush=True)
    result = {"size_gb_per_side": args.size_gb, "medians": medians, "models_written_s": round(written, 1),
              "cpus": os.cpu_count(), "runs": runs, "command": " ".join(sys.argv)}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
