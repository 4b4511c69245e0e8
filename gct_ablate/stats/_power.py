"""What a comparison can detect: the minimum detectable difference and the seeds needed.

Two-sided t-tests at a given alpha and power, one function per test kind:

- paired t on n per-seed differences: noncentral t with n - 1 df, se = sd / sqrt(n);
- pooled t (the block model's residual error, ``cells`` cells sharing n seeds): noncentral
  t with (cells - 1)(n - 1) df, se = sd * sqrt(2 / n);
- Welch's t (n against n_ref independent runs): its power by Monte Carlo over the two sample
  variances (fixed draws, so the answer is deterministic), with the Satterthwaite df each
  draw's test uses. A noncentral t with n + n_ref - 2 df overstates it (0.70 true power at
  a 'power 0.80' difference for 3 against 3).

The power is scipy's noncentral t (``scipy.stats.nct``), exact at every n and alpha
(statsmodels' ``solve_power`` misses roots for tiny samples at small alpha). The solvers never
raise: an undefined answer is None, and :func:`no_power_reason` says why.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats

from gct_ablate.stats._records import POWER

PAIRED, POOLED, WELCH = "paired t", "pooled t", "Welch t"
MAX_SEEDS = 1_000_000
TINY_SD = 1e-12  # an sd below this (metric units) is zero: nothing to scale a difference by
_DRAWS = 40_000  # Monte Carlo draws of Welch's power (standard error 0.002 at power 0.8)


def _kind(test: bool | str) -> str:
    """``True``/``False`` (paired / independent) or a test name."""
    if isinstance(test, bool):
        return PAIRED if test else WELCH
    return test


def _upper(crit: float, df: float, ncp: float) -> float:
    """P(T > crit) for a noncentral t; where scipy's nct gives NaN (far tails), the same
    probability as an integral over the chi-square of the denominator."""
    with warnings.catch_warnings():  # far tails: scipy warns, then returns NaN or a bound
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(stats.nct.sf(crit, df, ncp))
    if math.isfinite(value):
        return value
    from scipy import integrate

    def part(v: float) -> float:
        return float(stats.chi2.pdf(v, df) * stats.norm.sf(crit * math.sqrt(v / df) - ncp))

    return float(integrate.quad(part, 0, np.inf, limit=200)[0])


def t_power(ncp: float, df: float, alpha: float) -> float:
    """Power of the two-sided t-test at ``alpha`` for noncentrality ``ncp`` and ``df``."""
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    return _upper(crit, df, ncp) + _upper(crit, df, -ncp)


@functools.lru_cache(maxsize=4096)
def _ncp(df: float, alpha: float, power: float) -> float | None:
    """The noncentrality that the two-sided t-test at ``alpha`` detects with ``power``."""
    if not (df > 0 and 0 < alpha < 1 and 0 < power < 1):
        return None
    return _root(lambda x: t_power(x, df, alpha) - power, xtol=1e-10)


@functools.lru_cache(maxsize=256)
def _welch_draws(n: int, n_ref: int, var_ratio: float, alpha: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(z, c) per draw: Welch's test rejects at mean difference lambda * se iff
    |lambda + z| > c (se: the true standard error; c: the draw's critical value over it)."""
    rng = np.random.default_rng(20040101)
    z = rng.standard_normal(_DRAWS)
    a = var_ratio / n * rng.chisquare(n - 1, _DRAWS) / (n - 1)
    b = 1.0 / n_ref * rng.chisquare(n_ref - 1, _DRAWS) / (n_ref - 1)
    se_true = math.sqrt(var_ratio / n + 1.0 / n_ref)
    df = (a + b) ** 2 / (a**2 / (n - 1) + b**2 / (n_ref - 1))
    return z, stats.t.ppf(1 - alpha / 2, df) * np.sqrt(a + b) / se_true


def welch_power(effect: float, n: int, n_ref: int, alpha: float, var_ratio: float = 1.0
                ) -> float:
    """Power of Welch's t at ``alpha`` for a mean difference of ``effect`` true standard
    errors (sqrt(s^2/n + s_ref^2/n_ref)); ``var_ratio`` = s^2 / s_ref^2."""
    z, c = _welch_draws(n, n_ref, var_ratio, alpha)
    return float(np.mean(np.abs(effect + z) > c))


