"""The statistics of a study: trial records in, a :class:`Summary` out (no storage, no I/O).

Only COMPLETE trials with a finite value enter means and tests; pruned and failed trials
are counted, never averaged in. Undefined quantities are ``None`` (never NaN), so callers
render them as 'n/a' and JSON gets ``null``.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats as _st

from gct_ablate.errors import SpecError
from gct_ablate.spec import StudySpec, cell_id

ALPHA = 0.05
CONFIDENCE = 0.95

REFERENCE = "reference"
BETTER = "better"
WORSE = "worse"
NO_DIFFERENCE = "no detectable difference"
TOO_FEW = "too few runs"
UNDETERMINED = "undetermined"  # both groups constant with different means: t is undefined
VERDICTS = (REFERENCE, BETTER, WORSE, NO_DIFFERENCE, TOO_FEW, UNDETERMINED)


@dataclass(frozen=True)
class Describe:
    """n, mean, sample std (ddof=1) and t confidence interval of one group."""

    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None


def t_half_width(sd: float, n: int, df: float, confidence: float = CONFIDENCE) -> float:
    """Half width t_{(1+c)/2, df} * sd / sqrt(n) of a t confidence interval."""
    return float(_st.t.ppf(0.5 + confidence / 2, df)) * sd / math.sqrt(n)


def describe(values: Sequence[float], confidence: float = CONFIDENCE) -> Describe:
    """Mean, std and CI; std and CI are None for n < 2, mean is None for n = 0."""
    n = len(values)
    if n == 0:
        return Describe(0, None, None, None, None)
    mean = math.fsum(values) / n
    if n < 2:
        return Describe(n, mean, None, None, None)
    if max(values) == min(values):  # exactly constant: no float noise in mean or variance
        return Describe(n, values[0], 0.0, values[0], values[0])
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_half_width(sd, n, n - 1, confidence)
    return Describe(n, mean, sd, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value; None when undefined.

    Undefined: n < 2 in either group, or both groups constant with different means
    (zero standard error; claiming p = 0 from two constant samples would be overconfident).
    Both groups constant and equal gives p = 1 (no difference at all).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else None
    with warnings.catch_warnings():  # scipy warns on a constant group; the result is fine
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(_st.ttest_ind(a, b, equal_var=False).pvalue)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni step-down adjusted p-values (monotone, capped at 1).

    ``None`` entries are not tests: they stay None and do not count in the family size.
    """
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(tested)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def verdict(
    delta: float | None,
    p_adjusted: float | None,
    maximize: bool,
    n: int,
    n_ref: int,
    alpha: float = ALPHA,
) -> str:
    """Plain-language verdict of one non-reference cell against the reference."""
    if n < 2 or n_ref < 2:
        return TOO_FEW
    if p_adjusted is None or delta is None:
        return UNDETERMINED
    if p_adjusted >= alpha:
        return NO_DIFFERENCE
    return BETTER if (delta > 0) == maximize else WORSE


def mean_of_means_ci(
    groups: Sequence[Sequence[float]], confidence: float = CONFIDENCE
) -> tuple[float | None, float | None, float | None]:
    """Unweighted mean of group means and its t CI (Welch-Satterthwaite df).

    Var(mean of k means) = sum(s_i^2 / n_i) / k^2. The CI is None when any group has
    fewer than 2 values; with one group it is that group's ordinary t interval.
    """
    groups = [g for g in groups if len(g)]
    if not groups:
        return None, None, None
    described = [describe(g, confidence) for g in groups]
    mean = math.fsum(d.mean for d in described if d.mean is not None) / len(described)
    if any(d.std is None for d in described):
        return mean, None, None
    v = [d.std**2 / d.n for d in described if d.std is not None]
    if sum(v) == 0:
        return mean, mean, mean
    df = sum(v) ** 2 / sum(vi**2 / (d.n - 1) for vi, d in zip(v, described, strict=True))
    half = float(_st.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(sum(v)) / len(described)
    return mean, mean - half, mean + half


def eta_squared(groups: Sequence[Sequence[float]]) -> float | None:
    """Share of the total variance of all values explained by the grouping (main effect)."""
    values = [v for g in groups for v in g]
    if len(values) < 2:
        return None
    grand = math.fsum(values) / len(values)
    total = math.fsum((v - grand) ** 2 for v in values)
    if total == 0 or max(values) == min(values):
        return None
    between = math.fsum(len(g) * (math.fsum(g) / len(g) - grand) ** 2 for g in groups if g)
    return min(1.0, between / total)


# ----------------------------------------------------------------------------- records and results
PERCENT_METRICS = ("val_top1", "val_top5")
PED_ANOVA_MIN_TRIALS = 50  # PED-ANOVA wants >= 5 trials in its top 10% quantile
MIN_IMPORTANCE_TRIALS = 4


@dataclass
class TrialRecord:
    """One Optuna trial, reduced to what the summary needs."""

    cell: str
    seed: int | None
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    value: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    number: int = 0
    mlflow_run_id: str | None = None
    reason: str | None = None


@dataclass
class StudyResults:
    """Everything stored for one study: its spec (``StudySpec.to_dict()``) and trials."""

    spec: dict[str, Any]
    reference_cell: str
    maximize: bool
    trials: list[TrialRecord]
    study_name: str = ""
    fingerprint: str | None = None
    tracking: dict[str, str] = field(default_factory=dict)  # mlflow ids, tracking_uri


@dataclass
class CellStats:
    cell: str
    levels: dict[str, str]
    is_reference: bool
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    delta: float | None
    p_value: float | None
    p_holm: float | None
    verdict: str
    params_total: int | None
    params_attention: int | None
    n_modules: int | None  # attention modules in the model
    seconds_mean: float | None
    pruned: int
    failed: int
    running: int
    waiting: int
    values: list[float]
    seeds: list[int | None]
    in_grid: bool = True


@dataclass
class LevelStats:
    level: str
    is_reference: bool
    n: int
    n_cells: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass
class FactorStats:
    name: str
    levels: list[LevelStats]
    importance: float | None  # Optuna parameter importance (normalised), None = n/a
    eta_squared: float | None  # share of the variance of all runs explained by this factor


@dataclass
class Summary:
    study_name: str
    spec: dict[str, Any]
    metric: str
    maximize: bool
    reference_cell: str
    alpha: float
    confidence: float
    counts: dict[str, int]
    cells: list[CellStats]
    factors: list[FactorStats]
    importance_method: str
    notes: list[str]
    fingerprint: str | None = None
    tracking: dict[str, str] = field(default_factory=dict)

    @property
    def percent(self) -> bool:
        return self.metric in PERCENT_METRICS

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "percent": self.percent, "methods": METHODS}


