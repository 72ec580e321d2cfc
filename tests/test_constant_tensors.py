"""A copy of the demo fine-tune with one trained tensor zeroed (or set to another constant) is named, not judged."""

from __future__ import annotations

import html as html_lib
import shutil

import pytest

from modellineage.reading.model import Model
from modellineage.reading.sources import resolve_source
from modellineage.weights.reuse import constant_replacements

from .test_audit_runs import DEMO, outcomes, record, run_audit

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

TENSOR = "model.layers.1.mlp.down_proj.weight"


def _constant_copy(out, value: float):
    shutil.copytree(DEMO / "finetune", out)
    tensors = safetensors_torch.load_file(str(out / "model.safetensors"))
    tensors[TENSOR] = torch.full_like(tensors[TENSOR], value)
    safetensors_torch.save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("value", [0.0, 0.25])
def test_constant_tensor_is_named_with_its_file(tmp_path, value):
    target = Model("zeroed", resolve_source(str(_constant_copy(tmp_path / "zeroed", value))))
    base = Model("base", resolve_source(str(DEMO / "base")))
    (found,) = constant_replacements(target, base)
    assert (found.key, found.target_tensor, found.target_file, found.value) == \
        ("layers.1.mlp_down.weight", TENSOR, "model.safetensors", value)
    assert found.reference_tensor == TENSOR
    assert f"{TENSOR} in model.safetensors is constant ({value:g} everywhere)" in found.line
    # the demo itself has none: its norms are trained on both sides
    assert constant_replacements(Model("finetune", resolve_source(str(DEMO / "finetune"))), base) == ()


def test_zeroed_copy_is_reported_but_changes_no_verdict(tmp_path):
    zeroed = _constant_copy(tmp_path / "zeroed", 0.0)
    proc, evidence = run_audit(tmp_path, "--audit", "audit.toml", "--target", str(zeroed), "-m",
                               "reuse or weights or independence")
    _, demo = run_audit(tmp_path, "-m", "reuse or weights or independence", name="demo")
    assert proc.returncode == 0, proc.stdout  # every claim of the demo plan still holds ...
    assert outcomes(evidence) == outcomes(demo)  # ... with the same outcomes as the untouched fine-tune
    for ref in ("base", "scratch"):
        reuse = record(evidence, f"test_no_exact_tensor_reuse[{ref}]")
        assert [c["target_tensor"] for c in reuse["measurements"]["constant_where_reference_trained"]] == [TENSOR]
        assert f"{TENSOR} in model.safetensors is constant (0 everywhere)" in reuse["summary"]
    assert f"{TENSOR} in model.safetensors is constant" in html_lib.unescape((tmp_path / "run.html").read_text())
