"""A worker: pull WAITING trials from the study's queue and run each to a terminal state.

Workers pop trials atomically (Optuna's own queue), so each cell x seed runs once however
many workers share the storage. Ctrl-C or SIGTERM fails and re-queues the running trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from gct_ablate._util import mask_url, raise_pending, stop_signals
from gct_ablate.errors import UsageError, disk_full
from gct_ablate.grid import distributions, spec_from_attrs
from gct_ablate.recovery import fail_and_requeue, owner, reap_dead_trials, requeue
from gct_ablate.relocate import study_uri
from gct_ablate.resume import TrainingState, state_dir, state_path
from gct_ablate.spec import Cell, StudySpec, TrialConfig, cell_id, parse_cell_id
from gct_ablate.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL, open_storage
from gct_ablate.store import _optuna, keys
from gct_ablate.store.open import open_study
from gct_ablate.store.records import stored_study, stored_trial, stored_trials
from gct_ablate.store.write import label
from gct_ablate.tracking import Tracker

POLL = 0.5  # seconds between queue polls while others still run


class Interrupted(BaseException):
    """Raised in a worker on SIGTERM, like KeyboardInterrupt on SIGINT."""


@contextlib.contextmanager
def _heartbeat(study: optuna.Study, trial_id: int) -> Iterator[None]:
    interval = _optuna.heartbeat_interval(study)
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):
                _optuna.record_heartbeat(study, trial_id)
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
    running = stored_trials(study, (TrialState.RUNNING,))
    if _optuna.heartbeat_interval(study):
        return bool(running)
    here = socket.gethostname()
    return any((t.host or here) == here for t in running)


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
    study = open_study(storage, opts.study_name)
    study.pruner = make_pruner(opts.pruner)
    stored = stored_study(study)
    spec = spec_from_attrs(stored.attrs, opts.base)
    uri = opts.tracking_uri or study_uri(stored.tracking_uri, storage)
    tracker = Tracker(uri, artifact_root=Path(opts.out_dir) / "mlartifacts")
    ran = 0
    while opts.max_trials is None or ran < opts.max_trials:
        raise_pending()
        reap_dead_trials(study)
        trial_id = _optuna.pop_waiting(study)
        if trial_id is None:
            if _should_wait(study):
                time.sleep(POLL)
                continue
            break
        with _heartbeat(study, trial_id):  # from the pop on: a trial never beaten is never stale
            try:
                run_trial(study, trial_id, spec, tracker, on_event, out_dir=opts.out_dir)
            except (KeyboardInterrupt, Interrupted, Exception) as err:  # outside training
                reason = (f"interrupted ({stop_reason(err)})" if not isinstance(err, Exception)
                          else f"worker error: {type(err).__name__}: {err}"[:1000])
                with contextlib.suppress(OSError) if disk_full(err) else contextlib.nullcontext():
                    # a full disk may refuse this write too: the trial then stays RUNNING
                    # with a dead owner, and the next start re-queues it
                    fail_and_requeue(study, _optuna.get_trial(study, trial_id), reason,
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


def stop_reason(err: BaseException) -> str:
    """'Ctrl-C' or 'signal 15': why a trial was stopped (never an empty pair of brackets)."""
    text = str(err).strip()
    return text if text else ("Ctrl-C" if isinstance(err, KeyboardInterrupt) else
                              type(err).__name__)


def run_trial(
    study: optuna.Study,
    trial_id: int,
    spec: StudySpec,
    tracker: Tracker,
    on_event: Callable[[str, dict], None] | None = None,
    *,
    out_dir: str | None = None,
) -> None:
    """Run one popped trial to a terminal state (COMPLETE, PRUNED or FAIL).

    With ``out_dir``, its training state is saved per epoch (:mod:`gct_ablate.resume`) and
    a trial whose cell x seed has a saved state resumes from it, continuing its MLflow run.
    """
    trial = optuna.Trial(study, trial_id)
    label(trial, **owner())
    queued = stored_trial(_optuna.get_trial(study, trial_id))
    cell: Cell = parse_cell_id(queued.cell or "")
    seed = int(queued.seed or 0)
    for name, dist in distributions(spec).items():
        trial.suggest_categorical(name, dist.choices)
    cfg = spec.config(cell, seed)
    device = device_label(cfg.device)
    label(trial, device=device)
    stored = stored_study(study)
    state = None
    if out_dir is not None:
        state = TrainingState(state_path(state_dir(out_dir, cfg), study.study_name, cell_id(cell),
                                      seed), cfg)
        state.load()
    saved = state.loaded if state is not None else None
    run_id = _continued_run(tracker, saved, trial.number, stored.experiment_id)
    if run_id is None:
        run_id = tracker.start_trial(
            stored.experiment_id, stored.parent_run_id, cell=cell_id(cell), seed=seed,
            trial_number=trial.number, params={**cfg.factor_levels(), "seed": seed},
            tags={keys.TAG_DEVICE: device},
        )
    label(trial, run_id=run_id)
    if on_event:
        on_event("start", {"number": trial.number, "cell": cell_id(cell), "seed": seed})
    done_steps: set[int] = set()  # epochs the continued run has logged already
    if state is not None:
        state.extra["run_id"] = run_id
        if saved is not None:
            done_steps = _resume_history(trial, tracker, run_id, saved, spec.metric)
            print(f"gct-ablate: trial {trial.number} ({cell_id(cell) or 'single'}, seed {seed}) "
                  f"resumed at epoch {saved['epoch'] + 1} from {state.path}", file=sys.stderr,
                  flush=True)
            if on_event:
                on_event("resume", {"number": trial.number, "epoch": saved["epoch"]})

    logged: dict[str, Any] = {}  # what the last report logged, and at which step

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in done_steps:
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
        metrics = train_eval(cfg, report, on_end=on_end, tracking_uri=tracker.uri, state=state)
    except optuna.TrialPruned as err:
        if state is not None:
            state.remove()
        label(trial, reason=str(err))
        tracker.end_trial(run_id, "FINISHED", str(err))
        study.tell(trial, state=TrialState.PRUNED)
        return
    except (KeyboardInterrupt, Interrupted) as err:
        reason = f"interrupted ({stop_reason(err)})"
        _fail(study, trial, tracker, run_id, reason, "KILLED")
        requeue(study, _optuna.get_trial(study, trial_id), reason)
        raise
    except Exception as err:  # a broken trial must not stop the study
        if _tracking_error(err) or disk_full(err):
            raise  # not the trial's fault: run_worker re-queues it and stops
        _fail(study, trial, tracker, run_id, f"{type(err).__name__}: {err}", "FAILED")
        return
    final = {k: v for k, v in metrics.items() if k != "status"}
    step = metrics.get("epochs_done", 0)
    seen = logged if logged.get("_step") == step else {}
    tracker.log_metrics(run_id, {k: v for k, v in final.items() if seen.get(k) != v}, step=step)
    label(trial, metrics=final)
    if state is not None:  # finished (or diverged, which a rerun would repeat)
        state.remove()
    if metrics["status"] != "ok":
        reason = f"{metrics['status']}: loss became NaN/inf after epoch {metrics['epochs_done']}"
        _fail(study, trial, tracker, run_id, reason, "FAILED")
        return
    tracker.end_trial(run_id, "FINISHED")
    study.tell(trial, metrics[spec.metric])


def _continued_run(tracker: Tracker, saved: dict[str, Any] | None, number: int,
                   experiment_id: str) -> str | None:
    """The MLflow run of the killed trial whose state ``saved`` is, marked running again
    (None when there is none, or it is gone or of another experiment: the trial then gets
    a run of its own)."""
    run_id = saved.get("run_id") if saved else None
    if not run_id:
        return None
    try:
        if tracker.client.get_run(run_id).info.experiment_id != experiment_id:
            return None
        tracker.client.update_run(run_id, status="RUNNING")
    except Exception:  # deleted, or another tracking store: start a new run
        return None
    tracker.client.set_tag(run_id, keys.TAG_TRIAL_NUMBER, str(number))
    tracker.client.set_tag(run_id, keys.TAG_RESUMED_FROM, str(saved["epoch"]))
    return run_id


def _resume_history(trial: optuna.Trial, tracker: Tracker, run_id: str, saved: dict[str, Any],
                    metric: str) -> set[int]:
    """Give the resumed trial the epochs before its saved state: reported to Optuna, logged
    to MLflow where the killed run had not; returns the epochs the run has logged."""
    label(trial, resumed_from=saved["epoch"])
    logged = {m.step for m in tracker.client.get_metric_history(run_id, metric)}
    for row in saved["history"]:
        epoch = int(row["epoch"])
        values = {k: v for k, v in row.items() if k != "epoch"}
        trial.report(values[metric], epoch)
        if epoch not in logged:
            tracker.log_metrics(run_id, values, step=epoch)
            logged.add(epoch)
    return logged


def device_label(name: str) -> str:
    """The device a trial of ``--device name`` trains on (``cpu``, ``cuda:1``); the name as
    given when it cannot be used here (the trial then fails with the reason)."""
    from gct_ablate.train import resolve_device

    try:
        device = resolve_device(name)
    except (RuntimeError, ValueError):
        return name
    if device.type == "cuda" and device.index is None:
        import torch

        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def _fail(study, trial, tracker, run_id, reason: str, mlflow_status: str) -> None:
    label(trial, reason=reason)
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
        from gct_ablate.analysis.gates import gate_stats, plot_gates

        stats = gate_stats(model, data, device)
        tracker.log_json(run_id, stats, "gates/gates.json")
        if stats:
            figure = plot_gates([stats], title=f"{cfg.model} {cfg.placement}")
            tracker.log_figure(run_id, figure, "gates/gates.png")
    save = cfg.save_model if cfg.save_model is not None else count_parameters(model)[0] < 5_000_000
    if save:
        tracker.log_torch(run_id, {k: v.cpu() for k, v in model.state_dict().items()},
                          "model/state_dict.pt")