METHODS = {
    "mean_std": "mean and sample std (ddof=1) over COMPLETE trials of a cell",
    "ci": "two-sided t interval, t.ppf((1+confidence)/2, n-1) * std / sqrt(n)",
    "test": "Welch two-sample t-test (two-sided) of each cell against the reference cell",
    "correction": "Holm-Bonferroni step-down over the non-reference cells that could be tested",
    "verdict": "better/worse when Holm-adjusted p < alpha (for val_loss lower is better); "
    "'too few runs' when n < 2 in either group; 'undetermined' when both groups are "
    "constant with different means (t undefined); equal constant groups get p = 1",
    "level_mean": "unweighted mean of the cell means at that level; CI with the "
    "Welch-Satterthwaite df of sum(s_i^2/n_i)/k^2 (n/a when a cell has n < 2)",
    "eta_squared": "between-level sum of squares / total sum of squares of all runs",
    "duplicates": "several COMPLETE trials of one cell and seed: the latest one counts",
}


# ----------------------------------------------------------------------------- summary
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
        key = (t.cell, t.seed if t.seed is not None else f"#{t.number}")
        latest[key] = t
    n_complete = sum(t.state == "COMPLETE" for t in trials)
    return sorted(latest.values(), key=lambda t: t.number), n_complete - bad - len(latest), bad


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
        delta=None, p_value=None, p_holm=None, verdict=REFERENCE if cell == ref else "",
        params_total=_first_metric(runs + all_runs, "params_total"),
        params_attention=_first_metric(runs + all_runs, "params_attention"),
        n_modules=_first_metric(runs + all_runs, "n_attention_modules"),
        seconds_mean=math.fsum(secs) / len(secs) if secs else None,
        pruned=states["PRUNED"], failed=states["FAIL"] + sum(
            r.state == "COMPLETE" and (r.value is None or not math.isfinite(r.value))
            for r in all_runs),
        running=states["RUNNING"], waiting=states["WAITING"],
        values=[r.value for r in runs if r.value is not None], seeds=[r.seed for r in runs],
        in_grid=in_grid,
    )


