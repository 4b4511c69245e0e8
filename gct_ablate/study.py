"""The study API: run a grid end to end, join one as a worker, read a summary back.

A notebook drives a study the way ``gct-ablate run`` does::

    import gct_ablate as ga

    spec = ga.StudySpec(vary=("p",), levels={"p": ("1", "2")}, fixed={"epochs": "3"})
    summary = ga.run_study(spec, out="runs", workers=2)
    for cell in summary.cells:
        print(cell.cell, cell.mean, cell.verdict)

Every function here raises :class:`gct_ablate.errors.UsageError` (one line) on bad
input, before anything is stored or trained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.cost import CostEstimate, CostLimits, check_cost, estimate_cost
from gct_ablate.devices import cuda_count, worker_devices
from gct_ablate.errors import StudyNotFound, UsageError
from gct_ablate.grid import QUEUED, check_tracking_uri, find_study, prepare_study, spec_from_attrs
from gct_ablate.locks import driver_url, study_lock
from gct_ablate.relocate import study_uri
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import (
    HEARTBEAT_INTERVAL,
    journal_file,
    load_study,
    open_storage,
    storage_label,
)
from gct_ablate.summary import Summary, load_results, summarize
from gct_ablate.tracking import Tracker, check_tracking, resolve_tracking_uri
from gct_ablate.worker import WorkerOptions, make_pruner

WAIT_FOR_STUDY = 300.0  # seconds a worker waits for its study to be created


@dataclass(frozen=True)
class StudyPlan:
    """What a start found and queued, before any training (what ``run`` prints first)."""

    name: str
    cells: int
    seeds: int
    total: int  # cells x seeds
    done: int
    enqueued: int
    failed_left: int  # failed cell x seeds not re-queued (``retry_failed`` re-queues them)
    workers: int
    storage: str  # where the Optuna storage is (passwords masked)
    tracking_uri: str
    out: Path
    estimate: CostEstimate | None = None  # None when the cost check was off
    devices: tuple[str, ...] = ()  # the device of each local worker


def output_dir(out: str | Path) -> Path:
    """The output folder, created if missing; a one-line error if it cannot be written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot create output directory {out}: {err.strerror}") from None
    if not os.access(out, os.W_OK):
        raise UsageError(f"output directory {out} is not writable")
    return out


def default_workers() -> int:
    """Local worker processes when none are asked for: one per core, at most 4."""
    return min(os.cpu_count() or 1, 4)


def place(device: str, workers: int, gpus: str | Sequence[int] | None) -> list[str]:
    """The device of each local worker: round-robin over ``gpus`` (default: every visible
    GPU) for --device auto or cuda; see :func:`gct_ablate.devices.worker_devices`."""
    count = cuda_count() if gpus is not None or device in ("auto", "cuda") else 0
    return worker_devices(device, workers, gpus, count, os.environ)


