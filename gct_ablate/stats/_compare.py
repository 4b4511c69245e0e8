"""One cell against the reference: paired by seed when they share seeds, else Welch.

A seed fixes the initial weights and the batch order in every cell, so runs of one seed are
correlated across cells; the per-seed differences remove that shared part (the seed acts as
a block). The tests, intervals and the equivalence test (TOST) are statsmodels'. Differences
that do not vary (count data: every seed +2 images) get exact sign tests instead of a t
(``_counts``). The pooled test of a blocked study is ``_pooled``'s.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gct_ablate.stats._counts import constant, sign_p, sign_tost_p
from gct_ablate.stats._records import CONFIDENCE

SeedKey = int | str  # a seed, or a unique stand-in for a run without one (never paired)

PAIRED = "paired t"
POOLED = "pooled t"  # the block model's residual error (``_pooled``)
WELCH = "Welch t"
SIGN = "exact sign"  # per-seed differences that do not vary
PERMUTATION = "exact permutation"  # two constant groups
NO_TEST = "none"
TESTS = (PAIRED, POOLED, WELCH, SIGN, PERMUTATION, NO_TEST)
T_TESTS = (PAIRED, POOLED, WELCH)
MIN_DECIDE = 3  # shared seeds (runs per group when unpaired) a decided verdict needs


@dataclass(frozen=True)
class Comparison:
    """Difference cell - reference and its tests (None where undefined).

    ``n``/``n_ref``: runs of the cell and of the reference in the test (both are the number
    of shared seeds when paired). ``sd``: the standard deviation the test rests on (of the
    per-seed differences when paired, the pooled two-sample sd for Welch) with ``sd_df``
    degrees of freedom. ``left_out``: runs of either group left out of a paired test (seeds
    the other group lacks). ``se``/``df``: delta's standard error and the test's df (Welch:
    Satterthwaite). ``cell_sd``: the sd of this cell's own per-seed differences (paired
    and pooled), the per-cell figure beside a pooled ``sd``. ``undefined``: zero variance
    and different means, where t is undefined (an exact test stands in).
    """

    test: str
    n: int
    n_ref: int
    delta: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    p_equivalence: float | None = None  # TOST p, H0: |delta| >= margin
    sd: float | None = None
    sd_df: int = 0
    left_out: int = 0
    undefined: bool = False
    se: float | None = None
    df: float | None = None
    cell_sd: float | None = None
    note: str | None = None  # why a test other than the planned one was used

    @property
    def tested(self) -> bool:
        return self.test != NO_TEST


def _sign(d: np.ndarray, margin: float | None, left_out: int) -> Comparison:
    """Per-seed differences that do not vary: exact sign tests (no interval)."""
    n = d.size
    delta = float(d.mean())
    p = sign_p(int(np.sum(d > 0)), int(np.sum(d < 0)))
    p_eq = None if margin is None else sign_tost_p(d, margin)
    return Comparison(SIGN, n, n, delta, None, None, p, p_eq, 0.0, n - 1, left_out,
                      delta != 0, cell_sd=0.0, note="differences do not vary: exact sign test")


def _permutation(a: np.ndarray, b: np.ndarray) -> Comparison:
    """Two constant groups: the exact two-sample permutation p (no equivalence test)."""
    n1, n2 = a.size, b.size
    delta = float(a[0] - b[0])
    p = 1.0 if delta == 0 else min(1.0, 2 / math.comb(n1 + n2, n1))
    return Comparison(PERMUTATION, n1, n2, delta, None, None, p, None, 0.0, n1 + n2 - 2, 0,
                      delta != 0, note="both groups constant: exact permutation test, "
                      "no equivalence test")


def _paired(x: np.ndarray, y: np.ndarray, margin: float | None, confidence: float,
            left_out: list[int], images: int | None = None) -> list[Comparison]:
    """Paired t on the columns of x - y (n seeds x k comparisons)."""
    from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

    d = x - y
    n = d.shape[0]
    delta = d.mean(axis=0)
    out: list[Comparison | None] = [None] * d.shape[1]
    flat = constant(d, images)
    live = np.flatnonzero(~flat)
    for j in np.flatnonzero(flat):
        out[j] = _sign(d[:, j], margin, left_out[j])
    if live.size:
        ds = DescrStatsW(d[:, live])
        p = np.atleast_1d(ds.ttest_mean(0.0)[1])
        lo, hi = (np.atleast_1d(v) for v in ds.tconfint_mean(alpha=1 - confidence))
        sd = d[:, live].std(axis=0, ddof=1)
        p_eq = (None if margin is None
                else np.atleast_1d(ttost_paired(x[:, live], y[:, live], -margin, margin)[0]))
        for i, j in enumerate(live):
            out[j] = Comparison(PAIRED, n, n, float(delta[j]), float(lo[i]), float(hi[i]),
                                float(p[i]), None if p_eq is None else float(p_eq[i]),
                                float(sd[i]), n - 1, left_out[j], se=float(sd[i] / n**0.5),
                                df=float(n - 1), cell_sd=float(sd[i]))
    return out  # type: ignore[return-value]


def _welch(a: np.ndarray, b: np.ndarray, margin: float | None,
           confidence: float, images: int | None = None) -> list[Comparison]:
    """Welch's t on the columns of a (n1 x k) against b (n2 x k)."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind

    n1, n2 = a.shape[0], b.shape[0]
    df = n1 + n2 - 2
    delta = a.mean(axis=0) - b.mean(axis=0)
    flat = constant(a, images) & constant(b, images)
    out: list[Comparison | None] = [None] * a.shape[1]
    for j in np.flatnonzero(flat):
        out[j] = _permutation(a[:, j], b[:, j])
    live = np.flatnonzero(~flat)
    if live.size:
        a, b = a[:, live], b[:, live]
        sd = np.sqrt(((n1 - 1) * a.var(axis=0, ddof=1) + (n2 - 1) * b.var(axis=0, ddof=1)) / df)
        cm = CompareMeans(DescrStatsW(a), DescrStatsW(b))
        with warnings.catch_warnings():  # one constant group: fine for Welch, numpy may warn
            warnings.simplefilter("ignore", RuntimeWarning)
            p = np.atleast_1d(cm.ttest_ind(usevar="unequal")[1])
            lo, hi = (np.atleast_1d(v)
                      for v in cm.tconfint_diff(alpha=1 - confidence, usevar="unequal"))
            p_eq = (None if margin is None else np.atleast_1d(
                ttost_ind(a, b, -margin, margin, usevar="unequal")[0]))
            se = np.atleast_1d(cm.std_meandiff_separatevar)
            dof = np.atleast_1d(cm.dof_satt())
        for i, j in enumerate(live):
            out[j] = Comparison(WELCH, n1, n2, float(delta[j]), float(lo[i]), float(hi[i]),
                                float(p[i]), None if p_eq is None else float(p_eq[i]),
                                float(sd[i]), df, se=float(se[i]), df=float(dof[i]),
                                cell_sd=float(a[:, i].std(ddof=1)))
    return out  # type: ignore[return-value]


