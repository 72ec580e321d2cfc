"""Derivations that change shape, end to end and in the library: depth up-scaling (a reference layer matched
more than once), width pruning (neurons, heads and hidden channels matched to a subset of the reference's),
merges of several parents.

Every derivative is built here from the demo models (tests/weight_builders.py) and healed briefly on CPU; the
unrelated controls are the same operations applied to the independent demo ``scratch``.
"""

from __future__ import annotations

import pytest

from modellineage import open_model
from modellineage.weights.alignment import correspond_layers
from modellineage.weights.signatures import model_signatures

from . import weight_builders as wb
from .test_audit_runs import DEMO, outcomes, record, run_audit

pytest.importorskip("torch")
pytest.importorskip("transformers")

#: Depth up-scaling of the 4-layer demo: the middle block (layers 1, 2) stacked twice, SOLAR-style.
UPSCALED = [0, 1, 2, 1, 2, 3]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("derivations")
    return {"upscaled": wb.heal(wb.relayered(tmp / "upscaled", UPSCALED, noise=0.0)),
            "scratch-upscaled": wb.heal(wb.relayered(tmp / "scratch-upscaled", UPSCALED, noise=0.0,
                                                     source=DEMO / "scratch"))}


# ------------------------------------------------------------------------------------------------ depth
def test_depth_upscaled_base_places_both_copies_of_the_repeated_block(built):
    base = open_model(DEMO / "base")
    layers = correspond_layers(model_signatures(open_model(built["upscaled"])), model_signatures(base),
                               min_match=0.3)
    assert layers.path == tuple(enumerate(UPSCALED)), layers.path
    assert layers.repeated == {1: (1, 3), 2: (2, 4)} and layers.unmatched_target == ()
    assert layers.beats_index
    control = correspond_layers(model_signatures(open_model(built["scratch-upscaled"])), model_signatures(base),
                                min_match=0.3)
    assert control.path == () and not control.beats_index


def test_depth_upscaled_audits(tmp_path, built):
    """Claimed independent, the up-scaled base fails on the many-to-one map; the up-scaled scratch passes."""
    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(built["upscaled"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent")
    assert proc.returncode == 1 and "Traceback" not in proc.stdout, proc.stdout
    sim = record(evidence, "test_weight_similarity[base]")
    assert sim["outcome"] == "failed"
    assert "reference layer 1 matched by target layers 1, 3; reference layer 2 matched by target layers 2, 4" \
        in sim["message"]
    m = sim["measurements"]
    assert m["layer_correspondence"]["repeated_reference_layers"] == {"1": [1, 3], "2": [2, 4]}
    assert m["weight_similarity"]["layer_map"] == {str(t): r for t, r in enumerate(UPSCALED)}
    assert min(g["mean_centred"] for g in m["weight_similarity"]["by_layer"] if g["layer"] is not None) > 0.9

    proc, evidence = run_audit(tmp_path, "-m", "weights", "--target", str(built["scratch-upscaled"]),
                               "--reference", f"base={DEMO / 'base'}", "--expect", "independent", name="control")
    assert proc.returncode == 0, proc.stdout
    assert outcomes(evidence)["test_weight_similarity[base]"] == "passed"
    assert record(evidence, "test_weight_similarity[base]")["measurements"]["layer_correspondence"]["path"] == []
