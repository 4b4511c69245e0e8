"""Adaptive seeds: decide cells at planned looks and say which cells need more seeds.

The schedule: ``seeds`` per cell first, then ``seed_batch`` more per look to the reference
and to every undecided cell, up to ``max_seeds``; look k uses seeds 0 .. n_k - 1. Pure
functions of the stored values, so a stopped study replays to the same decisions and
continues the same schedule.

Error control (alpha spending over the looks, ``_spending``): only looks with >= 3 seeds
are tested looks (a first look with fewer decides nothing and spends nothing). Each tested
look converts every undecided cell's p-value to its stage-wise level (the family level at
which that look's O'Brien-Fleming-type boundary would be crossed); Holm over the full family
of non-reference cells then decides at alpha, with cells decided earlier counted at p = 1.
Each intersection of Holm's closure is a Bonferroni split of group-sequential tests, so the
family-wise rate of false better/worse holds over the looks; the same for false
'equivalent' (TOST p-values through the same boundaries). The tests are the fixed-sample
ones (pooled t of the block, or the cell's own t): the boundaries assume nested normal
statistics, which the simulations in the tests check for t-tests from 3 seeds on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gct_ablate.stats._compare import MIN_DECIDE, NO_TEST, Comparison
from gct_ablate.stats._decide import Decision, Values, compare_cells, judge
from gct_ablate.stats._records import DECIDED
from gct_ablate.stats._spending import nominal_level, stagewise_level


@dataclass(frozen=True)
class Schedule:
    """Seeds per cell at each look: ``seeds``, then ``seed_batch`` more, up to ``max_seeds``."""

    seeds: int
    seed_batch: int
    max_seeds: int

    def __post_init__(self) -> None:
        if self.seeds < 1 or self.seed_batch < 1:
            raise ValueError(f"seeds ({self.seeds}) and seed_batch ({self.seed_batch}) "
                             "must be >= 1")
        if self.max_seeds < self.seeds:
            raise ValueError(f"max_seeds ({self.max_seeds}) must be >= seeds ({self.seeds})")

    @property
    def looks(self) -> tuple[int, ...]:
        """Seeds per cell at look 1, 2, ... (the last is ``max_seeds``)."""
        out = [self.seeds]
        while out[-1] < self.max_seeds:
            out.append(min(out[-1] + self.seed_batch, self.max_seeds))
        return tuple(out)

    @property
    def n_looks(self) -> int:
        return len(self.looks)

    @property
    def tested_looks(self) -> tuple[int, ...]:
        """Seeds at the looks that test (>= 3 seeds); a first look with fewer only runs."""
        return tuple(n for n in self.looks if n >= MIN_DECIDE)

    def alpha_per_look(self, alpha: float, look: int | None = None) -> float:
        """The nominal level of ``look``'s raw tests (default the last look) when the study
        spends ``alpha``; 0 for a look that does not test."""
        n = self.seeds_at(look or self.n_looks)
        tested = self.tested_looks
        if n not in tested:
            return 0.0
        return nominal_level(tested, tested.index(n) + 1, alpha)

    def stagewise(self, look: int, p: np.ndarray) -> np.ndarray:
        """p-values of ``look`` as stage-wise family levels (``_spending``)."""
        tested = self.tested_looks
        return stagewise_level(tested, tested.index(self.seeds_at(look)) + 1, p)

    def seeds_at(self, look: int) -> int:
        if not 1 <= look <= self.n_looks:
            raise ValueError(f"look {look} outside 1..{self.n_looks}")
        return self.looks[look - 1]

    def look_for(self, n_seeds: int) -> int:
        """The last look whose seeds are all within the first ``n_seeds`` (at least 1)."""
        return max(1, sum(n <= n_seeds for n in self.looks))

    def to_dict(self) -> dict[str, int]:
        return {"seeds": self.seeds, "seed_batch": self.seed_batch,
                "max_seeds": self.max_seeds}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Schedule | None:
        """The schedule of a stored spec with ``seed_batch`` and ``max_seeds`` (else None)."""
        batch, most = spec.get("seed_batch"), spec.get("max_seeds")
        if not batch or not most:
            return None
        seeds = int(spec.get("seeds", 3))
        return cls(seeds, int(batch), max(int(most), seeds))


@dataclass(frozen=True)
class LookResult:
    """Every non-reference cell's decision after ``look`` (decided cells keep the look at
    which they were decided)."""

    look: int
    schedule: Schedule
    alpha: float  # study-wide
    alpha_look: float  # the nominal level of this look's raw tests (spent alpha)
    reference: str
    cells: dict[str, Decision]

    @property
    def undecided(self) -> list[str]:
        return [c for c, d in self.cells.items() if d.verdict not in DECIDED]

    @property
    def final(self) -> bool:
        """No seeds to add: every cell decided, or the last planned look reached."""
        return not self.undecided or self.look >= self.schedule.n_looks


def _at_look(values: Values, n_seeds: int) -> dict[str, dict[Any, float]]:
    return {c: {s: v for s, v in vals.items() if isinstance(s, int) and s < n_seeds}
            for c, vals in values.items()}


def _staged(comparisons: dict[str, Comparison], schedule: Schedule, look: int
            ) -> dict[str, Comparison]:
    """Comparisons with p-values replaced by their stage-wise levels; none at all (no
    test) at a look with fewer than 3 seeds."""
    if schedule.seeds_at(look) < MIN_DECIDE:
        return {c: Comparison(NO_TEST, cmp.n, cmp.n_ref, cmp.delta)
                for c, cmp in comparisons.items()}
    out = {}
    for c, cmp in comparisons.items():
        p = [np.nan if v is None else v for v in (cmp.p_value, cmp.p_equivalence)]
        level = schedule.stagewise(look, np.array(p))
        out[c] = replace(cmp, p_value=None if cmp.p_value is None else float(level[0]),
                         p_equivalence=None if cmp.p_equivalence is None
                         else float(level[1]))
    return out


def decide_looks(studies: Sequence[Values], reference: str, look: int, schedule: Schedule, *,
                 alpha: float, margin: float | None, maximize: bool,
                 cells: Sequence[str] | None = None,
                 previous: Sequence[Mapping[str, Decision] | None] | None = None,
                 power: bool = True, images: int | None = None) -> list[LookResult]:
    """:func:`decide_look` of several studies (each judged on its own)."""
    n_seeds, alpha_look = schedule.seeds_at(look), schedule.alpha_per_look(alpha, look)
    previous = previous or [None] * len(studies)
    out = []
    for values, before in zip(studies, previous, strict=True):
        at = _at_look(values, n_seeds)
        names = [c for c in (cells if cells is not None else values) if c != reference]
        done = {c: d for c in names if (d := (before or {}).get(c)) is not None and d.decided}
        open_ = [c for c in names if c not in done]
        found = _staged(compare_cells(at, reference, open_, margin, images), schedule, look)
        new = judge(found, at, alpha=alpha, margin=margin, maximize=maximize,
                    frozen=len(done), power=power, look=look, nominal=alpha_look or alpha)
        out.append(LookResult(look, schedule, alpha, alpha_look, reference,
                              {c: done.get(c) or new[c] for c in names}))
    return out


def decide_look(values: Values, reference: str, look: int, schedule: Schedule, *,
                alpha: float, margin: float | None, maximize: bool,
                cells: Sequence[str] | None = None,
                previous: Mapping[str, Decision] | None = None,
                power: bool = True, images: int | None = None) -> LookResult:
    """Decide the cells still undecided in ``previous`` on the first ``seeds_at(look)``
    seeds, with alpha spent over the looks (see the module docstring).

    ``values``: cell -> seed -> value (seeds past the look are ignored). ``cells``: the
    non-reference cells (default: every cell of ``values`` but the reference).
    ``power``: add the minimum detectable difference and the seeds needed (they never
    change a verdict; the error-rate simulation skips them).
    """
    return decide_looks([values], reference, look, schedule, alpha=alpha, margin=margin,
                        maximize=maximize, cells=cells, previous=[previous],
                        power=power, images=images)[0]


def replay_many(studies: Sequence[Values], reference: str, schedule: Schedule, *,
                alpha: float, margin: float | None, maximize: bool, look: int | None = None,
                cells: Sequence[str] | None = None, power: bool = True,
                images: int | None = None) -> list[LookResult]:
    """:func:`replay` of several studies (batched looks)."""
    last = schedule.n_looks if look is None else min(look, schedule.n_looks)
    results: list[LookResult | None] = [None] * len(studies)
    running = list(range(len(studies)))
    for k in range(1, last + 1):
        ahead = [i for i in running if look is not None or k <= _reached(studies[i],
                                                                          reference, schedule)]
        if not ahead:
            break
        found = decide_looks([studies[i] for i in ahead], reference, k, schedule,
                             alpha=alpha, margin=margin, maximize=maximize, cells=cells,
                             previous=[r.cells if (r := results[i]) else None for i in ahead],
                             power=power, images=images)
        for i, result in zip(ahead, found, strict=True):
            results[i] = result
        running = [i for i in ahead if results[i].undecided]  # type: ignore[union-attr]
    return results  # type: ignore[return-value]


def _reached(values: Values, reference: str, schedule: Schedule) -> int:
    """The last look the reference's seeds reach."""
    seeds = [s for s in values.get(reference, {}) if isinstance(s, int)]
    return schedule.look_for(max(seeds) + 1 if seeds else 0)


