"""A :class:`~gct_ablate.stats.Summary` as text: a rich table, markdown, CSV and JSON.

The table fits 100 columns: per cell the test, delta with its CI, the adjusted p and the
verdict (an inconclusive one says what the study can detect); the other formats add the
raw and equivalence p-values, the minimum detectable difference and the seeds needed.
Every format ends with the study's one-line conclusion.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gct_ablate import stats
from gct_ablate.designs import summary_line
from gct_ablate.errors import SummaryError
from gct_ablate.spec import OUTPUT_FORMATS
from gct_ablate.stats import CellStats, Summary
from gct_ablate.store import keys

FORMATS = OUTPUT_FORMATS
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False,
                               "collapse_padding": True}
VERDICT_STYLE = {stats.BETTER: "bold green", stats.WORSE: "bold red",
                 stats.EQUIVALENT: "green", stats.INCONCLUSIVE: "yellow",
                 stats.REFERENCE: "bold cyan", stats.TOO_FEW: "magenta",
                 stats.SIGNIFICANT: "bold", stats.NEGLIGIBLE: "green"}
SHORT_TEST = {stats.PAIRED: "paired", stats.POOLED: "pooled", stats.WELCH: "Welch",
              stats.SIGN: "sign (exact)", stats.PERMUTATION: "perm. (exact)",
              stats.NO_TEST: "-"}


# ----------------------------------------------------------------------------- numbers
def _num(s: Summary, x: float | None, delta: bool = False) -> str:
    if x is None:
        return "n/a"
    sign = "+" if delta else ""
    return f"{100 * x:{sign}.2f}" if s.percent else f"{x:{sign}.4f}"


def _ci(s: Summary, lo: float | None, hi: float | None, delta: bool = False) -> str:
    if lo is None or hi is None:
        return "n/a"
    return f"[{_num(s, lo, delta)}, {_num(s, hi, delta)}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _frac(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _metric_label(s: Summary) -> str:
    unit = " (%)" if s.percent else ""
    return f"{s.metric}{unit}, {'higher' if s.maximize else 'lower'} is better"


def _cell_name(cell: str) -> str:
    return cell or "(single cell)"


def _margin_text(s: Summary) -> str:
    if s.margin is None:
        return "none (no equivalence test)"
    return f"±{s.points(s.margin)} {'points' if s.percent else s.metric}"


def _method_line(s: Summary) -> str:
    level = (f"alpha = {s.alpha} spent over {len(_looks(s))} planned looks "
             f"(O'Brien-Fleming type; this look at {s.alpha_look:.3g})"
             if s.alpha_look is not None
             else f"alpha = {s.alpha}")
    pooled = ""
    if s.block:
        pooled = (f" (residual sd {s.points(s.block['sd'])}, {s.block['df']:.0f} df, "
                  f"{s.block['pooled_cells']} cells)")
    return (f"Pooled t of metric ~ cell + seed where cells share the reference's seeds"
            f"{pooled}, else paired t by seed or Welch; exact sign/permutation tests where "
            f"differences do not vary; Holm-adjusted; equivalence: TOST within the margin "
            f"{_margin_text(s)}; {level}; intervals of Δ simultaneous at alpha / (tests) "
            f"(the unadjusted {s.confidence:.0%} ones in the JSON/CSV); pruned and failed runs "
            f"are not averaged in.")


def _looks(s: Summary) -> list[int]:
    return list(stats.Schedule(**s.schedule).looks) if s.schedule else []


def _counts_line(s: Summary) -> str:
    return ", ".join(f"{v} {k}" for k, v in s.counts.items())


def _tracking_line(s: Summary) -> str:
    names = {keys.EXPERIMENT_ID: "experiment", keys.PARENT_RUN_ID: "parent run",
             keys.TRACKING_URI: "tracking"}
    return "MLflow: " + ", ".join(f"{names.get(k, k)} {v}" for k, v in s.tracking.items())


# ----------------------------------------------------------------------------- rows
CELL_HEADER = ["cell", "n", "mean ± std", "95% CI", "test", "Δ vs ref", "simult. CI of Δ", "p",
               "p (Holm)", "p equiv. (Holm)", "detects ≥", "seeds needed", "verdict"]
COST_HEADER = ["cell", "params", "attention params", "s/trial", "pruned", "failed"]
ANOVA_HEADER = ["term", "df", "F", "p", "partial η²", "verdict", "relative importance"]
LEVEL_HEADER = ["factor", "level", "n", "cells", "mean of cell means", "95% CI",
                "Δ vs ref level", "95% CI of Δ"]


def _cell_row(s: Summary, c: CellStats) -> list[str]:
    mean = _num(s, c.mean) + ("" if c.std is None else f" ± {_num(s, c.std)}")
    ref = c.is_reference
    return [_cell_name(c.cell), str(c.n), mean, _ci(s, c.ci_low, c.ci_high),
            "—" if ref else SHORT_TEST.get(c.test, c.test),
            "—" if ref else _num(s, c.delta, True),
            "—" if ref else _ci(s, *(c.ci_simultaneous or (None, None)), delta=True),
            "—" if ref else _p(c.p_value), "—" if ref else _p(c.p_adjusted),
            "—" if ref else _p(c.p_equivalence_adjusted),
            "—" if ref else s.points(c.mdd), "—" if ref else _int(c.seeds_needed),
            s.verdict_text(c)]


def _cost_row(s: Summary, c: CellStats) -> list[str]:
    return [_cell_name(c.cell), _int(c.params_total), _int(c.params_attention),
            "n/a" if c.seconds_mean is None else f"{c.seconds_mean:.1f}", str(c.pruned),
            str(c.failed)]


def _anova_rows(s: Summary) -> list[list[str]]:
    importance = {f.name: f.importance for f in s.factors}
    return [[t.term, "n/a" if t.df is None else f"{t.df:g}", _f(t.F), _p(t.p),
             _frac(t.partial_eta_squared), t.verdict or "",
             _frac(importance[t.term]) if t.term in importance else ""] for t in s.anova]


def _level_rows(s: Summary) -> list[list[str]]:
    rows = []
    for f in s.factors:
        for lv in f.levels:
            rows.append([f.name, lv.level + (" (ref)" if lv.is_reference else ""), str(lv.n),
                         str(lv.n_cells), _num(s, lv.mean), _ci(s, lv.ci_low, lv.ci_high),
                         "—" if lv.is_reference else _num(s, lv.delta, True),
                         "—" if lv.is_reference else _ci(s, lv.delta_ci_low,
                                                         lv.delta_ci_high, True)])
    return rows


# ----------------------------------------------------------------------------- markdown
def to_markdown(summary: Summary) -> str:
    """The whole summary as GitHub-flavoured markdown."""
    s = summary

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"

    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return [row(header), row(["---"] * len(header))] + [row(r) for r in rows]

    lines = [f"# Study `{s.study_name}`", ""]
    if s.spec.get("question"):
        lines += [f"**Question:** {s.spec['question']}", ""]
    lines += [f"**Metric:** {_metric_label(s)} · **reference:** `{_cell_name(s.reference_cell)}`"
              f" · **margin:** {_margin_text(s)} · **trials:** {_counts_line(s)}", "",
              summary_line(s.spec, markdown=True), ""]
    if s.tracking:
        lines += [_tracking_line(s), ""]
    lines += [f"**Conclusion:** {s.conclusion}", "", "## Cells", ""]
    if s.headline:
        lines[2:2] = [f"**{s.headline}**", ""]
    lines += table(CELL_HEADER, [_cell_row(s, c) for c in s.cells])
    lines += ["", "## Cost", ""] + table(COST_HEADER, [_cost_row(s, c) for c in s.cells])
    if s.factors:
        lines += ["", "## Factors (type-II ANOVA)", "", f"Model: `{s.anova_formula}`", ""]
        lines += table(ANOVA_HEADER, _anova_rows(s)) if s.anova else ["No ANOVA (see notes)."]
        lines += ["", f"Relative importance: {s.importance_method} (sums to 1 even when "
                  "no factor matters; a ranking, not a test).", "", "## Levels", ""]
        lines += table(LEVEL_HEADER, _level_rows(s))
    lines += ["", _method_line(s)]
    lines += [""] + [f"- Note: {n}" for n in s.notes] if s.notes else []
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- csv, json
CSV_HEADER = ["kind", "study", "metric", "cell", "is_reference", "n", "mean", "std", "ci_low",
              "ci_high", "test", "n_test", "delta", "delta_ci_low", "delta_ci_high", "p_value",
              "p_adjusted", "p_equivalence", "p_equivalence_adjusted", "mdd", "seeds_needed",
              "verdict", "look", "params_total", "params_attention", "seconds_mean", "pruned",
              "failed", "running", "waiting", "term", "df", "F", "p", "partial_eta_squared",
              "importance", "test_df", "sd", "cell_sd", "simultaneous_ci_low",
              "simultaneous_ci_high", "mdd_upper"]


def to_csv(summary: Summary) -> str:
    """One row per cell (kind 'cell'), then one per ANOVA term (kind 'term'); fixed header,
    raw values (fractions, not percent), n/a = empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    base = {"study": summary.study_name, "metric": summary.metric}
    for c in summary.cells:
        ci, sim = c.ci or [None, None], c.ci_simultaneous or [None, None]
        row = {**base, "kind": "cell", **asdict(c), "delta_ci_low": ci[0],
               "delta_ci_high": ci[1], "simultaneous_ci_low": sim[0],
               "simultaneous_ci_high": sim[1]}
        writer.writerow(["" if row.get(k) is None else row[k] for k in CSV_HEADER])
    importance = {f.name: f.importance for f in summary.factors}
    for t in summary.anova:
        row = {**base, "kind": "term", **asdict(t), "importance": importance.get(t.term)}
        writer.writerow(["" if row.get(k) is None else row[k] for k in CSV_HEADER])
    return buf.getvalue()


