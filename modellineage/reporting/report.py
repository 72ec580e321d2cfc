"""HTML fragments and PNG plots for the audit report. Renders records; measures and judges nothing.

matplotlib is imported inside the plotting functions only, so measuring code never pays for it.
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections import defaultdict
from typing import Any, Iterable, Mapping, Sequence

from modellineage.reporting import headline
from modellineage.reporting.families import audit_name, audit_title, families_in_order, family
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
          raw_columns: Sequence[int] = (), css_class: str = "") -> str:
    """A plain HTML table; cells are escaped except the columns listed in ``raw_columns``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td>{cell if i in raw_columns else esc(cell)}</td>" for i, cell in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    classes = f"lineage {css_class}".strip()
    return (f'<table class="{classes}" style="border-collapse:collapse;margin:6px 0">{cap}<thead><tr>{head}</tr>'
            f"</thead><tbody>{''.join(body)}</tbody></table>")


def _verdict(outcome: str) -> str:
    word, colour = VERDICT_STYLE.get(outcome, (outcome, "#57606a"))
    return f'<b style="color:{colour}">{esc(word)}</b>'


def _audit_name(nodeid: str) -> str:
    return nodeid.split("::")[-1].split("[")[0]


# Report layout: the answer first (banner + one card per claim), one picture per reference, then the
# details grouped by evidence family, then the inputs. Pure rendering of evidence data.
OUTCOME_STYLE = {  # outcome -> (words on the card, text colour, background)
    "holds": ("claim holds", "#1a7f37", "#f0fff4"),
    "fails": ("claim FAILS", "#cf222e", "#fff5f5"),
    "untested": ("claim untested", "#9a6700", "#fffbe6"),
}

CSS = """<style>
.mlr{color:#1f2328;font-size:13px;line-height:1.45;max-width:1200px}
.mlr p,.mlr li{color:#1f2328}
.summary__data>h2:first-child{display:none}
.mlr h2{font-size:18px;margin:18px 0 6px}
.mlr h3{font-size:15px;margin:14px 0 4px}
.mlr a{color:#0969da}
.mlr code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;color:#57606a;overflow-wrap:anywhere}
.mlr .banner{padding:6px 12px;border-radius:6px;font-size:16px;font-weight:bold;margin:4px 0 8px}
.mlr .banner small{font-size:12px;font-weight:normal;margin-left:10px}
.mlr .cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(270px,1fr));gap:8px}
.mlr .card{border:1px solid #d0d7de;border-left:6px solid;border-radius:6px;padding:6px 10px;min-width:0;font-size:12.5px}
.mlr .card h3{margin:0 0 4px;font-size:14px;font-weight:normal}
.mlr .card .outcome{font-weight:bold;white-space:nowrap}
.mlr .card ul{margin:4px 0;padding-left:18px}
.mlr .card li{margin:2px 0}
.mlr .card .untested,.mlr .card .more{color:#57606a;font-size:12px;margin:4px 0}
.mlr .contested{color:#9a6700;font-weight:bold}
.mlr .card .against{font-size:12px;margin:4px 0;color:#1f2328}
.mlr .card .behaviour{font-size:12px;margin:4px 0;color:#1f2328;border-top:1px dashed #d0d7de;padding-top:3px}
.mlr .checks{margin:8px 0;font-size:13px}
.mlr figure{margin:8px 0 14px}
.mlr figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
.mlr figcaption{font-size:12px;color:#57606a;max-width:900px}
.mlr .family{border-top:2px solid #d0d7de;margin-top:14px}
.mlr .scope{font-style:italic;color:#57606a;margin:2px 0 6px}
.mlr table.lineage{border-collapse:collapse;margin:6px 0;max-width:100%}
.mlr table.lineage td,.mlr table.lineage th,table.lineage td,table.lineage th{border:1px solid #d0d7de;
 padding:3px 8px;text-align:left;vertical-align:top;overflow-wrap:break-word}
.mlr table.details>tbody>tr>td{overflow-wrap:anywhere}
.mlr table.details tr.has-extras>td{border-bottom:none}
.mlr table.details tr.extras-row>td{border-top:none;padding:0 8px 4px}
table.lineage caption{text-align:left;font-weight:bold}
.mlr table.details{width:100%;table-layout:fixed}
.mlr table.details th:nth-child(1){width:20%}.mlr table.details th:nth-child(2){width:8%}
.mlr table.details th:nth-child(3){width:9%}.mlr table.details th:nth-child(4){width:8%}
.mlr table.details th:nth-child(5){width:13%}.mlr table.details th:nth-child(6){width:7%}
.mlr td.bound{cursor:help}
.mlr sup a{text-decoration:none}
.mlr details.evidence{margin:0 0 4px}
.mlr details.evidence>summary{cursor:pointer;color:#0969da}
.mlr details.evidence img{max-width:100%;height:auto}
.mlr .extras{overflow-wrap:anywhere}
.mlr ol.footnotes{font-size:11px;color:#57606a;padding-left:22px}
.mlr ol.footnotes li{color:#57606a}
.mlr table.inputs td:nth-child(4){font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
@media print{
 body{min-width:0}
 .mlr{max-width:none;font-size:10px}
 .mlr table.lineage td,.mlr table.lineage th{padding:2px 4px}
 .mlr details.evidence::details-content{content-visibility:visible;display:contents}
 .mlr .family+.family{break-before:page}
 .mlr h2,.mlr h3{break-after:avoid}
 .mlr tr.extras-row{break-inside:auto}
 .mlr figcaption{font-size:9.5px}
 .mlr .cards,.mlr .card,.mlr figure,.mlr tr,.mlr .banner{break-inside:avoid}
 .mlr thead{display:table-header-group}
 .mlr details.evidence>summary{display:none}
 .controls,.filter,.summary__reload,#show_all_details,#hide_all_details{display:none}
 #results-table{break-before:page;font-size:10px}
 a{color:inherit}
}
</style>"""

