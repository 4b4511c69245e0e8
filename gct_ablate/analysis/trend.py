"""The paper's interpretability claim, tested: gamma < 0 in shallow layers, > 0 in deep ones.

Yang et al. report that in a trained ResNet-50 the mean gamma of GCT modules is negative in
shallow layers (channels cooperate) and positive in deep ones (they compete). For one cell
of a study, :func:`depth_trend` tests it over the cell's seeds:

- per seed, the Spearman correlation rho of the per-module mean gamma with depth (module
  order), ``scipy.stats.spearmanr``;
- per seed, the mean gamma of the first and of the last third of the modules (``M // 3``
  modules each, each module weighted equally);
- each of the three: mean over seeds and a 95 % t interval over the per-seed values (the
  seeds are the independent replicates; modules within a seed are not).

Verdict: ``reproduced`` when rho's interval lies above 0, the first third's below 0 and
the last third's above 0 (the whole claim); ``opposite`` when all three lie on the other
side; ``not detected`` otherwise (``reason`` says which part is missing), and always with
fewer than 2 seeds or 3 modules.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gct_ablate.stats import CONFIDENCE, Describe, describe

REPRODUCED, OPPOSITE, NOT_DETECTED = "reproduced", "opposite", "not detected"
METHOD = ("Spearman rho of per-module mean gamma vs depth and mean gamma of the first/last "
          "third, per seed; mean and 95% t interval over seeds")


@dataclass(frozen=True)
class DepthTrend:
    """The depth trend of gamma in one cell (see the module doc)."""

    n_seeds: int
    n_modules: int
    rho: Describe  # per-seed Spearman rho (interval clipped to [-1, 1])
    shallow: Describe  # per-seed mean gamma of the first third of the modules
    deep: Describe  # ... of the last third
    rhos: tuple[float, ...]  # one per seed (seeds whose gamma is constant over depth: left out)
    verdict: str
    reason: str
    method: str = METHOD


def _spearman(gammas: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if max(gammas) == min(gammas):
        return math.nan  # no ranking to correlate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(range(len(gammas)), gammas).statistic)


def _clipped(d: Describe) -> Describe:
    if d.ci_low is None:
        return d
    return dataclasses.replace(d, ci_low=max(-1.0, d.ci_low), ci_high=min(1.0, d.ci_high))


def _side(d: Describe) -> int:
    """+1 / -1 when the interval lies above / below 0, else 0 (or no interval)."""
    if d.ci_low is None:
        return 0
    return 1 if d.ci_low > 0 else -1 if d.ci_high < 0 else 0


def depth_trend(stats_per_seed: Sequence[Sequence[dict[str, Any]]],
                confidence: float = CONFIDENCE) -> DepthTrend:
    """Test the claim on one cell: one :func:`~gct_ablate.analysis.gates.gate_stats` list per
    seed (rows with ``index`` and ``gamma_mean``)."""
    per_seed = [[float(r["gamma_mean"]) for r in sorted(rows, key=lambda r: int(r["index"]))]
                for rows in stats_per_seed if rows]
    counts = {len(g) for g in per_seed}
    if len(counts) > 1:
        raise ValueError(f"seeds have different numbers of GCT modules: {sorted(counts)}")
    m = counts.pop() if counts else 0
    k = m // 3
    rhos = tuple(r for r in (_spearman(g) for g in per_seed) if not math.isnan(r)) if m >= 3 \
        else ()
    rho = _clipped(describe(rhos, confidence))
    shallow = describe([math.fsum(g[:k]) / k for g in per_seed] if k else [], confidence)
    deep = describe([math.fsum(g[-k:]) / k for g in per_seed] if k else [], confidence)
    verdict, reason = _verdict(len(per_seed), m, rho, shallow, deep)
    return DepthTrend(len(per_seed), m, rho, shallow, deep, rhos, verdict, reason)


def _verdict(n: int, m: int, rho: Describe, shallow: Describe, deep: Describe
             ) -> tuple[str, str]:
    if m < 3:
        return NOT_DETECTED, f"{m} GCT module(s): too few for a trend with depth"
    if n < 2:
        return NOT_DETECTED, "1 seed: no confidence interval over seeds"
    if rho.n < 2:
        return NOT_DETECTED, "gamma is constant over depth in most seeds"
    trend, first, last = _side(rho), _side(shallow), _side(deep)
    if (trend, first, last) == (1, -1, 1):
        return REPRODUCED, "gamma rises with depth, < 0 in the first third, > 0 in the last"
    if (trend, first, last) == (-1, 1, -1):
        return OPPOSITE, "gamma falls with depth, > 0 in the first third, < 0 in the last"
    if trend == 0:
        return NOT_DETECTED, "no monotone trend with depth (rho's interval includes 0)"
    signs = {1: "> 0", -1: "< 0", 0: "not different from 0"}
    way = "rises" if trend > 0 else "falls (the opposite order)"
    return NOT_DETECTED, (f"gamma {way} with depth, but the first third is {signs[first]} "
                          f"and the last {signs[last]}")


def _ci(d: Describe, fmt: str) -> str:
    if d.mean is None:
        return "n/a"
    text = format(d.mean, fmt)
    if d.ci_low is not None:
        text += f" [{format(d.ci_low, fmt)}, {format(d.ci_high, fmt)}]"
    return text


def trend_text(trend: DepthTrend, short: bool = False) -> str:
    """One line (``short``: for a figure) saying the verdict and its numbers."""
    seeds = (f"{trend.n_seeds} seeds, 95% t intervals" if trend.n_seeds > 1
             else f"{trend.n_seeds} seed: no intervals")
    rho = f"Spearman ρ(γ, depth) {_ci(trend.rho, '+.2f')}"
    thirds = (f"γ first third {_ci(trend.shallow, '+.3f')}, last third "
              f"{_ci(trend.deep, '+.3f')}")
    if short:
        return f"paper's claim (γ<0 shallow, γ>0 deep): {trend.verdict} ({seeds})\n{rho}\n{thirds}"
    return (f"depth trend (paper: γ < 0 shallow, > 0 deep): {trend.verdict.upper()}: "
            f"{trend.reason}. {rho}; {thirds} ({seeds})")
