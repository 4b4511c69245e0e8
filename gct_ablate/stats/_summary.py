"""``summarize``: trial records in, a :class:`Summary` out (no storage, no I/O).

Only COMPLETE trials with a finite value enter means and tests; pruned and failed trials
are counted, never averaged in.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any

from gct_ablate.errors import SpecError
from gct_ablate.spec import StudySpec, cell_id
from gct_ablate.stats._anova import FactorialAnova, factorial_anova
from gct_ablate.stats._compare import POOLED, SeedKey
from gct_ablate.stats._counts import infer_images, snap
from gct_ablate.stats._decide import Decision, decide_family, pooled_sds
from gct_ablate.stats._describe import describe, mean_of_means_ci
from gct_ablate.stats._headline import conclusion, headline
from gct_ablate.stats._importance import importance as _importance
from gct_ablate.stats._pooled import NOISY_REFERENCE
from gct_ablate.stats._records import (
    ALPHA,
    BETTER,
    CONFIDENCE,
    PERCENT_METRICS,
    POWER,
    REFERENCE,
    WORSE,
    StudyResults,
    TrialRecord,
    metric_margin,
)
from gct_ablate.stats._results import CellStats, FactorStats, LevelStats, Summary
from gct_ablate.stats._sequential import LookResult, Schedule, replay


def _usable(trials: list[TrialRecord]) -> tuple[list[TrialRecord], int, int]:
    """COMPLETE trials with a finite value, latest per (cell, seed); (kept, dupes, bad)."""
    latest: dict[tuple[str, Any], TrialRecord] = {}
    bad = 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != "COMPLETE":
            continue
        if t.value is None or not math.isfinite(t.value):
            bad += 1
            continue
        latest[(t.cell, _seed_key(t))] = t
    n_complete = sum(t.state == "COMPLETE" for t in trials)
    return sorted(latest.values(), key=lambda t: t.number), n_complete - bad - len(latest), bad


def _seed_key(t: TrialRecord) -> SeedKey:
    """The seed; a run without one gets a key of its own (it pairs with nothing)."""
    return t.seed if t.seed is not None else f"#{t.number}"


def _levels(cell: str) -> dict[str, str]:
    """{factor: level} of a cell id ('' -> {}); malformed parts are ignored."""
    return dict(part.split("=", 1) for part in cell.split() if "=" in part)


def _first_metric(records: list[TrialRecord], key: str) -> int | None:
    for r in records:
        value = r.metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return int(value)
    return None


def _grid(spec: dict[str, Any], vary: list[str], levels: dict[str, list[str]]) -> list[str]:
    """The study's cells in grid order (as the spec lays them out; the full product of the
    levels when a stored spec no longer validates)."""
    try:
        return [cell_id(c) for c in StudySpec.from_dict(spec).cells()]
    except SpecError:
        return [cell_id(c) for c in itertools.product(*[[(n, lv) for lv in levels[n]]
                                                         for n in vary])]


def _cell_stats(cell: str, runs: list[TrialRecord], all_runs: list[TrialRecord],
                ref: str, in_grid: bool) -> CellStats:
    d = describe([r.value for r in runs if r.value is not None])
    states = Counter(r.state for r in all_runs)
    secs = [r.metrics["seconds"] for r in runs
            if isinstance(r.metrics.get("seconds"), (int, float))]
    return CellStats(
        cell=cell, levels=_levels(cell), is_reference=cell == ref,
        n=d.n, mean=d.mean, std=d.std, ci_low=d.ci_low, ci_high=d.ci_high,
        params_total=_first_metric(runs + all_runs, "params_total"),
        params_attention=_first_metric(runs + all_runs, "params_attention"),
        n_modules=_first_metric(runs + all_runs, "n_attention_modules"),
        seconds_mean=math.fsum(secs) / len(secs) if secs else None,
        pruned=states["PRUNED"], failed=states["FAIL"] + sum(
            r.state == "COMPLETE" and (r.value is None or not math.isfinite(r.value))
            for r in all_runs),
        running=states["RUNNING"], waiting=states["WAITING"],
        values=[r.value for r in runs if r.value is not None], seeds=[r.seed for r in runs],
        in_grid=in_grid, verdict=REFERENCE if cell == ref else "",
    )


def _apply(c: CellStats, d: Decision, adaptive: bool) -> None:
    cmp = d.comparison
    c.verdict, c.test, c.n_test, c.delta = d.verdict, cmp.test, cmp.n, cmp.delta
    c.ci = None if cmp.ci_low is None or cmp.ci_high is None else [cmp.ci_low, cmp.ci_high]
    c.ci_simultaneous = None if d.ci_simultaneous is None else list(d.ci_simultaneous)
    c.test_df, c.sd, c.cell_sd, c.test_note = cmp.df, cmp.sd, cmp.cell_sd, cmp.note
    c.p_value, c.p_adjusted = cmp.p_value, d.p_adjusted
    c.p_equivalence, c.p_equivalence_adjusted = cmp.p_equivalence, d.p_equivalence_adjusted
    c.significant = d.significant if cmp.p_value is not None else None
    c.mdd, c.mdd_upper, c.seeds_needed = d.mdd, d.mdd_upper, d.seeds_needed
    c.power_note = d.power_note
    c.look = d.look if adaptive else None


def _images(metric: str, runs: list[TrialRecord]) -> int | None:
    """Validation images behind a count metric: the trials' ``val_images``, else the
    smallest N that makes every value a multiple of 1 / N; None for other metrics."""
    if metric not in PERCENT_METRICS:
        return None
    stored = _first_metric(runs, "val_images")
    if stored:
        return stored
    return infer_images([r.value for r in runs if r.value is not None])


def _block(decisions: dict[str, Decision]) -> dict[str, Any] | None:
    """The pooled model's figures for the JSON (None when no cell was pooled)."""
    pooled = [d.comparison for d in decisions.values() if d.comparison.test == POOLED]
    if not pooled:
        return None
    first = pooled[0]
    screened = [c for c, d in decisions.items()
                if d.comparison.note and "residual variance" in d.comparison.note]
    return {"test": POOLED, "seeds": first.n, "cells": len(pooled) + len(screened) + 1,
            "pooled_cells": len(pooled), "sd": first.sd, "df": first.df,
            "screened_out": screened,
            "reference_own_variance": bool(first.note and NOISY_REFERENCE in first.note)}


