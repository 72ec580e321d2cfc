"""Layering: the library measures and never imports pytest or the audits; judging lives in audits/."""

from __future__ import annotations

import ast
from pathlib import Path

import modellineage

LIBRARY = Path(modellineage.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_library_never_imports_pytest_or_the_audits():
    offenders = {p.name: imported_modules(p) & {"pytest", "_pytest", "audits", "pytest_html"}
                 for p in LIBRARY.glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}

