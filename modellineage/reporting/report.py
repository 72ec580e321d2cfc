"""HTML fragments and PNG plots for the audit report. Renders records; measures and judges nothing.

matplotlib is imported inside the plotting functions only, so measuring code never pays for it.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from modellineage.reporting.verdicts import combine

VERDICT_STYLE = {
    "passed": ("holds", "#1a7f37"),
    "failed": ("FAILS", "#cf222e"),
    "skipped": ("skipped", "#9a6700"),
    "recorded": ("recorded (informational)", "#57606a"),
    "not run": ("not run", "#57606a"),
}


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], *, caption: str | None = None,
          raw_columns: Sequence[int] = ()) -> str:
    """A plain HTML table; cells are escaped except the columns listed in ``raw_columns``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td>{cell if i in raw_columns else esc(cell)}</td>" for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<table class="lineage" style="border-collapse:collapse;margin:6px 0">{cap}<thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _verdict(outcome: str) -> str:
    word, colour = VERDICT_STYLE.get(outcome, (outcome, "#57606a"))
    return f'<b style="color:{colour}">{esc(word)}</b>'


def _audit_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


def summary_html(plan: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The top of the report: who is audited, a verdict table, one paragraph per reference."""
    style = ("<style>table.lineage td,table.lineage th{border:1px solid #d0d7de;padding:3px 8px;"
             "text-align:left;vertical-align:top}table.lineage caption{text-align:left;font-weight:bold}</style>")
    refs = plan.get("references", [])
    target = plan.get("target", {})
    intro = (f"<p>Target <b>{esc(target.get('name'))}</b> ({esc(target.get('source'))}) audited against "
             f"{len(refs)} reference(s). A claim <i>holds</i> when the measured value is within its bound from "
             "thresholds.toml; each row names the bound's source in evidence.json.</p>")
    rows = []
    for r in sorted(records, key=lambda r: (r["subject"], r["nodeid"])):
        j = r.get("judgement") or {}
        outcome = "recorded" if r["outcome"] == "passed" and not j else r["outcome"]
        rows.append([esc(r["subject"]), esc(r.get("expectation") or "—"), esc(_audit_name(r["nodeid"])),
                     esc(_fmt(j.get("measured"))), esc(j.get("bound", "—")), _verdict(outcome),
                     esc(r.get("message", ""))])
    parts = [style, "<h2>Provenance verdicts</h2>", intro,
             table(["subject", "expected", "audit", "measured", "bound", "verdict", "detail"], rows,
                   raw_columns=range(7))]
    by_subject = defaultdict(list)
    for r in records:
        by_subject[r["subject"]].append(r)
    for ref in refs:
        name = ref["name"]
        mine = sorted(by_subject.get(name, []), key=lambda r: r["nodeid"])
        sentences = [r["summary"] for r in mine if r.get("summary")]
        failed = [_audit_name(r["nodeid"]) for r in mine if r["outcome"] == "failed"]
        refinements = ", ".join(f"{k}: {v}" for k, v in ref.get("family_expect", {}).items())
        claim = f"expected <b>{esc(ref['expect'])}</b>" + (f" (refined — {esc(refinements)})" if refinements else "")
        verdict = (f"<b style='color:#cf222e'>Claims that fail: {esc(', '.join(failed))}.</b>" if failed
                   else "All audited claims hold." if mine else "No audit ran for this reference.")
        combined = " ".join(v.sentence for v in combine(name, mine))  # modellineage.reporting.verdicts: the documented rule
        parts.append(f"<p><b>{esc(name)}</b> — {claim}. {esc(' '.join(sentences))} {verdict} {esc(combined)}</p>")
    return "".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_base64(fig) -> str:
    """Encode a matplotlib figure as base64 PNG (deterministic: no metadata timestamps)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def bar_plot(labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str,
             ylim: tuple[float, float] | None = None) -> str:
    """A small bar chart as base64 PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(labels) + 1.5), 2.6))
    ax.bar(range(len(values)), values, color="#0969da")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 12 else 0, fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    if ylim:
        ax.set_ylim(*ylim)
    return png_base64(fig)


def inputs_html(inputs: Sequence[Mapping[str, Any]], versions: Mapping[str, Any], evidence: str) -> str:
    """Every input file with its size and SHA-256, and the library versions, so each number can be traced.

    pytest-html's own environment table is hidden: the versions that matter are listed here instead.
    """
    rows = [[i["model"], i["path"], "" if i.get("size") is None else f"{i['size']:,}", i.get("sha256") or "",
             i.get("error", "")] for i in inputs]
    hide = "<style>#environment-header,#environment{display:none}</style>"
    return (hide + f"<h2>Inputs</h2><p>Every number above comes from these files; the full record is {esc(evidence)}.</p>"
            + table(["model", "file", "bytes", "SHA-256", "problem"], rows)
            + table(["library", "version"], sorted(versions.items()), caption="Versions"))


def claims_html(coverage: Sequence[Mapping[str, Any]], *, allow_untested: bool = False) -> str:
    """One row per claim: how many audits measured and judged it, and why the others did not.

    ``coverage`` items are claim-coverage records (``label``, ``tested_by``, ``judged_by``, ``not_judged``).
    """
    rows = []
    for c in coverage:
        count = c["tested_by"]
        verdict = (f'<b style="color:#1a7f37">{count}</b>' if count
                   else f'<b style="color:{"#9a6700" if allow_untested else "#cf222e"}">0 — untested</b>')
        judged = ", ".join(_audit_name(n) + n[n.find("["):] if "[" in n else _audit_name(n) for n in c["judged_by"])
        skipped = "; ".join(f"{_audit_name(s['audit'])}: {s['reason']}" for s in c["not_judged"][:6])
        rows.append([esc(c["label"]), verdict, esc(judged or "—"), esc(skipped or "—")])
    return table(["claim", "tested by (audits that measured and judged it)", "judged by", "not judged (why)"],
                 rows, caption="Claims and the audits that tested them", raw_columns=(0, 1, 2, 3))
