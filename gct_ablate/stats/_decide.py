"""Verdicts of a family of cells against the reference, the one decision rule of the tool.

The fixed-sample summary calls :func:`decide_cells` once at ``alpha``; the adaptive-seeds
schedule calls it at every look at its per-look level (see ``_sequential``). Both families
are adjusted with Holm's step-down (:func:`holm`, as statsmodels' ``multipletests``): one
family for the differences, one for the equivalence tests.

Rule per cell, with adjusted p-values: equivalence p < alpha -> ``equivalent`` (a real but
smaller-than-margin difference is still within the margin); else difference p < alpha ->
``better``/``worse``; else ``inconclusive``; no test possible -> ``too few runs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from gct_ablate.stats._compare import PAIRED, Comparison, SeedKey, compare_many
from gct_ablate.stats._describe import pooled_sd
from gct_ablate.stats._power import min_detectable_difference, seeds_needed
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

    @property
    def decided(self) -> bool:
        return self.verdict in DECIDED


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values (what statsmodels ``multipletests(method="holm")``
    returns, without its ``gc.collect()`` on every call).

    ``None`` entries are not tests: they stay None and do not count in the family size.
    """
    tested = [i for i, p in enumerate(pvalues) if p is not None]
    out: list[float | None] = [None] * len(pvalues)
    p = np.asarray([pvalues[i] for i in tested], dtype=float)
    order = np.argsort(p, kind="stable")
    steps = np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1))
    for rank, adjusted in zip(order, np.minimum(steps, 1.0), strict=True):
        out[tested[rank]] = float(adjusted)
    return out


def verdict(comparison: Comparison, p_adjusted: float | None,
            p_equivalence_adjusted: float | None, maximize: bool, alpha: float) -> str:
    """The verdict of one cell from its adjusted p-values (see the module docstring)."""
    if not comparison.tested:
        return TOO_FEW
    if p_equivalence_adjusted is not None and p_equivalence_adjusted < alpha:
        return EQUIVALENT
    if p_adjusted is not None and p_adjusted < alpha and comparison.delta is not None:
        return BETTER if (comparison.delta > 0) == maximize else WORSE
    return INCONCLUSIVE


def compare_cells(values: Values, reference: str, cells: Sequence[str],
                  margin: float | None) -> dict[str, Comparison]:
    """Each of ``cells`` against the reference (:func:`compare`)."""
    ref = values.get(reference, {})
    found = compare_many([(values.get(c, {}), ref) for c in cells], margin)
    return dict(zip(cells, found, strict=True))


def decide_cells(comparisons: Mapping[str, Comparison], *, alpha: float, maximize: bool,
                 frozen: int = 0) -> dict[str, Decision]:
    """Holm-adjust the family and give each cell its verdict at level ``alpha``.

    ``frozen``: cells of the family decided earlier; they count with p = 1 (a valid p-value
    for a hypothesis no longer tested), which keeps the family size fixed across looks.
    """
    names = list(comparisons)
    pad: list[float | None] = [1.0] * frozen
    p_adj = holm([comparisons[c].p_value for c in names] + pad)[:len(names)]
    eq_adj = holm([comparisons[c].p_equivalence for c in names] + pad)[:len(names)]
    out = {}
    for c, p, q in zip(names, p_adj, eq_adj, strict=True):
        cmp = comparisons[c]
        out[c] = Decision(c, cmp, p, q, p is not None and p < alpha,
                          verdict(cmp, p, q, maximize, alpha))
    return out


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
    """Add the minimum detectable difference and the seeds needed to each decision.

    Both use the pooled sd of the cell's test kind (:func:`pooled_sds`), so every cell of
    one kind and n reads the same figure, and ``alpha_power`` (the caller passes Holm's
    first, strictest step: alpha / family size).
    """
    paired_sd, within_sd = pooled_sds(values, {c: d.comparison for c, d in decisions.items()})
    out = {}
    for c, d in decisions.items():
        cmp = d.comparison
        if not cmp.tested:
            out[c] = d
            continue
        paired = cmp.test == PAIRED
        sd = paired_sd if paired else within_sd
        ratio = cmp.n_ref / cmp.n if cmp.n else 1.0
        out[c] = replace(d, mdd=min_detectable_difference(paired, cmp.n, sd, alpha_power,
                                                          power, ratio),
                         seeds_needed=seeds_needed(paired, margin, sd, alpha_power, power))
    return out


def judge(comparisons: Mapping[str, Comparison], values: Values, *, alpha: float,
          margin: float | None, maximize: bool, frozen: int = 0, power: bool = True,
          look: int = 1) -> dict[str, Decision]:
    """:func:`decide_cells` at ``alpha``, stamped with ``look``; with ``power``, add what each
    cell can detect at Holm's first step (alpha / family size, :func:`with_power`)."""
    decisions = decide_cells(comparisons, alpha=alpha, maximize=maximize, frozen=frozen)
    if look != 1:
        decisions = {c: replace(d, look=look) for c, d in decisions.items()}
    if not power:
        return decisions
    m = max(1, family_size(comparisons, frozen))
    return with_power(decisions, values, alpha_power=alpha / m, margin=margin)


def decide_family(values: Values, reference: str, cells: Sequence[str], *, alpha: float,
                  margin: float | None, maximize: bool, power: bool = True
                  ) -> dict[str, Decision]:
    """Compare ``cells`` with the reference and judge them as one family at ``alpha``."""
    return judge(compare_cells(values, reference, cells, margin), values, alpha=alpha,
                 margin=margin, maximize=maximize, power=power)
