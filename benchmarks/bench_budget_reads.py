"""Bytes a whole ``pytest audits/ --budget 1%`` run reads from the model files, counted by the kernel.

Writes a synthetic BF16 Qwen2-MoE pair (benchmarks/bench_weights.py's generator: ``reference`` and
``target`` = reference + 10 % noise, sharded safetensors, config.json, no tokenizer) of ``--size-gb`` per
side, then runs the whole audit suite on it as a subprocess under ``strace -ff`` (every ``read``,
``pread64``, ``readv``, ``preadv``, ``preadv2`` and ``mmap`` of every thread, with the file each descriptor
names): whatever reads a model file — the weight and independence measurements, the reuse and finiteness
digests, the evidence's file hashes, header parsing, a library we forgot — is counted, by the kernel's
answer, not by the library's own counters. A model file mapped into memory would escape a count of reads, so
each ``mmap`` of a model file counts at its full length (the streamed comparison maps bounded windows of the
rows it reads: an upper bound of the pages it can touch).

Modes: ``budget`` (``--budget``, default 1%) and ``full`` (no budget: every byte at least once, for
scale). Reported per mode: bytes read from weight files (total, by ``read`` — headers and streamed hashes —
and by ``pread``/``preadv`` — tensor rows), the share of the pair's bytes, the sum of the files' header
sizes, bytes read from the other model files (config.json, the index), the reading layer's own counts from
evidence.json (weights/independence ``reading`` records, the digests' ``bytes_read``), wall time, exit code.

    .venv/bin/python benchmarks/bench_budget_reads.py --size-gb 1 --workdir /tmp/hashing_bench \\
        --out benchmarks/results/bench_budget_reads.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_weights as bw  # noqa: E402

_MMAP_LENGTH = re.compile(r"^mmap\([^,]+, (\d+),")
_CALL = re.compile(r"^(read|pread64|readv|preadv|preadv2|mmap)\((?:.*?, )?(\d+)<([^>]*)>.*\) = (-?\d+|0x[0-9a-f]+)")


def write(root: Path, size_gb: float, shard_gb: float) -> tuple[Path, Path]:
    t, r = root / "target", root / "reference"
    if not ((t / "config.json").exists() and (r / "config.json").exists()):
        bw.write_pair(root, int(size_gb * bw.GIB), int(shard_gb * bw.GIB))
    return t, r


def header_bytes(path: Path) -> int:
    with open(path, "rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def count(trace_dir: Path, models: list[Path]) -> dict:
    """Sum the kernel's answers to reads of files under ``models``, from strace's per-thread files."""
    roots = [str(m.resolve()) + "/" for m in models]
    out = {"weights_read": 0, "weights_pread": 0, "weights_mapped": 0, "other_model_files": 0,
           "mmap_of_model_files": 0, "calls": 0}
    per_file: dict[str, int] = {}
    for f in sorted(trace_dir.iterdir()):
        for line in f.read_text(errors="replace").splitlines():
            m = _CALL.match(line)
            if not m or not any(m.group(3).startswith(r) for r in roots):
                continue
            call, path, ret = m.group(1), m.group(3), m.group(4)
            if call == "mmap":
                if ret.startswith("-"):  # a failed mapping touches nothing
                    continue
                out["mmap_of_model_files"] += 1
                n = int(_MMAP_LENGTH.match(line).group(1))
            else:
                n = int(ret)
            if n <= 0:
                continue
            out["calls"] += 1
            per_file[path] = per_file.get(path, 0) + n
            if path.endswith((".safetensors", ".gguf")):
                out["weights_read" if call in ("read", "readv") else
                    "weights_mapped" if call == "mmap" else "weights_pread"] += n
            else:
                out["other_model_files"] += n
    out["weights_total"] = out["weights_read"] + out["weights_pread"] + out["weights_mapped"]
    out["per_file"] = dict(sorted(per_file.items()))
    return out


def reading_layer(evidence: Path) -> dict:
    """What the library says it read: the weights/independence ``reading`` records and the digests."""
    doc = json.loads(evidence.read_text())
    out = {"weights": {}, "independence": {}, "digests": {}, "inputs": []}
    for a in doc["audits"]:
        m = a.get("measurements", {})
        if "reading" in m and isinstance(m["reading"], dict):
            fam = "independence" if "independence" in a["nodeid"] else "weights"
            out[fam][a["nodeid"]] = {k: m["reading"].get(k) for k in ("bytes_read", "bytes_present", "share_read",
                                                                       "within_budget")}
        cov = m.get("digest_coverage")
        if isinstance(cov, dict):
            out["digests"][a["nodeid"]] = cov
    out["inputs"] = [{k: i.get(k) for k in ("model", "path", "size", "sha256", "sha256_source", "header_sha256")}
                     for i in doc["inputs"]]
    out["outcomes"] = {a["nodeid"]: a["outcome"] for a in doc["audits"]}
    return out


def run(mode: str, t: Path, r: Path, work: Path, budget: str) -> dict:
    trace = work / f"strace_{mode}"
    shutil.rmtree(trace, ignore_errors=True)
    trace.mkdir(parents=True)
    ev = work / f"evidence_{mode}.json"
    cmd = ["strace", "-ff", "--seccomp-bpf", "-qq", "-s", "0", "-y", "-e", "signal=none",
           "-e", "trace=read,pread64,readv,preadv,preadv2,mmap", "-o", str(trace / "t"),
           sys.executable, "-m", "pytest", "audits/", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "--target", str(t), "--reference", f"reference={r}", "--expect", "derived",
           "--evidence", str(ev), "--html", str(work / f"report_{mode}.html")]
    if mode == "budget":
        cmd += ["--budget", budget]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    counted = count(trace, [t, r])
    shutil.rmtree(trace, ignore_errors=True)
    files = sorted(t.glob("*.safetensors")) + sorted(r.glob("*.safetensors"))
    present = sum(p.stat().st_size for p in files)
    headers = sum(header_bytes(p) for p in files)
    res = {"mode": mode, "budget": budget if mode == "budget" else None, "exit_code": proc.returncode,
           "wall_s": round(wall, 1), "pair_bytes": present, "header_bytes_sum": headers, **counted,
           "share_of_pair": counted["weights_total"] / present,
           # tensor bytes (pread/preadv, mapped windows); headers, read several times (store, plan, header
           # SHA-256), by read
           "share_of_pair_tensor_rows": (counted["weights_pread"] + counted["weights_mapped"]) / present,
           "pytest_tail": proc.stdout.strip().splitlines()[-1:] if proc.stdout else proc.stderr[-500:]}
    if ev.exists():
        res["reading_layer"] = reading_layer(ev)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="GiB per side (<= 1 on the shared machine)")
    ap.add_argument("--shard-gb", type=float, default=0.25)
    ap.add_argument("--budget", default="1%")
    ap.add_argument("--modes", nargs="+", default=["budget", "full"], choices=["budget", "full"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hashing_bench"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the written models")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        sys.exit("strace is needed (apt-get install strace)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    t, r = write(args.workdir, args.size_gb, args.shard_gb)
    written = time.perf_counter() - start
    results = {"size_gb_per_side": args.size_gb, "write_s": round(written, 1), "load_average": os.getloadavg(),
               "runs": [run(m, t, r, args.workdir, args.budget) for m in args.modes],
               "command": " ".join(["benchmarks/bench_budget_reads.py"] + sys.argv[1:])}
    text = json.dumps(results, indent=1, sort_keys=True)
    (args.out or args.workdir / "bench_budget_reads.json").write_text(text + "\n")
    for run_ in results["runs"]:
        print(f"{run_['mode']}: exit {run_['exit_code']}, weights read {run_['weights_total']:,} of "
              f"{run_['pair_bytes']:,} bytes = {run_['share_of_pair']:.3%} (tensor rows by pread "
              f"{run_['share_of_pair_tensor_rows']:.3%}; by read {run_['weights_read']:,} bytes: headers of "
              f"{run_['header_bytes_sum']:,} bytes read several times, streamed hashes), other model files "
              f"{run_['other_model_files']:,} bytes, mmap {run_['mmap_of_model_files']}, {run_['wall_s']} s")
    if not args.keep:
        shutil.rmtree(t, ignore_errors=True)
        shutil.rmtree(r, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