def replay(values: Values, reference: str, schedule: Schedule, *, alpha: float,
           margin: float | None, maximize: bool, look: int | None = None,
           cells: Sequence[str] | None = None, power: bool = True,
           images: int | None = None) -> LookResult:
    """Decisions after looks 1 .. ``look`` from the stored values, as the study took them.

    ``look`` defaults to the last look the reference's seeds reach. Stops early once every
    cell is decided (the result's ``look`` says where).
    """
    return replay_many([values], reference, schedule, alpha=alpha, margin=margin,
                       maximize=maximize, look=look, cells=cells, power=power,
                       images=images)[0]


def next_seeds(result: LookResult) -> dict[str, list[int]]:
    """Seeds to add for the next look: the reference and every undecided cell get the next
    batch ({} once the result is final)."""
    if result.final:
        return {}
    have, want = (result.schedule.seeds_at(result.look),
                  result.schedule.seeds_at(result.look + 1))
    batch = list(range(have, want))
    return {c: batch for c in [result.reference, *result.undecided]}


def seeds_to_decide(result: LookResult) -> dict[str, int | None]:
    """For each undecided cell, the seeds per cell that would detect the margin with 80 %
    power at the look's Holm level (None without a margin or a pooled sd)."""
    return {c: result.cells[c].seeds_needed for c in result.undecided}
