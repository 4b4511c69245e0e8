"""The study API around the three steps of :mod:`gct_ablate.steps` (plan, execute,
finish): join a study as a worker, finish it, read its summary and progress back.

Every function here raises :class:`gct_ablate.errors.UsageError` (one line) on bad
input, before anything is stored or trained.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gct_ablate._util import DEFAULT_OUT
from gct_ablate.devices import cuda_count, worker_devices
from gct_ablate.errors import StudyNotFound, UsageError
from gct_ablate.grid import check_tracking_uri, spec_from_attrs
from gct_ablate.locks import driver_url, study_lock
from gct_ablate.relocate import study_uri
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import HEARTBEAT_INTERVAL, open_storage
from gct_ablate.store.open import open_study, verify
from gct_ablate.store.records import StoredTrial, stored_study, stored_trials
from gct_ablate.summary import Summary, load_results, summarize
from gct_ablate.tracking import Tracker, check_tracking
from gct_ablate.worker import WorkerOptions

WAIT_FOR_STUDY = 300.0  # seconds a worker waits for its study to be created


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


def keep_schedule(existing: Any, spec: StudySpec) -> StudySpec:
    """A resumed adaptive study keeps its stored look schedule (refused if changed)."""
    import dataclasses

    from gct_ablate.adaptive import check_same_schedule

    stored = stored_study(existing).spec or {}
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
    from gct_ablate.analysis import report
    from gct_ablate.analysis._figures import slug
    from gct_ablate.runner import progress

    study = open_study(storage, name)
    with study_lock(study):  # processes finishing together: the last one logs it all
        results = load_results(storage, name)
        summary = summarize(results, margin=margin)
        written = report.build_report(results, summary)  # every figure, drawn once
        figures = []
        for kind in ("levels", "density"):
            if (drawn := written.figure(kind)) is not None:
                figures.append(out / slug(f"{name}-{kind}.png"))
                figures[-1].write_bytes(drawn.png)
        if written.figure("levels") is None:  # no factor: the report has no levels panel
            figures.insert(0, sm.plot_levels(summary, out / slug(f"{name}-levels.png")))
        paths = report.save_report(written, report.report_file(out, name))
        parent = stored_study(study).parent_run_id
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
    stored = stored_study(found)
    uri = tracking_uri or driver_url(study_uri(stored.tracking_uri, opened))
    check_tracking(uri)
    spec = spec_from_attrs(stored.attrs, base)
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
            found = open_study(storage, name)
        except StudyNotFound as err:
            found, missing = None, err
        if found is not None and verify(found).queued:
            return found
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

    found = open_study(open_storage(storage, Path(out), create=False), name)
    info = progress(found)
    trials = stored_trials(found)
    info["failed"] = [t for t in trials if t.state == "FAIL"]
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


def workers_of(trials: Sequence[StoredTrial]) -> list[WorkerInfo]:
    """Every worker (host, pid) that took a trial, with its device: running ones first."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for t in trials:
        if t.pid is None:
            continue
        key = (t.host or "?", t.pid)
        w = seen.setdefault(key, {"device": "?", "done": 0, "running": None})
        w["device"] = t.device or w["device"]
        w["done"] += t.state in ("COMPLETE", "PRUNED")
        if t.state == "RUNNING":
            w["running"] = t.number
    workers = [WorkerInfo(host, pid, **w) for (host, pid), w in seen.items()]
    return sorted(workers, key=lambda w: (w.running is None, w.host, w.pid))
