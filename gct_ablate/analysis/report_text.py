"""A :class:`~gct_ablate.analysis.report.Report` as one self-contained HTML page, and as
Markdown whose images are PNG files in a folder beside it.

The HTML embeds each image as a ``data:image/png;base64`` URI and its CSS in a ``<style>``
element; it links to nothing outside the file. The tables are the summary's own rows
(:mod:`gct_ablate.render`), so the report and ``gct-ablate summary`` never disagree.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from gct_ablate import render as rd
from gct_ablate.analysis.report_content import Report, ReportFigure

SECTIONS = (("verdicts", "Verdicts"), ("recipe", "Recipe"), ("factors", "Factors"),
            ("curves", "Learning curves"), ("gates", "Gates"), ("prune", "Pruning"),
            ("cost", "Cost"), ("methods", "Methods and notes"))

CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; }
* { box-sizing: border-box; }
body { margin:0; color:var(--ink); background:#fff;
  font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 6px 0; }
.question { font-size: 17px; font-style: italic; color: #333; margin: 6px 0 10px; }
.conclusion { background: #fff8e1; border-left: 4px solid #e08214; padding: 10px 14px;
  margin: 12px 0; font-weight: 600; }
.meta, .small, figcaption, .note { color: var(--muted); font-size: 13px; }
nav { font-size: 13px; margin: 8px 0 4px; }
nav a { color: #0969da; text-decoration: none; margin-right: 14px; }
figure { margin: 14px 0 8px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12.5px; margin: 6px 0 4px; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--line); text-align: right;
  white-space: nowrap; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.l, th.l { text-align: left; }
tr.ref td { background: #f3f7ff; }
table.recipe td { white-space: normal; text-align: left; }
table.recipe td:first-child { font-weight: 600; white-space: nowrap; color: #333; }
.v { display: inline-block; padding: 0 6px; border-radius: 9px; font-weight: 600; }
.v-better { background: #dff3e4; color: #116329; }
.v-worse { background: #ffe1de; color: #a40e26; }
.v-equivalent { background: #ddeaff; color: #0a3d91; }
.v-inconclusive { background: #fff1d6; color: #8a4600; }
.v-too-few-runs { background: #eee; color: #555; }
.v-reference { background: #e8e8e8; color: #111; }
.v-significant { background: #ffe1de; color: #a40e26; }
.v-negligible { background: #ddeaff; color: #0a3d91; }
code { font-size: 12.5px; background: var(--soft); padding: 1px 4px; border-radius: 4px; }
ul { margin: 4px 0; padding-left: 22px; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _verdict_class(verdict: str) -> str:
    word = verdict.split(" (")[0]
    return "v v-" + word.replace(" ", "-")


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1,
                verdict: int | None = None, classes: Sequence[str] = (), css: str = "") -> str:
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="l"' if i < left or i == verdict else ""
        body = (f'<span class="{_verdict_class(text)}">{_e(text)}</span>'
                if tag == "td" and i == verdict and text else _e(text))
        return f"<{tag}{cls}>{body}</{tag}>"

    def tr(r: int, row: Sequence[str]) -> str:
        cls = f' class="{classes[r]}"' if r < len(classes) and classes[r] else ""
        return f"<tr{cls}>" + "".join(cell("td", i, x) for i, x in enumerate(row)) + "</tr>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(tr(r, row) for r, row in enumerate(rows))
    table_class = f' class="{css}"' if css else ""
    return (f'<div class="scroll"><table{table_class}><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _img(f: ReportFigure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="fig-{_e(f.name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{_e(f.title)}"><figcaption>{_e(f.caption)}</figcaption></figure>')


def _figures(report: Report, prefix: str) -> list[ReportFigure]:
    return [f for f in report.figures if f.name == prefix or f.name.startswith(prefix + "-")]


def _cost_line(report: Report) -> str:
    if not report.trials:
        return "No trial recorded its training time."
    hours = report.compute_seconds / 3600
    return (f"{report.trials} trials trained for {report.compute_seconds:,.0f} s in total "
            f"({hours:.2f} h of worker time), {report.compute_seconds / report.trials:.1f} s "
            "per trial on average.")


# The verdict table of the page: the summary's columns, the interval of Δ beside Δ, without
# the mean's interval and the raw p (the Markdown twin and `summary` have every column).
# An inconclusive verdict says what the study detects, so that column goes too.
PAGE_CELL_HEADER = ["cell", "n", "mean ± std", "test", "Δ vs ref [simult. CI]", "p (Holm)",
                    "p equiv. (Holm)", "seeds needed", "verdict"]


def _page_cell_row(full: list[str]) -> list[str]:
    delta = full[5] if full[5] == "—" else f"{full[5]} {full[6]}"
    return [full[0], full[1], full[2], full[4], delta, full[8], full[9], full[11], full[12]]


def _cells(s: Any) -> list[Any]:
    """The reference first (as in the forest plot), then the grid's order."""
    return sorted(s.cells, key=lambda c: not c.is_reference)