def to_json(summary: Summary) -> str:
    """Everything, machine-readable (raw values; ``null`` where undefined)."""
    return json.dumps(summary.to_dict(), indent=2, allow_nan=False)


# ----------------------------------------------------------------------------- table
def _print(console: Console, text: str, style: str = "") -> None:
    console.print(text, style=style, markup=False, highlight=False)


def _render_table(s: Summary, console: Console) -> None:
    console.print(Text(f"Study {s.study_name}", style="bold"))
    if s.headline:
        _print(console, s.headline, "bold")
    if s.spec.get("question"):
        console.print(Text(str(s.spec["question"]), style="italic"))
    _print(console, f"metric: {_metric_label(s)}   reference: {_cell_name(s.reference_cell)}"
           f"   margin: {_margin_text(s)}")
    _print(console, f"trials: {_counts_line(s)}")
    _print(console, summary_line(s.spec))
    if s.tracking:
        console.print(_tracking_line(s), markup=False, highlight=False, soft_wrap=True)
    wide = console.width >= 130
    # the rest (raw p, equivalence p, seeds needed) is in the other formats
    keep = ([0, 1, 2, 3, 4, 5, 6, 8, 10, 12] if wide else [0, 1, 2, 4, 5, 6, 8, 12]
            if console.width >= 95 else [0, 1, 4, 5, 8, 12])
    names = {2: "mean ± std", 6: "simult. CI of Δ"} if wide else {2: "mean", 5: "Δ",
                                                                  6: "sim. CI", 8: "p adj."}
    table = Table(title="Cells vs the reference", title_justify="left",
                  **{**TABLE_STYLE, "padding": (0, 1) if wide else (0, 0)})
    for i in keep:
        table.add_column(names.get(i, CELL_HEADER[i]),
                         justify="left" if i in (0, 4, 12) else "right",
                         no_wrap=i != 0)  # long cell names wrap at their spaces
    for c in s.cells:
        row = _cell_row(s, c)
        if not wide:
            row[2] = _num(s, c.mean)
        verdict = Text(row[12], style=VERDICT_STYLE.get(c.verdict, ""))
        table.add_row(*(verdict if i == 12 else row[i] for i in keep))
    console.print()
    console.print(table)
    _print(console, s.conclusion, "bold")
    cost = Table(title="Cost and attrition", title_justify="left", **TABLE_STYLE)
    for i, name in enumerate(COST_HEADER):
        cost.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for c in s.cells:
        cost.add_row(*_cost_row(s, c))
    console.print()
    console.print(cost)
    if s.factors:
        _render_factors(s, console)
    _print(console, _method_line(s), "dim")
    for note in s.notes:
        _print(console, f"note: {note}", "yellow")