def study_values(results: StudyResults) -> dict[str, dict[SeedKey, float]]:
    """cell -> seed -> value of the usable runs (COMPLETE, finite, latest per cell and seed),
    what the tests and the looks read."""
    values: dict[str, dict[SeedKey, float]] = defaultdict(dict)
    for r in _usable(results.trials)[0]:
        if r.value is not None:
            values[r.cell][_seed_key(r)] = r.value
    return dict(values)


def _reached_look(results: StudyResults, schedule: Schedule) -> int:
    """The look the reference's attempted seeds (any state) reach."""
    seeds = [t.seed for t in results.trials
             if t.cell == results.reference_cell and t.seed is not None]
    return schedule.look_for(max(seeds) + 1 if seeds else 0)


def _margin(results: StudyResults, points: float | None) -> float | None:
    """The margin in metric units: ``points``, else the spec's, else the metric's default."""
    points = points if points is not None else results.spec.get("margin")
    return metric_margin(str(results.spec.get("metric", "val_top1")),
                         None if points is None else float(points))


def _all_cells(results: StudyResults, grid: list[str]) -> list[str]:
    """The grid's cells, then any other cell a trial names."""
    return list(dict.fromkeys([*grid, *(t.cell for t in results.trials)]))


def decide_study(results: StudyResults, schedule: Schedule, *, alpha: float = ALPHA,
                 margin: float | None = None) -> LookResult:
    """The adaptive-seeds decisions of a stored study: its looks replayed up to the one the
    reference's seeds reach (call it once that look's trials have all finished).

    ``margin`` in points of the metric (default: the spec's, else the metric's default).
    :func:`~gct_ablate.stats.next_seeds` of the result says what to enqueue next.
    """
    spec = results.spec
    vary = [str(n) for n in spec.get("vary", [])]
    grid = _grid(spec, vary, {n: [str(x) for x in spec.get("levels", {}).get(n, [])]
                              for n in vary})
    names = [c for c in _all_cells(results, grid) if c != results.reference_cell]
    images = _images(str(spec.get("metric", "val_top1")), _usable(results.trials)[0])
    return replay(study_values(results), results.reference_cell, schedule, alpha=alpha,
                  margin=_margin(results, margin), maximize=results.maximize, cells=names,
                  look=_reached_look(results, schedule), images=images)


