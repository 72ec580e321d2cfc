"""The demo report as a reader sees it: rendered by headless Chromium, not parsed as text.

One demo audit (subprocess, as in test_audit_runs.py) writes the report; Chromium (Debian's
``chromium``, started here with a fresh profile and networking off) renders it at a laptop's window
size and prints it to PDF. Skipped, with the reason, when no Chromium is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from modellineage.reporting import browser

from .test_audit_runs import run_audit

CHROMIUM = browser.find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium to render the report "
                                "(Debian: apt-get install chromium; or set $CHROMIUM)")


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("render")
    proc, evidence = run_audit(tmp)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return tmp / "run.html", evidence


def test_verdict_cards_are_the_first_screen_and_nothing_overflows(demo_report):
    report, evidence = demo_report
    seen = browser.layout(report, width=1280, height=800)  # a 1280×800 window, browser chrome included

    width, height = seen["viewport"]
    claims = evidence["verdicts"]["overall"]["claims"]
    assert len(seen["cards"]) == claims == 4  # base, scratch, scratch's tokenizer, [catalog]
    assert seen["banner"]["bottom"] <= seen["cards"][0]["top"]
    assert "All 4 claims hold" in seen["banner"]["text"]
    for card in seen["cards"]:  # every verdict card whole inside the first viewport
        assert 0 <= card["top"] and card["bottom"] <= height, card
        assert card["right"] <= width, card
    assert seen["cards"][0]["text"].startswith("finetune was derived from base: claim holds")
    # every table and plot opened: nothing reaches past the right edge, no horizontal scrolling
    assert seen["overflow_count"] == 0, seen["overflow"]
    assert seen["scroll_width"] <= width
    assert seen["resources"] == []  # self-contained: the page fetched nothing

    narrow = browser.layout(report, width=1024, height=768)  # a smaller window: cards wrap, nothing overflows
    assert narrow["overflow_count"] == 0 and narrow["scroll_width"] <= 1024, narrow["overflow"]


def test_report_prints_to_pdf_with_a_page_per_family(demo_report, tmp_path):
    report, evidence = demo_report
    pdf = browser.print_pdf(report, tmp_path / "audit.pdf")

    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", data))
    families = {a["family"] for a in evidence["audits"]}
    assert pages >= len(families) + 1, pages  # the first screen, then a page break before each family