def compare_many(pairs: Sequence[tuple[Mapping[SeedKey, float], Mapping[SeedKey, float]]],
                 margin: float | None = None, confidence: float = CONFIDENCE,
                 images: int | None = None) -> list[Comparison]:
    """:func:`compare` of each (cell, reference) pair; pairs of one test kind and sample size
    go through statsmodels together (its functions work column-wise). ``images``: the grain
    of count data (values are multiples of 1 / images), which sets what 'constant' means."""
    out: list[Comparison | None] = [None] * len(pairs)
    groups: dict[tuple, list[tuple[int, list[float], list[float], int]]] = defaultdict(list)
    for i, (cell, ref) in enumerate(pairs):
        shared = [k for k in cell if k in ref]
        if len(shared) >= 2:
            left_out = len(cell) + len(ref) - 2 * len(shared)
            groups[(PAIRED, len(shared))].append(
                (i, [cell[k] for k in shared], [ref[k] for k in shared], left_out))
        elif len(cell) >= 2 and len(ref) >= 2:
            groups[(WELCH, len(cell), len(ref))].append((i, list(cell.values()),
                                                         list(ref.values()), 0))
        else:
            a, b = list(cell.values()), list(ref.values())
            delta = math.fsum(a) / len(a) - math.fsum(b) / len(b) if a and b else None
            out[i] = Comparison(NO_TEST, len(a), len(b), delta)
    for key, members in groups.items():
        x = np.array([m[1] for m in members], dtype=float).T
        y = np.array([m[2] for m in members], dtype=float).T
        found = (_paired(x, y, margin, confidence, [m[3] for m in members], images)
                 if key[0] == PAIRED else _welch(x, y, margin, confidence, images))
        for m, comparison in zip(members, found, strict=True):
            out[m[0]] = comparison
    return out  # type: ignore[return-value]


def compare(cell: Mapping[SeedKey, float], reference: Mapping[SeedKey, float],
            margin: float | None = None, confidence: float = CONFIDENCE) -> Comparison:
    """Test ``cell`` against ``reference`` (values keyed by seed).

    Paired t on the per-seed differences when at least 2 seeds are shared (runs of seeds the
    other group lacks are left out), else Welch's t (both groups need >= 2 runs). Two-sided
    p, the ``confidence`` t interval of delta and, when ``margin`` is given, the TOST p of
    equivalence within +-margin (``ttost_paired`` / ``ttost_ind(usevar="unequal")``);
    exact sign / permutation tests where the differences do not vary.
    """
    return compare_many([(cell, reference)], margin, confidence)[0]
