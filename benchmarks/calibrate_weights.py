"""Calibrate the weight-similarity bounds on model pairs of known lineage that we train ourselves.

Trains ``--bases`` tiny Llamas from independent seeds on the same text and the same byte-level
vocabulary (the hardest independent case: shared tokenizer, shared data), then fine-tunes each on a
second text. Independent pairs are every two bases and every fine-tune against the other bases;
derived pairs are each fine-tune against its base. For every pair it prints the per-category mean
centred similarity (``modellineage.similarity.compare_weights``) and writes a JSON summary: the
largest category mean among independent pairs and the smallest among derived pairs.

    .venv/bin/python benchmarks/calibrate_weights.py --bases 4 --steps 300 --ft-steps 100 --out /tmp/calib_weights.json

CPU only, deterministic (seeds 0..bases-1, one thread).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ROOT / "fixtures" / "texts"


def train(path: Path, *, seed: int, steps: int, text: str, init: Path | None = None, lr: float = 3e-3) -> Path:
    import torch
    import transformers

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    if init is None:
        cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=4,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       bos_token_id=0, eos_token_id=1, pad_token_id=2, tie_word_embeddings=False)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        model = transformers.LlamaForCausalLM.from_pretrained(str(init))
    data = torch.tensor(list((TEXTS / text).read_bytes()))
    gen = torch.Generator().manual_seed(seed + 1000)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - 65, (16,), generator=gen)
        batch = torch.stack([data[s:s + 64] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.save_pretrained(str(path), safe_serialization=True)
    return path


def categories(a: Path, b: Path) -> dict[str, float]:
    from modellineage.model import Model
    from modellineage.similarity import compare_weights
    from modellineage.sources import resolve_source

    comp = compare_weights(Model("a", resolve_source(str(a))), Model("b", resolve_source(str(b))))
    return {g.group: round(g.mean_centred, 4) for g in comp.by_category}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ft-steps", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="calib-weights-"))
    bases = [train(work / f"base{s}", seed=s, steps=args.steps, text="shakespeare_the_tempest.txt")
             for s in range(args.bases)]
    tunes = [train(work / f"ft{s}", seed=100 + s, steps=args.ft_steps, text="milton_areopagitica.txt", init=b, lr=1e-3)
             for s, b in enumerate(bases)]
    independent, derived = [], []
    for i, j in itertools.combinations(range(args.bases), 2):
        independent.append({"pair": f"base{i}~base{j}", "categories": categories(bases[i], bases[j])})
    for i, j in itertools.permutations(range(args.bases), 2):
        independent.append({"pair": f"ft{i}~base{j}", "categories": categories(tunes[i], bases[j])})
    for i in range(args.bases):
        derived.append({"pair": f"ft{i}~base{i}", "categories": categories(tunes[i], bases[i])})
    for row in independent + derived:
        print(row["pair"], row["categories"])
    cats = sorted({c for r in independent + derived for c in r["categories"]})
    summary = {
        "settings": vars(args) | {"workdir": str(work), "out": str(args.out)},
        "independent_max": {c: max(r["categories"][c] for r in independent) for c in cats},
        "derived_min": {c: min(r["categories"][c] for r in derived) for c in cats},
        "pairs": {"independent": independent, "derived": derived},
    }
    print("independent, largest category mean:", summary["independent_max"])
    print("derived, smallest category mean:   ", summary["derived_min"])
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
