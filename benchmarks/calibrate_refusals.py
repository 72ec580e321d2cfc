#!/usr/bin/env python
"""Calibrate the refusal measures (rate, agreement, phrasing similarity by character n-grams and by sentence
embeddings) on refusing models whose relation is known, all trained on CPU.

Usage::

    python benchmarks/calibrate_refusals.py --workdir /tmp/calibrate_refusals \\
        --bases /tmp/calibrate_behaviour --out benchmarks/results/calibrate_refusals.json

Models (demo architecture and tokenizer; fixtures/build_refusers.py's refusal fine-tune):

* four independent bases: demo ``base`` (init seed 0), ``scratch`` (seed 1), and bases of seeds 2 and 3
  (benchmarks/calibrate_behaviour.py's, taken from ``--bases`` or trained here);
* on each base, two refusers: phrasing ``A`` and phrasing ``B`` (the same requests, refused in other words);
* each refuser's derivative: trained further (the demo's fine-tune recipe, 150 steps) on text B mixed with its
  own dialogues reshuffled (``DERIVATIVE``) — new data plus the chat data kept, as a chat model's further
  fine-tune is. (On text B alone, the demo recipe — even 40 steps at lr 3e-4 — erased the refusals of these
  tiny models: 0 of 30 prompts refused, so nothing of their phrasing is left to compare.)

Pairs (each measured exactly as the audit does: ``profile`` + ``compare`` with the packaged all-MiniLM-L6-v2):

* ``derived``: a refuser's derivative vs the refuser;
* ``independent, same phrasing``: refusers (or derivatives) of different bases taught the same refusals —
  independent models that learnt from the same safety data;
* ``independent, other phrasing``: refusers of different bases taught different refusals.

Refusers of the same base in different phrasings are siblings (both derived from that base), not a class here.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

import build_demo as demo  # noqa: E402
import build_refusers as refusers  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from modellineage.behaviour import LocalBackend, compare, load_encoder, load_probes, profile  # noqa: E402
from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402

#: The derivative's data: text B plus the refuser's dialogues shuffled with another seed.
DERIVATIVE = {"recipe": "demo finetune (150 steps, lr 1e-3, embeddings frozen)", "text": "B + dialogues",
              "dialogue_seed": 500}

FIGURES = {
    "target_rate": lambda r: r.target_rate,
    "reference_rate": lambda r: r.reference_rate,
    "refusal_agreement": lambda r: r.agreement,
    "both_refused": lambda r: r.both_refused,
    "ngram_mean": lambda r: r.phrasing.mean if r.phrasing else None,
    "ngram_baseline": lambda r: r.phrasing.baseline if r.phrasing else None,
    "ngram_excess": lambda r: r.phrasing.mean - r.phrasing.baseline if r.phrasing and r.phrasing.baseline is not None
    else None,
    "ngram_p": lambda r: r.phrasing.p_value if r.phrasing else None,
    "embedding_mean": lambda r: r.embedding.mean if r.embedding else None,
    "embedding_baseline": lambda r: r.embedding.baseline if r.embedding else None,
    "embedding_excess": lambda r: r.embedding.mean - r.embedding.baseline
    if r.embedding and r.embedding.baseline is not None else None,
    "embedding_p": lambda r: r.embedding.p_value if r.embedding else None,
}


def bases(bases_dir: Path, tok: Tokenizer) -> dict[int, Path]:
    """Seed -> folder of the four independent bases (seeds 2, 3 trained into ``bases_dir`` when absent)."""
    out = {0: ROOT / "fixtures/demo/base", 1: ROOT / "fixtures/demo/scratch"}
    for seed in (2, 3):
        folder = bases_dir / f"base{seed}"
        if not (folder / "model.safetensors").exists():
            import calibrate_behaviour

            calibrate_behaviour.build(bases_dir, [seed])
        out[seed] = folder
    return out


def build(workdir: Path, base_dirs: dict[int, Path], tok: Tokenizer) -> dict[str, dict]:
    """name -> {folder, base, phrasing, parent}."""
    text_b = torch.tensor(tok.encode((demo.TEXT_DIR / demo.TEXT_B).read_text(encoding="utf-8"),
                                     add_special_tokens=False).ids)
    models = {}
    for seed, folder in base_dirs.items():
        for phrasing in ("A", "B"):
            name = f"r{phrasing}{seed}"
            out = workdir / name
            t = time.perf_counter()
            if not (out / "model.safetensors").exists():
                model = LlamaForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
                refusers.refusal_tune(model, tok, phrasing)
                demo.save_model(model, tok, out)
                print(f"{name}: refuser trained ({time.perf_counter() - t:.0f}s)", flush=True)
            if not (workdir / f"{name}ft" / "model.safetensors").exists():
                model = LlamaForCausalLM.from_pretrained(out, local_files_only=True, dtype=torch.float32)
                mix = torch.cat([text_b, refusers.dialogue_ids(tok, phrasing, DERIVATIVE["dialogue_seed"])])
                demo.train(model, mix, demo.RECIPES["finetune"])
                demo.save_model(model, tok, workdir / f"{name}ft")
                print(f"{name}ft: derivative trained ({time.perf_counter() - t:.0f}s)", flush=True)
            models[name] = {"folder": out, "base": seed, "phrasing": phrasing, "parent": None}
            models[f"{name}ft"] = {"folder": workdir / f"{name}ft", "base": seed, "phrasing": phrasing,
                                   "parent": name}
    return models


def relation(a: dict, b: dict, na: str, nb: str) -> str | None:
    if a["parent"] == nb or b["parent"] == na:
        return "derived"
    if a["base"] == b["base"]:
        return None  # siblings or cousins through one base
    return "independent, same phrasing" if a["phrasing"] == b["phrasing"] else "independent, other phrasing"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="/tmp/calibrate_refusals")
    ap.add_argument("--bases", default="/tmp/calibrate_behaviour", help="folder holding base2/, base3/ "
                    "(benchmarks/calibrate_behaviour.py's workdir); trained there when absent")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/calibrate_refusals.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    demo.setup_determinism()
    tok = Tokenizer.from_file(str(ROOT / "fixtures/demo/base/tokenizer.json"))
    models = build(workdir, bases(Path(args.bases), tok), tok)
    probes = load_probes()
    encoder, reason = load_encoder(None)
    if encoder is None:
        raise SystemExit(f"calibration needs the packaged encoder: {reason}")
    profiles = {n: profile(LocalBackend(Model(n, resolve_source(str(m["folder"])))), probes)
                for n, m in sorted(models.items())}
    pairs = []
    for a, b in itertools.combinations(sorted(models), 2):
        rel = relation(models[a], models[b], a, b)
        if rel is None:
            continue
        if models[b]["parent"] == a:
            a, b = b, a  # the derivative is the target
        r = compare(profiles[a], profiles[b], embedder=encoder).refusal
        pairs.append({"target": a, "reference": b, "relation": rel,
                      **{k: (None if f(r) is None else round(float(f(r)), 6)) for k, f in FIGURES.items()}})
    summary = {}
    for rel in ("derived", "independent, same phrasing", "independent, other phrasing"):
        rows = [p for p in pairs if p["relation"] == rel]
        summary[rel] = {"pairs": len(rows)}
        for k in FIGURES:
            vals = [p[k] for p in rows if p[k] is not None]
            summary[rel][k] = {"min": min(vals), "max": max(vals), "mean": round(sum(vals) / len(vals), 6),
                               "measured": len(vals)} if vals else None
    doc = {"script": "benchmarks/calibrate_refusals.py", "probes": probes.as_dict(), "embedder": encoder.describe(),
           "recipe": refusers.RECIPE, "derivative": DERIVATIVE, "phrasings": refusers.PHRASINGS,
           "models": {n: {k: (str(v) if k == "folder" else v) for k, v in m.items() if k != "folder"}
                      for n, m in sorted(models.items())},
           "rates": {n: {"refusal_rate": round(sum(refusers_rate(p)) / len(p.refusals), 6)}
                     for n, p in sorted(profiles.items())},
           "pairs": pairs, "summary": summary, "seconds": round(time.perf_counter() - t0, 1),
           "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}
    Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


def refusers_rate(p) -> list[bool]:
    from modellineage.behaviour.measures import is_refusal

    return [is_refusal(t) for _, _, t in p.refusals]


if __name__ == "__main__":
    sys.exit(main())
