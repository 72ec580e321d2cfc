#!/usr/bin/env python
"""Calibrate the training-evidence bounds on tiny models trained from different seeds on CPU.

Usage::

    python benchmarks/calibrate_training.py --seeds 6 --workdir /tmp/cal_training \
        --out benchmarks/results/calibrate_training.json

Per seed ``s`` (seed 0 is the demo's base): a model initialised with ``torch.manual_seed(s)`` is trained
with the demo's base recipe (fixtures/build_demo.py: text A, 500 AdamW steps, peak LR 3e-3, batch 16 x 64
tokens), keeping a float16 checkpoint every 50 updates, then fine-tuned with the demo's finetune recipe
(text B, 150 steps, embeddings frozen). Measured with the library (modellineage.training):

- first logged loss - ln(V) of every from-scratch run (step 0, and the mean of its first 10 steps), and of
  every run initialised from a trained model (the fine-tunes);
- the initialisation check on the step-0, step-50 and step-100 checkpoints (what "close to init" and
  "trained a little" look like), and on a fine-tuned model posing as the first checkpoint;
- along each chain at 50- and 100-update spacing: the smallest neighbour similarity and the largest rise
  of the similarity to the first checkpoint;
- similarity of every checkpoint to the next seed's trained model (an independent reference): highest
  level and largest jump between neighbours; and the same for a chain whose step-300 checkpoint was
  replaced by that reference's own step-300 checkpoint (a splice), and by the reference's fine-tune.

Takes ~3 min for 6 seeds on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "fixtures"))
sys.path.insert(0, str(ROOT))

import build_chain as bc  # noqa: E402
import build_demo as demo  # noqa: E402

from modellineage.reading.model import Model  # noqa: E402
from modellineage.reading.sources import resolve_source  # noqa: E402
from modellineage.training.chain import Checkpoint, measure_chain  # noqa: E402

STEPS = tuple(range(0, 501, 50))


def model(path: Path, name: str) -> Model:
    return Model(name, resolve_source(str(path)))


def train_seed(seed: int, ids, work: Path) -> dict:
    out = work / f"seed{seed}"
    m = bc.fresh_model(seed)
    rows = bc.run(m, ids["A"], demo.RECIPES["base"], checkpoints=STEPS, out=out)
    ft = bc.copy_model(m)
    ft_rows = bc.run(ft, ids["B"], demo.RECIPES["finetune"])
    bc.save_checkpoint(ft, out / "finetune")
    return {"first_loss": rows[0]["loss"], "first10_mean": sum(r["loss"] for r in rows[:10]) / 10,
            "final_loss": rows[-1]["loss"], "finetune_first_loss": ft_rows[0]["loss"],
            "finetune_first10_mean": sum(r["loss"] for r in ft_rows[:10]) / 10}


def chain_of(work: Path, seed: int, steps, replace: dict | None = None) -> list[Checkpoint]:
    out = []
    for s in steps:
        path = (replace or {}).get(s, work / f"seed{seed}" / f"step_{s:04d}")
        out.append(Checkpoint(f"step_{s:04d}", s, model(path, f"s{seed}-{s}")))
    return out


def profile(ev, reference: str) -> dict:
    neighbours = [link.neighbour.matrix_centred for link in ev.links if link.neighbour]
    to_first = [link.to_first.matrix_centred for link in ev.links if link.to_first]
    rises = [b - a for a, b in zip(to_first, to_first[1:])]
    refs = [v for _, v in ev.reference_profile(reference)]
    jumps = [b - a for a, b in zip(refs, refs[1:])]
    return {"neighbours": neighbours, "to_first": to_first, "min_neighbour": min(neighbours),
            "max_rise_to_first": max(rises) if rises else None, "to_reference": refs,
            "max_reference_level": max(refs), "max_reference_jump": max(jumps) if jumps else None}


def init_summary(ev) -> dict:
    m, g = ev.init.worst("matrix"), ev.init.worst("gain")
    return {"worst_matrix_role": m.role, "worst_matrix_deviation": m.deviation,
            "worst_gain_role": g.role if g else None, "worst_gain_deviation": g.deviation if g else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--workdir", default="/tmp/cal_training")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "calibrate_training.json"))
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ids = bc.prepare()
    ln_v = math.log(demo.VOCAB_SIZE)
    seeds = list(range(args.seeds))
    losses = {}
    for s in seeds:
        t = time.perf_counter()
        losses[s] = train_seed(s, ids, work)
        print(f"seed {s}: trained in {time.perf_counter() - t:.1f}s, first loss {losses[s]['first_loss']:.4f}",
              flush=True)
    per_seed = {}
    for s in seeds:
        other = seeds[(seeds.index(s) + 1) % len(seeds)]
        ref = {"ref": model(work / f"seed{other}" / "step_0500", f"ref{other}")}
        entry = {"reference_seed": other, "losses": {k: v for k, v in losses[s].items()},
                 "first_loss_minus_lnv": losses[s]["first_loss"] - ln_v,
                 "first10_mean_minus_lnv": losses[s]["first10_mean"] - ln_v,
                 "finetune_first_loss_minus_lnv": losses[s]["finetune_first_loss"] - ln_v}
        for spacing in (50, 100):
            steps = [x for x in STEPS if x % spacing == 0]
            ev = measure_chain(chain_of(work, s, steps), references=ref)
            entry[f"chain_every_{spacing}"] = profile(ev, "ref")
        entry["init"] = {}
        for step in (0, 50, 100):
            ev = measure_chain([Checkpoint(f"step_{step}", step, model(work / f"seed{s}" / f"step_{step:04d}", "x"))])
            entry["init"][f"step_{step}"] = init_summary(ev)
        forged = measure_chain([Checkpoint("forged", 0, model(work / f"seed{other}" / "finetune", "forged"))])
        entry["init"]["finetune_as_first"] = init_summary(forged)
        steps = [x for x in STEPS if x % 100 == 0]
        for label, path in (("splice_reference_step300", work / f"seed{other}" / "step_0300"),
                            ("splice_reference_finetune", work / f"seed{other}" / "finetune")):
            ev = measure_chain(chain_of(work, s, steps, {300: path}), references=ref)
            entry[label] = profile(ev, "ref")
        per_seed[str(s)] = entry
        print(f"seed {s}: {json.dumps({k: entry[k] for k in ('first_loss_minus_lnv', 'init')})[:300]}", flush=True)

    def col(fn):
        return [fn(e) for e in per_seed.values()]

    summary = {
        "ln_v": ln_v,
        "scratch_first_loss_minus_lnv": [min(col(lambda e: e["first_loss_minus_lnv"])),
                                         max(col(lambda e: e["first_loss_minus_lnv"]))],
        "scratch_first10_mean_minus_lnv": [min(col(lambda e: e["first10_mean_minus_lnv"])),
                                           max(col(lambda e: e["first10_mean_minus_lnv"]))],
        "init_from_trained_first_loss_minus_lnv": [min(col(lambda e: e["finetune_first_loss_minus_lnv"])),
                                                   max(col(lambda e: e["finetune_first_loss_minus_lnv"]))],
        "init_matrix_deviation_step0_max": max(col(lambda e: e["init"]["step_0"]["worst_matrix_deviation"])),
        "init_matrix_deviation_step50_min": min(col(lambda e: e["init"]["step_50"]["worst_matrix_deviation"])),
        "init_matrix_deviation_step100_min": min(col(lambda e: e["init"]["step_100"]["worst_matrix_deviation"])),
        "init_gain_deviation_step0_max": max(col(lambda e: e["init"]["step_0"]["worst_gain_deviation"])),
        "init_gain_deviation_step50_min": min(col(lambda e: e["init"]["step_50"]["worst_gain_deviation"])),
        "finetune_as_first_matrix_deviation_min": min(col(lambda e: e["init"]["finetune_as_first"]
                                                          ["worst_matrix_deviation"])),
        "finetune_as_first_gain_deviation_min": min(col(lambda e: e["init"]["finetune_as_first"]
                                                        ["worst_gain_deviation"])),
        "min_neighbour_every_50": min(col(lambda e: e["chain_every_50"]["min_neighbour"])),
        "min_neighbour_every_100": min(col(lambda e: e["chain_every_100"]["min_neighbour"])),
        "max_rise_to_first_every_50": max(col(lambda e: e["chain_every_50"]["max_rise_to_first"])),
        "max_rise_to_first_every_100": max(col(lambda e: e["chain_every_100"]["max_rise_to_first"])),
        "independent_reference_max_level": max(col(lambda e: e["chain_every_50"]["max_reference_level"])),
        "independent_reference_max_jump_every_50": max(col(lambda e: e["chain_every_50"]["max_reference_jump"])),
        "independent_reference_max_jump_every_100": max(col(lambda e: e["chain_every_100"]["max_reference_jump"])),
        "splice_step300_min_jump": min(col(lambda e: e["splice_reference_step300"]["max_reference_jump"])),
        "splice_step300_min_neighbour": min(col(lambda e: e["splice_reference_step300"]["min_neighbour"])),
        "splice_finetune_min_jump": min(col(lambda e: e["splice_reference_finetune"]["max_reference_jump"])),
        "splice_finetune_max_min_neighbour": max(col(lambda e: e["splice_reference_finetune"]["min_neighbour"])),
    }
    result = {"command": "python benchmarks/calibrate_training.py " + " ".join(argv or sys.argv[1:]),
              "seeds": seeds, "checkpoint_steps": list(STEPS), "recipe": {"pretrain": demo.RECIPES["base"],
                                                                           "finetune": demo.RECIPES["finetune"]},
              "summary": summary, "per_seed": per_seed, "seconds": round(time.perf_counter() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
