"""What :func:`~gct_ablate.stats.summarize` returns: per cell, per factor, the ANOVA table.

Every number is in the metric's units (fractions for accuracies; renderers scale to points).
Undefined quantities are ``None`` (never NaN), so callers render 'n/a' and JSON gets null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gct_ablate.stats._anova import AnovaTerm
from gct_ablate.stats._records import INCONCLUSIVE, PERCENT_METRICS, points_scale


@dataclass
class CellStats:
    """One cell: its runs, its test against the reference, its verdict, its cost."""

    cell: str
    levels: dict[str, str]
    is_reference: bool
    n: int  # complete runs with a finite value
    mean: float | None
    std: float | None
    ci_low: float | None  # t interval of the mean
    ci_high: float | None
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
    verdict: str = ""
    test: str = ""  # "pooled t", "paired t", "Welch t", "exact sign", "exact permutation",
    # "none"; "" for the reference
    n_test: int = 0  # runs of this cell in the test (shared seeds when paired)
    delta: float | None = None  # cell - reference (mean per-seed difference when paired)
    ci: list[float] | None = None  # confidence interval of delta (unadjusted)
    ci_simultaneous: list[float] | None = None  # at the family's level (alpha / m)
    test_df: float | None = None  # the test's df (pooled: the block model's residual df, or
    # Satterthwaite's where the reference's own variance is added)
    sd: float | None = None  # the sd the test rests on (pooled: the residual sd)
    cell_sd: float | None = None  # sd of this cell's own per-seed differences
    test_note: str | None = None  # why this test (exact test, variance screen)
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over the non-reference cells
    p_equivalence: float | None = None  # TOST within +-margin
    p_equivalence_adjusted: float | None = None  # Holm over the equivalence tests
    significant: bool | None = None  # the difference test alone (a better/worse cell can
    # also be within the margin: a real difference smaller than it)
    mdd: float | None = None  # minimum detectable difference at n_test (80 % power)
    mdd_upper: float | None = None  # the same with the sd's one-sided 95 % upper bound
    power_note: str | None = None  # why mdd / seeds_needed is missing
    seeds_needed: int | None = None  # seeds per cell that detect the margin (80 % power)
    look: int | None = None  # adaptive seeds: the look that decided it

    @property
    def tested_below_three(self) -> bool:
        """Tested on fewer than 3 shared seeds (never decided)."""
        return self.test not in ("", "none") and 0 < self.n_test < 3


@dataclass
class LevelStats:
    """One level of a factor: the mean of its cells' means, and the model's contrast
    against the factor's reference level."""

    level: str
    is_reference: bool
    n: int
    n_cells: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    delta: float | None = None  # this level - the reference level (from the ANOVA's model)
    delta_ci_low: float | None = None
    delta_ci_high: float | None = None
    equivalent: bool | None = None  # 1 - 2 alpha CI of delta inside +-margin


@dataclass
class FactorStats:
    """One varied factor: its main effect in the ANOVA, its levels, Optuna's importance."""

    name: str
    levels: list[LevelStats]
    importance: float | None = None  # Optuna importance, relative (sums to 1 over factors)
    F: float | None = None
    p: float | None = None
    partial_eta_squared: float | None = None
    df: float | None = None
    verdict: str = INCONCLUSIVE  # significant / negligible / inconclusive


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
    margin: float | None = None  # smallest difference that matters (metric units)
    power: float = 0.8
    alpha_power: float | None = None  # the level of mdd and seeds_needed (Holm's first step)
    design: str = "full"
    anova: list[AnovaTerm] = field(default_factory=list)
    anova_formula: str = ""
    pooled_sd: dict[str, float | None] = field(default_factory=dict)  # "paired", "within"
    schedule: dict[str, int] | None = None  # adaptive seeds: seeds, seed_batch, max_seeds
    look: int | None = None  # adaptive seeds: the last look taken
    alpha_look: float | None = None  # adaptive seeds: the nominal level of the last look
    images: int | None = None  # the grain of a count metric (validation images), if known
    block: dict[str, Any] | None = None  # the pooled model: seeds, cells, sd, df, screen
    headline: str = ""  # factor-level conclusions, the summary's first line
    conclusion: str = ""  # one line: what the study can and cannot conclude

    @property
    def percent(self) -> bool:
        return self.metric in PERCENT_METRICS

    @property
    def scale(self) -> float:
        """Points per metric unit (100 for accuracies)."""
        return points_scale(self.metric)

    def points(self, x: float | None) -> str:
        """A difference in points of the metric, as the verdicts and the conclusion say it."""
        if x is None:
            return "n/a"
        v = x * self.scale
        return f"{v:.1f}" if abs(v) >= 1 else f"{v:.2g}"

    def verdict_text(self, cell: CellStats) -> str:
        """The verdict as printed: 'inconclusive (detects >= 2.0)' says what n can resolve."""
        if cell.verdict == INCONCLUSIVE and cell.mdd is not None:
            return f"{INCONCLUSIVE} (detects >= {self.points(cell.mdd)})"
        if cell.verdict == INCONCLUSIVE and cell.n_test and cell.n_test < 3:
            return f"{INCONCLUSIVE} (< 3 seeds)"
        return cell.verdict

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "percent": self.percent, "methods": METHODS}


