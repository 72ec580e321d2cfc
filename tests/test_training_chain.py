"""modellineage.training.chain on real checkpoints: the demo's pre-training chain (fixtures/chain, built by
fixtures/build_chain.py), forged and spliced chains made of the demo models, missing and corrupt links."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from audits import training_criteria as tc
from audits.criteria import load_thresholds
from modellineage.errors import UnsupportedFormat
from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.training import Checkpoint, measure_chain

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ROOT / "fixtures" / "chain" / "pretrain"
DEMO = ROOT / "fixtures" / "demo"
STEPS = (0, 100, 200, 300, 400)


@pytest.fixture(scope="module")
def bounds():
    return load_thresholds(ROOT / "thresholds.toml")


def model(path: Path, name: str) -> Model:
    return Model(name, resolve_source(str(path)))


def ckpt(step: int) -> Checkpoint:
    return Checkpoint(f"step-{step}", step, model(CHAIN / f"step_{step:04d}", f"step-{step}"))


def real_chain() -> list[Checkpoint]:
    return [ckpt(s) for s in STEPS] + [Checkpoint("step-500", 500, model(DEMO / "base", "step-500"))]


@pytest.fixture(scope="module")
def demo_chain():
    return measure_chain(real_chain(), target=model(DEMO / "finetune", "finetune"),
                         references={"scratch": model(DEMO / "scratch", "scratch")})


def test_demo_chain_starts_at_initialisation_and_drifts_smoothly(demo_chain, bounds):
    init = tc.initialisation(demo_chain.init, bounds["training", "init_max_std_deviation"],
                             bounds["training", "init_max_gain_deviation"])
    assert not init.failed, init.message
    assert demo_chain.init.initializer_range == 0.02 and demo_chain.init.range_source == "config.json initializer_range"
    gains = [r for r in demo_chain.init.roles if r.kind == "gain"]
    assert gains and all(r.mean == 1.0 and r.std == 0.0 for r in gains)  # ones, exactly, at initialisation
    to_first = [1.0]
    for link in demo_chain.links:
        judgement = tc.smooth_link(link, to_first[-1], bounds["training", "min_neighbour_centred"],
                                   bounds["training", "max_rise_to_first"])
        assert not judgement.failed, judgement.message
        to_first.append(link.to_first.matrix_centred)
    assert to_first == sorted(to_first, reverse=True)  # moves away from the initialisation, step after step
    assert demo_chain.last == "step-500"
    assert not tc.descends("finetune", demo_chain.target_to_last, bounds["weights", "derived_min_centred"]).failed
    judgement = tc.no_jump_toward("scratch", demo_chain.reference_profile("scratch"),
                                  [(demo_chain.first, demo_chain.first_to_references["scratch"].by_category)]
                                  + [(x.checkpoint, x.to_references["scratch"].by_category) for x in demo_chain.links],
                                  bounds["weights", "independent_max_centred"],
                                  bounds["weights", "independent_max_embedding_centred"],
                                  bounds["training", "max_jump_toward_reference"])
    assert not judgement.failed, judgement.message


def test_a_fine_tuned_copy_of_base_as_first_checkpoint_fails_with_value_and_bound(bounds):
    forged = [Checkpoint("forged-0", 0, model(DEMO / "finetune", "forged-0"))] + [ckpt(s) for s in (300, 400)]
    chain = measure_chain(forged, references={"base": model(DEMO / "base", "base")})
    bound = bounds["training", "init_max_std_deviation"]
    judgement = tc.initialisation(chain.init, bound, bounds["training", "init_max_gain_deviation"])
    assert judgement.failed
    worst = chain.init.worst("matrix")
    assert f"{worst.deviation:.1%} off" in judgement.message and f"> {bound.value:.0%} allowed" in judgement.message
    assert "[training].init_max_std_deviation" in judgement.message and "gains are not ones" in judgement.message
    # ... and it is base, fine-tuned: far beyond what independent models share with base.
    cats = chain.first_to_references["base"].by_category
    related = tc.no_jump_toward("base", chain.reference_profile("base"), [("forged-0", cats)],
                                bounds["weights", "independent_max_centred"],
                                bounds["weights", "independent_max_embedding_centred"],
                                bounds["training", "max_jump_toward_reference"])
    assert related.failed and "forged-0 attention" in related.message and "≥ 0.3" in related.message


def test_a_spliced_in_reference_shows_as_a_jump(bounds):
    spliced = [ckpt(0), ckpt(100), ckpt(200), Checkpoint("step-300", 300, model(DEMO / "scratch", "spliced")),
               ckpt(400)]
    chain = measure_chain(spliced, references={"scratch": model(DEMO / "scratch", "scratch")})
    link = next(x for x in chain.links if x.checkpoint == "step-300")
    neighbour = tc.smooth_link(link, 1.0, bounds["training", "min_neighbour_centred"],
                               bounds["training", "max_rise_to_first"])
    assert neighbour.failed and "not a continuation of the same run" in neighbour.message
    categories = [(chain.first, chain.first_to_references["scratch"].by_category)] + \
                 [(x.checkpoint, x.to_references["scratch"].by_category) for x in chain.links]
    judgement = tc.no_jump_toward("scratch", chain.reference_profile("scratch"), categories,
                                  bounds["weights", "independent_max_centred"],
                                  bounds["weights", "independent_max_embedding_centred"],
                                  bounds["training", "max_jump_toward_reference"])
    assert judgement.failed and "jumps by +" in judgement.message and "at step-300" in judgement.message


def test_missing_and_corrupt_checkpoints_skip_their_link_and_the_rest_is_audited(tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(CHAIN / "step_0200" / "config.json", corrupt / "config.json")
    data = (CHAIN / "step_0200" / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    chain = measure_chain([ckpt(0), ckpt(100), Checkpoint("missing", 150, None, "fixtures/x: no such file"),
                           Checkpoint("corrupt", 200, model(corrupt, "corrupt")), ckpt(300)])
    by_name = {x.checkpoint: x for x in chain.links}
    assert by_name["missing"].skipped == "fixtures/x: no such file"
    assert "model.safetensors" in by_name["corrupt"].skipped and by_name["corrupt"].neighbour is None
    bridge = by_name["step-300"]
    assert bridge.skipped is None and bridge.previous == "step-100" and bridge.bridged == ("missing", "corrupt")
    assert bridge.neighbour.matrix_centred > 0.5
    assert [n for n, _, e in chain.checkpoints if e] == ["missing", "corrupt"]


def test_an_unreadable_first_checkpoint_moves_the_start_and_none_readable_is_unsupported():
    chain = measure_chain([Checkpoint("gone", 0, None, "gone: no such file"), ckpt(100), ckpt(200)])
    assert chain.first == "step-100" and [x.checkpoint for x in chain.links] == ["step-200"]
    with pytest.raises(UnsupportedFormat, match="no checkpoint of the chain can be read: gone"):
        measure_chain([Checkpoint("gone", 0, None, "gone: no such file")])


def test_sampled_chain_is_reproducible():
    chain = [ckpt(0), ckpt(100)]
    a = measure_chain(chain, fraction=0.5, seed=3).as_dict()
    b = measure_chain([ckpt(0), ckpt(100)], fraction=0.5, seed=3).as_dict()
    assert a == b and a["sample_fraction"] == 0.5


def test_the_family_entry_point_measures_chain_and_logs():
    from modellineage import training

    ev = training.measure(model(DEMO / "base", "base"), checkpoints=[ckpt(0), ckpt(100)],
                          logs={"pretrain": (ROOT / "fixtures/chain/pretrain.jsonl", training.LogClaim()),
                                "gone": (ROOT / "fixtures/chain/absent.jsonl", training.LogClaim())})
    assert ev.chain.last == "step-100" and ev.chain.target_to_last.matrix_centred > 0.3
    assert ev.logs["pretrain"].vocab_size == 1024 and "absent.jsonl" in ev.logs["gone"]
    assert ev.as_dict()["logs"]["pretrain"]["first_step"] == 0
