"""Screenshots of the demo report for the README (run after `pytest audits/`).

    python docs/make_screenshots.py            # reads reports/audit.html, writes docs/report-*.png

Chromium renders the first screen a reader sees in a 1280×800 window and one family's details; the first
reference's picture is taken from the report itself. Both are reduced to 256 colours to keep the repository small.
"""

from __future__ import annotations

import base64
import io
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modellineage.reporting import browser  # noqa: E402


def _small(image: Image.Image, out: Path) -> None:
    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"{out.relative_to(ROOT)}: {image.size[0]}×{image.size[1]}, {out.stat().st_size:,} bytes")


def main() -> int:
    report = ROOT / "reports" / "audit.html"
    with tempfile.TemporaryDirectory() as tmp:
        shot = browser.screenshot(report, Path(tmp) / "first.png", width=1280, height=800)
        _small(Image.open(shot), ROOT / "docs" / "report-first-screen.png")
        top = browser.layout(report, width=1280, height=800)["sections"].get("family-independence")
        if top is not None:  # one family's details: a tall window, cropped at the section
            tall = browser.screenshot(report, Path(tmp) / "tall.png", width=1280, height=top + 700)
            _small(Image.open(tall).crop((0, max(0, top - 10), 1280, top + 560)), ROOT / "docs" / "report-family.png")
    figure = re.search(r'<figure><img alt="[^"]*" src="data:image/png;base64,([^"]+)"', report.read_text())
    if figure:
        _small(Image.open(io.BytesIO(base64.b64decode(figure.group(1)))), ROOT / "docs" / "report-reference-figure.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
