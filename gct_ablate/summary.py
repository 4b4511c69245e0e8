"""Results of a study: load them from Optuna storage, render them, plot them.

:func:`load_results` is the only code that touches Optuna storage; the statistics live in
:mod:`gct_ablate.stats` (re-exported here), so they are testable on hand-made records.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gct_ablate import stats
from gct_ablate._util import mask_url
from gct_ablate.designs import summary_line
from gct_ablate.errors import SpecError, StudyNotFound, SummaryError
from gct_ablate.spec import OUTPUT_FORMATS, StudySpec, cell_id
from gct_ablate.stats import (
    CellStats,
    FactorStats,
    LevelStats,
    StudyResults,
    Summary,
    TrialRecord,
    summarize,
)

__all__ = [
    "CellStats", "FactorStats", "LevelStats", "StudyResults", "Summary", "SummaryError",
    "TrialRecord", "levels_figure", "load_results", "plot_levels", "render", "summarize",
    "to_csv", "to_json", "to_markdown",
]


if TYPE_CHECKING:
    from matplotlib.figure import Figure


FORMATS = OUTPUT_FORMATS


# ----------------------------------------------------------------------------- loading
def _shown(storage: Any) -> str:
    return mask_url(storage) if isinstance(storage, str) else type(storage).__name__


def load_results(storage: Any, study_name: str) -> StudyResults:
    """Read a study written by the study layer (storage: URL string or Optuna storage)."""
    import optuna

    shown = _shown(storage)
    if isinstance(storage, str) and storage.startswith("sqlite:///"):
        path = storage[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:" and not Path(path).exists():
            raise SummaryError(f"no storage file {path!r} (from {storage})")
    try:
        if isinstance(storage, str):
            storage = optuna.storages.get_storage(storage)
        names = optuna.get_all_study_names(storage)
    except Exception as err:  # driver errors are long and multi-line
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SummaryError(f"cannot open storage {shown}: {type(err).__name__}: {first}") from err
    if study_name not in names:
        existing = ", ".join(sorted(names)) or "none"
        raise StudyNotFound(f"no study {study_name!r} in {shown}; existing studies: {existing}")
    study = optuna.load_study(study_name=study_name, storage=storage)
    attrs = study.user_attrs
    spec = attrs.get("spec")
    if not isinstance(spec, dict):
        raise SummaryError(f"study {study_name!r} has no 'spec' attribute (not a gct-ablate study)")
    vary = list(spec.get("vary", []))
    reference = attrs.get("reference_cell")
    if reference is None:
        reference = _reference_from_spec(spec)
    maximize = attrs.get("direction_maximize")
    if maximize is None:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    records = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        params = {k: str(v) for k, v in t.params.items()}
        cell = ua.get("cell")
        if cell is None:
            cell = cell_id(tuple((n, params[n]) for n in vary if n in params))
        seed = ua.get("seed")
        records.append(TrialRecord(
            cell=str(cell), seed=None if seed is None else int(seed), state=t.state.name,
            value=t.value if t.values is not None and len(t.values) == 1 else None,
            metrics=dict(ua.get("metrics") or {}), params=params, number=t.number,
            mlflow_run_id=ua.get("mlflow_run_id"),
            reason=ua.get("status_reason") or t.system_attrs.get("fail_reason"),
        ))
    tracking = {k: mask_url(str(attrs[k])) for k in ("mlflow_experiment_id", "mlflow_parent_run_id",
                                           "tracking_uri") if attrs.get(k) is not None}
    return StudyResults(spec=spec, reference_cell=str(reference), maximize=bool(maximize),
                        trials=records, study_name=study_name,
                        fingerprint=attrs.get("fingerprint"), tracking=tracking)


def _reference_from_spec(spec: dict[str, Any]) -> str:
    try:
        return cell_id(StudySpec.from_dict(spec).reference_cell())
    except SpecError:
        levels = spec.get("levels", {})
        return cell_id(tuple((n, str(levels[n][0])) for n in spec.get("vary", [])))


# ----------------------------------------------------------------------------- formatting
def _num(s: Summary, x: float | None, delta: bool = False) -> str:
    if x is None:
        return "n/a"
    sign = "+" if delta else ""
    return f"{100 * x:{sign}.2f}" if s.percent else f"{x:{sign}.4f}"


def _ci(s: Summary, lo: float | None, hi: float | None) -> str:
    return "n/a" if lo is None or hi is None else f"[{_num(s, lo)}, {_num(s, hi)}]"


def _p(p: float | None) -> str:
    return "n/a" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def _int(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"


def _metric_label(s: Summary) -> str:
    unit = " (%)" if s.percent else ""
    return f"{s.metric}{unit}, {'higher' if s.maximize else 'lower'} is better"


def _cell_name(cell: str) -> str:
    return cell or "(single cell)"


def _cell_row(s: Summary, c: CellStats) -> list[str]:
    mean = _num(s, c.mean) + ("" if c.std is None else f" ± {_num(s, c.std)}")
    return [_cell_name(c.cell), str(c.n), mean, _ci(s, c.ci_low, c.ci_high),
            "—" if c.is_reference else _num(s, c.delta, True),
            "—" if c.is_reference else _p(c.p_value), "—" if c.is_reference else _p(c.p_holm),
            c.verdict, _int(c.params_total), _int(c.params_attention),
            "n/a" if c.seconds_mean is None else f"{c.seconds_mean:.1f}",
            str(c.pruned), str(c.failed)]


CELL_HEADER = ["cell", "n", "mean ± std", "95% CI", "Δ vs ref", "p", "p (Holm)", "verdict",
               "params", "attention params", "s/trial", "pruned", "failed"]
LEVEL_HEADER = ["factor", "level", "n", "cells", "mean of cell means", "95% CI"]
TABLE_STYLE: dict[str, Any] = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False,
                               "collapse_padding": True}
VERDICT_STYLE = {stats.BETTER: "bold green", stats.WORSE: "bold red",
                 stats.NO_DIFFERENCE: "yellow", stats.REFERENCE: "bold cyan",
                 stats.TOO_FEW: "magenta", stats.UNDETERMINED: "magenta"}


def _counts_line(s: Summary) -> str:
    return ", ".join(f"{v} {k}" for k, v in s.counts.items())


def _tracking_line(s: Summary) -> str:
    names = {"mlflow_experiment_id": "experiment", "mlflow_parent_run_id": "parent run",
             "tracking_uri": "tracking"}
    return "MLflow: " + ", ".join(f"{names.get(k, k)} {v}" for k, v in s.tracking.items())


def to_markdown(summary: Summary) -> str:
    """The whole summary as GitHub-flavoured markdown."""
    s = summary

    def row(cells: list[str]) -> str:
        return "| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |"

    lines = [f"# Study `{s.study_name}`", ""]
    if s.spec.get("question"):
        lines += [f"**Question:** {s.spec['question']}", ""]
    lines += [f"**Metric:** {_metric_label(s)} · **reference:** `{_cell_name(s.reference_cell)}`"
              f" · **trials:** {_counts_line(s)}", "", summary_line(s.spec, markdown=True), ""]
    if s.tracking:
        lines += [_tracking_line(s), ""]
    lines += ["## Cells", "", row(CELL_HEADER),
              row(["---"] * len(CELL_HEADER))]
    lines += [row(_cell_row(s, c)) for c in s.cells]
    if s.factors:
        lines += ["", "## Factors", "", row(LEVEL_HEADER), row(["---"] * len(LEVEL_HEADER))]
        for f in s.factors:
            for lv in f.levels:
                lines.append(row([f.name, lv.level + (" (ref)" if lv.is_reference else ""),
                                  str(lv.n), str(lv.n_cells), _num(s, lv.mean),
                                  _ci(s, lv.ci_low, lv.ci_high)]))
        lines += ["", "## Importance", "", row(["factor", "importance", "eta²"]),
                  row(["---"] * 3)]
        lines += [row([f.name, _frac(f.importance), _frac(f.eta_squared)]) for f in s.factors]
        lines += ["", f"Importance: {s.importance_method}."]
    lines += ["", f"Welch t-tests against the reference, Holm-adjusted, alpha = {s.alpha}; "
              f"{s.confidence:.0%} t intervals; pruned and failed runs are not averaged in."]
    lines += [""] + [f"- Note: {n}" for n in s.notes] if s.notes else []
    return "\n".join(lines) + "\n"


def _frac(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


CSV_HEADER = ["study", "metric", "cell", "is_reference", "n", "mean", "std", "ci_low",
              "ci_high", "delta", "p_value", "p_holm", "verdict", "params_total",
              "params_attention", "seconds_mean", "pruned", "failed", "running", "waiting"]


def to_csv(summary: Summary) -> str:
    """One row per cell, fixed header; raw values (fractions, not percent), n/a = empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for c in summary.cells:
        row = {"study": summary.study_name, "metric": summary.metric, **asdict(c)}
        writer.writerow(["" if row[k] is None else row[k] for k in CSV_HEADER])
    return buf.getvalue()


