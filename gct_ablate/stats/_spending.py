"""Alpha spending over planned looks (Lan-DeMets, O'Brien-Fleming type).

Look k of K uses the first n_k seeds; its statistic is nested in the later ones, with
correlation sqrt(n_j / n_k) between looks j < k (a Brownian motion in the information
t_k = n_k / n_K). The spending function alpha*(t) = 2 - 2 Phi(z_{1 - alpha/2} / sqrt(t))
gives each look the two-sided boundary c_k with

    P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = alpha*(t_k) - alpha*(t_{k-1}),

found by propagating the motion's density on a grid (the Armitage-McPherson-Rowe
recursion). The nominal level of
look k is 2 (1 - Phi(c_k)). :func:`stagewise_level` inverts it: the family level at which
a look's p-value would just cross, what Holm then adjusts across the cells (each Holm step
is a Bonferroni split of group-sequential tests, so the family-wise rate holds over looks).
Unlike Bonferroni over looks, the last look keeps nearly all of alpha.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import stats

_GRID = np.linspace(-10.0, 10.0, 801)  # the motion's value, in units of sqrt(t_K)
_LEVELS = np.geomspace(1e-7, 1.0, 71)  # family levels tabulated per schedule


def obf_spent(alpha: float, t: float) -> float:
    """Alpha spent by information t (O'Brien-Fleming-type Lan-DeMets function)."""
    if t <= 0:
        return 0.0
    return float(min(alpha, 2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 2) / math.sqrt(t))))


@functools.lru_cache(maxsize=16)
def _kernels(times: tuple[float, ...]) -> list[np.ndarray | None]:
    """The transition density of the motion from look k-1 to look k on the grid."""
    x = _GRID
    out: list[np.ndarray | None] = [None]
    for before, t in zip(times, times[1:], strict=False):
        step = math.sqrt(t - before)
        out.append(stats.norm.pdf((x[:, None] - x[None, :]) / step) / step * (x[1] - x[0]))
    return out


def _boundaries(alpha: float, times: tuple[float, ...]) -> list[float]:
    """Two-sided z boundaries c_k of each look (inf where nothing is spent)."""
    x = _GRID
    dx = x[1] - x[0]
    kernels = _kernels(times)
    density = stats.norm.pdf(x / math.sqrt(times[0])) / math.sqrt(times[0])  # of S_1
    spent, out = 0.0, []
    for k, t in enumerate(times):
        target = obf_spent(alpha, t) - spent
        if k:
            density = kernels[k] @ density

        def cross(c: float, f: np.ndarray = density, t: float = t) -> float:
            return float(np.sum(f[np.abs(x) >= c * math.sqrt(t)]) * dx)

        if target <= 1e-15:
            c = math.inf
        else:
            c = _solve_edge(density, x, dx, t, target)
        out.append(c)
        spent += cross(c) if math.isfinite(c) else 0.0
        density = np.where(np.abs(x) < c * math.sqrt(t), density, 0.0)
    return out


def _solve_edge(f: np.ndarray, x: np.ndarray, dx: float, t: float, target: float) -> float:
    """The z boundary whose two tails of f (a density of S on the grid) hold ``target``;
    linear interpolation of the tail mass between grid points."""
    r = np.abs(x) / math.sqrt(t)
    order = np.argsort(-r, kind="stable")
    tail = np.cumsum(f[order]) * dx
    i = int(np.searchsorted(tail, target))
    if i >= r.size:
        return 0.0
    if i == 0:
        return float(r[order[0]])
    low, high = tail[i - 1], tail[i]
    w = (target - low) / (high - low) if high > low else 0.0
    return float(r[order[i - 1]] + w * (r[order[i]] - r[order[i - 1]]))


@functools.lru_cache(maxsize=64)
def nominal_table(looks: tuple[int, ...]) -> np.ndarray:
    """Nominal two-sided level of each look (columns) at each tabulated family level."""
    times = tuple(n / looks[-1] for n in looks)
    table = np.empty((_LEVELS.size, len(looks)))
    for i, a in enumerate(_LEVELS):
        table[i] = [2 * stats.norm.sf(c) for c in _boundaries(float(a), times)]
    return np.maximum.accumulate(table, axis=0)  # monotone in the family level


def nominal_level(looks: tuple[int, ...], look: int, alpha: float) -> float:
    """The nominal level of ``look`` (1-based) when the family level is ``alpha``."""
    if len(looks) == 1:
        return alpha
    column = nominal_table(looks)[:, look - 1]
    return float(np.exp(np.interp(math.log(alpha), np.log(_LEVELS),
                                  np.log(np.maximum(column, 1e-300)))))


def stagewise_level(looks: tuple[int, ...], look: int, p: np.ndarray) -> np.ndarray:
    """The smallest family level at which p-values p of ``look`` cross its boundary
    (1 where even alpha = 1 does not; equal to p for a single look)."""
    p = np.asarray(p, dtype=float)
    if len(looks) == 1:
        return p
    column = nominal_table(looks)[:, look - 1]
    live = column > 0
    logs = np.log(np.clip(p, 1e-300, 1.0))
    level = np.exp(np.interp(logs, np.log(column[live]), np.log(_LEVELS[live]),
                             left=math.log(_LEVELS[0]), right=0.0))
    return np.where(np.isnan(p), np.nan, np.minimum(level, 1.0))
