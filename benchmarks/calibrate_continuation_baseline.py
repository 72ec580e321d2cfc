#!/usr/bin/env python
"""Continuation agreement against its own baseline (continuations of *different* prompts), on the calibration
models of benchmarks/calibrate_behaviour.py: does the excess separate distilled students from independent pairs
better than the raw agreement does?

Usage (after calibrate_behaviour.py has trained its models into its workdir)::

    python benchmarks/calibrate_continuation_baseline.py --workdir /tmp/calibrate_behaviour \\
        --out benchmarks/results/calibrate_continuation_baseline.json

Same models, pairs and relations as calibrate_behaviour.py (4 bases, 3 fine-tunes, 3 students; 24 independent,
3 derived, 3 distilled pairs); each pair through ``modellineage.behaviour.compare`` on the bundled probes, as
the audit measures it. Nothing here is fitted: the baseline is the mean positional agreement of target
continuation i with reference continuation j != i (what a shared style alone gives).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.calibrate_behaviour import calibration_pairs  # noqa: E402
from modellineage.behaviour import LocalBackend, compare, load_probes, profile  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402

FIGURES = ("agreement", "baseline", "excess", "p_value")


def models(workdir: Path) -> dict[str, tuple[Path, str, str | None]]:
    """name -> (folder, kind, parent), as calibrate_behaviour.build lists them (seeds 2, 3 from ``workdir``)."""
    out = {"base0": (ROOT / "fixtures/demo/base", "base", None),
           "base1": (ROOT / "fixtures/demo/scratch", "base", None),
           "finetune0": (ROOT / "fixtures/demo/finetune", "finetune", "base0"),
           "student0": (ROOT / "fixtures/distilled/student", "student", "base0")}
    for seed in (2, 3):
        out[f"base{seed}"] = (workdir / f"base{seed}", "base", None)
        out[f"finetune{seed}"] = (workdir / f"finetune{seed}", "finetune", f"base{seed}")
        out[f"student{seed}"] = (workdir / f"student{seed}", "student", f"base{seed}")
    missing = [str(f) for f, _, _ in out.values() if not (f / "model.safetensors").exists()]
    if missing:
        raise SystemExit(f"run benchmarks/calibrate_behaviour.py first; missing: {', '.join(missing)}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/calibrate_behaviour")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/calibrate_continuation_baseline.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    found = models(Path(args.workdir))
    probes = load_probes()
    profiles = {n: profile(LocalBackend(Model(n, resolve_source(str(f)))), probes) for n, (f, _, _) in found.items()}
    pairs = []
    for a, b, relation in calibration_pairs(found):
        c = compare(profiles[a], profiles[b]).continuation
        pairs.append({"target": a, "reference": b, "relation": relation, "level": c.level,
                      **{k: round(getattr(c, k), 6) for k in FIGURES}})
    summary = {}
    for relation in ("independent", "derived", "distilled"):
        rows = [p for p in pairs if p["relation"] == relation]
        summary[relation] = {"pairs": len(rows), **{k: {"min": min(p[k] for p in rows), "max": max(p[k] for p in rows)}
                                                    for k in FIGURES}}
    doc = {"script": "benchmarks/calibrate_continuation_baseline.py", "probes": probes.as_dict(),
           "pairs": pairs, "summary": summary, "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