# <details> content does not print while closed: open every evidence block before printing.
PRINT_SCRIPT = ("<script>window.addEventListener('beforeprint',function(){document.querySelectorAll("
                "'details.evidence').forEach(function(d){d.open=true})});</script>")

_THRESHOLD_KEY = re.compile(r"thresholds\.toml \[(\w+)\]\.(\w+)")
_POWER = re.compile(r"10\^(-?\d+)")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _anchor(nodeid: str) -> str:
    return "audit-" + _slug(nodeid.split("::")[-1])


def _powers(escaped: str) -> str:
    """``10^-148`` in already escaped text -> 10<sup>−148</sup>."""
    return _POWER.sub(lambda m: f"10<sup>{m.group(1).replace('-', '−')}</sup>", escaped)


class _Footnotes:
    """Threshold sources as numbered footnotes: one per thresholds.toml key, or per other source text."""

    def __init__(self, bounds: Sequence[Mapping[str, Any]]) -> None:
        self.bounds = {(b.get("family"), b.get("key")): b for b in bounds}
        self.numbers: dict[str, int] = {}
        self.texts: list[tuple[str, str]] = []  # (label, explanation)

    def number(self, label: str, text: str) -> int:
        if label not in self.numbers:
            self.numbers[label] = len(self.texts) + 1
            self.texts.append((label, text))
        return self.numbers[label]

    def key(self, family: str, key: str) -> int:
        label = f"thresholds.toml [{family}].{key}"
        b = self.bounds.get((family, key))
        text = f"{label} = {b.get('value')}: {b.get('source', '')}" if b else label
        return self.number(label, text)

    def refs(self, source: str | None) -> tuple[list[int], str]:
        """Footnote numbers for a judgement's source, and its full text for the hover title."""
        if not source:
            return [], ""
        keys = _THRESHOLD_KEY.findall(source)
        if keys:
            nums = [self.key(f, k) for f, k in keys]
            return nums, "\n".join(self.texts[n - 1][1] for n in dict.fromkeys(nums))
        return [self.number(source, source)], source

    @staticmethod
    def marks(numbers: Iterable[int]) -> str:
        links = ",".join(f'<a href="#bound-{n}">{n}</a>' for n in dict.fromkeys(numbers))
        return f"<sup>{links}</sup>" if links else ""

    def inline(self, escaped: str) -> str:
        """Replace ``thresholds.toml [f].k`` in escaped text by its footnote mark."""
        return _THRESHOLD_KEY.sub(lambda m: self.marks([self.key(m.group(1), m.group(2))]), escaped)

    def html(self) -> str:
        if not self.texts:
            return ""
        items = "".join(f'<li id="bound-{i}">{esc(text)}</li>' for i, (_, text) in enumerate(self.texts, 1))
        return f'<h3 id="bounds">Bounds and their sources</h3><ol class="footnotes">{items}</ol>'