def summarize(results: StudyResults, alpha: float = ALPHA, importance: bool = True,
              margin: float | None = None, schedule: Schedule | None = None) -> Summary:
    """Per-cell tests against the reference with verdicts, the factorial ANOVA, importance.

    ``margin``: the smallest difference that matters, in points of the metric (percentage
    points for accuracies); default the stored spec's ``margin``, else the metric's default
    (0.5 for accuracies, none for val_loss). ``schedule``: adaptive seeds (default: from the
    spec's ``seed_batch``/``max_seeds``); verdicts then replay its looks. ``importance=False``
    skips Optuna's parameter importance (the slow part).
    """
    spec = results.spec
    metric = str(spec.get("metric", "val_top1"))
    margin_value = _margin(results, margin)
    schedule = schedule or Schedule.from_spec(spec)
    vary = [str(n) for n in spec.get("vary", [])]
    levels = {n: [str(x) for x in spec.get("levels", {}).get(n, [])] for n in vary}
    grid = _grid(spec, vary, levels)
    runs, dupes, bad = _usable(results.trials)
    by_cell: dict[str, list[TrialRecord]] = defaultdict(list)
    all_by_cell: dict[str, list[TrialRecord]] = defaultdict(list)
    for r in runs:
        by_cell[r.cell].append(r)
    for r in results.trials:
        all_by_cell[r.cell].append(r)
    extra = [c for c in _all_cells(results, grid) if c not in grid]
    ref = results.reference_cell
    cells = [_cell_stats(c, by_cell[c], all_by_cell[c], ref, c in grid) for c in grid + extra]
    images = _images(metric, runs)
    values = snap({c.cell: {_seed_key(r): r.value for r in by_cell[c.cell]
                            if r.value is not None} for c in cells}, images)
    others = [c for c in cells if not c.is_reference]
    names = [c.cell for c in others]
    look = alpha_level = None
    if schedule is not None:
        found = replay(values, ref, schedule, alpha=alpha, margin=margin_value,
                       maximize=results.maximize, cells=names,
                       look=_reached_look(results, schedule), images=images)
        decisions, look, alpha_level = found.cells, found.look, found.alpha_look
    else:
        decisions = decide_family(values, ref, names, alpha=alpha, margin=margin_value,
                                  maximize=results.maximize, images=images)
    for c in others:
        _apply(c, decisions[c.cell], schedule is not None)
    level = alpha if alpha_level is None else alpha_level
    m = sum(c.p_value is not None for c in others)
    paired_sd, within_sd = pooled_sds(values, {c: d.comparison for c, d in decisions.items()})
    block = _block(decisions)

    design = str(spec.get("design", "full"))
    runs_in_grid = [(_levels(r.cell), _seed_key(r), r.value) for r in runs
                    if r.cell in grid and r.value is not None]
    anova = factorial_anova(runs_in_grid, vary, _levels(ref), design=design,
                            cells=[_levels(c) for c in grid], margin=margin_value,
                            alpha=alpha)
    factors = _factor_stats(vary, levels, cells, ref, anova)
    imp, method = (_importance(vary, levels, runs, results.maximize) if importance
                   else (dict.fromkeys(vary), "not computed"))
    for f in factors:
        f.importance = imp.get(f.name)
    counts = Counter(t.state for t in results.trials)
    summary = Summary(
        study_name=results.study_name or str(spec.get("name", "")), spec=spec,
        metric=metric, maximize=results.maximize, reference_cell=ref, alpha=alpha,
        confidence=CONFIDENCE,
        counts={"complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                "failed": counts["FAIL"], "waiting": counts["WAITING"],
                "running": counts["RUNNING"]},
        cells=cells, factors=factors, importance_method=method, notes=[],
        fingerprint=results.fingerprint, tracking=dict(results.tracking),
        margin=margin_value, power=POWER, alpha_power=level / max(1, m), design=design,
        anova=anova.terms, anova_formula=_readable(anova.formula),
        pooled_sd={"pooled": block["sd"] if block else None, "paired": paired_sd,
                   "within": within_sd},
        schedule=schedule.to_dict() if schedule else None, look=look,
        alpha_look=alpha_level, images=images, block=block,
    )
    summary.notes = _notes(summary, anova, dupes, bad, extra, schedule)
    summary.notes += _lost_reference_seeds(results, values.get(ref, {}))
    summary.conclusion = conclusion(summary)
    summary.headline = headline(summary)
    return summary


def _readable(formula: str) -> str:
    return formula.replace("value ~", "metric ~")