def summarize(results: StudyResults, alpha: float = ALPHA, importance: bool = True) -> Summary:
    """Per-cell statistics and tests against the reference, per-factor marginals, importance.

    ``importance=False`` skips Optuna's parameter importance (the slow part, ~0.3 s).
    """
    spec = results.spec
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
    extra = [c for c in all_by_cell if c not in grid]
    ref = results.reference_cell
    cells = [_cell_stats(c, by_cell[c], all_by_cell[c], ref, c in grid) for c in grid + extra]

    ref_stats = next((c for c in cells if c.is_reference), None)
    others = [c for c in cells if not c.is_reference]
    for c in others:
        if ref_stats is not None and c.mean is not None and ref_stats.mean is not None:
            c.delta = c.mean - ref_stats.mean
        c.p_value = welch_p(c.values, ref_stats.values) if ref_stats else None
    for c, p in zip(others, holm([c.p_value for c in others]), strict=True):
        c.p_holm = p
        c.verdict = verdict(c.delta, p, results.maximize, c.n,
                            ref_stats.n if ref_stats else 0, alpha)

    notes = []
    if ref_stats is None or ref_stats.n < 2:
        notes.append(f"reference cell {ref or '(single)'!r} has fewer than 2 complete runs: "
                     "no tests")
    if dupes:
        notes.append(f"{dupes} duplicate complete run(s) of the same cell and seed: "
                     "the latest counts")
    if bad:
        notes.append(f"{bad} complete trial(s) without a finite value counted as failed")
    if any(c.verdict == UNDETERMINED for c in cells):
        notes.append("'undetermined': both groups constant with different means "
                     "(zero variance, the t-test is undefined)")
    if extra:
        notes.append(f"trials outside the spec's grid: {', '.join(repr(c) for c in extra)}")

    factors = _factor_stats(vary, levels, cells, ref)
    imp, method = (_importance(vary, levels, runs, results.maximize) if importance
                   else (dict.fromkeys(vary), "not computed"))
    for f in factors:
        f.importance = imp.get(f.name)
    counts = Counter(t.state for t in results.trials)
    return Summary(
        study_name=results.study_name or str(spec.get("name", "")), spec=spec,
        metric=str(spec.get("metric", "val_top1")), maximize=results.maximize,
        reference_cell=ref, alpha=alpha, confidence=CONFIDENCE,
        counts={"complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                "failed": counts["FAIL"], "waiting": counts["WAITING"],
                "running": counts["RUNNING"]},
        cells=cells, factors=factors, importance_method=method, notes=notes,
        fingerprint=results.fingerprint, tracking=dict(results.tracking),
    )


def _factor_stats(vary: list[str], levels: dict[str, list[str]], cells: list[CellStats],
                  ref: str) -> list[FactorStats]:
    ref_levels = _levels(ref)
    out = []
    for name in vary:
        seen = levels[name] + [lv for c in cells if (lv := c.levels.get(name)) is not None
                               and lv not in levels[name]]
        rows, groups = [], []
        for lv in dict.fromkeys(seen):
            vals = [c.values for c in cells if c.levels.get(name) == lv and c.values]
            mean, lo, hi = mean_of_means_ci(vals)
            rows.append(LevelStats(lv, ref_levels.get(name) == lv, sum(map(len, vals)),
                                   len(vals), mean, lo, hi))
            groups.append([v for g in vals for v in g])
        out.append(FactorStats(name, rows, None, eta_squared(groups)))
    return out


def _importance(vary: list[str], levels: dict[str, list[str]], runs: list[TrialRecord],
                maximize: bool) -> tuple[dict[str, float | None], str]:
    """Optuna importance of each factor on an in-memory copy of the complete trials."""
    if not vary:
        return {}, "n/a: no factor varies"
    none: dict[str, float | None] = dict.fromkeys(vary)
    if len(vary) == 1:
        return none, "n/a: only one factor varies (see eta^2 for the variance it explains)"
    params = [r.params or _levels(r.cell) for r in runs]
    usable = [(r.value, ps) for r, ps in zip(runs, params, strict=True)
              if r.value is not None and all(n in ps for n in vary)]
    if len(usable) < MIN_IMPORTANCE_TRIALS or len({v for v, _ in usable}) < 2:
        return none, f"n/a: needs >= {MIN_IMPORTANCE_TRIALS} complete runs that differ"
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.importance import (
        FanovaImportanceEvaluator,
        PedAnovaImportanceEvaluator,
        get_param_importances,
    )

    if len(usable) >= PED_ANOVA_MIN_TRIALS:
        method, evaluator = "PED-ANOVA", PedAnovaImportanceEvaluator()
    else:  # PED-ANOVA's top-10% quantile would hold fewer than 5 trials
        method, evaluator = "fANOVA", FanovaImportanceEvaluator(seed=0)
    dists = {n: CategoricalDistribution(list(dict.fromkeys(
        levels[n] + [ps[n] for _, ps in usable]))) for n in vary}
    verbosity = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if maximize else "minimize")
            study.add_trials([optuna.trial.create_trial(
                value=v, params={n: ps[n] for n in vary}, distributions=dists)
                for v, ps in usable])
            raw = get_param_importances(study, evaluator=evaluator, params=vary,
                                        normalize=False)
    except Exception as err:  # importance is a bonus: never fail the summary for it
        first = (str(err).strip().splitlines() or [""])[0]
        return none, f"n/a: {method} failed ({type(err).__name__}: {first})"
    finally:
        optuna.logging.set_verbosity(verbosity)
    total = sum(raw.values())
    note = f"{method} on {len(usable)} complete runs"
    if not total > 0:  # Optuna would split 1.0 equally, which reads as an effect
        return dict.fromkeys(vary, 0.0), note + " (no factor shows an effect)"
    return {n: raw.get(n, 0.0) / total for n in vary}, note
