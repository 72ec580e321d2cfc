#!/usr/bin/env python
"""Calibrate the behaviour family's bounds on pairs whose relation is known, all trained on CPU.

Usage::

    python benchmarks/calibrate_behaviour.py --seeds 2 3 --workdir /tmp/calibrate_behaviour \\
        --out benchmarks/results/calibrate_behaviour.json

Models (demo architecture, tokenizer, text and recipe, fixtures/build_demo.py):

* independent bases: demo ``base`` (init seed 0) and ``scratch`` (seed 1) plus one more per ``--seeds``,
  all on the same text *and the same batches*: the hardest null — independently initialised models that
  learnt exactly the same data;
* fine-tunes: demo ``finetune`` (of ``base``) and one per extra seed (the demo's finetune recipe);
* distilled students: ``fixtures/distilled/student`` (of ``base``) and one per extra seed's base
  (fixtures/build_distilled.py's recipe with init seed 7 + seed).

Pairs: every two bases, every fine-tune and student with every base that is not its parent (independent);
fine-tune vs its base (derived); student vs its teacher (distilled). Each pair is measured exactly as the
audit measures it (``modellineage.behaviour.profile`` + ``compare`` on the bundled probes, local backend).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
sys.path.insert(0, str(ROOT))

import build_demo as demo  # noqa: E402
import build_distilled as distilled  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from modellineage.behaviour import LocalBackend, compare, load_probes, profile  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402

FIGURES = {
    "next_token_mean_jsd": lambda c: c.next_token.mean_jsd,
    "next_token_top1_agreement": lambda c: c.next_token.top1_agreement,
    "continuation_token_agreement": lambda c: c.continuation.agreement,
    "continuation_prefix_share": lambda c: c.continuation.prefix_share,
    "continuation_excess": lambda c: c.continuation.excess,
    "representation_mean_cka": lambda c: c.representation.mean_cka,
}


def build(workdir: Path, seeds: list[int]) -> dict[str, tuple[Path, str, str | None]]:
    """name -> (folder, kind, parent). Extra models are trained into ``workdir``."""
    models = {"base0": (ROOT / "fixtures/demo/base", "base", None),
              "base1": (ROOT / "fixtures/demo/scratch", "base", None),
              "finetune0": (ROOT / "fixtures/demo/finetune", "finetune", "base0"),
              "student0": (ROOT / "fixtures/distilled/student", "student", "base0")}
    demo.setup_determinism()
    tok = Tokenizer.from_file(str(ROOT / "fixtures/demo/base/tokenizer.json"))
    ids = {k: torch.tensor(tok.encode((demo.TEXT_DIR / f).read_text(encoding="utf-8"), add_special_tokens=False).ids)
           for k, f in (("A", demo.TEXT_A), ("B", demo.TEXT_B))}
    for seed in seeds:
        out = workdir / f"base{seed}"
        if not (out / "model.safetensors").exists():
            t = time.perf_counter()
            torch.manual_seed(seed)
            model = LlamaForCausalLM(LlamaConfig(**demo.ARCH)).to(torch.float32)
            demo.train(model, ids["A"], {**demo.RECIPES["base"], "init_seed": seed})
            demo.save_model(model, tok, out)
            ft = LlamaForCausalLM(LlamaConfig(**demo.ARCH))
            ft.load_state_dict(model.state_dict())
            demo.train(ft, ids["B"], demo.RECIPES["finetune"])
            demo.save_model(ft, tok, workdir / f"finetune{seed}")
            model.eval()
            student, _ = distilled.distil(model, ids["A"], {**distilled.STUDENT, "init_seed": 7 + seed})
            demo.save_model(student, tok, workdir / f"student{seed}")
            print(f"seed {seed}: base, finetune, student trained ({time.perf_counter() - t:.0f}s)", flush=True)
        models[f"base{seed}"] = (out, "base", None)
        models[f"finetune{seed}"] = (workdir / f"finetune{seed}", "finetune", f"base{seed}")
        models[f"student{seed}"] = (workdir / f"student{seed}", "student", f"base{seed}")
    return models


def calibration_pairs(models: dict) -> list[tuple[str, str, str]]:
    """``(target, reference, relation)`` for every calibration pair among ``models`` (name -> (folder, kind,
    parent)): base vs base is independent; a fine-tune or student vs its own base is derived / distilled, vs
    another base independent (the child is the target). Child vs child is skipped: related only through a base,
    not a calibration class."""
    out = []
    for a, b in itertools.combinations(sorted(models), 2):
        ka, kb = models[a][1], models[b][1]
        if ka != "base" and kb != "base":
            continue
        if ka == "base" and kb == "base":
            out.append((a, b, "independent"))
            continue
        child, parent = (a, b) if ka != "base" else (b, a)
        kind, own = models[child][1], models[child][2]
        out.append((child, parent, ("derived" if kind == "finetune" else "distilled") if own == parent
                    else "independent"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[2, 3], help="init seeds of the extra bases (not 0/1)")
    ap.add_argument("--workdir", default="/tmp/calibrate_behaviour")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/calibrate_behaviour.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    models = build(workdir, args.seeds)
    probes = load_probes()
    profiles = {}
    for name, (folder, _, _) in models.items():
        profiles[name] = profile(LocalBackend(Model(name, resolve_source(str(folder)))), probes)
        print(f"profiled {name}", flush=True)
    pairs = []
    for a, b, relation in calibration_pairs(models):
        c = compare(profiles[a], profiles[b])
        pairs.append({"target": a, "reference": b, "relation": relation,
                      **{k: round(f(c), 6) for k, f in FIGURES.items()}})
    summary = {}
    for relation in ("independent", "derived", "distilled"):
        rows = [p for p in pairs if p["relation"] == relation]
        summary[relation] = {"pairs": len(rows), **{k: {"min": min(p[k] for p in rows), "max": max(p[k] for p in rows)}
                                                    for k in FIGURES}}
    doc = {"script": "benchmarks/calibrate_behaviour.py", "seeds": args.seeds, "probes": probes.as_dict(),
           "models": {n: {"kind": k, "parent": p} for n, (_, k, p) in sorted(models.items())},
           "pairs": pairs, "summary": summary, "seconds": round(time.perf_counter() - t0, 1),
           "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