def _render_factors(s: Summary, console: Console) -> None:
    if s.anova:
        ft = Table(title=f"Factors: type-II ANOVA of {s.anova_formula}", title_justify="left",
                   **TABLE_STYLE)
        for i, name in enumerate(ANOVA_HEADER[:-1] + ["rel. importance"]):
            ft.add_column(name, justify="left" if i in (0, 5) else "right", no_wrap=True)
        for row, term in zip(_anova_rows(s), s.anova, strict=True):
            row[5] = Text(row[5], style=VERDICT_STYLE.get(term.verdict, ""))
            ft.add_row(*row)
        console.print()
        console.print(ft)
        _print(console, f"relative importance: {s.importance_method} (sums to 1 even when "
               "nothing matters)", "dim")
    lt = Table(title="Levels (mean of the cell means; Δ from the model)", title_justify="left",
               **TABLE_STYLE)
    # below 95 columns the cell count goes (the Cells table has it) so no number is cut
    keep = [0, 1, 2, 3, 4, 5, 6, 7] if console.width >= 95 else [0, 1, 2, 4, 5, 6, 7]
    names = LEVEL_HEADER[:4] + ["mean", "95% CI", "Δ vs ref", "95% CI of Δ"]
    for i in keep:
        lt.add_column(names[i], justify="left" if i < 2 else "right", no_wrap=True)
    previous = None
    for row in _level_rows(s):
        shown = row[0] if row[0] != previous else ""
        previous = row[0]
        cells = [shown, Text(row[1], style="bold cyan" if row[1].endswith("(ref)") else ""),
                 *row[2:]]
        lt.add_row(*(cells[i] for i in keep))
    console.print()
    console.print(lt)


def render(summary: Summary, fmt: str, console: Console) -> None:
    """Print the summary as 'table' (rich), 'markdown', 'csv' or 'json'."""
    if fmt == "table":
        _render_table(summary, console)
        return
    writers = {"markdown": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in writers:
        raise SummaryError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    console.out(writers[fmt](summary).rstrip("\n"), highlight=False)
