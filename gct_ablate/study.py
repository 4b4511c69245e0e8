"""Optuna layer: one study per ablation, the grid enqueued once, workers that pull cells.

Every grid cell x seed is one enqueued trial. Workers pop WAITING trials atomically
(Optuna's own queue), so each cell x seed runs once however many workers share the
storage. A trial whose worker dies is failed and re-queued: by Optuna's heartbeat on
RDB storages, and by a process check on this host for the local journal file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from gct_ablate._util import UsageError, mask_url, raise_pending, stop_signals
from gct_ablate.spec import Cell, StudySpec, TrialConfig, cell_id, parse_cell_id
from gct_ablate.tracking import Tracker

JOURNAL_NAME = "optuna.journal"
HEARTBEAT_INTERVAL = 10  # seconds, RDB storages only
GRACE_PERIOD = 30  # a RUNNING trial without heartbeat for this long is failed and re-queued
POLL = 0.5  # seconds between queue polls while others still run

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Interrupted(BaseException):
    """Raised in a worker on SIGTERM, like KeyboardInterrupt on SIGINT."""


# ------------------------------------------------------------------------------ storage
def storage_label(storage: str | None, out_dir: Path) -> str:
    return mask_url(storage) if storage else str((out_dir / JOURNAL_NAME).resolve())


def open_storage(
    storage: str | None,
    out_dir: Path,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
) -> optuna.storages.BaseStorage:
    """The default journal file in ``out_dir``, a '*.journal' path, or an RDB URL.

    RDB storages get heartbeats: a trial whose worker dies is failed after
    ``grace_period`` seconds and re-queued. Unreachable storage: one-line UsageError.
    """
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is None or storage.endswith(".journal") or storage.startswith("journal:"):
        path = out_dir / JOURNAL_NAME if storage is None else Path(storage.removeprefix("journal:"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise UsageError(f"cannot use storage {path}: {err.strerror or err}") from None
    try:
        with warnings.catch_warnings():  # Optuna calls heartbeats experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                _driver_url(storage),
                engine_kwargs={"pool_pre_ping": True, **_connect_timeout(storage)},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=_requeue_stale,
            )
    except Exception as err:  # sqlalchemy/driver errors differ per backend
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot open storage {mask_url(storage)}: {reason}") from None


def _driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 if only it is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _connect_timeout(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 5}}
    return {}


def study_names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


def load_study(storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = ", ".join(study_names(storage)) or "none"
        raise UsageError(f"no study named {name!r} in this storage; existing: {names}") from None


# ------------------------------------------------------------------------------ grid
def _trial_key(trial: FrozenTrial) -> tuple[str, int] | None:
    if "cell" not in trial.user_attrs:
        return None
    return trial.user_attrs["cell"], int(trial.user_attrs["seed"])


def _distributions(spec: StudySpec) -> dict[str, CategoricalDistribution]:
    return {n: CategoricalDistribution(list(spec.levels[n])) for n in spec.vary}


def spec_from_attrs(attrs: dict[str, Any], base: TrialConfig | None = None) -> StudySpec:
    d = attrs["spec"]
    return StudySpec(
        vary=tuple(d["vary"]), levels={k: tuple(v) for k, v in d["levels"].items()},
        fixed=d["set"], seeds=d["seeds"], name=d["name"], question=d.get("question", ""),
        metric=d["metric"], base=base or TrialConfig(),
    )


@dataclass
class Prepared:
    study: optuna.Study
    spec: StudySpec
    enqueued: int
    done: int
    failed_left: int  # failed cells not re-queued (use --retry-failed)


def prepare_study(
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    tracker: Tracker,
    *,
    retry_failed: bool = False,
) -> Prepared:
    """Create or resume the study: refuse a different grid, enqueue what is missing."""
    name = spec.study_name
    direction = "maximize" if spec.maximize else "minimize"
    try:  # load first: create_study on a journal appends a record even when the study exists
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=direction, load_if_exists=True
        )
    attrs = study.user_attrs
    if "fingerprint" in attrs and attrs["fingerprint"] != spec.fingerprint():
        old = attrs["spec"]
        raise UsageError(
            f"study {name!r} exists with a different grid (vary={','.join(old['vary']) or '-'}, "
            f"set={old['set']}); pass --study NEW_NAME to start another"
        )
    if "fingerprint" not in attrs and study.trials:
        raise UsageError(f"study {name!r} exists and was not made by gct-ablate; choose --study")
    if "mlflow_parent_run_id" not in attrs:
        experiment_id = tracker.experiment(name)
        info = {**spec.to_dict(), "fp": spec.fingerprint()}
        parent = tracker.start_parent(experiment_id, name, info)
        study.set_user_attr("mlflow_experiment_id", experiment_id)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("tracking_uri", tracker.uri)
    study.set_user_attr("spec", spec.to_dict())  # seeds may have grown
    study.set_user_attr("fingerprint", spec.fingerprint())
    study.set_user_attr("reference_cell", cell_id(spec.reference_cell()))
    study.set_user_attr("direction_maximize", spec.maximize)

    reap_dead_trials(study)
    by_key: dict[tuple[str, int], list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        key = _trial_key(t)
        if key is not None:
            by_key.setdefault(key, []).append(t)
    enqueued = done = failed_left = 0
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
    for cell, seed in spec.trials():
        trials = by_key.get((cell_id(cell), seed), [])
        if any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials):
            done += 1
        elif any(t.state in live for t in trials):
            continue
        elif trials and not retry_failed:
            failed_left += 1
        else:
            study.enqueue_trial(dict(cell), user_attrs={"cell": cell_id(cell), "seed": seed})
            enqueued += 1
    return Prepared(study, spec, enqueued, done, failed_left)


# ------------------------------------------------------------------------------ liveness
def _process_token(pid: int) -> str | None:
    """'pid:start-time' of a live process (start time guards against pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f"{pid}:{f.read().rsplit(')', 1)[1].split()[19]}"
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return f"{pid}:?"


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc": _process_token(os.getpid()) or f"{os.getpid()}:?"}


def _is_dead_here(trial: FrozenTrial) -> bool:
    """Its worker ran on this host and its process is gone.

    The owner writes host, pid, proc one by one (see :func:`_owner`): without "proc" yet,
    only a pid with no live process at all counts as dead, never a live one still writing.
    """
    attrs = trial.user_attrs
    if attrs.get("host") != socket.gethostname() or "pid" not in attrs:
        return False
    token = _process_token(int(attrs["pid"]))
    if "proc" not in attrs:
        return token is None
    return token != attrs["proc"]


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str = "") -> None:
    """Put a copy of a failed trial's cell x seed back in the queue."""
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={"cell": trial.user_attrs["cell"], "seed": trial.user_attrs["seed"],
                    "retry_of": trial.number, "retry_reason": reason},
        system_attrs={"fixed_params": trial.params},
    ))


