"""Hostile model folders, class 1: no code from a folder under audit ever runs.

Each folder named to the audit (target, reference, and the folder of the audit plan) holds everything
pytest or transformers would import if they took the folder for something of theirs: ``conftest.py``, an
``__init__.py`` beside it, a ``test_*.py`` module, a ``pytest.ini`` whose ``addopts`` loads a plugin module
planted beside it, and ``auto_map`` code (``configuration_*.py``, ``modeling_*.py``,
``tokenization_*.py``) named by config.json and tokenizer_config.json. Every planted file writes its own
marker file when it runs; none may exist after the audit, whichever way the options are spelled and
whether the folders sit inside the checkout (where pytest would load their conftest.py) or outside it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from tests.hostile import ROOT, assert_contained, copy_demo, marker_code, run_audit

pytestmark = pytest.mark.hostile

PLANTED = ("conftest.py", "__init__.py", "test_planted.py", "hostile_plugin.py", "configuration_planted.py",
           "modeling_planted.py", "tokenization_planted.py")


def plant_code(folder: Path, markers: Path) -> list[Path]:
    """Every kind of importable code in ``folder``; returns the marker files they would write."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in PLANTED:
        marker = markers / f"{folder.name}-{name}.ran"
        (folder / name).write_text(marker_code(marker) + "def test_planted():\n    pass\n", encoding="utf-8")
        written.append(marker)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p hostile_plugin\npythonpath = .\n", encoding="utf-8")
    config = folder / "config.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["auto_map"] = {"AutoConfig": "configuration_planted.PlantedConfig",
                            "AutoModelForCausalLM": "modeling_planted.PlantedModel"}
        data["trust_remote_code"] = True
        config.write_text(json.dumps(data), encoding="utf-8")
    tok_config = folder / "tokenizer_config.json"
    if tok_config.exists():
        data = json.loads(tok_config.read_text(encoding="utf-8"))
        data["auto_map"] = {"AutoTokenizer": ["tokenization_planted.PlantedTokenizer", None]}
        tok_config.write_text(json.dumps(data), encoding="utf-8")
    return written


@pytest.fixture(params=["outside", "inside"])
def workdir(request, tmp_path: Path):
    """Where the hostile folders live: under tmp_path, or inside the checkout (under pytest's confcutdir,
    where a conftest.py on a test path is loaded)."""
    if request.param == "outside":
        yield tmp_path / "folders"
        return
    inside = ROOT / f"hostile-{uuid.uuid4().hex[:12]}"
    try:
        yield inside
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def _folders(workdir: Path, markers: Path) -> tuple[Path, Path, Path, list[Path]]:
    """target (a copy of the demo base), reference (scratch) and a plan folder naming both, all planted."""
    markers.mkdir(parents=True, exist_ok=True)
    target = copy_demo(workdir / "target", "base")
    ref = copy_demo(workdir / "reference", "scratch")
    plan_dir = workdir / "plan"
    planted = plant_code(target, markers) + plant_code(ref, markers) + plant_code(plan_dir, markers)
    (plan_dir / "audit.toml").write_text(
        '[target]\nname = "t"\nsource = "../target"\n\n'
        '[[reference]]\nname = "r"\nsource = "../reference"\nexpect = "independent"\n', encoding="utf-8")
    return target, ref, plan_dir, planted


SPELLINGS = {
    "--target X": lambda t, r, p: ["--target", str(t), "--reference", f"r={r}", "--expect", "independent"],
    "--target=X": lambda t, r, p: [f"--target={t}", f"--reference=r={r}", "--expect=independent"],
    "--target X/model.safetensors": lambda t, r, p: ["--target", str(t / "model.safetensors"), "--reference",
                                                     f"r={r / 'model.safetensors'}", "--expect", "independent"],
    "--audit X/audit.toml": lambda t, r, p: ["--audit", str(p / "audit.toml")],
    "--audit=X/audit.toml": lambda t, r, p: [f"--audit={p / 'audit.toml'}"],
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_no_code_from_a_named_folder_runs(spelling: str, workdir: Path, tmp_path: Path) -> None:
    """conftest.py, packages, test modules and ini plugins of target, reference and plan folder never run."""
    markers = tmp_path / "markers"
    target, ref, plan_dir, planted = _folders(workdir, markers)
    # The architecture audits are enough: conftest files, ini files and test paths are read before any
    # audit is selected, and a test module would be imported at collection, before deselection.
    run = run_audit(tmp_path, *SPELLINGS[spelling](target, ref, plan_dir), "-m", "architecture")
    assert_contained(run, markers=tuple(planted))
    assert list(markers.iterdir()) == []
    # The audit did run on the folders it was given (not on the demo plan).
    sources = run.evidence["sources"]
    roots = {Path(s["root"]) for s in sources.values()}
    assert {r.parent.name if r.suffix == ".safetensors" else r.name for r in roots} == {target.name, ref.name}


def test_auto_map_code_is_never_imported(tmp_path: Path) -> None:
    """config.json / tokenizer_config.json auto_map with trust_remote_code: every family runs, nothing imports it."""
    markers = tmp_path / "markers"
    target, ref, _, planted = _folders(tmp_path / "folders", markers)
    run = run_audit(tmp_path, "--target", str(target), "--reference", f"r={ref}", "--expect", "independent")
    assert_contained(run, markers=tuple(planted))
    families = {a["family"] for a in run.evidence["audits"] if a["outcome"] != "skipped"}
    assert {"architecture", "tokenizer", "weights", "independence"} <= families


def test_without_plugin_autoload_the_run_stops_before_any_folder_code(tmp_path: Path, monkeypatch) -> None:
    """PYTEST_DISABLE_PLUGIN_AUTOLOAD: the root conftest.py stops the run (exit 4, saying how to load the
    plugin) before pytest imports the target's conftest.py; `-p audits.plugin` then audits as usual."""
    markers = tmp_path / "markers"
    inside = ROOT / f"hostile-{uuid.uuid4().hex[:12]}"
    try:
        target, ref, _, planted = _folders(inside, markers)
        monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
        args = ("--target", str(target), "--reference", f"r={ref}", "--expect", "independent", "-m", "architecture")
        stopped = run_audit(tmp_path, *args, name="stopped")
        assert stopped.proc.returncode == 4, stopped.output[-4000:]
        assert "-p audits.plugin" in stopped.output and "PYTEST_DISABLE_PLUGIN_AUTOLOAD" in stopped.output
        assert list(markers.iterdir()) == []
        loaded = run_audit(tmp_path, *args, "-p", "audits.plugin", "-p", "pytest_metadata.plugin", "-p",
                           "pytest_html.plugin", name="loaded")
        assert_contained(loaded, markers=tuple(planted))
    finally:
        shutil.rmtree(inside, ignore_errors=True)
