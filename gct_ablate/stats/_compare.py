"""One cell against the reference: paired by seed when they share seeds, else Welch.

A seed fixes the initial weights and the batch order in every cell, so runs of one seed are
correlated across cells; the per-seed differences remove that shared part (the seed acts as
a block). The tests, intervals and the equivalence test (TOST) are statsmodels'.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gct_ablate.stats._records import CONFIDENCE

SeedKey = int | str  # a seed, or a unique stand-in for a run without one (never paired)

PAIRED = "paired t"
WELCH = "Welch t"
NO_TEST = "none"
TESTS = (PAIRED, WELCH, NO_TEST)


@dataclass(frozen=True)
class Comparison:
    """Difference cell - reference and its tests (None where undefined).

    ``n``/``n_ref``: runs of the cell and of the reference in the test (both are the number
    of shared seeds when paired). ``sd``: the standard deviation the test rests on (of the
    per-seed differences when paired, the pooled two-sample sd for Welch) with ``sd_df``
    degrees of freedom. ``left_out``: runs of either group left out of a paired test (seeds
    the other group lacks). ``undefined``: zero variance and different means, where t is
    undefined (claiming p = 0 from constant samples would be overconfident).
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

    @property
    def tested(self) -> bool:
        return self.test != NO_TEST


def _degenerate(test: str, n: int, n_ref: int, delta: float, margin: float | None,
                sd_df: int, left_out: int) -> Comparison:
    """Zero variance: identical results are no difference at all (p = 1, and equivalent
    when a margin is given); different constants leave t undefined."""
    same = delta == 0
    return Comparison(test, n, n_ref, delta, delta, delta, 1.0 if same else None,
                      (0.0 if same else None) if margin is not None else None,
                      0.0, sd_df, left_out, not same)


def _paired(x: np.ndarray, y: np.ndarray, margin: float | None, confidence: float,
            left_out: list[int]) -> list[Comparison]:
    """Paired t on the columns of x - y (n seeds x k comparisons)."""
    from statsmodels.stats.weightstats import DescrStatsW, ttost_paired

    d = x - y
    n = d.shape[0]
    delta = d.mean(axis=0)
    out: list[Comparison | None] = [None] * d.shape[1]
    live = np.flatnonzero(d.max(axis=0) != d.min(axis=0))
    for j in np.flatnonzero(d.max(axis=0) == d.min(axis=0)):
        out[j] = _degenerate(PAIRED, n, n, float(d[0, j]), margin, n - 1, left_out[j])
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
                                float(sd[i]), n - 1, left_out[j])
    return out  # type: ignore[return-value]


def _welch(a: np.ndarray, b: np.ndarray, margin: float | None,
           confidence: float) -> list[Comparison]:
    """Welch's t on the columns of a (n1 x k) against b (n2 x k)."""
    from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind

    n1, n2 = a.shape[0], b.shape[0]
    df = n1 + n2 - 2
    delta = a.mean(axis=0) - b.mean(axis=0)
    constant = (a.max(axis=0) == a.min(axis=0)) & (b.max(axis=0) == b.min(axis=0))
    out: list[Comparison | None] = [None] * a.shape[1]
    for j in np.flatnonzero(constant):
        out[j] = _degenerate(WELCH, n1, n2, float(a[0, j] - b[0, j]), margin, df, 0)
    live = np.flatnonzero(~constant)
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
        for i, j in enumerate(live):
            out[j] = Comparison(WELCH, n1, n2, float(delta[j]), float(lo[i]), float(hi[i]),
                                float(p[i]), None if p_eq is None else float(p_eq[i]),
                                float(sd[i]), df)
    return out  # type: ignore[return-value]


def compare_many(pairs: Sequence[tuple[Mapping[SeedKey, float], Mapping[SeedKey, float]]],
                 margin: float | None = None,
                 confidence: float = CONFIDENCE) -> list[Comparison]:
    """:func:`compare` of each (cell, reference) pair; pairs of one test kind and sample size
    go through statsmodels together (its functions work column-wise)."""
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
        found = (_paired(x, y, margin, confidence, [m[3] for m in members])
                 if key[0] == PAIRED else _welch(x, y, margin, confidence))
        for m, comparison in zip(members, found, strict=True):
            out[m[0]] = comparison
    return out  # type: ignore[return-value]


def compare(cell: Mapping[SeedKey, float], reference: Mapping[SeedKey, float],
            margin: float | None = None, confidence: float = CONFIDENCE) -> Comparison:
    """Test ``cell`` against ``reference`` (values keyed by seed).

    Paired t on the per-seed differences when at least 2 seeds are shared (runs of seeds the
    other group lacks are left out), else Welch's t (both groups need >= 2 runs). Two-sided
    p, the ``confidence`` t interval of delta and, when ``margin`` is given, the TOST p of
    equivalence within +-margin (``ttost_paired`` / ``ttost_ind(usevar="unequal")``).
    """
    return compare_many([(cell, reference)], margin, confidence)[0]
