"""Hostile conditions, class 5: evidence is written whole, and never states a verdict the run did not reach.

A CI gate reads ``evidence.json``. These tests interrupt a real run with SIGINT, run against a folder that
cannot be written and a disk that fills up, start a run while another holds the evidence path, and remove
an input file while the run is under way; each time the last complete evidence must stay as it was and
the run must say so and exit non-zero, without a traceback.
"""

from __future__ import annotations

import fcntl
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile import ROOT, assert_contained, copy_demo, run_audit

pytestmark = pytest.mark.hostile

#: What a previous complete run left behind; an incomplete run must not touch it.
PREVIOUS = '{"complete": true, "previous": "run"}\n'


def _command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", str(ROOT / "audits"), "-p", "no:cacheprovider", "-q",
            "--evidence", str(tmp_path / "e.json"), "--html", str(tmp_path / "e.html"), *args]


def _previous_run(tmp_path: Path) -> None:
    (tmp_path / "e.json").write_text(PREVIOUS, encoding="utf-8")
    (tmp_path / "e.html").write_text("<html>previous report</html>", encoding="utf-8")


def _assert_previous_untouched(tmp_path: Path) -> None:
    assert (tmp_path / "e.json").read_text(encoding="utf-8") == PREVIOUS
    assert (tmp_path / "e.html").read_text(encoding="utf-8") == "<html>previous report</html>"


def _assert_no_traceback(out: str) -> None:
    assert "Traceback" not in out and "INTERNALERROR" not in out, out[-4000:]


def test_ctrl_c_keeps_the_last_complete_evidence(tmp_path: Path) -> None:
    """SIGINT in the middle of the demo audit: evidence.json and the report stay, a partial file says why."""
    _previous_run(tmp_path)
    # SIGINT as a terminal sends it; reset to the default so Python turns it into KeyboardInterrupt even
    # when this test runs where SIGINT is ignored (a background job, an xdist worker).
    proc = subprocess.Popen(_command(tmp_path), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "e.json.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.0)  # configured (the lock is taken at configure time); the 35 audits take ~8 s more
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)

    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out[-4000:]
    _assert_no_traceback(out)
    _assert_previous_untouched(tmp_path)
    partial = json.loads((tmp_path / "e.partial.json").read_text(encoding="utf-8"))
    assert partial["complete"] is False
    assert "interrupted" in partial["incomplete_reason"]
    assert len([a for a in partial["audits"] if a["outcome"] != "not run"]) < 35
    assert (tmp_path / "e.partial.html").exists()
    assert "evidence is incomplete" in out and "e.partial.json" in out
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_a_complete_run_replaces_evidence_and_clears_a_stale_partial(tmp_path: Path) -> None:
    """The counterpart: a complete run says so, replaces the evidence and removes an older partial file."""
    _previous_run(tmp_path)
    (tmp_path / "e.partial.json").write_text('{"complete": false}\n', encoding="utf-8")
    run = run_audit(tmp_path, "-m", "architecture", name="e")
    assert_contained(run)
    assert run.evidence["complete"] is True
    assert not (tmp_path / "e.partial.json").exists()
    assert "previous report" not in run.html_path.read_text(encoding="utf-8")


def test_an_unwritable_evidence_folder_is_a_usage_error(tmp_path: Path) -> None:
    """A folder that cannot be made (its parent is a file): exit 4 before any audit, naming the path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file", encoding="utf-8")
    for option in ("--evidence", "--html"):
        proc = subprocess.run(_command(tmp_path, option, str(blocker / "out" / "x")), cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out[-4000:]
        _assert_no_traceback(out)
        assert str(blocker / "out" / "x") in out


def test_a_full_disk_leaves_the_previous_evidence(tmp_path: Path) -> None:
    """Writes fail part-way (a file-size limit stands in for a full disk): no truncated evidence or report."""
    _previous_run(tmp_path)

    def small_disk() -> None:  # Python ignores SIGXFSZ, so an over-limit write is an OSError (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, 16 << 10))

    proc = subprocess.run(_command(tmp_path, "-m", "architecture"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=small_disk)
    out = proc.stdout + proc.stderr
    assert proc.returncode not in (0, 1), out[-4000:]
    _assert_no_traceback(out)
    _assert_previous_untouched(tmp_path)
    assert "evidence could not be written" in out and "e.json" in out
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_a_second_run_on_the_same_evidence_fails_fast(tmp_path: Path) -> None:
    """Another run holds the evidence path: exit 4 at once, naming the lock and the path; nothing written."""
    lock = tmp_path / "e.json.lock"
    with open(lock, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the running audit does
        started = time.monotonic()
        proc = subprocess.run(_command(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=300)
        elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, out[-4000:]
    _assert_no_traceback(out)
    assert "another audit run is writing" in out and str(lock) in out and str(tmp_path / "e.json") in out
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.partial.json").exists()
    assert elapsed < 60  # failed at configure time, not after running the audits


def test_an_input_file_removed_during_the_run_is_recorded(tmp_path: Path, monkeypatch) -> None:
    """A source file that vanishes between start-up and session finish: evidence records it per file."""
    target = copy_demo(tmp_path / "target", "base")
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    # Removes a file the architecture audits do not read, after the source was resolved at start-up.
    (plugin_dir / "vanish_plugin.py").write_text(
        "from pathlib import Path\n"
        "def pytest_collection_finish(session):\n"
        f"    Path({str(target / 'tokenizer_config.json')!r}).unlink()\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(plugin_dir))
    run = run_audit(tmp_path, "--target", str(target), "--reference", f"base={ROOT / 'fixtures/demo/base'}",
                    "--expect", "derived", "-m", "architecture", "-p", "vanish_plugin")
    assert_contained(run)
    recorded = run.evidence["inputs"]
    gone = [i for i in recorded if i["path"].endswith("target/tokenizer_config.json")]
    assert len(gone) == 1 and gone[0]["sha256"] is None
    assert "cannot read" in gone[0]["error"] and "FileNotFoundError" in gone[0]["error"]
    others = [i for i in recorded if i is not gone[0]]
    assert others and all(i["sha256"] for i in others)
