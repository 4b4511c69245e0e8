"""Verdicts of a family of cells against the reference, the one decision rule of the tool.

The fixed-sample summary calls :func:`decide_cells` once at ``alpha``; the adaptive-seeds
schedule calls it at every look with that look's spent level (see ``_sequential``). Both
families are adjusted with Holm's step-down: one family for the differences, one for the
equivalence tests. Cells sharing the reference's seeds get the pooled t of the block model
(``_pooled``), the others their own paired or Welch t; non-varying differences exact tests.

Rule per cell, with adjusted p-values: difference p < alpha -> ``better``/``worse``; else
equivalence p < alpha -> ``equivalent``; else ``inconclusive``; no test possible -> ``too
few runs``. A decided verdict needs >= 3 shared seeds (3 runs per group when unpaired).
Each cell also gets a simultaneous interval at the family's level (Bonferroni, alpha / m:
one that excludes 0 implies Holm's adjusted p < alpha, so it never sits beside
'inconclusive').
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from gct_ablate.stats._compare import (
    MIN_DECIDE,
    PAIRED,
    POOLED,
    T_TESTS,
    WELCH,
    Comparison,
    SeedKey,
    compare_many,
)
from gct_ablate.stats._counts import snap
from gct_ablate.stats._describe import pooled_sd
from gct_ablate.stats._pooled import SCREEN_LEVEL, block_comparisons
from gct_ablate.stats._power import (
    min_detectable_difference,
    no_power_reason,
    sd_upper,
    seeds_needed,
)
from gct_ablate.stats._records import (
    BETTER,
    DECIDED,
    EQUIVALENT,
    INCONCLUSIVE,
    POWER,
    TOO_FEW,
    WORSE,
)

Values = Mapping[str, Mapping[SeedKey, float]]  # cell -> seed -> value


@dataclass(frozen=True)
class Decision:
    """A cell's comparison, its adjusted p-values and verdict, and what it can detect.

    ``mdd``: the minimum detectable difference (metric units) at the cell's n with ``POWER``
    at ``alpha_power``; ``seeds_needed``: seeds per cell to detect the margin there.
    """

    cell: str
    comparison: Comparison
    p_adjusted: float | None
    p_equivalence_adjusted: float | None
    significant: bool
    verdict: str
    mdd: float | None = None
    seeds_needed: int | None = None
    look: int = 1  # the look at which the verdict was reached (adaptive seeds)
    ci_simultaneous: tuple[float, float] | None = None  # at alpha / m (Bonferroni)
    mdd_upper: float | None = None  # mdd with the sd's one-sided 95 % upper bound
    power_note: str | None = None  # why mdd or seeds_needed is missing

    @property
    def decided(self) -> bool:
        return self.verdict in DECIDED


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (equal to statsmodels' ``multipletests(method=
    'holm')``, tested; that one runs a full gc.collect() on every call).

    ``None`` entries are not tests: they stay None and do not count in the family size.
    """
    tested = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    if tested:
        for i, p in zip(tested, holm_matrix(np.array([[pvalues[i] for i in tested]]))[0],
                        strict=True):
            out[i] = float(p)
    return out


