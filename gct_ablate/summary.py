"""Results of a study: load them from Optuna storage, render them, plot them.

:func:`load_results` is the only code that touches Optuna storage; the statistics live in
:mod:`gct_ablate.stats` and the text formats in :mod:`gct_ablate.render` (both re-exported
here), so they are testable on hand-made records.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gct_ablate._util import mask_url
from gct_ablate.errors import SpecError, StudyNotFound, SummaryError
from gct_ablate.render import FORMATS, render, to_csv, to_json, to_markdown
from gct_ablate.spec import StudySpec, cell_id
from gct_ablate.stats import (
    CellStats,
    FactorStats,
    LevelStats,
    StudyResults,
    Summary,
    TrialRecord,
    summarize,
)
from gct_ablate.store import keys
from gct_ablate.store.open import open_study, verify
from gct_ablate.store.records import stored_trials

__all__ = [
    "FORMATS", "CellStats", "FactorStats", "LevelStats", "StudyResults", "Summary",
    "SummaryError", "TrialRecord", "levels_figure", "load_results", "plot_levels", "render",
    "summarize", "to_csv", "to_json", "to_markdown",
]


if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    study = open_study(storage, study_name)
    stored = verify(study, empty_ok=False)
    spec = stored.spec or {}
    vary = list(spec.get("vary", []))
    reference = stored.reference_cell
    if reference is None:
        reference = _reference_from_spec(spec)
    maximize = stored.maximize
    if maximize is None:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    records = []
    for t in stored_trials(study):
        cell = t.cell
        if cell is None:
            cell = cell_id(tuple((n, t.params[n]) for n in vary if n in t.params))
        records.append(TrialRecord(
            cell=cell, seed=t.seed, state=t.state, value=t.value, metrics=t.metrics,
            params=t.params, number=t.number, mlflow_run_id=t.run_id, reason=t.reason,
            curve=t.curve,
        ))
    tracking = {k: mask_url(str(v)) for k, v in (
        (keys.EXPERIMENT_ID, stored.experiment_id), (keys.PARENT_RUN_ID, stored.parent_run_id),
        (keys.TRACKING_URI, stored.tracking_uri)) if v is not None}
    if keys.TRACKING_URI in tracking:  # where it is here: a folder's store follows the folder
        from gct_ablate.relocate import study_uri

        tracking[keys.TRACKING_URI] = mask_url(str(study_uri(stored.tracking_uri, storage)))
    return StudyResults(spec=spec, reference_cell=str(reference), maximize=bool(maximize),
                        trials=records, study_name=study_name,
                        fingerprint=stored.fingerprint, tracking=tracking)


def _reference_from_spec(spec: dict[str, Any]) -> str:
    try:
        return cell_id(StudySpec.from_dict(spec).reference_cell())
    except SpecError:
        levels = spec.get("levels", {})
        return cell_id(tuple((n, str(levels[n][0])) for n in spec.get("vary", [])))


def _cell_name(cell: str) -> str:
    return cell or "(single cell)"


# ----------------------------------------------------------------------------- plotting
def levels_figure(summary: Summary) -> Figure:
    """Metric per level with 95% CI bars: one panel per factor (per cell if one factor),
    shared y axis; the reference level in red, its mean a dotted line across its panel."""
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
    longest = max((len(p[0]) for _, points in panels for p in points), default=1)
    rotate = longest > 6
    widths = [max(1.6, 0.42 * len(points) + 0.6) for _, points in panels]
    left, right, gap, top = 0.8, 0.2, 0.15, 0.45
    bottom = 0.6 + (0.038 * min(longest, 30) if rotate else 0.0)
    fig = Figure(figsize=(left + right + sum(widths) + gap * (len(panels) - 1), 2.9 + bottom))
    FigureCanvasAgg(fig)  # fixed margins: a constrained layout costs more than the drawing
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=gap / (sum(widths) / len(widths)))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False,  # comparable effects
                        gridspec_kw={"width_ratios": widths})[0]
    for i, (ax, (name, points)) in enumerate(zip(axes, panels, strict=True)):
        for x, (_, mean, lo, hi, is_ref) in enumerate(points):
            if mean is None:
                continue
            err = ([[scale * (mean - lo)], [scale * (hi - mean)]]
                   if lo is not None and hi is not None else None)
            ax.errorbar([x], [scale * mean], yerr=err, fmt="o", capsize=4,
                        color="tab:red" if is_ref else "tab:blue")
            if is_ref:
                ax.axhline(scale * mean, color="tab:red", lw=0.8, ls=":", alpha=0.7)
        ax.set_xticks(range(len(points)), [p[0] for p in points],
                      rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.5, len(points) - 0.5)
        ax.set_xlabel(name)
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.set_ylabel(s.metric + (" (%)" if s.percent else ""))
    fig.suptitle(f"{s.study_name}: mean ± 95% CI (red = reference)", fontsize=10)
    return fig


def plot_levels(summary: Summary, path: str | Path) -> Path:
    """Write :func:`levels_figure` as a PNG (Agg canvas; pyplot's global state untouched)."""
    path = Path(path)
    levels_figure(summary).savefig(path, format="png", dpi=120)
    return path
