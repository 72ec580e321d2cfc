"""The full audit of a remote pair over a real HTTP server on loopback: bytes fetched, wall time, peak RSS.

Writes a synthetic sharded Qwen2-MoE BF16 pair (``bench_weights.write_pair``: 16 routed experts + router +
shared expert per layer, 0.5 GiB shards; target = reference + 10 % noise) of ``--size-gb`` GiB per side
into ``--workdir``, starts nginx (Debian ``nginx``/``nginx-light``) on loopback with its own temporary
config serving it, and runs the whole audit suite (``pytest audits/ --target URL --reference ref=URL
--expect derived --allow-download``) in a subprocess, each with a fresh or kept ``HF_HOME``:

- ``local``: the same audit on the folders on disk (page cache evicted first);
- ``remote_cold``: empty range cache: every byte the audit reads is fetched;
- ``remote_warm``: the range cache of ``remote_cold``: a second audit must fetch nothing;
- ``remote_sample``: empty range cache, ``--sample 0.1``.

Per run: wall time, peak RSS of the audit process (``wait4``), exit status, the evidence's ``network``
section (bytes fetched per file, requests, connections) and nginx's access log (requests and body bytes
sent, counted by the server). Models and caches are deleted afterwards unless ``--keep``.

    .venv/bin/python benchmarks/bench_remote.py --size-gb 4 --workdir /tmp/bench_remote \\
        --out benchmarks/results/bench_remote.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_weights import GIB, _evict, write_pair  # noqa: E402
from tests.range_server import NGINX, Nginx  # noqa: E402


def _audit(args: list[str], hf_home: Path, evidence: Path) -> dict:
    cmd = [sys.executable, "-m", "pytest", "audits/", "-q", "-p", "no:cacheprovider", "--evidence", str(evidence),
           "--html", str(evidence.with_suffix(".html")), *args]
    env = dict(os.environ, HF_HOME=str(hf_home))
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    data = json.loads(evidence.read_text()) if evidence.exists() else {}
    outcomes: dict[str, int] = {}
    for a in data.get("audits", []):
        outcomes[a["outcome"]] = outcomes.get(a["outcome"], 0) + 1
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "exit": proc.returncode,
            "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "outcomes": outcomes,
            "network": data.get("network"), "summary_line": out.strip().splitlines()[-1] if out.strip() else ""}


def _nginx_counts(lines: list[str]) -> dict:
    """Requests and body bytes sent from nginx's combined access log lines."""
    requests = sent = ranged = 0
    for line in lines:
        try:
            status, size = line.split('"')[2].split()[:2]
        except (IndexError, ValueError):
            continue
        requests += 1
        ranged += status == "206"
        sent += int(size) if size.isdigit() else 0
    return {"requests": requests, "range_requests": ranged, "body_bytes_sent": sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=4.0, help="GiB per side")
    ap.add_argument("--shard-gb", type=float, default=0.5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_remote"))
    ap.add_argument("--modes", nargs="+", default=["local", "remote_cold", "remote_warm", "remote_sample"])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    if NGINX is None:
        print("nginx is not installed (Debian: apt-get install nginx-light); nothing measured", file=sys.stderr)
        return 0
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    models = work / "models"
    t0 = time.perf_counter()
    target, reference, shape = write_pair(models, int(args.size_gb * GIB), int(args.shard_gb * GIB))
    written = time.perf_counter() - t0
    side_bytes = sum(f.stat().st_size for f in target.iterdir())
    results: dict = {"benchmark": "bench_remote", "size_gib_per_side": args.size_gb, "bytes_per_side": side_bytes,
                     "shape": shape, "write_seconds": round(written, 1), "server": "nginx " + subprocess.run(
                         [NGINX, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "runs": {}}
    try:
        with Nginx(models) as nginx:
            urls = ["--target", f"{nginx.url}/target/", "--reference", f"reference={nginx.url}/reference/",
                    "--expect", "derived", "--allow-download"]
            for mode in args.modes:
                hf_home = work / ("hf_sample" if mode == "remote_sample" else "hf")
                if mode in ("remote_cold", "remote_sample"):
                    shutil.rmtree(hf_home, ignore_errors=True)
                _evict([target, reference])
                before = len(nginx.access_log())
                if mode == "local":
                    run = _audit(["--target", str(target), "--reference", f"reference={reference}", "--expect",
                                  "derived"], hf_home, work / "local.json")
                else:
                    run = _audit(urls + (["--sample", "0.1"] if mode == "remote_sample" else []), hf_home,
                                 work / f"{mode}.json")
                    run["nginx"] = _nginx_counts(nginx.access_log()[before:])
                    if run["network"]:
                        fetched = sum(f["bytes_fetched"] for f in run["network"]["files"])
                        run["bytes_fetched"] = fetched
                        run["fetched_share_of_both_models"] = round(fetched / (2 * side_bytes), 4)
                    cache = hf_home / "modellineage" / "ranges"
                    run["range_cache_disk_bytes"] = sum(
                        os.stat(p).st_blocks * 512 for p in cache.rglob("data")) if cache.exists() else 0
                results["runs"][mode] = run
                print(mode, json.dumps({k: v for k, v in run.items() if k != "network"}), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=1, sort_keys=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
