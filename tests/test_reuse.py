"""Exact reuse over real safetensors files: twins found under any name, constants and buffers set apart."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from modellineage.reading.hashing import scan_safetensors
from modellineage.weights.reuse import measure_exact_reuse


def digests(path, tensors):
    save_file(tensors, path)
    return scan_safetensors(path).tensors


def test_a_tensor_copied_to_another_layer_is_found(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    reference = digests(tmp_path / "ref.safetensors", {"layers.0.w": w, "layers.1.w": rng.standard_normal((8, 4))
                                                       .astype(np.float32)})
    target = digests(tmp_path / "tgt.safetensors", {"layers.5.w": w, "layers.6.w": (w + 1e-3).astype(np.float32)})

    reuse = measure_exact_reuse(target, reference)

    assert reuse.reused_count == 1 and reuse.counted_tensors == 2
    (hit,) = reuse.reused
    assert (hit.target_name, hit.reference_names, hit.same_name) == ("layers.5.w", ("layers.0.w",), False)
    assert reuse.reused_share == 0.5


def test_constants_buffers_and_integers_are_not_counted_as_reuse(tmp_path):
    shared = {
        "norm.weight": np.ones(16, np.float32),             # fresh norm gain: constant
        "bias": np.full(4, 0.25, np.float32),              # any single repeated value: constant
        "rotary_emb.inv_freq": 1.0 / 10000 ** (np.arange(0, 8, 2, dtype=np.float32) / 8),  # buffer
        "position_ids": np.arange(16, dtype=np.int64)[None],                             # integer
    }
    reference = digests(tmp_path / "ref.safetensors", dict(shared))
    target = digests(tmp_path / "tgt.safetensors", dict(shared))

    reuse = measure_exact_reuse(target, reference, buffers={"rotary_emb.inv_freq"})

    assert reuse.reused_count == 0 and reuse.counted_tensors == 0
    assert reuse.excluded == {"constant": 2, "buffer": 1, "non-float": 1}
    assert reuse.excluded_matches == {"constant": 2, "buffer": 1, "non-float": 1}


def test_same_bytes_with_another_dtype_or_shape_is_not_reuse(tmp_path):
    w = np.arange(12, dtype=np.float32)
    reference = digests(tmp_path / "ref.safetensors", {"w": w.reshape(3, 4)})
    target = digests(tmp_path / "tgt.safetensors", {"w": w.reshape(4, 3), "v": w.view(np.int32)})
    assert measure_exact_reuse(target, reference).reused_count == 0


def test_counts_per_layer(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c = (rng.standard_normal(8).astype(np.float32) for _ in range(3))
    reference = digests(tmp_path / "ref.safetensors", {"layers.0.w": a, "layers.1.w": b})
    target = digests(tmp_path / "tgt.safetensors", {"layers.0.w": a, "layers.1.w": c, "head": b})
    layers = {"layers.0.w": 0, "layers.1.w": 1, "head": None}

    reuse = measure_exact_reuse(target, reference, layer_of=layers.get)

    assert [r.as_dict() for r in reuse.by_layer] == [
        {"layer": None, "reused": 1, "counted": 1}, {"layer": 0, "reused": 1, "counted": 1},
        {"layer": 1, "reused": 0, "counted": 1}]