@functools.lru_cache(maxsize=4096)
def _welch_effect(n: int, n_ref: int, alpha: float, power: float, var_ratio: float
                  ) -> float | None:
    z, c = _welch_draws(n, n_ref, var_ratio, alpha)
    return _root(lambda x: float(np.mean(np.abs(x + z) > c)) - power, xtol=1e-6)


def _root(f: Callable[[float], float], xtol: float) -> float | None:
    """The effect in (0, 1e6] where the increasing ``f`` crosses 0 (None: beyond it)."""
    high = 1.0
    while f(high) < 0:
        high *= 2
        if high > 1e6:
            return None
    return float(optimize.brentq(f, 0.0, high, xtol=xtol))


def _se(kind: str, n: int, sd: float, n_ref: int | None) -> float:
    if kind == PAIRED:
        return sd / math.sqrt(n)
    if kind == POOLED:
        return sd * math.sqrt(2 / n)
    return sd * math.sqrt(1 / n + 1 / (n_ref or n))


def _df(kind: str, n: int, cells: int) -> float:
    return (n - 1) * (max(cells, 2) - 1) if kind == POOLED else n - 1


def min_detectable_difference(test: bool | str, n: int, sd: float | None, alpha: float,
                              power: float = POWER, n_ref: int | None = None, *,
                              cells: int = 2, df: float | None = None) -> float | None:
    """The difference (metric units) that ``test`` at ``alpha`` detects with ``power``.

    ``sd``: of the per-seed differences (paired), of one run (pooled: the residual sd; Welch:
    the within-cell sd, equal in both groups). ``cells``: cells in the pooled model (its df
    is (cells - 1)(n - 1) unless ``df`` is given). None when undefined.
    """
    kind = _kind(test)
    if sd is None or not sd > TINY_SD or n < 2 or (kind == WELCH and (n_ref or n) < 2):
        return None
    if kind == WELCH:
        effect = _welch_effect(n, n_ref or n, alpha, power, 1.0)
    else:
        effect = _ncp(df if df is not None else _df(kind, n, cells), alpha, power)
    return None if effect is None else effect * _se(kind, n, sd, n_ref)


def detectable_effect(paired: bool, n: int, alpha: float, power: float = POWER,
                      ratio: float = 1.0) -> float | None:
    """Standardised difference (delta / sd) found with ``power`` at ``alpha``: n pairs
    (paired) or n runs against ``ratio * n`` (Welch)."""
    n_ref = max(2, round(ratio * n))
    return min_detectable_difference(paired, n, 1.0, alpha, power, n_ref)


def sd_upper(sd: float | None, df: float, confidence: float = 0.95) -> float | None:
    """The one-sided upper confidence bound of an sd estimated with ``df`` df."""
    if sd is None or not df > 0:
        return None
    return sd * math.sqrt(df / stats.chi2.ppf(1 - confidence, df))


@functools.lru_cache(maxsize=4096)
def seeds_needed(test: bool | str, difference: float | None, sd: float | None, alpha: float,
                 power: float = POWER, cells: int = 2) -> int | None:
    """Seeds per cell (pairs when paired; per group when Welch) that detect ``difference``
    with ``power`` at ``alpha``; at least 3 (a verdict needs 3 shared seeds). None when
    undefined (:func:`no_power_reason`)."""
    if no_power_reason(difference, sd) is not None:
        return None
    kind = _kind(test)

    def enough(n: int) -> bool:
        mdd = min_detectable_difference(kind, n, sd, alpha, power, n, cells=cells)
        return mdd is not None and mdd <= difference  # type: ignore[operator]

    low, high = 2, 3
    while not enough(high):
        low, high = high, high * 2
        if high > MAX_SEEDS:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def no_power_reason(difference: float | None, sd: float | None) -> str | None:
    """Why no seeds-needed figure: no margin, or an sd of about 0; None when there is one."""
    if difference is None or not difference > 0:
        return "no margin to detect"
    if sd is None or not math.isfinite(sd):
        return "no sd to scale the margin by"
    if not sd > TINY_SD:
        return "the sd is about 0 (every difference identical): power is undefined"
    return None
