"""What a comparison can detect: the minimum detectable difference and the seeds needed.

statsmodels' t-test power (``TTestPower`` for paired differences, ``TTestIndPower`` for two
independent groups), two-sided, at a given alpha and power. Each answer is checked against
the power function itself; when statsmodels' own root finder misses (tiny samples at small
alpha need very large effects), the root is bracketed and found on that same function.
"""

from __future__ import annotations

import functools
import math
import warnings

from scipy import optimize

from gct_ablate.stats._records import POWER


def _solver(paired: bool):  # noqa: ANN202 (statsmodels' classes are untyped)
    import statsmodels.tools.sm_exceptions  # noqa: F401 (sets warning filters on import)
    from statsmodels.stats.power import TTestIndPower, TTestPower

    return TTestPower() if paired else TTestIndPower()


def _power(paired: bool, effect: float, n: float, alpha: float, ratio: float) -> float:
    """Two-sided power; for a large effect the lower tail (statsmodels' NaN there) is
    negligible, so the upper tail at alpha / 2 stands in for it."""
    solver = _solver(paired)  # imported outside catch_warnings: statsmodels sets filters
    extra = {} if paired else {"ratio": ratio}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(solver.power(effect, n, alpha, alternative="two-sided", **extra))
        if math.isnan(value):
            value = float(solver.power(effect, n, alpha / 2, alternative="larger", **extra))
    return value


def _solve(paired: bool, alpha: float, power: float, ratio: float, **unknown: float | None
           ) -> float | None:
    solver = _solver(paired)
    size = {"nobs": unknown.get("n")} if paired else {"nobs1": unknown.get("n"), "ratio": ratio}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = float(solver.solve_power(effect_size=unknown.get("effect"), alpha=alpha,
                                             power=power, alternative="two-sided", **size))
        except (ValueError, RuntimeError, ZeroDivisionError):
            value = math.nan
    return value if math.isfinite(value) and value > 0 else None


def _bracket(f, low: float, high: float, limit: float) -> float | None:  # noqa: ANN001
    """Root of the increasing f on [low, high], doubling high up to ``limit``."""
    if f(low) >= 0:
        return low
    while f(high) < 0:
        high *= 2
        if high > limit:
            return None
    return float(optimize.brentq(f, low, high, xtol=1e-10))


@functools.lru_cache(maxsize=4096)
def detectable_effect(paired: bool, n: int, alpha: float, power: float = POWER,
                      ratio: float = 1.0) -> float | None:
    """Standardised difference (delta / sd) found with ``power`` by a two-sided t-test at
    ``alpha``: n pairs (paired) or n runs against ``ratio * n`` (independent)."""
    if n < 2 or not 0 < alpha < 1:
        return None
    effect = _solve(paired, alpha, power, ratio, n=n)
    if effect is not None and abs(_power(paired, effect, n, alpha, ratio) - power) < 1e-6:
        return effect
    return _bracket(lambda e: _power(paired, e, n, alpha, ratio) - power, 1e-9, 10.0, 1e7)


def min_detectable_difference(paired: bool, n: int, sd: float | None, alpha: float,
                              power: float = POWER, ratio: float = 1.0) -> float | None:
    """The difference (in the metric's units) detected with ``power`` at ``alpha``."""
    if sd is None or not sd > 0:
        return None
    effect = detectable_effect(paired, n, alpha, power, ratio)
    return None if effect is None else effect * sd


@functools.lru_cache(maxsize=4096)
def seeds_needed(paired: bool, difference: float | None, sd: float | None, alpha: float,
                 power: float = POWER) -> int | None:
    """Seeds per cell (pairs when paired; per group, equal groups, when independent) that
    detect ``difference`` with ``power`` at ``alpha``; None when undefined."""
    if difference is None or sd is None or not sd > 0 or not difference > 0:
        return None
    effect = difference / sd
    n = _solve(paired, alpha, power, 1.0, effect=effect)
    if n is None or abs(_power(paired, effect, n, alpha, 1.0) - power) > 1e-4:
        n = _bracket(lambda m: _power(paired, effect, m, alpha, 1.0) - power, 2.0, 16.0, 1e9)
    return None if n is None else max(2, math.ceil(n - 1e-9))
