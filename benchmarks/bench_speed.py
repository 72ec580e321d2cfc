"""Per-core throughput of the streamed weight comparison (BF16, hot page cache), where its CPU time goes,
and the accuracy of the rotation null's sketch.

Throughput (default): writes once a synthetic Qwen2-MoE BF16 pair of ``--size-gb`` per side
(``benchmarks/bench_weights.py``'s generator: routed experts, router, shared expert, attention with biases,
norms, embeddings, lm_head; target = reference + 10 % noise), reads it once so the page cache is hot, then
for each source tree (this checkout, and every ``--compare-with DIR``, e.g. an export of main) runs
``compare_weights(target, reference, workers=1)`` — the call the weight audit makes, every accumulator
included (moments, rotation null of embed / lm_head) — ``--repeat`` times in a child process, and once with
the default workers. Time is CPU seconds of the process (``time.process_time``): the machine's cores are
shared, so wall time says more about the neighbours than about the code. GB/s per core = bytes read by the
comparison (both sides, the stores' own counts) / CPU seconds; the median run is reported.

Shares, two ways. (1) cProfile of one more comparison in the same child: each part's functions' own time
(reading: mmap + populate + unmap, or before the pread copy; numpy BF16 decode; the compiled moment sweep;
the rotation null), the rest is Python per tensor and per window plus the profiler's own cost per call.
(2) Isolated: the same windows the comparison reads, timed part by part in one process with the library's
own calls (each part the least of ``--repeat``), the rest = the least CPU time of the comparison runs minus
those (a residual, so it also holds whatever the machine's load added). For context, on the same windows:
``pread`` into a reused buffer (the copy the mapping replaces), numpy's BF16 decode to float32, and a
numpy BF16 cosine (decode + float32 dots).

Accuracy (``--accuracy``): the rotation null's standard deviation, sketched (``similarity._RotationNull``,
40 sketch seeds) against exact, on 4096 x 1024 matrices (80 % of the variance one shared token-frequency
direction; the same with a few massive hidden dimensions; no shared structure; one side's dominant
direction not the shared one) and on the real word embeddings of all-MiniLM-L6-v2 (30522 x 384, when its
wheel is installed) against a copy with randomly rotated hidden axes; beside the one-sided Gaussian sketch
of 128 columns the library used before.

    .venv/bin/python benchmarks/bench_speed.py --size-gb 0.5 --workdir /tmp/bench_speed \\
        --compare-with /tmp/main_export --accuracy --out benchmarks/results/bench_speed.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_weights as bw  # noqa: E402

CHILD = r"""
import json, sys, time
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.weights.similarity import compare_weights
spec = json.loads(sys.argv[1])
def once(workers):
    t = Model("target", resolve_source(spec["target"]))
    r = Model("reference", resolve_source(spec["reference"]))
    c0, w0 = time.process_time(), time.perf_counter()
    comp = compare_weights(t, r, workers=workers)
    return {"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0, "bytes": comp.bytes_read,
            "pairs": len(comp.pairs),
            "centred": {p.key: p.similarity.centred_cosine for p in comp.pairs},
            "rotation_null_sd": {p.key: p.rotation_null_sd for p in comp.pairs if p.rotation_null_sd is not None}}
once(1)  # compiles (numba caches) and maps the code in
runs = [once(1) for _ in range(spec["repeat"])]
default = once(None)
import cProfile, pstats
prof = cProfile.Profile()
prof.enable()
once(1)
prof.disable()
tottime = {}
for (file, line, func), (cc, nc, tt, ct, callers) in pstats.Stats(prof).stats.items():
    key = file.rsplit("/", 2)[-1] + ":" + func
    tottime[key] = tottime.get(key, 0.0) + tt