METHODS = {
    "mean_std": "mean and sample std (ddof=1) over COMPLETE trials of a cell",
    "ci": "two-sided t interval, t.ppf((1+confidence)/2, n-1) * std / sqrt(n)",
    "counts": "accuracies are counts over N validation images: values are rounded to "
    "multiples of 1/N before testing (N from the trials' val_images, else the smallest N "
    "that fits every value)",
    "test": "each cell against the reference: 'pooled t' when it has every seed of the "
    "reference and >= 3 cells do: the additive model metric ~ cell + seed (a randomized "
    "complete block; the seed fixes the initial weights and batch order in every cell), "
    "delta = difference of cell means, se = residual sd * sqrt(2/n), (cells-1)(n-1) df. "
    "A cell whose residual variance fails an F test against the rest's (p < 0.1) gets its "
    "own test instead: 'paired t' on the per-seed differences (>= 2 shared seeds), else "
    "Welch's t (Satterthwaite df). The reference, in every comparison, is screened at "
    "p < 0.35; when it fails, se^2 = (s_ref^2 + s^2)/n with s_ref^2 its own variance "
    "(Shukla's unbiased estimate from its residuals, at least s^2, n-1 df) and "
    "Satterthwaite df. "
    "Differences that do not vary get exact tests ('exact sign' on the per-seed "
    "differences, 'exact permutation' for two constant groups), never p = 0",
    "correction": "Holm step-down over the non-reference cells that could be tested, "
    "separately for the difference and the equivalence tests",
    "interval": "ci_simultaneous: delta +- t(1 - alpha/(2m), df) * se for m tests "
    "(Bonferroni; one that excludes 0 implies a Holm-adjusted p < alpha); ci: the "
    "unadjusted confidence interval",
    "equivalence": "TOST within +-margin with the cell's test (pooled: t with the "
    "residual df; paired: ttost_paired; Welch: ttost_ind(usevar='unequal'); exact sign "
    "tests when the differences do not vary, never p = 0)",
    "verdict": "better/worse when the adjusted p < alpha (val_loss: lower is better); else "
    "equivalent when the adjusted TOST p < alpha; else inconclusive, with the minimum "
    "detectable difference; a decided verdict needs >= 3 shared seeds; 'too few runs' "
    "when a group has < 2 runs",
    "power": "minimum detectable difference and seeds needed at 80 % power, two-sided, at "
    "alpha / (tests in the family), Holm's first step, with the power of the cell's test: "
    "noncentral t (scipy) with the pooled model's df and residual sd (with the "
    "reference's own variance added: its se and Satterthwaite df), or n-1 df and the "
    "pooled sd of the per-seed differences (paired); Welch's power by Monte Carlo with the "
    "Satterthwaite df of each draw; mdd_upper uses the sd's one-sided 95 % upper bound",
    "anova": "statsmodels ols of the metric on C(factor) for each varied factor, with their "
    "interactions when the full grid is replicated (every cell >= 2 runs), plus C(seed) "
    "when seeds are shared across cells; anova_lm(typ=2): F, p, partial eta^2 = "
    "SS_effect / (SS_effect + SS_residual); non-full designs: main effects only",
    "factor_verdict": "negligible when every level's contrast with the reference level "
    "(the model's, averaged over the other factors) has its 1 - 2 alpha CI inside "
    "+-margin; else significant when the ANOVA p < alpha (not adjusted across terms); "
    "else inconclusive",
    "importance": "Optuna parameter importance, relative: normalised to sum to 1 over the "
    "factors even when none matters (a ranking, not a test)",
    "sequential": "adaptive seeds: alpha spent over the looks with >= 3 seeds by an "
    "O'Brien-Fleming-type Lan-DeMets function (boundaries from the nested looks' "
    "correlation sqrt(n_j/n_k)); each p becomes its stage-wise level, Holm over all "
    "non-reference cells with cells decided earlier counted at p = 1; decided cells stop "
    "getting seeds",
    "level_mean": "unweighted mean of the cell means at that level; CI with the "
    "Welch-Satterthwaite df of sum(s_i^2/n_i)/k^2 (n/a when a cell has n < 2)",
    "duplicates": "several COMPLETE trials of one cell and seed: the latest one counts",
}