def preflight_data(spec: StudySpec, tracking_uri: str | None = None) -> None:
    """Fail before any training when a dataset of the grid cannot be loaded, or a fine-tuning
    cell's init_from does not fit its backbone (a run id is looked up in ``tracking_uri``)."""
    from gct_ablate.data import load_dataset
    from gct_ablate.finetune import check_init

    seen = set()
    for cell in spec.cells():
        cfg = spec.config(cell)
        key = (cfg.dataset, tuple(sorted(cfg.data_options().items())))
        if key not in seen:
            seen.add(key)
            load_dataset(cfg.dataset, **cfg.data_options())
    check_init(spec, tracking_uri)


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
    on_plan: Callable[[StudyPlan], None] | None = None,
    on_look: Callable[[Any, int], None] | None = None,
    limits: CostLimits | None = CostLimits(),
    confirm: Callable[[CostEstimate], bool] | None = None,
    gpus: str | Sequence[int] | None = None,
    allow_many_workers: bool = False,
) -> Summary:
    """Create or resume the study, run every queued cell x seed, and summarise it.

    ``out`` holds the local stores (Optuna journal, MLflow SQLite, artifacts) unless
    ``storage`` (an Optuna RDB URL or a ``*.journal`` path) and ``tracking_uri`` say
    otherwise. ``workers`` local processes share the queue (default
    :func:`default_workers`). ``console``: a rich Console for the live progress display
    (None: no display). ``on_plan`` is called once the grid is queued, before training.
    Calling it again resumes: finished cells are skipped. The summary is logged to the
    study's MLflow parent run, which is finished once no trial is left.

    An adaptive spec (``max_seeds`` and ``seed_batch`` set) adds seeds look by look until
    every cell is decided (:mod:`gct_ablate.adaptive`); ``on_look(result, seeds queued)``
    is called after each look. A study started adaptive stays so when resumed.

    Before anything is queued the cost is estimated (:mod:`gct_ablate.cost`); above
    ``limits`` the study starts only if ``confirm(estimate)`` returns True, else a one-line
    :class:`gct_ablate.cost.TooCostly`. ``limits=None`` skips the check.

    With CUDA the workers are placed round-robin over ``gpus`` (indices among the visible
    GPUs, e.g. ``"0,2"``; default: all of them), several per GPU when there are more
    workers than GPUs; each trial records its device (Optuna user attribute and MLflow tag
    ``device``). Without CUDA, ``gpus`` is a one-line error.
    """
    from gct_ablate.runner import check_workers, run_workers

    make_pruner(pruner)
    n_workers = check_workers(workers or default_workers(), allow_many_workers)
    devices = place(spec.base.device, n_workers, gpus)
    preflight_data(spec)  # bad data: refused before any folder or store is made
    out = output_dir(out)
    uri = resolve_tracking_uri(out, tracking_uri)
    journal = journal_file(storage, out)
    fresh = journal is not None and not journal.exists()  # no journal made before the cost check
    opened = None if fresh else open_storage(storage, out, heartbeat_interval=heartbeat,
                                             grace_period=3 * heartbeat)
    existing = None if opened is None else find_study(spec, opened)  # other grid: refused
    if existing is not None:  # before touching any store: tracked elsewhere is refused
        check_tracking_uri(existing, uri)
        spec = _keep_schedule(existing, spec)
    estimate = None
    if limits is not None:  # before anything is queued or any MLflow store is made
        estimate = estimate_cost(spec, existing, workers=n_workers, limits=limits)
        check_cost(estimate, confirm)
    check_tracking(uri)  # before a new journal is made: a wrong URI leaves nothing behind
    if opened is None:
        opened = open_storage(storage, out, heartbeat_interval=heartbeat,
                              grace_period=3 * heartbeat)
    tracker = Tracker(uri, artifact_root=out / "mlartifacts")
    prepared = prepare_study(spec, opened, tracker, retry_failed=retry_failed)
    if on_plan is not None:
        on_plan(StudyPlan(
            name=spec.study_name, cells=len(spec.cells()), seeds=spec.seeds,
            total=len(spec.trials()), done=prepared.done, enqueued=prepared.enqueued,
            failed_left=prepared.failed_left, workers=n_workers,
            storage=storage_label(storage, out), tracking_uri=uri, out=out,
            estimate=estimate, devices=tuple(devices)))
    opts = WorkerOptions(study_name=spec.study_name, storage=storage, out_dir=str(out),
                         base=spec.base, tracking_uri=uri, pruner=pruner,
                         heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
    epochs = spec.config(()).epochs

    def work() -> None:
        failed = run_workers(opts, n_workers, epochs, console, devices)
        if failed and console is not None:
            console.print(f"[red]{len(failed)} worker process(es) stopped with an error "
                          f"(exit {', '.join(map(str, failed))}); their trials were "
                          "re-queued[/]")

    if spec.adaptive:
        from gct_ablate.adaptive import run_until_decided

        run_until_decided(prepared.study, opened, spec, work, on_look=on_look)
    else:
        work()
    return finish_study(opened, spec.study_name, tracker, out, margin=spec.margin)


def _keep_schedule(existing: Any, spec: StudySpec) -> StudySpec:
    """A resumed adaptive study keeps its stored look schedule (refused if changed)."""
    import dataclasses

    from gct_ablate.adaptive import check_same_schedule

    stored = existing.user_attrs.get("spec") or {}
    check_same_schedule(stored, spec)
    if spec.adaptive or not stored.get("max_seeds"):
        return spec
    return dataclasses.replace(spec, seeds=int(stored["seeds"]),
                               max_seeds=int(stored["max_seeds"]),
                               seed_batch=int(stored["seed_batch"]))


def finish_study(storage: Any, name: str, tracker: Tracker, out: Path,
                 margin: float | None = None) -> Summary:
    """Summarise the study, write its figures and its report (``OUT/NAME-report.html`` and
    ``.md``) to ``out`` and log them and the summary on the parent MLflow run; finish that
    run when no trial is waiting or running. ``margin``: points of the metric (default: the
    stored spec's, else the metric's default)."""
    from gct_ablate import summary as sm
    from gct_ablate.analysis import density, report
    from gct_ablate.analysis._figures import slug
    from gct_ablate.runner import progress

    study = load_study(storage, name)
    with study_lock(study):  # processes finishing together: the last one logs it all
        results = load_results(storage, name)
        summary = summarize(results, margin=margin)
        figures = [sm.plot_levels(summary, out / slug(f"{name}-levels.png"))]
        if density.applies(summary):
            figures.append(out / slug(f"{name}-density.png"))
            density.plot_density(summary).savefig(figures[-1], dpi=110)
        written = report.build_report(results, summary)
        paths = report.save_report(written, report.report_file(out, name))
        parent = study.user_attrs.get("mlflow_parent_run_id")
        if parent:
            tracker.log_summary(parent, sm.to_markdown(summary), sm.to_csv(summary), figures)
            report.log_report(tracker, parent, written, paths)
            counts = progress(study)["counts"]
            if counts["waiting"] == 0 and counts["running"] == 0:
                tracker.finish_parent(parent)
    return summary


def join_study(
    name: str,
    *,
    out: str | Path = DEFAULT_OUT,
    storage: str | None = None,
    tracking_uri: str | None = None,
    workers: int = 1,
    base: TrialConfig | None = None,
    heartbeat: int = HEARTBEAT_INTERVAL,
    wait: float = WAIT_FOR_STUDY,
    console: Any = None,
    gpus: str | Sequence[int] | None = None,
    allow_many_workers: bool = False,
) -> list[int]:
    """Work on a study until its queue is empty (what ``gct-ablate worker`` does).

    A study that no ``run`` has created yet is waited for, up to ``wait`` seconds, so the
    tasks of a job array may start in any order. ``base`` holds this machine's run options
    (device, threads, data folder). The tracking URI is the one stored with the study
    (another one is refused). ``gpus``: as for :func:`run_study`. Returns the exit codes of
    spawned workers that failed.
    """
    from gct_ablate.runner import check_workers, run_workers

    check_workers(workers, allow_many_workers)
    base = base or TrialConfig()
    devices = place(base.device, workers, gpus)
    out = output_dir(out)
    opened = open_storage(storage, out)
    found = wait_for_study(opened, name, wait, console)
    if tracking_uri is not None:
        tracking_uri = driver_url(tracking_uri)
        check_tracking_uri(found, tracking_uri)
    uri = tracking_uri or driver_url(study_uri(found.user_attrs["tracking_uri"], opened))
    check_tracking(uri)
    spec = spec_from_attrs(found.user_attrs, base)
    preflight_data(spec, uri)
    opts = WorkerOptions(study_name=name, storage=storage, out_dir=str(out), base=base,
                         tracking_uri=uri, heartbeat_interval=heartbeat,
                         grace_period=3 * heartbeat)
    return run_workers(opts, workers, spec.config(()).epochs, console, devices)


def wait_for_study(storage: Any, name: str, wait: float, console: Any = None) -> Any:
    """The study once a ``run`` has created it and queued its grid (polled up to ``wait`` s)."""
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            found = load_study(storage, name)
        except StudyNotFound as err:
            found, missing = None, err
        if found is not None and found.user_attrs.get(QUEUED):
            return found
        if found is not None and "fingerprint" not in found.user_attrs and found.trials:
            raise UsageError(f"study {name!r} was not made by gct-ablate")
        if time.monotonic() >= deadline:
            waited = f" (waited {wait:g} s; see --wait)" if wait else ""
            if found is None:
                raise StudyNotFound(f"{missing}{waited}") from None
            raise UsageError(f"study {name!r} has no queued grid yet{waited}; is its "
                             "`gct-ablate run` still starting?")
        if not said and console is not None:
            console.print(f"Waiting up to {wait:g} s for study {name!r} to be created and "
                          "queued by `gct-ablate run` ...")
            said = True
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


def load_summary(name: str | None = None, *, out: str | Path = DEFAULT_OUT,
                 storage: str | None = None, margin: float | None = None) -> Summary:
    """The summary of a stored study, from the storage alone (``name`` may be omitted when
    the storage holds one study). ``margin`` (points of the metric) overrides the stored one
    for this analysis only."""
    from gct_ablate.storage import open_named_study

    opened, name = open_named_study(out, storage, name)
    return summarize(load_results(opened, name), margin=margin)


def study_progress(name: str, *, out: str | Path = DEFAULT_OUT, storage: str | None = None
                   ) -> dict[str, Any]:
    """Counts per state (one per cell x seed), the running trials, the failed ones, and the
    workers that ran trials (:func:`workers_of`)."""
    from gct_ablate.runner import progress

    found = load_study(open_storage(storage, Path(out), create=False), name)
    info = progress(found)
    trials = found.get_trials(deepcopy=False)
    info["failed"] = [t for t in trials if t.state.name == "FAIL"]
    info["workers"] = workers_of(trials)
    return info


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process as its trials recorded it."""

    host: str
    pid: str
    device: str
    done: int  # trials it finished (complete or pruned)
    running: int | None  # the number of the trial it runs now


def workers_of(trials: Sequence[Any]) -> list[WorkerInfo]:
    """Every worker (host, pid) that took a trial, with its device: running ones first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for t in trials:
        if "pid" not in t.user_attrs:
            continue
        key = (str(t.user_attrs.get("host", "?")), str(t.user_attrs["pid"]))
        w = seen.setdefault(key, {"device": "?", "done": 0, "running": None})
        w["device"] = str(t.user_attrs.get("device", w["device"]))
        w["done"] += t.state.name in ("COMPLETE", "PRUNED")
        if t.state.name == "RUNNING":
            w["running"] = t.number
    workers = [WorkerInfo(host, pid, **w) for (host, pid), w in seen.items()]
    return sorted(workers, key=lambda w: (w.running is None, w.host, w.pid))