def _outcome_of(record: Mapping[str, Any]) -> str:
    return "recorded" if record["outcome"] == "passed" and not record.get("judgement") else record["outcome"]


def _banner(verdicts: Sequence[Any], checks: Sequence[Mapping[str, Any]], failed_audits: int,
            allow_untested: bool) -> str:
    n = len(verdicts)
    fails = sum(v.outcome == "fails" for v in verdicts)
    untested = sum(v.outcome == "untested" for v in verdicts)
    contested = sum(v.contested for v in verdicts)
    failed_checks = sum(r["outcome"] == "failed" for r in checks)
    if not n:
        head, colour = "No claim about a reference was made", "#57606a"
    elif fails:
        head, colour = f"{fails} of {n} claim{'s' if n != 1 else ''} fail{'s' if fails == 1 else ''}", "#cf222e"
    elif untested:
        head = f"{untested} of {n} claim{'s' if n != 1 else ''} untested"
        colour = "#9a6700"
    else:
        head, colour = (f"All {n} claims hold" if n > 1 else "The claim holds"), "#1a7f37"
        if failed_audits:  # the run fails (exit 1) even though no combined verdict does: never a green banner
            head += f", but {failed_audits} audit{'s' if failed_audits != 1 else ''} failed"
            colour = "#cf222e"
    notes = []
    if fails and untested:
        notes.append(f"{untested} untested")
    if untested:
        notes.append("untested claims " + ("are accepted by this plan (allow_untested)" if allow_untested
                                           else "fail the run"))
    if contested:
        notes.append(f"{contested} contested: evidence families disagree (named on the card)")
    if checks:
        notes.append(f"{len(checks) - failed_checks} of {len(checks)} integrity and fact checks hold")
    notes.append(f"{failed_audits} audit{'s' if failed_audits != 1 else ''} failed" if failed_audits
                 else "no audit failed")
    bg = {"#cf222e": "#ffebe9", "#9a6700": "#fff8c5", "#1a7f37": "#dafbe1"}.get(colour, "#f6f8fa")
    return (f'<div class="banner" style="background:{bg};color:{colour};border:1px solid {colour}">{esc(head)}'
            f"<small>{esc('; '.join(notes))}.</small></div>")


def _headline_html(v: Any) -> str:
    """The claim with its key words bold: 'finetune <b>was derived</b> from base', 'was <b>not</b> derived'."""
    text = esc(v.headline)
    for phrase, bold in (("derived from none", "derived from <b>none</b>"), ("was not derived", "was <b>not</b> derived"),
                         ("was derived", "<b>was derived</b>")):
        if phrase in v.headline:
            return text.replace(phrase, bold, 1)
    return text


def _short(reason: str, limit: int = 70) -> str:
    """The first clause of a reason ("recorded, not judged: a derivative may change every tensor")."""
    first = re.split(r"[;(]", reason, maxsplit=1)[0].strip().rstrip(".,:")
    return first if len(first) <= limit else first[:limit].rsplit(" ", 1)[0] + "…"


def _behaviour_line(v: Any) -> str:
    """The behaviour family's figures for this reference: beside the verdict, never part of it."""
    if not getattr(v, "behaviour", None):
        return ""
    return (f'<p class="behaviour" title="{esc(family("behaviour").scope)}">'
            f'<b>Behaviour</b> (not a lineage verdict): {esc(v.behaviour["text"].removeprefix("behaviour: "))}</p>')