def _parts(report: Report) -> dict[str, Any]:
    """The tables and lines both formats show, as plain strings."""
    s = report.summary
    cells = _cells(s)
    return {
        "cells": (rd.CELL_HEADER, [rd._cell_row(s, c) for c in cells],
                  ["ref" if c.is_reference else "" for c in cells]),
        "anova": (rd.ANOVA_HEADER, rd._anova_rows(s)),
        "levels": (rd.LEVEL_HEADER, rd._level_rows(s)),
        "cost": (rd.COST_HEADER, [rd._cost_row(s, c) for c in s.cells]),
        "meta": (f"metric {rd._metric_label(s)} · reference {rd._cell_name(s.reference_cell)}"
                 f" · margin {rd._margin_text(s)} · trials: {rd._counts_line(s)}"),
        "method": rd._method_line(s),
    }


# ----------------------------------------------------------------------------- HTML
def to_html(report: Report) -> str:
    """The report as one HTML page that needs nothing outside itself."""
    s, p = report.summary, _parts(report)
    out = [f"<h1>Study {_e(s.study_name)}</h1>"]
    if s.spec.get("question"):
        out.append(f'<p class="question">{_e(s.spec["question"])}</p>')
    if s.headline:
        out.append(f'<p class="conclusion">{_e(s.headline)}</p>')
    out.append(f'<p class="conclusion">{_e(s.conclusion)}</p>')
    out.append(f'<p class="meta">{_e(p["meta"])}</p>')
    out.append("<nav>" + "".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS) + "</nav>")
    for f in _figures(report, "forest"):
        out.append(_img(f))
    _, rows, classes = p["cells"]
    out.append('<h2 id="verdicts">Verdicts</h2>')
    out.append(_html_table(PAGE_CELL_HEADER, [_page_cell_row(r) for r in rows],
                           verdict=len(PAGE_CELL_HEADER) - 1, classes=classes))
    out.append(f'<p class="small">Δ and its interval in {_e("points" if s.percent else s.metric)}'
               '; "detects ≥ X": the smallest difference these seeds detect with '
               f"{s.power:.0%} power; seeds needed: per cell, to detect the margin. The raw p "
               "and the interval of each mean are in the Markdown twin and in "
               "<code>gct-ablate summary</code>.</p>")
    out.append('<h2 id="recipe">Recipe</h2>')
    out.append(_html_table(["what", "value"], report.recipe, left=2, css="recipe"))
    out.append('<h2 id="factors">Factors</h2>')
    if s.anova:
        out.append(f'<p class="small">Type-II ANOVA of <code>{_e(s.anova_formula)}</code>; '
                   f'relative importance: {_e(s.importance_method)} (sums to 1 even when no '
                   "factor matters: a ranking, not a test).</p>")
        out.append(_html_table(*p["anova"], verdict=5))
    elif s.factors:
        out.append('<p class="small">No ANOVA (see the notes).</p>')
    else:
        out.append('<p class="small">Nothing varies: no factor to analyse.</p>')
    for f in _figures(report, "interaction"):
        out.append(f"<h3>{_e(f.title)}</h3>{_img(f)}")
    if s.factors:
        out.append("<h3>Levels</h3>" + _html_table(*p["levels"], left=2))
    for f in _figures(report, "levels") + _figures(report, "density"):
        out.append(_img(f))
    out += _html_section(report, "curves", "Learning curves", ["curves"])
    out += _html_section(report, "gates", "Gates", ["gates"])
    out += _html_section(report, "prune", "Pruning", ["prune"])
    out.append('<h2 id="cost">Cost</h2>')
    out.append(f"<p>{_e(_cost_line(report))}</p>")
    out.append(_html_table(*p["cost"]))
    out.append('<h2 id="methods">Methods and notes</h2>')
    out.append(f'<p class="small">{_e(p["method"])}</p>')
    notes = [*s.notes, *report.missing]
    if notes:
        out.append('<ul class="note">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    out.append(f'<p class="meta">Written by gct-ablate on {_e(report.written)} from the stored '
               "results; " + _e(_tracking(s)) + "</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>gct-ablate: {_e(s.study_name)}</title><style>{CSS}</style></head>"
            "<body><main>\n" + "\n".join(out) + "\n</main></body></html>\n")