def _requeue_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's heartbeat callback: the trial is already FAIL; redo its cell x seed."""
    reason = "worker lost (no heartbeat)"
    _end_mlflow(study, trial, "KILLED", reason)
    if "cell" in trial.user_attrs:
        requeue(study, trial, reason)


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail and re-queue RUNNING trials whose worker died (heartbeat or, here, process gone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = f"worker died (pid {t.user_attrs.get('pid')})"
        if _is_dead_here(t) and _fail_and_requeue(study, t, reason):
            n += 1
    return n


def _fail_and_requeue(
    study: optuna.Study, trial: FrozenTrial, reason: str, end_run: bool = True
) -> bool:
    """Fail a trial that is still RUNNING and queue its cell x seed again (False: not running).

    ``end_run``: also mark its MLflow run KILLED (not when the tracking store is the problem:
    each call would wait out MLflow's HTTP retries).
    """
    storage = study._storage
    if trial.state != TrialState.RUNNING:
        return False
    try:
        storage.set_trial_user_attr(trial._trial_id, "status_reason", reason)
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    if end_run:
        _end_mlflow(study, trial, "KILLED", reason)
    requeue(study, trial, reason)
    return True


def _end_mlflow(study: optuna.Study, trial: FrozenTrial, status: str, reason: str) -> None:
    run_id, uri = trial.user_attrs.get("mlflow_run_id"), study.user_attrs.get("tracking_uri")
    if run_id and uri:
        with contextlib.suppress(Exception):  # tracking is best effort for a dead trial
            Tracker(uri).end_trial(run_id, status, reason)


def _pop_waiting(study: optuna.Study) -> int | None:
    storage = study._storage
    for t in storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                return t._trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def _heartbeat_enabled(study: optuna.Study) -> bool:
    storage = study._storage
    return bool(getattr(storage, "get_heartbeat_interval", lambda: None)())


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    if not _heartbeat_enabled(study):
        yield
        return
    storage, stop = study._storage, threading.Event()
    interval = storage.get_heartbeat_interval()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _should_wait(study: optuna.Study) -> bool:
    """Others still run trials that may come back to the queue if their worker dies."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if _heartbeat_enabled(study):
        return bool(running)
    here = socket.gethostname()
    return any(t.user_attrs.get("host", here) == here for t in running)


# ------------------------------------------------------------------------------ worker
@dataclass(frozen=True)
class WorkerOptions:
    """What one worker process needs; picklable for spawned processes."""

    study_name: str
    storage: str | None
    out_dir: str
    base: TrialConfig
    tracking_uri: str | None = None  # default: the one stored with the study
    pruner: str = "none"
    heartbeat_interval: int = HEARTBEAT_INTERVAL
    grace_period: int = GRACE_PERIOD
    max_trials: int | None = None  # stop after this many trials (tests, benchmarks)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    pruners = {
        "none": optuna.pruners.NopPruner,
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2),
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    if name not in pruners:
        raise UsageError(f"unknown pruner {name!r}; valid: {', '.join(pruners)}")
    return pruners[name]()


def interrupted_by(signum: int) -> Interrupted:
    return Interrupted(f"signal {signum}")


def run_worker(opts: WorkerOptions, on_event: Callable[[str, dict], None] | None = None) -> int:
    """Pull and run cells until none are left; returns the number of trials run here.

    Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`Interrupted`) fails the running trial,
    re-queues it and propagates.
    """
    with stop_signals(interrupted_by):
        return _run_worker(opts, on_event)


def _run_worker(opts: WorkerOptions, on_event: Callable[[str, dict], None] | None) -> int:
    storage = open_storage(opts.storage, Path(opts.out_dir),
                           heartbeat_interval=opts.heartbeat_interval,
                           grace_period=opts.grace_period)
    study = load_study(storage, opts.study_name)
    study.pruner = make_pruner(opts.pruner)
    spec = spec_from_attrs(study.user_attrs, opts.base)
    uri = opts.tracking_uri or study.user_attrs["tracking_uri"]
    tracker = Tracker(uri, artifact_root=Path(opts.out_dir) / "mlartifacts")
    ran = 0
    while opts.max_trials is None or ran < opts.max_trials:
        raise_pending()
        reap_dead_trials(study)
        trial_id = _pop_waiting(study)
        if trial_id is None:
            if _should_wait(study):
                time.sleep(POLL)
                continue
            break
        with _heartbeat(study, trial_id):  # from the pop on: a trial never beaten is never stale
            try:
                run_trial(study, trial_id, spec, tracker, on_event)
            except (KeyboardInterrupt, Interrupted, Exception) as err:  # outside training
                reason = (f"interrupted ({err or 'Ctrl-C'})" if not isinstance(err, Exception)
                          else f"worker error: {type(err).__name__}: {err}"[:1000])
                _fail_and_requeue(study, study._storage.get_trial(trial_id), reason,
                                  end_run=not _tracking_error(err))
                if _tracking_error(err):
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
                    raise UsageError(f"MLflow tracking at {mask_url(tracker.uri)} failed: "
                                     f"{first}; the trial was re-queued, run again to "
                                     "resume") from None
                raise
        ran += 1
    return ran


def _tracking_error(err: BaseException) -> bool:
    """An error of the MLflow tracking store (down, refusing writes), not of the trial."""
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException)


def run_trial(
    study: optuna.Study,
    trial_id: int,
    spec: StudySpec,
    tracker: Tracker,
    on_event: Callable[[str, dict], None] | None = None,
) -> None:
    """Run one popped trial to a terminal state (COMPLETE, PRUNED or FAIL)."""
    trial = optuna.Trial(study, trial_id)
    for key, value in _owner().items():
        trial.set_user_attr(key, value)
    cell: Cell = parse_cell_id(trial.user_attrs["cell"])
    seed = int(trial.user_attrs["seed"])
    for name, dist in _distributions(spec).items():
        trial.suggest_categorical(name, dist.choices)
    cfg = spec.config(cell, seed)
    parent = study.user_attrs["mlflow_parent_run_id"]
    run_id = tracker.start_trial(
        study.user_attrs["mlflow_experiment_id"], parent, cell=cell_id(cell), seed=seed,
        trial_number=trial.number, params={**cfg.factor_levels(), "seed": seed},
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    if on_event:
        on_event("start", {"number": trial.number, "cell": cell_id(cell), "seed": seed})

    logged: dict[str, Any] = {}  # what the last report logged, and at which step

    def report(epoch: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics(run_id, metrics, step=epoch)
        logged.clear()
        logged.update(metrics, _step=epoch)
        trial.report(metrics[spec.metric], epoch)
        if on_event:
            on_event("epoch", {"number": trial.number, "epoch": epoch, **metrics})
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def on_end(model: Any, data: Any, device: Any) -> None:
        log_trial_artifacts(tracker, run_id, cfg, model, data, device)

    from gct_ablate.train import train_eval

    try:
        metrics = train_eval(cfg, report, on_end=on_end)
    except optuna.TrialPruned as err:
        trial.set_user_attr("status_reason", str(err))
        tracker.end_trial(run_id, "FINISHED", str(err))
        study.tell(trial, state=TrialState.PRUNED)
        return
    except (KeyboardInterrupt, Interrupted) as err:
        reason = f"interrupted ({err or 'Ctrl-C'})"
        _fail(study, trial, tracker, run_id, reason, "KILLED")
        requeue(study, study._storage.get_trial(trial_id), reason)
        raise
    except Exception as err:  # a broken trial must not stop the study
        if _tracking_error(err):
            raise  # not the trial's fault: run_worker re-queues it and stops
        _fail(study, trial, tracker, run_id, f"{type(err).__name__}: {err}", "FAILED")
        return
    final = {k: v for k, v in metrics.items() if k != "status"}
    step = metrics.get("epochs_done", 0)
    seen = logged if logged.get("_step") == step else {}
    tracker.log_metrics(run_id, {k: v for k, v in final.items() if seen.get(k) != v}, step=step)
    trial.set_user_attr("metrics", final)
    if metrics["status"] != "ok":
        reason = f"{metrics['status']}: loss became NaN/inf after epoch {metrics['epochs_done']}"
        _fail(study, trial, tracker, run_id, reason, "FAILED")
        return
    tracker.end_trial(run_id, "FINISHED")
    study.tell(trial, metrics[spec.metric])


def _fail(study, trial, tracker, run_id, reason: str, mlflow_status: str) -> None:
    trial.set_user_attr("status_reason", reason)
    with contextlib.suppress(Exception):
        tracker.end_trial(run_id, mlflow_status, reason)
    study.tell(trial, state=TrialState.FAIL)


def log_trial_artifacts(
    tracker: Tracker, run_id: str, cfg: TrialConfig, model: Any, data: Any, device: Any
) -> None:
    """config.json, gate statistics (JSON + PNG) and, for small models, the weights."""
    from gct_ablate.models import count_parameters

    tracker.log_json(run_id, dataclasses.asdict(cfg), "config.json")
    if cfg.attention == "gct":
        from gct_ablate.gates import gate_stats, plot_gates

        stats = gate_stats(model, data, device)
        tracker.log_json(run_id, stats, "gates/gates.json")
        if stats:
            figure = plot_gates([stats], title=f"{cfg.model} {cfg.placement}")
            tracker.log_figure(run_id, figure, "gates/gates.png")
    save = cfg.save_model if cfg.save_model is not None else count_parameters(model)[0] < 5_000_000
    if save:
        tracker.log_torch(run_id, {k: v.cpu() for k, v in model.state_dict().items()},
                          "model/state_dict.pt")