def _factor_stats(vary: list[str], levels: dict[str, list[str]], cells: list[CellStats],
                  ref: str, anova: FactorialAnova) -> list[FactorStats]:
    ref_levels = _levels(ref)
    out = []
    for name in vary:
        seen = levels[name] + [lv for c in cells if (lv := c.levels.get(name)) is not None
                               and lv not in levels[name]]
        contrasts = {c.level: c for c in anova.contrasts.get(name, [])}
        rows = []
        for lv in dict.fromkeys(seen):
            vals = [c.values for c in cells if c.levels.get(name) == lv and c.values]
            mean, lo, hi = mean_of_means_ci(vals)
            row = LevelStats(lv, ref_levels.get(name) == lv, sum(map(len, vals)), len(vals),
                             mean, lo, hi)
            if (con := contrasts.get(lv)) is not None:
                row.delta, row.delta_ci_low, row.delta_ci_high = (con.delta, con.ci_low,
                                                                   con.ci_high)
                row.equivalent = con.equivalent
            elif row.is_reference and contrasts:
                row.delta = 0.0
            rows.append(row)
        term = next((t for t in anova.terms if t.term == name), None)
        stats = FactorStats(name, rows)
        if term is not None:
            stats.F, stats.p, stats.partial_eta_squared = term.F, term.p, term.partial_eta_squared
            stats.df, stats.verdict = term.df, term.verdict
        out.append(stats)
    return out


def _notes(s: Summary, anova: FactorialAnova, dupes: int, bad: int, extra: list[str],
           schedule: Schedule | None) -> list[str]:
    others = [c for c in s.cells if not c.is_reference]
    ref = next((c for c in s.cells if c.is_reference), None)
    notes = []
    if ref is None or ref.n < 2:
        notes.append(f"reference cell {s.reference_cell or '(single)'!r} has fewer than 2 "
                     "complete runs: no tests")
    if dupes:
        notes.append(f"{dupes} duplicate complete run(s) of the same cell and seed: "
                     "the latest counts")
    if bad:
        notes.append(f"{bad} complete trial(s) without a finite value counted as failed")
    if s.margin is None and others:
        notes.append(f"no margin for {s.metric}: pass --margin (in {s.metric} units) to test "
                     "equivalence and to plan seeds")
    exact = [c.cell for c in others if c.test in ("exact sign", "exact permutation")]
    if exact:
        notes.append("differences that do not vary (no t): exact sign / permutation test, "
                     "no interval: " + ", ".join(repr(c) for c in exact))
    screened = [c.cell for c in others if c.test_note and "residual variance" in c.test_note]
    if screened:
        notes.append("residual variance unlike the other cells' (F test p < 0.1): own test "
                     "instead of the pooled one: " + ", ".join(repr(c) for c in screened))
    noisy = [c for c in others if c.test_note and NOISY_REFERENCE in c.test_note]
    if noisy:
        notes.append(f"{noisy[0].test_note}, in the {len(noisy)} pooled cells' tests")
    few = [c.cell for c in others if c.tested_below_three]
    if few:
        notes.append("fewer than 3 shared seeds: tested, never decided: "
                     + ", ".join(repr(c) for c in few))
    small = [c.cell for c in others if c.verdict in (BETTER, WORSE)
             and c.p_equivalence_adjusted is not None and c.p_equivalence_adjusted < s.alpha]
    if small:
        notes.append("a real difference smaller than the margin (also equivalent): "
                     + ", ".join(repr(c) for c in small))
    if schedule is None and ref is not None:
        partial = [c.cell for c in others
                   if c.test == "paired t" and (c.n_test < c.n or c.n_test < ref.n)]
        if partial:
            notes.append("paired on the seeds shared with the reference (the others are left "
                         "out): " + ", ".join(repr(c) for c in partial))
    welch = sum(c.test == "Welch t" for c in others)
    if welch and any(c.test == "paired t" for c in others):
        notes.append(f"{welch} cell(s) share fewer than 2 seeds with the reference: Welch t")
    if schedule is not None:
        tested = schedule.tested_looks
        notes.append(f"adaptive seeds {'/'.join(map(str, schedule.looks))}: look {s.look} of "
                     f"{schedule.n_looks}; alpha {s.alpha} spent over the {len(tested)} looks "
                     f"with >= 3 seeds (O'Brien-Fleming type), this look's raw tests at "
                     f"{s.alpha_look or 0:.3g}")
    notes += anova.notes
    if extra:
        notes.append(f"trials outside the spec's grid: {', '.join(repr(c) for c in extra)}")
    return notes


def _lost_reference_seeds(results: StudyResults, kept: dict[SeedKey, float]) -> list[str]:
    """A note naming the reference's seeds without a usable run (they shrink every test)."""
    tried = {t.seed: t.state for t in results.trials
             if t.cell == results.reference_cell and t.seed is not None}
    lost = sorted(seed for seed in tried if seed not in kept)
    if not lost:
        return []
    return ["reference seed(s) without a usable run, left out of every comparison: "
            + ", ".join(f"{seed} ({tried[seed].lower()})" for seed in lost)]
