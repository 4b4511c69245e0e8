"""Adaptive seeds (``run --until-decided``): add seeds where the evidence is not yet enough.

After the first ``seeds``, each look adds ``seed_batch`` seeds to the reference and to
every cell still inconclusive, waits for them, and judges again, until every cell is
decided or ``max_seeds`` is reached. The decisions, and the error control over the
planned looks, are :mod:`gct_ablate.stats`'s (``decide_study``, ``next_seeds``); this
module runs the loop against the stores.

A look is judged only when nothing of the study is queued or running, and the judging and
the queueing of the next seeds happen under the study's lock: however many processes run
the loop (a job array of ``run --until-decided``), each look is judged once on complete
data and its seeds are queued once. Everything is derived from the stored trials, so a
stopped study continues the same schedule when the command is run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from gct_ablate.errors import UsageError
from gct_ablate.grid import enqueue_missing
from gct_ablate.locks import study_lock
from gct_ablate.spec import StudySpec
from gct_ablate.stats import LookResult, Schedule, decide_study, next_seeds
from gct_ablate.summary import load_results

POLL = 1.0  # seconds between checks while other processes still run a look's trials


def schedule_of(spec: StudySpec) -> Schedule:
    """The spec's look schedule (a one-line error for a spec that is not adaptive)."""
    if not spec.adaptive:
        raise UsageError("adaptive seeds need max_seeds and seed_batch (--until-decided)")
    return Schedule(spec.seeds, spec.seed_batch, spec.max_seeds)  # type: ignore[arg-type]


def check_same_schedule(stored: dict[str, Any], spec: StudySpec) -> None:
    """A study started adaptive keeps its schedule: the looks' error control depends on it."""
    old = Schedule.from_spec(stored)
    new = schedule_of(spec) if spec.adaptive else None
    if old is not None and new is not None and old != new:
        raise UsageError(
            f"study {spec.study_name!r} adds seeds with --seeds {old.seeds} --max-seeds "
            f"{old.max_seeds} --seed-batch {old.seed_batch}; resume it with the same (its "
            "error control is planned over those looks)")


def _busy(study: optuna.Study) -> bool:
    states = (TrialState.WAITING, TrialState.RUNNING)
    return bool(study.get_trials(deepcopy=False, states=states))


def next_look(study: optuna.Study, storage: Any, spec: StudySpec,
              margin: float | None = None) -> tuple[LookResult | None, int]:
    """Judge the current look and queue the next one's seeds, atomically across processes.

    Returns (the look's result, seeds queued now), or (None, 0) while trials of the study
    are still queued or running (the caller runs or waits for them, then asks again).
    """
    with study_lock(study):
        if _busy(study):
            return None, 0
        result = decide_study(load_results(storage, spec.study_name), schedule_of(spec),
                              margin=margin if margin is not None else spec.margin)
        wanted = [(cell, seed) for cell, seeds in next_seeds(result).items() for seed in seeds]
        queued, _, _ = enqueue_missing(study, wanted) if wanted else (0, 0, 0)
    return result, queued


def run_until_decided(study: optuna.Study, storage: Any, spec: StudySpec,
                      work: Callable[[], Any], *, margin: float | None = None,
                      on_look: Callable[[LookResult, int], None] | None = None) -> LookResult:
    """Alternate ``work()`` (run the queue to its end) and :func:`next_look` until the
    result is final; ``on_look(result, seeds queued)`` after each judged look."""
    while True:
        work()
        result, queued = next_look(study, storage, spec, margin)
        if result is None:  # another process's trials are still running
            time.sleep(POLL)
            continue
        if on_look is not None:
            on_look(result, queued)
        if result.final or (not queued and not _busy(study)):
            return result


def look_line(result: LookResult, queued: int) -> str:
    """One line for a judged look (rich markup): seeds, level, cells decided, queued next."""
    n_looks, undecided = result.schedule.n_looks, result.undecided
    decided = len(result.cells) - len(undecided)
    line = (f"[bold]look {result.look} of {n_looks}[/] "
            f"({result.schedule.seeds_at(result.look)} seeds, alpha {result.alpha_look:.3g} "
            f"spent at this look): {decided} cell(s) decided, {len(undecided)} inconclusive")
    if queued:
        line += f"; {queued} more trial(s) queued for the next look"
    return line