def _card(v: Any) -> str:
    words, colour, bg = OUTCOME_STYLE[v.outcome]
    target = f"#ref-{_slug(v.subject)}" if v.subject != "catalog" else "#family-catalog"
    items = "".join(f'<li>{_powers(esc(e.text))} <a href="#{_anchor(e.audit)}" title="{esc(e.audit)}">'
                    f"[{esc(family(e.family).title.lower())}]</a></li>" for e in v.strongest)
    if v.outcome == "untested":
        items = "<li>No audit could measure and judge this claim.</li>"
    against = ""
    if v.against:  # one line per disagreeing family; each audit's sentence and the rule's reason on hover
        groups: dict[str, list] = {}
        for e in v.against:
            groups.setdefault(e.family, []).append(e)
        lines = []
        for fam, found in groups.items():
            says = found[0].finding or ("fails" if found[0].outcome == "failed" else "holds")
            first = _anchor(found[0].audit)
            lines.append(f'<a href="#{first}" title="{esc(" ".join(e.text for e in found))}">'
                         f"{esc(family(fam).title.lower())}</a> ({len(found)} audit{'s' if len(found) != 1 else ''}"
                         f" say{'s' if len(found) == 1 else ''} {esc(says)})")
        why = " — weaker than the deciding " + esc(family(v.deciding).title.lower()) + " evidence" \
            if v.deciding and v.outcome != "untested" else ""
        against = (f'<p class="against" title="{esc(v.sentence)}"><span class="contested">Disagreeing:</span> '
                   + "; ".join(lines) + why + "</p>")
    untested = ""
    if v.untested:  # short on the card, the whole reason on hover and in the family's section
        untested = ('<p class="untested"><b>Not tested:</b> ' + "; ".join(
            f'<span title="{esc(why)}">{esc(family(f).title.lower())} ({esc(_short(why))})</span>'
            for f, why in v.untested) + "</p>")
    return (f'<div class="card" style="border-left-color:{colour};background:{bg}">'
            f'<h3>{_headline_html(v)}: <span class="outcome" style="color:{colour}">{esc(words)}</span>'
            f'{" <span class=contested>(contested)</span>" if v.contested else ""}</h3>'
            f"<ul>{items}</ul>{against}{untested}{_behaviour_line(v)}"
            f'<p class="more"><a href="{target}">Details ↓</a> · judged by {len(v.judged_by)} '
            f"audit{'s' if len(v.judged_by) != 1 else ''}</p></div>")


def _checks_html(target: str, checks: Sequence[Mapping[str, Any]]) -> str:
    if not checks:
        return ""
    failed = [r for r in checks if r["outcome"] == "failed"]
    text = (f"<b>Integrity and claimed facts</b> (configs, finite weights, parameter counts, compute): "
            f"{len(checks) - len(failed)} of {len(checks)} checks hold")
    if failed:
        text += ("; <b style='color:#cf222e'>FAILS</b>: " + "; ".join(
            f'<a href="#{_anchor(r["nodeid"])}">{esc(audit_title(r))} ({esc(r["subject"])})</a>' for r in failed))
    return f'<p class="checks">{text}.</p>'


def _figure(plan: Mapping[str, Any], ref: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
            bounds: Sequence[Mapping[str, Any]]) -> str:
    """The reference's picture (weights by layer, independence per layer), or '' when neither was measured."""
    from modellineage.reporting import plots

    name = ref["name"]
    mine = {audit_name(r["nodeid"]): r for r in records if r.get("subject") == name}
    weights = (mine.get("test_weight_similarity") or {}).get("measurements") or {}
    pairs = (weights.get("weight_similarity") or {}).get("pairs")
    indep = mine.get("test_independence_pvalue") or {}
    layers = ((indep.get("measurements") or {}).get("independence") or {}).get("layers") or []
    pvalues = [(l.get("layer"), (l.get("pvalue") or {}).get("p")) for l in layers if isinstance(l, Mapping)]
    band = next((b.get("value") for b in bounds
                 if (b.get("family"), b.get("key")) == ("weights", "independent_max_centred")), None)
    alpha = None
    j = indep.get("judgement") or {}
    found = re.search(r"p\s*[<≥]\s*([0-9.eE+-]+)", str(j.get("bound", "")))
    if found:
        alpha = float(found.group(1))
    try:
        png = plots.reference_figure(pairs, pvalues, reference=name,
                                     target=plan.get("target", {}).get("name", "target"), band=band, alpha=alpha)
    except Exception as exc:  # noqa: BLE001 - odd evidence must not cost the report; say so where the figure goes
        return f"<p><i>The figure for {esc(name)} could not be drawn ({esc(type(exc).__name__)}: {esc(exc)}).</i></p>"
    if png is None:
        return ""
    how = []
    if pairs:
        how.append("Left: each line is one kind of weight (attention, MLP, norms; ◆ embedding and output head); "
                   "points inside the grey band are as alike as independently trained models get "
                   f"(below {band:g}, thresholds.toml [weights].independent_max_centred), points near 1 mean the "
                   "weights were kept" if band is not None else "Left: centred similarity per layer and kind of weight")
    if pvalues:
        how.append("right: a bar above the dashed line rejects independent training of that layer at α "
                   "(red bars do); grey bars find no dependence")
    return (f'<figure><img alt="Weights of {esc(plan.get("target", {}).get("name"))} vs {esc(name)} by layer, '
            f'and the independence test per layer" src="data:image/png;base64,{png}"/>'
            f"<figcaption>How to read it: {esc('; '.join(how))}.</figcaption></figure>")