print(json.dumps({"runs": runs, "default_workers": default, "profile_tottime": tottime}))
"""

#: cProfile's functions (``file:function``, file = last path component) -> part of the comparison.
PARTS = (
    ("read: mmap + populate + unmap (now) or the pread copy (before)",
     ("tensors.py:map_raw_row_range", "~:<method 'close' of 'mmap.mmap' objects>", "~:<built-in method posix.preadv>")),
    ("BF16 -> float32 decode in numpy (before; now only the pivots' 256-element heads)",
     ("tensors.py:decode_exact", "metrics.py:bf16_values")),
    ("moment sweep (compiled)", ("metrics.py:sweep", "metrics.py:sweep_bf16")),
    ("rotation null of embed / lm_head (sketches + product; before: two float64 BLAS products)",
     ("similarity.py:update", "metrics.py:sketch_rows", "metrics.py:sketch_rows_bf16", "metrics.py:cross",
      "metrics.py:sketch_shifted", "metrics.py:sketch_shifted_bf16", "metrics.py:count_sketch",
      "metrics.py:accumulate_cross", "similarity.py:sd")),
)


def attribute(tottime: dict[str, float]) -> dict:
    """Shares of one profiled comparison: each part's functions' own time; the rest is Python per tensor and
    per window (plans, pivots, windows, records, results) and the profiler's own cost per call."""
    total = sum(tottime.values())
    out, used = {}, 0.0
    for label, names in PARTS:
        t = sum(tottime.get(n, 0.0) for n in names)
        out[label] = t
        used += t
    out["the rest: Python per tensor and per window (+ the profiler's own cost)"] = total - used
    return {"profiled_cpu_s": round(total, 4), "seconds": {k: round(v, 4) for k, v in out.items()},
            "share": {k: round(v / total, 3) for k, v in out.items()}}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _warm(dirs) -> int:
    total = 0
    for d in dirs:
        for f in sorted(Path(d).glob("*.safetensors")):
            with open(f, "rb") as fh:
                while chunk := fh.read(16 << 20):
                    total += len(chunk)
    return total


def run_tree(src: Path, target: Path, reference: Path, repeat: int) -> dict:
    """``compare_weights`` in a child process importing ``modellineage`` from ``src``."""
    _warm([target, reference])
    load = _load()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({"target": str(target), "reference": str(reference),
                                                                    "repeat": repeat})],
                          capture_output=True, text=True, cwd=src, env=dict(os.environ, PYTHONPATH=str(src)))
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    runs = out["runs"]
    cpu = statistics.median(r["cpu_s"] for r in runs)
    nbytes = runs[0]["bytes"]
    d = out["default_workers"]
    return {"source": str(src), "pairs": runs[0]["pairs"], "bytes": nbytes,
            "cpu_s": [round(r["cpu_s"], 4) for r in runs], "wall_s": [round(r["wall_s"], 4) for r in runs],
            "median_cpu_s": cpu, "gb_s_per_core": nbytes / cpu / 1e9,
            "default_workers": {"cpu_s": d["cpu_s"], "wall_s": d["wall_s"], "gb_s_wall": nbytes / d["wall_s"] / 1e9,
                                "gb_s_per_core": nbytes / d["cpu_s"] / 1e9},
            "centred": runs[0]["centred"], "rotation_null_sd": runs[0]["rotation_null_sd"],
            "profile": attribute(out["profile_tottime"]),
            "load_before": load, "load_after": _load()}


