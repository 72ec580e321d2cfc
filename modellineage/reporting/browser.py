"""See the report as a reader does: headless Chromium renders it to a PNG or a PDF, or measures its layout.

No Python dependency: Chromium's own command line (``--screenshot``, ``--print-to-pdf``, ``--dump-dom``)
on a fresh profile, with networking features off. :func:`layout` renders a copy of the report with a
small script appended that records, once the page has loaded, where the verdict cards are, which
elements reach past the viewport's right edge, and every resource the page fetched; ``--dump-dom``
then returns the DOM with that record in it. The report itself is not changed.

Command line (what docs/ screenshots are made with)::

    python -m modellineage.reporting.browser reports/audit.html --png docs/report-first-screen.png
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["find_chromium", "screenshot", "print_pdf", "layout", "FLAGS"]

#: Flags that keep headless Chromium from touching the network or the user's profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio")

_PROBE_ID = "mlr-layout-probe"
_PROBE = """<script>
window.addEventListener('load', function () {
  var vw = document.documentElement.clientWidth, vh = window.innerHeight;
  function box(e) { var r = e.getBoundingClientRect();
    return {top: Math.round(r.top), bottom: Math.round(r.bottom), left: Math.round(r.left), right: Math.round(r.right),
            text: (e.innerText || '').slice(0, 90)}; }
  var out = {viewport: [vw, vh], cards: [].map.call(document.querySelectorAll('.mlr .card'), box),
             banner: document.querySelector('.mlr .banner') ? box(document.querySelector('.mlr .banner')) : null};
  out.sections = {};
  document.querySelectorAll('.mlr section[id]').forEach(function (e) {
    out.sections[e.id] = Math.round(e.getBoundingClientRect().top + window.scrollY); });
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });  // every table and plot shown
  var over = [];
  document.querySelectorAll('body *').forEach(function (e) {
    var r = e.getBoundingClientRect();
    if (r.width > 0 && r.height > 0 && r.right > vw + 1) {
      over.push(e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className && e.className.baseVal === undefined
                ? '.' + String(e.className).split(' ').join('.') : '') + ' right=' + Math.round(r.right));
    }
  });
  out.overflow = over.slice(0, 40);
  out.overflow_count = over.length;
  out.scroll_width = document.documentElement.scrollWidth;
  out.resources = performance.getEntriesByType('resource').map(function (e) { return e.name.slice(0, 120); });
  var pre = document.createElement('pre'); pre.id = '%s'; pre.style.display = 'none';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});
</script>""" % _PROBE_ID


def find_chromium() -> str | None:
    """Path of a Chromium executable (Debian's ``chromium``; ``$CHROMIUM`` wins), or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _run(chromium: str, args: list[str], url: str, *, width: int, height: int, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="mlr-chromium-") as profile:
        proc = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               *args, url], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def screenshot(report: Path, png: Path, *, width: int = 1280, height: int = 800, chromium: str | None = None,
               timeout: float = 120) -> Path:
    """The report's first ``width`` × ``height`` pixels as a reader's browser window shows them."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable (Debian: apt-get install chromium)")
    _run(chromium, [f"--screenshot={Path(png).resolve()}"], Path(report).resolve().as_uri(), width=width,
         height=height, timeout=timeout)
    return Path(png)


def print_pdf(report: Path, pdf: Path, *, chromium: str | None = None, timeout: float = 120) -> Path:
    """The report printed to PDF by Chromium (A4/Letter per Chromium's default, no header or footer)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable (Debian: apt-get install chromium)")
    _run(chromium, [f"--print-to-pdf={Path(pdf).resolve()}", "--no-pdf-header-footer"],
         Path(report).resolve().as_uri(), width=1280, height=800, timeout=timeout)
    return Path(pdf)


def layout(report: Path, *, width: int = 1280, height: int = 800, chromium: str | None = None,
           timeout: float = 120) -> dict[str, Any]:
    """Render the report at ``width`` × ``height`` and return what the probe recorded.

    Returns:
        ``viewport`` [w, h]; ``banner`` and ``cards`` (top, bottom, left, right, text) as first shown;
        ``sections`` (id -> top in page pixels, as first shown); ``overflow`` (elements reaching past the right
        edge once every <details> is open) and its count;
        ``scroll_width``; ``resources`` (every URL the page fetched).
    """
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable (Debian: apt-get install chromium)")
    text = Path(report).read_text(encoding="utf-8")
    cut = text.rfind("</body>")
    probed = (text[:cut] + _PROBE + text[cut:]) if cut >= 0 else text + _PROBE
    with tempfile.TemporaryDirectory(prefix="mlr-layout-") as tmp:
        copy = Path(tmp) / "report.html"
        copy.write_text(probed, encoding="utf-8")
        dom = _run(chromium, ["--dump-dom", "--virtual-time-budget=5000"], copy.as_uri(), width=width,
                   height=height, timeout=timeout)
    start = dom.find(f'id="{_PROBE_ID}"')
    if start < 0:
        raise RuntimeError("the layout probe did not run (no record in the rendered DOM)")
    body = dom[dom.index(">", start) + 1:dom.index("</pre>", start)]
    return json.loads(html.unescape(body))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--png", type=Path, help="screenshot of the first screen")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--pdf", type=Path, help="print to PDF")
    parser.add_argument("--layout", action="store_true", help="print the layout record as JSON")
    args = parser.parse_args(argv)
    if args.png:
        screenshot(args.report, args.png, width=args.width, height=args.height)
    if args.pdf:
        print_pdf(args.report, args.pdf)
    if args.layout:
        print(json.dumps(layout(args.report, width=args.width, height=args.height), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