def _extras_html(extras: Sequence[Mapping[str, Any]]) -> str:
    parts = []
    for x in extras:
        kind, content = x.get("format_type"), x.get("content", "")
        if kind == "html":
            parts.append(str(content))
        elif kind == "image":
            parts.append(f'<img alt="{esc(x.get("name", ""))}" src="data:image/png;base64,{content}"/>')
        elif kind == "text":
            parts.append(f"<pre>{esc(content)}</pre>")
        else:
            parts.append(f"<p>{esc(x.get('name', ''))}: {esc(str(content)[:2000])}</p>")
    return "".join(parts)


def _family_section(name: str, records: Sequence[Mapping[str, Any]], notes: _Footnotes,
                    extras: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    fam = family(name)
    rows = []
    for r in records:
        j = r.get("judgement") or {}
        nums, title = notes.refs(j.get("source"))
        bound = esc(j.get("bound", "—")) + notes.marks(nums) if j else "—"
        words, colour = {"recorded": ("recorded", "#57606a")}.get(_outcome_of(r), VERDICT_STYLE.get(
            _outcome_of(r), (_outcome_of(r), "#57606a")))
        test_id = r["nodeid"].split("::")[-1]
        detail = _powers(notes.inline(esc(r.get("message", ""))))
        more = extras.get(r["nodeid"]) or ()
        row_class = ' class="has-extras"' if more else ""
        rows.append(f'<tr id="{_anchor(r["nodeid"])}" data-nodeid="{esc(r["nodeid"])}"{row_class}>'
                    f'<td>{esc(audit_title(r))}<br/><code>{esc(test_id)}</code></td>'
                    f'<td>{esc(r.get("subject"))}</td><td>{esc(r.get("expectation") or "—")}</td>'
                    f'<td>{esc(_fmt(j.get("measured")))}</td><td class="bound" title="{esc(title)}">{bound}</td>'
                    f'<td><b style="color:{colour}">{esc(words)}</b></td><td>{detail}</td></tr>')
        if more:  # the audit's own tables and plots, full width under its row
            rows.append(f'<tr class="extras-row"><td colspan="7"><details class="evidence"><summary>Tables and '
                        f'plots of {esc(test_id)} ({len(more)})</summary><div class="extras">{_extras_html(more)}'
                        "</div></details></td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ("audit", "model", "claim", "measured", "bound (source)", "verdict",
                                             "detail"))
    table_html = (f'<table class="lineage details"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
                  "</tbody></table>")
    return (f'<section class="family" id="family-{_slug(name)}"><h3>{esc(fam.title)} '
            f'<code>{esc(name)}</code></h3><p class="scope">{esc(fam.scope)}</p>{table_html}</section>')