def to_json(summary: Summary) -> str:
    """Everything, machine-readable (raw values; ``null`` where undefined)."""
    return json.dumps(summary.to_dict(), indent=2, allow_nan=False)


def _render_table(s: Summary, console: Console) -> None:
    console.print(Text(f"Study {s.study_name}", style="bold"))
    if s.spec.get("question"):
        console.print(Text(str(s.spec["question"]), style="italic"))
    console.print(f"metric: {_metric_label(s)}   reference: {_cell_name(s.reference_cell)}",
                  markup=False, highlight=False)
    console.print(f"trials: {_counts_line(s)}", markup=False, highlight=False)
    console.print(summary_line(s.spec), markup=False, highlight=False)
    if s.tracking:
        console.print(_tracking_line(s), markup=False, highlight=False)
    table = Table(title="Cells vs the reference", title_justify="left", **TABLE_STYLE)
    # raw p (and the CI on narrow consoles) only in the other formats: the verdict must fit
    keep = [0, 1, 2, 3, 4, 6, 7] if console.width >= 100 else [0, 1, 2, 4, 6, 7]
    for i in keep:
        table.add_column(CELL_HEADER[i], justify="left" if i in (0, 7) else "right",
                         no_wrap=i != 7, min_width=13 if i == 7 else None)
    cost = Table(title="Cost and attrition", title_justify="left", **TABLE_STYLE)
    for i, name in enumerate([CELL_HEADER[0], *CELL_HEADER[8:]]):
        cost.add_column(name, justify="left" if i == 0 else "right", no_wrap=i == 0)
    for c in s.cells:
        row = _cell_row(s, c)
        row[7] = Text(c.verdict, style=VERDICT_STYLE.get(c.verdict, ""))
        table.add_row(*(row[i] for i in keep))
        cost.add_row(row[0], *row[8:])
    console.print()
    console.print(table)
    console.print()
    console.print(cost)
    if s.factors:
        ft = Table(title="Factors (mean of the cell means per level)", title_justify="left",
                   **TABLE_STYLE)
        for i, name in enumerate(LEVEL_HEADER[:4] + ["mean", "95% CI", "importance", "eta²"]):
            ft.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
        for f in s.factors:
            for j, lv in enumerate(f.levels):
                ft.add_row(f.name if j == 0 else "",
                           Text(lv.level, style="bold cyan" if lv.is_reference else ""),
                           str(lv.n), str(lv.n_cells), _num(s, lv.mean),
                           _ci(s, lv.ci_low, lv.ci_high),
                           _frac(f.importance) if j == 0 else "",
                           _frac(f.eta_squared) if j == 0 else "")
        console.print()
        console.print(ft)
        console.print(f"importance: {s.importance_method}", markup=False, highlight=False)
    console.print(f"Welch t-tests vs the reference, Holm-adjusted, alpha = {s.alpha}; "
                  f"{s.confidence:.0%} t intervals.", style="dim", markup=False)
    for note in s.notes:
        console.print(f"note: {note}", style="yellow", markup=False, highlight=False)


