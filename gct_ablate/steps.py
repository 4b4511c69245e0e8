"""A study in three steps, which ``gct-ablate run`` and a notebook call alike::

    import gct_ablate as ga

    plan = ga.plan(spec, out="runs", workers=2)  # stores, cost, what will be queued
    ga.execute(plan)                             # queue it, train it (the workers)
    summary = ga.finish(plan)                    # summary, figures, report; logged in MLflow

``ga.run_study(spec, ...)`` is the three in a row.

:func:`plan` stores and trains nothing; between it and :func:`execute` the caller looks
at the plan (its cost above the limits needs ``approve_cost=True``). Every step raises
:class:`gct_ablate.errors.UsageError` (one line) on bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.cost import CostEstimate, CostLimits, TooCostly, estimate_cost
from gct_ablate.grid import check_tracking_uri, missing, prepare_study
from gct_ablate.spec import StudySpec, cell_id
from gct_ablate.storage import HEARTBEAT_INTERVAL, journal_file, open_storage, storage_label
from gct_ablate.store.open import find_study
from gct_ablate.store.recipe import with_recipe
from gct_ablate.store.records import stored_study
from gct_ablate.study import (
    default_workers,
    finish_study,
    keep_schedule,
    output_dir,
    place,
    preflight_data,
)
from gct_ablate.summary import Summary
from gct_ablate.tracking import Tracker, check_tracking, resolve_tracking_uri
from gct_ablate.worker import WorkerOptions, make_pruner


@dataclass(frozen=True)
class StudyPlan:
    """What a start will do, before anything is stored or trained (what ``run`` prints)."""

    name: str
    cells: int
    seeds: int
    total: int  # cells x seeds
    done: int
    enqueued: int  # cell x seeds that execute will queue
    failed_left: int  # failed cell x seeds not re-queued (``retry_failed`` re-queues them)
    workers: int
    storage: str  # where the Optuna storage is (passwords masked)
    tracking_uri: str
    out: Path
    estimate: CostEstimate | None = None  # None when the cost check was off
    devices: tuple[str, ...] = ()  # the device of each local worker
    spec: StudySpec = field(default_factory=StudySpec, repr=False)  # its stored recipe
    storage_url: str | None = None  # as given (None: the journal in ``out``)
    pruner: str = "none"
    retry_failed: bool = False
    heartbeat: int = HEARTBEAT_INTERVAL
    handle: Any = field(default=None, repr=False, compare=False)  # None: no journal yet

    @property
    def needs_approval(self) -> bool:
        """Above the cost limits: :func:`execute` wants ``approve_cost=True``."""
        return self.estimate is not None and self.estimate.over


def plan(
    spec: StudySpec,
    *,
    out: str | Path = DEFAULT_OUT,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int | None = None,
    pruner: str = "none",
    retry_failed: bool = False,
    heartbeat: int = HEARTBEAT_INTERVAL,
    limits: CostLimits | None = CostLimits(),
    gpus: str | Sequence[int] | None = None,
    allow_many_workers: bool = False,
) -> StudyPlan:
    """Check the spec, its data and its stores, and say what :func:`execute` will do.

    ``out`` holds the local stores (Optuna journal, MLflow SQLite, artifacts) unless
    ``storage`` (an Optuna RDB URL or a ``*.journal`` path) and ``tracking_uri`` say
    otherwise. ``workers`` local processes share the queue (default
    :func:`gct_ablate.study.default_workers`), placed over ``gpus`` with CUDA. A stored
    study of that name is resumed: its grid must match, and it keeps its recipe and
    schedule. ``limits``: the cost estimate's (None: no estimate). More workers than 4 per
    core need ``allow_many_workers``. A new journal is made only by :func:`execute`.
    """
    from gct_ablate.runner import check_workers

    make_pruner(pruner)
    n_workers = check_workers(workers or default_workers(), allow_many_workers)
    devices = place(spec.base.device, n_workers, gpus)
    preflight_data(spec)  # bad data: refused before any folder or store is made
    out = output_dir(out)
    uri = resolve_tracking_uri(out, tracking_uri)
    journal = journal_file(storage, out)
    fresh = journal is not None and not journal.exists()  # no journal made by a plan
    opened = None if fresh else open_storage(storage, out, heartbeat_interval=heartbeat,
                                             grace_period=3 * heartbeat)
    existing = None if opened is None else find_study(opened, spec.study_name, spec)
    # another grid: refused above
    if existing is not None:  # before touching any store: tracked elsewhere is refused
        check_tracking_uri(existing, uri)
        spec = with_recipe(keep_schedule(existing, spec), stored_study(existing).attrs)
    estimate = None
    if limits is not None:
        estimate = estimate_cost(spec, existing, workers=n_workers, limits=limits)
    queue, done, failed_left = missing(existing, [(cell_id(c), s) for c, s in spec.trials()],
                                       retry_failed=retry_failed)
    return StudyPlan(
        name=spec.study_name, cells=len(spec.cells()), seeds=spec.seeds,
        total=len(spec.trials()), done=done, enqueued=len(queue), failed_left=failed_left,
        workers=n_workers, storage=storage_label(storage, out), tracking_uri=uri, out=out,
        estimate=estimate, devices=tuple(devices), spec=spec, storage_url=storage,
        pruner=pruner, retry_failed=retry_failed,
        heartbeat=heartbeat, handle=opened)


def execute(plan: StudyPlan, *, console: Any = None, approve_cost: bool = False) -> None:
    """Create or resume the study, queue what is missing and run every queued cell x seed.

    ``console``: a rich Console for the live progress (None: no display). A plan above its
    cost limits runs only with ``approve_cost``, else a one-line :class:`TooCostly` and
    nothing queued. An adaptive spec adds seeds look by look until every cell is decided
    (:mod:`gct_ablate.adaptive`), a line per look on ``console``.
    """
    from gct_ablate.runner import run_workers

    if plan.needs_approval and not approve_cost:
        e = plan.estimate
        raise TooCostly(f"{e.line()}; not started, nothing was queued ({e.ofat_line()})")
    check_tracking(plan.tracking_uri)  # before a new journal: a wrong URI leaves nothing behind
    tracker = Tracker(plan.tracking_uri, artifact_root=plan.out / "mlartifacts")
    prepared = prepare_study(plan.spec, _storage(plan), tracker, retry_failed=plan.retry_failed)
    opts = WorkerOptions(study_name=plan.name, storage=plan.storage_url, out_dir=str(plan.out),
                         base=plan.spec.base, tracking_uri=plan.tracking_uri,
                         pruner=plan.pruner, heartbeat_interval=plan.heartbeat,
                         grace_period=3 * plan.heartbeat)
    epochs = plan.spec.config(()).epochs

    def work() -> None:
        failed = run_workers(opts, plan.workers, epochs, console, plan.devices)
        if failed and console is not None:
            console.print(f"[red]{len(failed)} worker process(es) stopped with an error "
                          f"(exit {', '.join(map(str, failed))}); their trials were "
                          "re-queued[/]")

    if not plan.spec.adaptive:
        work()
        return
    from gct_ablate.adaptive import look_line, run_until_decided

    def said(result: Any, queued: int) -> None:
        console.print(look_line(result, queued), highlight=False)

    run_until_decided(prepared.study, _storage(plan), plan.spec, work,
                      on_look=said if console is not None else None)


def finish(plan: StudyPlan) -> Summary:
    """The study's summary; its figures and report written to ``plan.out`` and logged on
    its MLflow parent run, which is finished once no trial is left
    (:func:`gct_ablate.study.finish_study`)."""
    tracker = Tracker(plan.tracking_uri, artifact_root=plan.out / "mlartifacts")
    return finish_study(_storage(plan), plan.name, tracker, plan.out, margin=plan.spec.margin)


def _storage(plan: StudyPlan) -> Any:
    """The plan's open storage; a new journal is made here (the handle is kept per process)."""
    if plan.handle is not None:
        return plan.handle
    return open_storage(plan.storage_url, plan.out, heartbeat_interval=plan.heartbeat,
                        grace_period=3 * plan.heartbeat)


def run_study(
    spec: StudySpec,
    *,
    out: str | Path = DEFAULT_OUT,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int | None = None,
    pruner: str = "none",
    retry_failed: bool = False,
    heartbeat: int = HEARTBEAT_INTERVAL,
    console: Any = None,
    limits: CostLimits | None = CostLimits(),
    approve_cost: bool = False,
    gpus: str | Sequence[int] | None = None,
    allow_many_workers: bool = False,
) -> Summary:
    """Create or resume the study, run every queued cell x seed, and summarise it: the
    three steps of :mod:`gct_ablate.steps` in a row (``plan``, ``execute``, ``finish``; see
    them for the arguments). Calling it again resumes: finished cells are skipped. Above
    the cost ``limits`` it runs only with ``approve_cost``, else a one-line
    :class:`gct_ablate.cost.TooCostly` and nothing queued.
    """
    planned = plan(spec, out=out, storage=storage, tracking_uri=tracking_uri, workers=workers,
                   pruner=pruner, retry_failed=retry_failed, heartbeat=heartbeat,
                   limits=limits, gpus=gpus, allow_many_workers=allow_many_workers)
    execute(planned, console=console, approve_cost=approve_cost)
    return finish(planned)