def summary_html(plan: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                 coverage: Sequence[Mapping[str, Any]] = (), bounds: Sequence[Mapping[str, Any]] = (), *,
                 extras: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, allow_untested: bool = False,
                 inputs: str = "") -> str:
    """The report above pytest's own table: the answer, one picture per reference, the details by family.

    Args:
        plan: the plan (``AuditPlan.as_dict()``).
        records: evidence records (as in evidence.json ``audits``).
        coverage: evidence.json ``claim_coverage`` items.
        bounds: evidence.json ``thresholds.bounds`` (for the band, α and the footnotes).
        extras: node id -> the audit's pytest-html extras (tables and plots), shown in its family's section.
        allow_untested: the plan accepts untested claims (said on the banner).
        inputs: the inputs section (:func:`inputs_html`), placed after the details.
    """
    extras = extras or {}
    target = plan.get("target", {})
    verdicts = headline.claim_verdicts(target.get("name", ""), coverage, records)
    checks = headline.target_checks(target.get("name", ""), records)
    failed = sum(r["outcome"] == "failed" for r in records)
    refs = plan.get("references", [])
    parts = [CSS, PRINT_SCRIPT, '<div class="mlr">', "<h2>Provenance verdicts</h2>",
             f"<p>Each card is one claim of the audit plan about <b>{esc(target.get('name'))}</b> "
             f"({esc(target.get('source'))}), its verdict and its strongest evidence. Below: one picture per "
             "reference, then every audit by evidence family with its bound and source; evidence.json names each "
             "input file's SHA-256.</p>",
             _banner(verdicts, checks, failed, allow_untested),
             f'<div class="cards">{"".join(_card(v) for v in verdicts)}</div>', _checks_html(target.get("name"), checks)]
    by_subject = defaultdict(list)
    for r in records:
        by_subject[r["subject"]].append(r)
    for ref in refs:
        name = ref["name"]
        mine = sorted(by_subject.get(name, []), key=lambda r: r["nodeid"])
        sentences = [r["summary"] for r in mine if r.get("summary")]
        refinements = ", ".join(f"{k}: {v}" for k, v in ref.get("family_expect", {}).items())
        claim = f"expected <b>{esc(ref['expect'])}</b>" + (f" (refined — {esc(refinements)})" if refinements else "")
        fails = [audit_name(r["nodeid"]) for r in mine if r["outcome"] == "failed"]
        verdict = (f"<b style='color:#cf222e'>Claims that fail: {esc(', '.join(fails))}.</b>" if fails
                   else "All audited claims hold." if mine else "No audit ran for this reference.")
        combined = " ".join(v.sentence for v in combine(name, mine))  # the documented rule of verdicts.py
        parts.append(f'<section id="ref-{_slug(name)}"><h3>{esc(target.get("name"))} vs {esc(name)}</h3>'
                     + _figure(plan, ref, records, bounds)
                     + f'<details class="evidence"><summary>Every audit against {esc(name)} in words</summary>'
                       f"<p>{claim}. {esc(' '.join(sentences))} {verdict} {esc(combined)}</p></details></section>")
    notes = _Footnotes(bounds)
    by_family = defaultdict(list)
    # judged audits first (they decide), then recorded and skipped ones; by audit, then model
    for r in sorted(records, key=lambda r: (not r.get("judgement"), audit_name(r["nodeid"]), r["subject"],
                                            r["nodeid"])):
        by_family[r.get("family") or "other"].append(r)
    parts.append("<h2>Details by evidence family</h2><p>Each family opens with what it can and cannot show. Rows "
                 "name the audit in words with its test id; hover a bound (or follow its number) for its source. "
                 "<i>Recorded</i> rows are informational, skipped rows say why.</p>")
    parts += [_family_section(f, by_family[f], notes, extras) for f in families_in_order(by_family)]
    if coverage:
        parts.append('<section class="family" id="claim-coverage">'
                     + claims_html(coverage, allow_untested=allow_untested) + "</section>")
    parts.append(notes.html())
    parts.append(inputs)
    parts.append("<h2>All audits as pytest ran them</h2><p>The same audits in pytest's own table (for "
                 "engineers: durations, logs, filters).</p></div>")
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
    rows = [[i["model"], i["path"], "" if i.get("size") is None else f"{i['size']:,}",
             i.get("sha256") or (f"header {i['header_sha256']}" if i.get("header_sha256") else ""),
             i.get("sha256_source") or "", i.get("error", "")] for i in inputs]
    hide = "<style>#environment-header,#environment{display:none}</style>"
    budgeted = any(i.get("header_sha256") and not i.get("sha256") for i in inputs)
    note = (" Under a read budget a weight file is not read whole: its size and the SHA-256 of its header (its first "
            "<code>header_bytes</code> bytes) identify it; files of one architecture and layout share a header, so "
            "the tensor digests of the reuse and finiteness audits tell their contents apart; "
            "<code>--verify-hashes</code> computes every SHA-256." if budgeted else "")
    return (hide + f"<h2>Inputs</h2><p>Every number above comes from these files; the full record is {esc(evidence)}."
            f"{note}</p>"
            + table(["model", "file", "bytes", "SHA-256", "SHA-256 from", "problem"], rows, css_class="inputs")
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
