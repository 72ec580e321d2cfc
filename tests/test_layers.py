"""Layering: the library measures and never imports pytest or the audits; judging lives in audits/.

One exception by design: :mod:`modellineage.cli`, the ``modellineage`` command, *is* pytest started on
the audits (it must call pytest, not reimplement it). Benchmarks measure through the library too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import modellineage

LIBRARY = Path(modellineage.__file__).parent
ROOT = LIBRARY.parent
#: Library modules allowed to start pytest (and so import the audits): the console script only.
RUNS_PYTEST = {"cli.py"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def imported_paths(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_pytest_or_the_audits():
    offenders = {str(p.relative_to(LIBRARY)): imported_modules(p) & {"pytest", "_pytest", "audits", "pytest_html"}
                 for p in LIBRARY.rglob("*.py") if p.name not in RUNS_PYTEST or p.parent != LIBRARY}
    assert len(offenders) > 30  # every sub-package was scanned
    assert not {k: v for k, v in offenders.items() if v}


def test_every_evidence_family_is_a_package_with_a_measure_entry_point():
    import importlib

    for family in ("tokenizer", "weights", "independence", "architecture"):
        module = importlib.import_module(f"modellineage.{family}")
        assert callable(getattr(module, "measure")), family
        assert (LIBRARY / family / "__init__.py").is_file()


def test_benchmarks_measure_through_the_library_not_the_audit_modules():
    """Benchmarks may read thresholds and judging rules (audits.criteria, audits.tokenizer_criteria) to
    calibrate them, never an audit module's pipeline (audits.test_*, audits.plugin)."""
    offenders = {p.name: {m for m in imported_paths(p) if m.startswith(("audits.test_", "audits.plugin",
                                                                         "audits.shared"))}
                 for p in (ROOT / "benchmarks").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_reading_layer_imports_no_evidence_family():
    """Sources, tensors, hashing, naming and configs sit below every family (no import circle)."""
    families = {"tokenizer", "weights", "independence", "architecture", "catalog", "compute", "reporting"}
    offenders = {}
    for p in (LIBRARY / "reading").rglob("*.py"):
        bad = {m for m in imported_paths(p) if m.startswith("modellineage.")
               and m.split(".")[1] in families}
        # the model object offers each family's per-model facts lazily (architecture facts, vocabulary)
        if bad and p.name != "model.py":
            offenders[p.name] = bad
    assert not offenders
