"""Harness for hostile-input tests: run the audit on a model folder built to attack it, as an auditor would.

A hostile publisher controls every byte of the folders under audit. Each test builds its folder from the
demo models (no binary blobs are checked in), runs ``pytest audits/`` in a subprocess exactly as the
README says, and checks the invariants that must hold whatever the folder holds
(:func:`assert_contained`):

- the exit code is a verdict (0, 1) or a usage error (4), never a crash;
- no traceback and no INTERNALERROR reaches the auditor, only a message that names the offending file;
- the evidence and the report are written (complete) whenever the run reached a verdict;
- nothing outside the source root is read: a canary file planted beside the folder never shows up in any
  output;
- no code from the folder ran: no marker file written by planted code exists;
- memory stays bounded: the child runs under an address-space limit and reports its own peak RSS.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "fixtures" / "demo"

#: The text of every canary file; it must never appear in what a run prints or writes.
CANARY = "CANARY-7f3a9c-do-not-leak"
#: Address-space limit of a hostile run's child process (torch, tokenizers and numpy map ~0.7 GiB at start).
ADDRESS_LIMIT = 4 << 30
#: The issue's bound on peak resident memory for any hostile file.
PEAK_RSS_LIMIT = 2 << 30

# Runs pytest in the child and writes its own peak RSS (bytes) to the file named by argv[1].
_CHILD = textwrap.dedent("""
    import atexit, resource, sys
    out = sys.argv.pop(1)
    def _peak():
        with open(out, "w") as f:
            f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
    atexit.register(_peak)
    import pytest
    sys.exit(pytest.main(sys.argv[1:]))
""")


def plant_canary(where: Path, name: str = "secret.txt") -> Path:
    """A file outside every source root holding :data:`CANARY`; a hostile folder may point at it."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    path.write_text(f"TOKEN={CANARY}\n{CANARY} {CANARY}\n", encoding="utf-8")
    return path


def marker_code(marker: Path) -> str:
    """Python source that, if it ever runs, writes ``marker`` (for planted conftest.py, __init__.py, auto_map)."""
    return f"open({str(marker)!r}, 'w').write('ran')\n"


def copy_demo(dest: Path, model: str = "base") -> Path:
    """A writable copy of one demo model (``base``, ``finetune`` or ``scratch``) at ``dest``."""
    shutil.copytree(DEMO / model, dest)
    return dest


@dataclass
class HostileRun:
    proc: subprocess.CompletedProcess
    evidence_path: Path
    html_path: Path
    peak_rss: int | None  # bytes; None when the child died before reporting

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    @property
    def evidence(self) -> dict | None:
        return json.loads(self.evidence_path.read_text()) if self.evidence_path.exists() else None

    def texts(self) -> list[str]:
        """Everything the run showed or wrote: terminal output, evidence, report."""
        found = [self.output]
        for path in (self.evidence_path, self.html_path):
            if path.exists():
                found.append(path.read_text(encoding="utf-8", errors="replace"))
        return found


def run_audit(tmp_path: Path, *args: str, cwd: Path = ROOT, address_limit: int | None = ADDRESS_LIMIT,
              timeout: int = 600, name: str = "hostile") -> HostileRun:
    """``pytest audits/ ARGS`` in a child process, evidence and report under ``tmp_path``."""
    evidence = tmp_path / f"{name}.json"
    html = tmp_path / f"{name}.html"
    peak = tmp_path / f"{name}.peak"

    def limit() -> None:
        if address_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))

    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(peak), str(ROOT / "audits"), "-p", "no:cacheprovider", "-q", "-rs",
         "--evidence", str(evidence), "--html", str(html), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=limit,
    )
    rss = int(peak.read_text()) if peak.exists() else None
    return HostileRun(proc, evidence, html, rss)


def assert_contained(run: HostileRun, *, names: str | None = None, markers: tuple[Path, ...] = (),
                     verdict: bool = True) -> None:
    """The invariants of a hostile run (module docstring).

    Args:
        names: a string (usually the offending file's name) the run's messages must contain.
        markers: files that planted code would write if it ran.
        verdict: the run must reach a verdict (exit 0 or 1, evidence and report written); False also
            accepts a usage error (exit 4, nothing written).
    """
    out = run.output
    assert run.proc.returncode in ((0, 1) if verdict else (0, 1, 4)), out[-4000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-4000:]
    if run.proc.returncode in (0, 1):
        evidence = run.evidence
        assert evidence is not None, "no evidence written\n" + out[-4000:]
        assert evidence.get("complete", True) is not False, out[-4000:]
        assert run.html_path.exists(), "no report written\n" + out[-4000:]
    if names is not None:
        assert any(names in text for text in run.texts()), f"no message names {names!r}\n" + out[-4000:]
    for text in run.texts():
        assert CANARY not in text, "the canary planted outside the source was read into the output"
    for marker in markers:
        assert not marker.exists(), f"code planted in the model folder ran ({marker.name} was written)"
    if run.peak_rss is not None:
        assert run.peak_rss < PEAK_RSS_LIMIT, f"peak RSS {run.peak_rss / 2**30:.2f} GiB"