def holm_matrix(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values of each row of p (replicates x tests)."""
    m = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    steps = np.take_along_axis(p, order, axis=1) * (m - np.arange(m))
    adjusted = np.minimum(np.maximum.accumulate(steps, axis=1), 1.0)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, axis=1)
    return out


def verdict(comparison: Comparison, p_adjusted: float | None,
            p_equivalence_adjusted: float | None, maximize: bool, alpha: float) -> str:
    """The verdict of one cell from its adjusted p-values (see the module docstring)."""
    if not comparison.tested:
        return TOO_FEW
    if min(comparison.n, comparison.n_ref) < MIN_DECIDE:
        return INCONCLUSIVE
    if p_adjusted is not None and p_adjusted < alpha and comparison.delta is not None:
        return BETTER if (comparison.delta > 0) == maximize else WORSE
    if p_equivalence_adjusted is not None and p_equivalence_adjusted < alpha:
        return EQUIVALENT
    return INCONCLUSIVE


def compare_cells(values: Values, reference: str, cells: Sequence[str],
                  margin: float | None, images: int | None = None) -> dict[str, Comparison]:
    """Each of ``cells`` against the reference: the pooled t where they share its seeds
    (:func:`~gct_ablate.stats._pooled.block_comparisons`), else :func:`compare`. Values are
    snapped to their grain (1 / ``images``) first."""
    values = snap(values, images)
    pooled, block = block_comparisons(values, reference, cells, margin)
    own = [c for c in cells if c not in pooled]
    ref = values.get(reference, {})
    found = dict(zip(own, compare_many([(values.get(c, {}), ref) for c in own], margin,
                                       images=images), strict=True))
    for c in block.screened_out if block else []:
        if found[c].note is None:
            found[c] = replace(found[c], note=f"residual variance unlike the others' (F test "
                               f"p < {SCREEN_LEVEL:g}): own test, not pooled")
    return {c: pooled.get(c) or found[c] for c in cells}


def decide_cells(comparisons: Mapping[str, Comparison], *, alpha: float, maximize: bool,
                 frozen: int = 0, nominal: float | None = None) -> dict[str, Decision]:
    """Holm-adjust the family and give each cell its verdict at level ``alpha``.

    ``frozen``: cells of the family decided earlier; they count with p = 1 (a valid p-value
    for a hypothesis no longer tested), which keeps the family size fixed across looks.
    ``nominal``: the level the raw tests are held to (a look's spent level; default alpha),
    which sets the simultaneous intervals.
    """
    names = list(comparisons)
    pad: list[float | None] = [1.0] * frozen
    p_adj = holm([comparisons[c].p_value for c in names] + pad)[:len(names)]
    eq_adj = holm([comparisons[c].p_equivalence for c in names] + pad)[:len(names)]
    m = max(1, family_size(comparisons, frozen))
    out = {}
    for c, p, q in zip(names, p_adj, eq_adj, strict=True):
        cmp = comparisons[c]
        out[c] = Decision(c, cmp, p, q, p is not None and p < alpha,
                          verdict(cmp, p, q, maximize, alpha),
                          ci_simultaneous=simultaneous_ci(cmp, (nominal or alpha) / m))
    return out


def simultaneous_ci(cmp: Comparison, level: float) -> tuple[float, float] | None:
    """delta +- t(1 - level / 2, df) * se (None for exact tests)."""
    if cmp.test not in T_TESTS or cmp.se is None or cmp.df is None or cmp.delta is None:
        return None
    half = float(stats.t.ppf(1 - level / 2, cmp.df)) * cmp.se
    return cmp.delta - half, cmp.delta + half


def family_size(comparisons: Mapping[str, Comparison], frozen: int = 0) -> int:
    """Tests in the Holm family: cells with a p-value, plus the frozen ones."""
    return sum(c.p_value is not None for c in comparisons.values()) + frozen


def pooled_sds(values: Values, comparisons: Mapping[str, Comparison]
               ) -> tuple[float | None, float | None]:
    """(paired, within): the pooled sd of the per-seed differences over the paired
    comparisons, and the pooled within-cell (seed-to-seed) sd over all cells."""
    ss = df = 0.0
    for c in comparisons.values():
        if c.test == PAIRED and c.sd is not None and c.sd_df > 0:
            ss += c.sd_df * c.sd**2
            df += c.sd_df
    paired = (ss / df) ** 0.5 if df else None
    return paired, pooled_sd([list(v.values()) for v in values.values()])


def with_power(decisions: Mapping[str, Decision], values: Values, *, alpha_power: float,
               margin: float | None, power: float = POWER) -> dict[str, Decision]:
    """Add the minimum detectable difference (estimate and conservative) and the seeds
    needed to each decision, with the power of the cell's own test.

    Pooled cells use the block's residual sd and df; paired cells the pooled sd of the
    per-seed differences over the paired comparisons; Welch the within-cell sd
    (:func:`pooled_sds`); exact tests get none (``power_note`` says why). ``alpha_power``:
    Holm's first, strictest step (alpha / family size).
    """
    paired_sd, within_sd = pooled_sds(values, {c: d.comparison for c, d in decisions.items()})
    paired_df = sum(d.comparison.sd_df for d in decisions.values()
                    if d.comparison.test == PAIRED)
    out = {}
    for c, d in decisions.items():
        cmp = d.comparison
        if not cmp.tested:
            out[c] = d
            continue
        if cmp.test == POOLED:  # sd: one run's, as se = sd sqrt(2/n) (the reference's own)
            sd = cmp.se * math.sqrt(cmp.n / 2) if cmp.se is not None else cmp.sd
            df = float(cmp.df if cmp.df is not None else cmp.sd_df)
            cells = round(cmp.sd_df / max(1, cmp.n - 1)) + 1
        elif cmp.test == PAIRED:
            sd, df, cells = paired_sd, float(paired_df), 2
        elif cmp.test == WELCH:
            sd, df, cells = within_sd, float(cmp.sd_df), 2
        else:
            out[c] = replace(d, power_note=f"{cmp.test} test: no t power")
            continue
        kind = cmp.test
        mdd = min_detectable_difference(kind, cmp.n, sd, alpha_power, power, cmp.n_ref,
                                        cells=cells, df=df if kind == POOLED else None)
        upper = sd_upper(sd, df) if mdd is not None and sd else None
        needed = seeds_needed(kind, margin, sd, alpha_power, power, cells)
        note = no_power_reason(margin, sd)
        if note is None and needed is None:
            note = "the margin needs more than a million seeds"
        out[c] = replace(d, mdd=mdd, mdd_upper=None if upper is None or mdd is None
                         else mdd * upper / sd, seeds_needed=needed, power_note=note)
    return out


def judge(comparisons: Mapping[str, Comparison], values: Values, *, alpha: float,
          margin: float | None, maximize: bool, frozen: int = 0, power: bool = True,
          look: int = 1, nominal: float | None = None) -> dict[str, Decision]:
    """:func:`decide_cells` at ``alpha``, stamped with ``look``; with ``power``, add what each
    cell can detect at Holm's first step (``nominal`` (default alpha) / family size,
    :func:`with_power`)."""
    decisions = decide_cells(comparisons, alpha=alpha, maximize=maximize, frozen=frozen,
                             nominal=nominal)
    if look != 1:
        decisions = {c: replace(d, look=look) for c, d in decisions.items()}
    if not power:
        return decisions
    m = max(1, family_size(comparisons, frozen))
    return with_power(decisions, values, alpha_power=(nominal or alpha) / m, margin=margin)


def decide_family(values: Values, reference: str, cells: Sequence[str], *, alpha: float,
                  margin: float | None, maximize: bool, power: bool = True,
                  images: int | None = None) -> dict[str, Decision]:
    """Compare ``cells`` with the reference and judge them as one family at ``alpha``
    (``images``: the grain of count data)."""
    return judge(compare_cells(values, reference, cells, margin, images), snap(values, images),
                 alpha=alpha, margin=margin, maximize=maximize, power=power)