def _html_section(report: Report, anchor: str, title: str, prefixes: list[str]) -> list[str]:
    figures = [f for prefix in prefixes for f in _figures(report, prefix)]
    out = [f'<h2 id="{anchor}">{_e(title)}</h2>']
    if not figures:
        why = [m for m in report.missing if m.startswith(_missing_key(anchor))]
        out.append(f'<p class="small">{_e(why[0] if why else "Nothing stored to show.")}</p>')
    for f in figures:
        head = f"<h3>{_e(f.title)}</h3>" if len(figures) > 1 else ""
        out.append(head + _img(f))
    return out


def _missing_key(anchor: str) -> str:
    return {"curves": "learning curves", "gates": "gates", "prune": "prune"}.get(anchor, anchor)


def _tracking(s: Any) -> str:
    return rd._tracking_line(s) if s.tracking else "no MLflow tracking recorded"


# ----------------------------------------------------------------------------- Markdown
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"

    return [row(header), row(["---"] * len(header)), *(row(r) for r in rows), ""]


def to_markdown(report: Report, images: str) -> str:
    """The report as Markdown; its images are ``IMAGES/NAME.png`` (relative links)."""
    s, p = report.summary, _parts(report)

    def img(f: ReportFigure) -> list[str]:
        return [f"![{f.title}]({images}/{f.name}.png)", "", f"*{f.caption}*", ""]

    out = [f"# Study `{s.study_name}`", ""]
    if s.spec.get("question"):
        out += [f"> {s.spec['question']}", ""]
    out += ([f"**{s.headline}**", ""] if s.headline else []) + [f"**{s.conclusion}**", "",
                                                                   p["meta"], ""]
    for f in _figures(report, "forest"):
        out += img(f)
    out += ["## Verdicts", "", *_md_table(*p["cells"][:2])]
    out += ["## Recipe", "", *_md_table(["what", "value"], report.recipe)]
    out += ["## Factors", ""]
    if s.anova:
        out += [f"Type-II ANOVA of `{s.anova_formula}`; relative importance: "
                f"{s.importance_method} (a ranking, not a test).", "", *_md_table(*p["anova"])]
    for f in _figures(report, "interaction"):
        out += [f"### {f.title}", "", *img(f)]
    if s.factors:
        out += ["### Levels", "", *_md_table(*p["levels"])]
    for f in _figures(report, "levels") + _figures(report, "density"):
        out += img(f)
    for anchor, title in (("curves", "Learning curves"), ("gates", "Gates"),
                          ("prune", "Pruning")):
        out += [f"## {title}", ""]
        figures = _figures(report, anchor)
        if not figures:
            why = [m for m in report.missing if m.startswith(_missing_key(anchor))]
            out += [why[0] if why else "Nothing stored to show.", ""]
        for f in figures:
            out += ([f"### {f.title}", ""] if len(figures) > 1 else []) + img(f)
    out += ["## Cost", "", _cost_line(report), "", *_md_table(*p["cost"])]
    out += ["## Methods and notes", "", p["method"], ""]
    out += [f"- {n}" for n in [*s.notes, *report.missing]]
    out += ["", f"Written by gct-ablate on {report.written} from the stored results; "
            f"{_tracking(s)}"]
    return "\n".join(out) + "\n"
