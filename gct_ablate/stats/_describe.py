"""One group of runs: n, mean, sample std, t interval; the unweighted mean of cell means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as _st

from gct_ablate.stats._records import CONFIDENCE


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


def pooled_sd(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled sample std sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) over groups with n >= 2."""
    ss = df = 0.0
    for g in groups:
        if len(g) >= 2:
            mean = math.fsum(g) / len(g)
            ss += math.fsum((v - mean) ** 2 for v in g)
            df += len(g) - 1
    return math.sqrt(ss / df) if df else None


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