# ---- shares -----------------------------------------------------------------------------------------------
def shares(target: Path, reference: Path, total_cpu: float, repeat: int) -> dict:
    """Time the parts of the comparison's fast path on its own windows (see the module docstring)."""
    from modellineage.reading.model import Model
    from modellineage.reading.sources import resolve_source
    from modellineage.reading.tensors import decode_exact
    from modellineage.weights import metrics
    from modellineage.weights.similarity import _DEFAULT_CHUNK, STREAM_READ_BYTES, _RotationNull, row_plan

    t = Model("target", resolve_source(str(target)))
    r = Model("reference", resolve_source(str(reference)))
    kern = metrics._kernels()
    windows = []  # (target source, reference source, start, stop, token matrix)
    for key, tref in t.name_map.refs.items():
        rref = r.name_map.refs.get(key)
        if rref is None:
            continue
        info = t.store.info(tref.source)
        plan = row_plan(tref, info)
        rows, width = plan.shape
        chunk_rows = max(1, _DEFAULT_CHUNK // max(1, width * 8))
        read_rows = max(1, min(chunk_rows, STREAM_READ_BYTES // max(1, width * 8)))
        token = tref.role in ("embed", "lm_head") and len(tref.shape) == 2
        for lo in range(0, rows, read_rows):
            windows.append((tref.source, rref.source, lo, min(rows, lo + read_rows), token, info.cols))
    parts = {k: [] for k in ("mapping", "moment_sweep", "rotation_null", "pread_copy", "numpy_decode",
                             "numpy_cosine")}
    nbytes = 0
    for _ in range(repeat):
        acc = dict.fromkeys(parts, 0.0)
        nbytes = 0
        nulls = {}
        for ts, rs, lo, hi, token, cols in windows:
            c0 = time.process_time()
            ma, mb = t.store.map_raw_row_range(ts, lo, hi), r.store.map_raw_row_range(rs, lo, hi)
            c1 = time.process_time()
            a, b = ma.data.view(np.uint16), mb.data.view(np.uint16)
            kern.sweep_bf16(a, b, 0.0, 0.0, metrics.BF16_BLOCK)
            c2 = time.process_time()
            if token:
                null = nulls.setdefault(ts, _RotationNull(cols))
                null.update(a.reshape(hi - lo, cols), b.reshape(hi - lo, cols), bits=True, pivot=(0.0, 0.0))
            c3 = time.process_time()
            nbytes += a.nbytes + b.nbytes
            del a, b
            ma.close()
            mb.close()
            c4 = time.process_time()
            acc["mapping"] += (c1 - c0) + (c4 - c3)
            acc["moment_sweep"] += c2 - c1
            acc["rotation_null"] += c3 - c2
        buf = np.empty(2 * STREAM_READ_BYTES, dtype=np.uint8)
        wide = np.empty(STREAM_READ_BYTES, dtype=np.uint32)
        for ts, rs, lo, hi, token, cols in windows:
            c0 = time.process_time()
            va = t.store.read_raw_row_range(ts, lo, hi, into=buf[:STREAM_READ_BYTES])
            vb = r.store.read_raw_row_range(rs, lo, hi, into=buf[STREAM_READ_BYTES:])
            c1 = time.process_time()
            fa = decode_exact("BF16", va, (hi - lo, cols), scratch=wide[:STREAM_READ_BYTES // 2])
            fb = decode_exact("BF16", vb, (hi - lo, cols), scratch=wide[STREAM_READ_BYTES // 2:])
            c2 = time.process_time()
            x, y = fa.reshape(-1, cols), fb.reshape(-1, cols)
            (metrics._dots(x, x).sum(), metrics._dots(y, y).sum(), metrics._dots(x, y).sum())
            c3 = time.process_time()
            acc["pread_copy"] += c1 - c0
            acc["numpy_decode"] += c2 - c1
            acc["numpy_cosine"] += (c3 - c1)
        for k in parts:
            parts[k].append(acc[k])
    med = {k: min(v) for k, v in parts.items()}  # least CPU of the repeats, as the total: the least disturbed
    inside = med["mapping"] + med["moment_sweep"] + med["rotation_null"]
    table = {
        "mapping (mmap + populate + unmap of both sides' windows)": med["mapping"],
        "moment sweep (compiled, BF16 bits decoded in registers)": med["moment_sweep"],
        "rotation null (CountSketch of both sides + k x k product; embed and lm_head only)": med["rotation_null"],
        "the rest: Python per tensor and per window (plans, pivots, windows, records, results)":
            total_cpu - inside,
    }
    return {
        "windows": len(windows), "bytes": nbytes, "total_cpu_s": total_cpu,
        "seconds": {k: round(v, 4) for k, v in table.items()},
        "share": {k: round(v / total_cpu, 3) for k, v in table.items()},
        "gb_s_per_core_of_part": {k: round(nbytes / v / 1e9, 2) for k, v in table.items() if v > 0},
        "context_gb_s_per_core": {
            "pread copy into a reused buffer (what the mapping replaced)": round(nbytes / med["pread_copy"] / 1e9, 2),
            "numpy BF16 -> float32 decode (the old path's decode)": round(nbytes / med["numpy_decode"] / 1e9, 2),
            "numpy BF16 cosine: numpy decode + three float32 row dots, no centring, no read":
                round(nbytes / med["numpy_cosine"] / 1e9, 2),
        },
        "token_elements_per_side": sum((hi - lo) * c for _, _, lo, hi, tok, c in windows if tok),
        "tensors_per_side": len({w[0] for w in windows}),
    }


# ---- accuracy --------------------------------------------------------------------------------------------
def _exact_sd(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.linalg.norm(a.T @ b) / (math.sqrt(a.shape[1]) * np.linalg.norm(a) * np.linalg.norm(b)))


def _gaussian_sd(a: np.ndarray, b: np.ndarray, k: int, seed: int) -> float:
    """The estimator the library used before: one-sided Gaussian sketch of k columns."""
    a, b = a - a.mean(), b - b.mean()
    g = np.random.default_rng([0x524F54, a.shape[1], seed]).standard_normal((a.shape[1], k))
    return float(np.linalg.norm(a.T @ (b @ g)) / math.sqrt(k) / (math.sqrt(a.shape[1]) * np.linalg.norm(a)
                                                                  * np.linalg.norm(b)))


def _sketched_sd(a: np.ndarray, b: np.ndarray, seed: int) -> float:
    from modellineage.weights.metrics import similarity
    from modellineage.weights.similarity import _RotationNull

    null = _RotationNull(a.shape[1], seed=seed)
    for lo in range(0, a.shape[0], 2048):
        null.update(a[lo:lo + 2048], b[lo:lo + 2048])
    return null.sd(similarity(a, b))


def _cases(rows: int = 4096, width: int = 1024) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    freq = np.log(rng.zipf(1.3, rows).clip(max=10**6))
    freq = (freq - freq.mean()) / freq.std()
    out = {}
    for kind in ("shared 80 %", "shared 80 %, 4 massive hidden dims", "no shared structure"):
        sides = []
        for _ in range(2):
            u = rng.standard_normal(width)
            if "massive" in kind:
                u[rng.choice(width, 4, replace=False)] *= 30
            u /= np.linalg.norm(u)
            share = 0.0 if kind.startswith("no") else 0.8
            sides.append(math.sqrt(share * width) * np.outer(freq, u)
                         + math.sqrt(1 - share) * rng.standard_normal((rows, width)))
        out[kind] = tuple(sides)
    g = rng.standard_normal(rows)
    u, w, v = (x / np.linalg.norm(x) for x in rng.standard_normal((3, width)))
    out["one side's dominant direction not shared"] = (
        math.sqrt(0.3 * width) * np.outer(freq, u) + math.sqrt(0.6 * width) * np.outer(g, w)
        + math.sqrt(0.1) * rng.standard_normal((rows, width)),
        math.sqrt(0.8 * width) * np.outer(freq, v) + math.sqrt(0.2) * rng.standard_normal((rows, width)))
    try:
        sys.path.insert(0, str(ROOT / "tests"))
        import zipfile

        import bert_builders as bb
        from safetensors.numpy import load

        with zipfile.ZipFile(bb.package_file(bb.PACKAGE, "model.zip")) as zf:
            emb = load(zf.read("model.safetensors"))["embeddings.word_embeddings.weight"].astype(np.float64)
        q, _ = np.linalg.qr(rng.standard_normal((emb.shape[1], emb.shape[1])))
        out["all-MiniLM-L6-v2 word embeddings vs a copy with rotated hidden axes"] = (emb, emb @ q)
    except Exception as exc:  # noqa: BLE001 - the wheel is a test extra
        print(f"MiniLM case skipped: {exc}", flush=True)
    return out


def accuracy(seeds: int) -> dict:
    out = {}
    for name, (a, b) in _cases().items():
        exact = _exact_sd(a, b)
        row = {"shape": list(a.shape), "exact_sd": exact}
        for label, fn in (("countsketch_ratio_k128 (now)", lambda s: _sketched_sd(a, b, s)),
                          ("gaussian_one_sided_k128 (before)", lambda s: _gaussian_sd(a, b, 128, s))):
            rel = np.array([fn(s) / exact - 1 for s in range(seeds)])
            row[label] = {"mean_rel_error": round(float(rel.mean()), 4),
                          "rms_rel_error": round(float(np.sqrt((rel ** 2).mean())), 4),
                          "max_abs_rel_error": round(float(np.abs(rel).max()), 4)}
        row["library_figure_rel_error"] = round(_sketched_sd(a, b, None) / exact - 1, 4)  # the fixed seed
        out[name] = row
        print(f"  {name}: exact {exact:.4f}; " + "; ".join(
            f"{k}: rms {v['rms_rel_error']:.3f} mean {v['mean_rel_error']:+.3f} max {v['max_abs_rel_error']:.3f}"
            for k, v in row.items() if isinstance(v, dict)), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=0.5, help="GiB per side of the synthetic BF16 pair")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench_speed"))
    ap.add_argument("--repeat", type=int, default=5, help="runs per source tree (median reported)")
    ap.add_argument("--compare-with", type=Path, nargs="*", default=[],
                    help="other source trees (e.g. an export of main) measured the same way")
    ap.add_argument("--accuracy", action="store_true", help="also measure the rotation null's sketch error")
    ap.add_argument("--accuracy-only", action="store_true")
    ap.add_argument("--seeds", type=int, default=40)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    doc = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": bw._machine(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not args.accuracy_only:
        root = args.workdir.resolve() / f"{args.size_gb:g}gb"
        target, reference = root / "target", root / "reference"
        if not ((target / "config.json").exists() and (reference / "config.json").exists()):
            t0 = time.perf_counter()
            target, reference, shape = bw.write_pair(root, int(args.size_gb * bw.GIB), int(0.5 * bw.GIB))
            print(f"wrote {shape} in {time.perf_counter() - t0:.0f} s", flush=True)
        doc["model_bytes"] = sum(f.stat().st_size for d in (target, reference) for f in d.glob("*.safetensors"))
        trees = {"this checkout": run_tree(ROOT, target, reference, args.repeat)}
        for other in args.compare_with:
            trees[str(other)] = run_tree(other.resolve(), target, reference, args.repeat)
        mine = trees["this checkout"]
        for name, res in trees.items():
            print(f"{name}: {res['gb_s_per_core']:.2f} GB/s per core (median CPU {res['median_cpu_s']:.3f} s over "
                  f"{res['bytes'] / 1e9:.2f} GB, runs {res['cpu_s']}); default workers: "
                  f"{res['default_workers']['gb_s_per_core']:.2f} GB/s per core, {res['default_workers']['gb_s_wall']:.2f} "
                  f"wall; load {res['load_before']}-{res['load_after']}", flush=True)
            print("  shares (cProfile): " + "; ".join(f"{k.split(':')[0].split(' (')[0]} {v:.0%}"
                                                     for k, v in res["profile"]["share"].items()), flush=True)
            if res is not mine:
                res["max_centred_difference_vs_this"] = max(abs(res["centred"][k] - mine["centred"][k])
                                                            for k in mine["centred"])
                res["rotation_null_sd_rel_difference_vs_this"] = {
                    k: v / mine["rotation_null_sd"][k] - 1 for k, v in res["rotation_null_sd"].items()}
        doc["throughput"] = trees
        _warm([target, reference])
        doc["shares"] = shares(target, reference, min(mine["cpu_s"]), args.repeat)
        doc["shares"]["load"] = _load()
        print(json.dumps({k: v for k, v in doc["shares"].items()}, indent=1), flush=True)
    if args.accuracy or args.accuracy_only:
        doc["accuracy"] = accuracy(args.seeds)
    doc["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
