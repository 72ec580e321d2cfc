"""Several references in one pass over the target (weights.pipeline.measure_many, similarity.compare_weights_many).

On the demo (target finetune; references base and scratch, as in audit.toml): every record equals the
one-reference-at-a-time measurement exactly, with every row read and at ``--sample 0.5``, and the pass reads
each byte of the target's files once — counted by the target store's own counters and checked range by range.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from modellineage import open_model
from modellineage.errors import LineageError, NonFiniteWeights
from modellineage.reading.tensors import read_header
from modellineage.weights import pipeline
from modellineage.weights.similarity import CompareRequest, compare_weights, compare_weights_many

from .test_audit_runs import run_audit

DEMO = Path(__file__).resolve().parents[1] / "fixtures" / "demo"
MIN_LAYER_MATCH = 0.3


def canon(obj):
    """A value-exact, comparable form of a record: floats by their bits, arrays by their bytes."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__, tuple((f.name, canon(getattr(obj, f.name))) for f in dataclasses.fields(obj)))
    if hasattr(obj, "items"):
        return ("map", tuple((repr(k), canon(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return ("seq", tuple(canon(v) for v in obj))
    if isinstance(obj, np.ndarray):
        return ("array", str(obj.dtype), obj.shape, obj.tobytes())
    if isinstance(obj, (float, np.floating)):
        return ("float", float(obj).hex() if math.isfinite(obj) else repr(float(obj)))
    return ("value", repr(obj))


def without_one_pass(evidence):
    reading = {k: v for k, v in evidence.reading.items() if k != "one_pass"}
    return dataclasses.replace(evidence, reading=reading)


class ReadLog:
    """Every byte range the target's store fetches from its files (observed at the store's read primitives and,
    where the store maps rows, its mapped windows)."""

    def __init__(self, store) -> None:
        self.ranges: list[tuple[str, int, int]] = []
        pread, runs = store._pread, store._pread_runs

        def logged_pread(info, offset, length, into=None):
            self.ranges.append((str(info.file), offset, offset + length))
            return pread(info, offset, length, into)

        def logged_runs(info, offsets, at, lengths, buf):
            self.ranges.extend((str(info.file), o, o + n) for o, n in zip(offsets, lengths))
            return runs(info, offsets, at, lengths, buf)

        store._pread, store._pread_runs = logged_pread, logged_runs
        mapper = getattr(store, "map_raw_row_range", None)  # a store that maps rows (no-copy streaming)
        if mapper is not None:
            def logged_map(name, start, stop):
                mapped = mapper(name, start, stop)
                if mapped is not None:
                    info = store.info(name)
                    rb = info.cols * info.itemsize
                    self.ranges.append((str(info.file), info.begin + start * rb, info.begin + stop * rb))
                return mapped

            store.map_raw_row_range = logged_map

    def overlaps(self) -> list:
        out, last = [], {}
        for file, lo, hi in sorted(self.ranges):
            if lo < last.get(file, -1):
                out.append((file, lo, hi))
            last[file] = max(last.get(file, -1), hi)
        return out

    @property
    def total(self) -> int:
        return sum(hi - lo for _, lo, hi in self.ranges)


def open_demo():
    return open_model(DEMO / "finetune"), [open_model(DEMO / "base"), open_model(DEMO / "scratch")]


@pytest.mark.parametrize("sample", [None, 0.5], ids=["full", "sample-0.5"])
def test_one_pass_equals_one_reference_at_a_time_and_reads_the_target_once(sample):
    target, refs = open_demo()
    side = pipeline.measure_target(target, sample=sample)
    sequential = [pipeline.measure(target, r, min_layer_match=MIN_LAYER_MATCH, sample=sample, seed=0,
                                   target_side=side) for r in refs]
    read_by_each = [0, 0]
    for j, r in enumerate(refs):  # the target bytes each one-reference comparison reads
        before = target.store.bytes_read
        compare_weights(target, r, fraction=sample, seed=0, layer_map=sequential[j].comparison.layer_map,
                        expert_map=sequential[j].comparison.expert_map, allow_empty=True,
                        row_alignments=pipeline.row_alignments(target, r)[0])
        read_by_each[j] = target.store.bytes_read - before

    target, refs = open_demo()
    side = pipeline.measure_target(target, sample=sample)
    log = ReadLog(target.store)
    before = target.store.bytes_read
    many = pipeline.measure_many(target, refs, min_layer_match=MIN_LAYER_MATCH, sample=sample, seed=0,
                                 target_side=side)
    fetched = target.store.bytes_read - before

    for one, shared in zip(sequential, many):
        assert not isinstance(shared, LineageError), shared
        assert canon(without_one_pass(shared)) == canon(one)  # figures, intervals, rows, bytes per pair, seeds
        assert shared.reading["bytes_read"] == one.reading["bytes_read"]
    one_pass = many[0].reading["one_pass"]
    assert one_pass["reference_names"] == ["base", "scratch"] and one_pass["shared"]
    # every byte range of the target's files read once in the pass, and the counters say so
    assert log.overlaps() == []
    assert fetched == log.total == one_pass["target_bytes_read"] > 0
    assert one_pass["target_bytes_per_reference"] == read_by_each
    assert one_pass["bytes_read_through"] == 0
    if sample is None:  # every row: the pass read exactly the compared target tensors, each once
        compared = {p.target_tensor for p in many[0].comparison.pairs} | {p.target_tensor for p in
                                                                           many[1].comparison.pairs}
        assert fetched == sum(target.store.info(n).nbytes for n in compared) == read_by_each[0]
    else:
        assert 0 < fetched < sum(read_by_each)  # ... well, or equal rows: the same seed draws the same rows per shape
        assert all(p.rows_read < p.rows_total for p in many[0].comparison.pairs if p.rows_total > 16)


def test_tensors_too_large_to_keep_are_read_per_reference_and_said_so():
    target, refs = open_demo()
    requests = [CompareRequest(r) for r in refs]
    alone = [compare_weights(target, r) for r in refs]
    before = target.store.bytes_read
    many = compare_weights_many(target, requests, share_bytes=0)
    assert [canon(c) for c in many.comparisons] == [canon(c) for c in alone]
    passed = many.target_pass
    assert passed.target_bytes_read == target.store.bytes_read - before == sum(passed.target_bytes_per_reference)
    assert passed.bytes_read_through == passed.target_bytes_read and passed.read_through


def test_a_reference_that_fails_leaves_the_others_measured(tmp_path):
    broken = tmp_path / "scratch-nan"
    shutil.copytree(DEMO / "scratch", broken)
    shard = next(broken.glob("*.safetensors"))
    header = read_header(shard)
    info = next(i for n, i in sorted(header.tensors.items()) if "mlp" in n and i.dtype == "F32")
    with open(shard, "r+b") as f:  # one NaN in the middle of an MLP matrix
        f.seek(info.begin + (info.end - info.begin) // 2 // 4 * 4)
        f.write(np.array([np.nan], dtype="<f4").tobytes())
    target, (base, _) = open_demo()
    results = compare_weights_many(target, [CompareRequest(base), CompareRequest(open_model(broken))]).comparisons
    assert isinstance(results[1], NonFiniteWeights) and str(shard) in str(results[1])
    assert canon(results[0]) == canon(compare_weights(target, base))


def test_weight_audits_measure_only_the_selected_references(tmp_path):
    proc, evidence = run_audit(tmp_path, "-m", "weights", "-k", "test_weight_similarity and base")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    audit = next(a for a in evidence["audits"] if a["nodeid"].endswith("test_weight_similarity[base]"))
    assert audit["measurements"]["reading"]["one_pass"]["reference_names"] == ["base"]


def test_shared_reads_give_the_store_s_values_and_fetch_each_row_once():
    from modellineage.weights.sharing import SharedReads

    store = open_model(DEMO / "finetune").store
    name = max(store.names(), key=lambda n: store.info(n).nbytes)  # a matrix
    info = store.info(name)
    view = SharedReads(store, max_bytes=info.nbytes)
    rng = np.random.default_rng(0)
    picks = [np.sort(rng.choice(info.rows, size=info.rows // 3, replace=False)) for _ in range(2)]
    calls = [lambda s, rows=rows: s.read_rows(name, rows) for rows in picks + [np.array([5, 3, 5, 0])]]
    calls += [lambda s: s.read_row_range(name, 2, 40), lambda s: bytes(s.read_raw_row_range(name, 0, info.rows)),
              lambda s: b"".join(s.iter_bytes(name, chunk_bytes=1000))]
    for call in calls:  # sorted samples, any order with repeats, ranges, raw bytes, unaligned chunks
        before = store.bytes_read
        plain = call(store)
        consumed = store.bytes_read - before
        before, counted, fetched = store.bytes_read, view.bytes_read, view.bytes_fetched
        shared = call(view)
        assert np.array_equal(shared, plain) if isinstance(plain, np.ndarray) else shared == plain
        assert view.bytes_read - counted == consumed  # the view counts what its reader consumed ...
        assert store.bytes_read - before == view.bytes_fetched - fetched  # ... the store what the view fetched
    # ... and fetched every row of the tensor once, whatever was asked how often
    assert view.bytes_fetched == info.nbytes and view.bytes_unshared == 0
    view.release()