def render(summary: Summary, fmt: str, console: Console) -> None:
    """Print the summary as 'table' (rich), 'markdown', 'csv' or 'json'."""
    if fmt == "table":
        _render_table(summary, console)
        return
    writers = {"markdown": to_markdown, "csv": to_csv, "json": to_json}
    if fmt not in writers:
        raise SummaryError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    console.out(writers[fmt](summary).rstrip("\n"), highlight=False)


# ----------------------------------------------------------------------------- plotting
def levels_figure(summary: Summary) -> Figure:
    """Metric per level with 95% CI bars: one panel per factor (per cell if one factor)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s = summary
    scale = 100.0 if s.percent else 1.0
    if len(s.factors) >= 2:
        panels = [(f.name, [(lv.level, lv.mean, lv.ci_low, lv.ci_high, lv.is_reference)
                            for lv in f.levels]) for f in s.factors]
    else:
        title = s.factors[0].name if s.factors else "cell"
        panels = [(title, [(next(iter(c.levels.values()), _cell_name(c.cell)), c.mean,
                            c.ci_low, c.ci_high, c.is_reference) for c in s.cells])]
    fig = Figure(figsize=(max(4.0, 3.6 * len(panels)), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]  # comparable effects
    for i, (ax, (name, points)) in enumerate(zip(axes, panels, strict=True)):
        for x, (_, mean, lo, hi, is_ref) in enumerate(points):
            if mean is None:
                continue
            err = ([[scale * (mean - lo)], [scale * (hi - mean)]]
                   if lo is not None and hi is not None else None)
            ax.errorbar([x], [scale * mean], yerr=err, fmt="o", capsize=4,
                        color="tab:red" if is_ref else "tab:blue")
        ax.set_xticks(range(len(points)), [p[0] for p in points], rotation=30, ha="right")
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_xlabel(name)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_ylabel(s.metric + (" (%)" if s.percent else ""))
    fig.suptitle(f"{s.study_name}: mean ± 95% CI (red = reference)")
    return fig


def plot_levels(summary: Summary, path: str | Path) -> Path:
    """Write :func:`levels_figure` as a PNG (Agg canvas; pyplot's global state untouched)."""
    path = Path(path)
    levels_figure(summary).savefig(path, format="png", dpi=120)
    return path
