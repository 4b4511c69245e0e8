"""The Optuna layer: grid enqueued once, exactly-once execution, resume, dead workers."""

import os
import signal
import subprocess
import sys
import weakref
from collections import Counter
from pathlib import Path

import optuna
import pytest
from conftest import wait_for
from mlflow import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

from gct_ablate._util import raise_pending, stop_signals
from gct_ablate.errors import UsageError
from gct_ablate.grid import prepare_study
from gct_ablate.recovery import reap_dead_trials
from gct_ablate.runner import run_workers
from gct_ablate.spec import StudySpec, TrialConfig
from gct_ablate.storage import open_storage
from gct_ablate.store._optuna import pop_waiting
from gct_ablate.store.open import open_study
from gct_ablate.tracking import Tracker, default_tracking_uri
from gct_ablate.worker import Interrupted, WorkerOptions, interrupted_by, run_worker

BASE = TrialConfig(threads=1, save_model=False)


def tiny_spec(**kw) -> StudySpec:
    defaults = dict(vary=("p",), levels={"p": ("1", "2")}, fixed={"epochs": 1}, seeds=2,
                    name="tiny", base=BASE)
    return StudySpec(**{**defaults, **kw})


def setup(tmp_path: Path, spec: StudySpec, **kw):
    storage = open_storage(None, tmp_path)
    tracker = Tracker(default_tracking_uri(tmp_path), artifact_root=tmp_path / "art")
    return storage, tracker, prepare_study(spec, storage, tracker, **kw)


def completed(study: optuna.Study) -> Counter:
    return Counter((t.user_attrs["cell"], t.user_attrs["seed"])
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_grid_is_enqueued_once_and_a_different_grid_is_refused(tmp_path):
    spec = tiny_spec()
    storage, tracker, first = setup(tmp_path, spec)
    assert (first.enqueued, first.done) == (4, 0)
    again = prepare_study(spec, storage, tracker)
    assert again.enqueued == 0
    assert len(again.study.trials) == 4
    more_seeds = prepare_study(tiny_spec(seeds=3), storage, tracker)
    assert more_seeds.enqueued == 2
    with pytest.raises(UsageError, match="exists with a different grid"):
        prepare_study(tiny_spec(levels={"p": ("1", "3")}), storage, tracker)
    assert len(open_study(storage, "tiny").trials) == 6  # the refusal changed nothing
    attrs = again.study.user_attrs
    assert attrs["reference_cell"] == "p=2"
    assert MlflowClient(default_tracking_uri(tmp_path)).get_run(attrs["mlflow_parent_run_id"])


def test_two_worker_processes_run_every_cell_exactly_once(tmp_path, monkeypatch):
    spec = tiny_spec(levels={"p": ("1", "2", "inf")})
    storage, tracker, prepared = setup(tmp_path, spec)
    opts = WorkerOptions(study_name="tiny", storage=None, out_dir=str(tmp_path), base=BASE)
    started = run_worker
    spawned: list[int] = []

    def after_the_spawned_worker_took_a_trial(options: WorkerOptions) -> None:
        """A barrier, not a delay: the warm in-process worker waits until the spawned one
        runs a trial (it imports torch first, and could otherwise find the queue empty),
        so both take cells whatever the machine's load."""
        def other_running() -> list[int]:
            trials = prepared.study.trials  # (the journal re-read where it left off)
            return [t.user_attrs["pid"] for t in trials
                    if t.state == TrialState.RUNNING and t.user_attrs.get("pid") != os.getpid()]

        spawned.extend(wait_for(other_running, 240, "the spawned worker's first trial"))
        started(options)

    monkeypatch.setattr("gct_ablate.runner.run_worker", after_the_spawned_worker_took_a_trial)
    run_workers(opts, 2, 1, Console(quiet=True))
    study = open_study(open_storage(None, tmp_path), "tiny")
    done = completed(study)
    assert sorted(done) == sorted(("p=" + p, s) for p in ("1", "2", "inf") for s in (0, 1))
    assert set(done.values()) == {1}
    pids = {t.user_attrs["pid"] for t in study.trials}
    assert pids == {os.getpid(), spawned[0]}  # both workers took cells, nobody else did
    client = MlflowClient(default_tracking_uri(tmp_path))
    runs = client.search_runs([study.user_attrs["mlflow_experiment_id"]])
    parent = study.user_attrs["mlflow_parent_run_id"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 7 and len(children) == 6
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {
        r.info.run_id for r in children}
    child = children[0]
    assert set(child.data.params) >= {"p", "norm", "activation", "placement", "seed"}
    assert "val_top1" in child.data.metrics
    history = client.get_metric_history(child.info.run_id, "val_loss")
    assert [m.step for m in history] == [1]  # once per epoch, not again with the final ones
    assert "params_total" in child.data.metrics and "seconds" in child.data.metrics
    gates = {a.path for a in client.list_artifacts(child.info.run_id, "gates")}
    assert gates == {"gates/gates.json", "gates/gates.png"}
    png = Path(client.download_artifacts(child.info.run_id, "gates/gates.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dead_workers_trial_is_requeued_and_finished_once(tmp_path):
    spec = tiny_spec(seeds=1)
    storage, _, prepared = setup(tmp_path, spec)
    study = prepared.study
    trial_id = pop_waiting(study)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    storage.set_trial_user_attr(trial_id, "host", socket.gethostname())
    storage.set_trial_user_attr(trial_id, "pid", dead.pid)
    storage.set_trial_user_attr(trial_id, "proc", f"{dead.pid}:1")
    assert reap_dead_trials(study) == 1
    states = Counter(t.state for t in study.get_trials())
    assert states == {TrialState.FAIL: 1, TrialState.WAITING: 2}
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    assert "worker died" in failed.user_attrs["status_reason"]
    opts = WorkerOptions(study_name="tiny", storage=None, out_dir=str(tmp_path), base=BASE)
    assert run_worker(opts) == 2
    assert set(completed(study).values()) == {1} and len(completed(study)) == 2
    # resuming a finished study queues nothing
    assert prepare_study(spec, storage, Tracker(default_tracking_uri(tmp_path))).enqueued == 0


@pytest.mark.parametrize("alive", [True, False])
def test_an_owner_still_writing_its_attributes_is_not_reaped(tmp_path, alive: bool):
    """A worker that popped a trial and has written host and pid but not yet "proc" is
    alive: another worker's reaper must leave the trial alone (a race seen on PostgreSQL).
    A pid with no process at all is dead even without "proc"."""
    import os
    import socket

    storage, _, prepared = setup(tmp_path, tiny_spec(seeds=1))
    study = prepared.study
    trial_id = pop_waiting(study)
    if alive:
        pid = os.getpid()
    else:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        pid = dead.pid
    storage.set_trial_user_attr(trial_id, "host", socket.gethostname())
    storage.set_trial_user_attr(trial_id, "pid", pid)
    assert reap_dead_trials(study) == (0 if alive else 1)
    state = storage.get_trial(trial_id).state
    assert state == (TrialState.RUNNING if alive else TrialState.FAIL)


def test_failed_cells_wait_for_retry_failed(tmp_path):
    spec = tiny_spec(seeds=1, fixed={"epochs": 1, "lr": 1e8, "warmup_epochs": 0})
    storage, tracker, _ = setup(tmp_path, spec)
    opts = WorkerOptions(study_name="tiny", storage=None, out_dir=str(tmp_path), base=BASE)
    run_worker(opts)
    study = open_study(storage, "tiny")
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2
    assert all(t.user_attrs["status_reason"].startswith("diverged") for t in failed)
    assert prepare_study(spec, storage, tracker).failed_left == 2
    assert prepare_study(spec, storage, tracker, retry_failed=True).enqueued == 2


def test_a_ctrl_c_swallowed_by_a_finalizer_is_raised_again(monkeypatch: pytest.MonkeyPatch):
    """Python ignores exceptions raised in weakref callbacks (SQLAlchemy runs some at garbage
    collection): a Ctrl-C landing there used to be lost and the run went on to its end."""
    class Thing:
        pass

    def on_collect(ref: weakref.ref) -> None:
        signal.raise_signal(signal.SIGINT)  # the handler runs here, inside the callback

    ignored: list = []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    before = signal.getsignal(signal.SIGINT)  # (SIG_IGN in a background job)
    with stop_signals(interrupted_by):
        raise_pending()  # nothing pending yet
        thing = Thing()
        ref = weakref.ref(thing, on_collect)
        del thing  # the callback runs; its KeyboardInterrupt goes to unraisablehook
        assert ref() is None and [type(u.exc_value) for u in ignored] == [KeyboardInterrupt]
        with pytest.raises(KeyboardInterrupt):
            raise_pending()
        with pytest.raises(Interrupted, match="signal 15"):
            signal.raise_signal(signal.SIGTERM)
        with stop_signals(interrupted_by):  # a nested block (run_workers -> run_worker)
            pass
        with pytest.raises(Interrupted):  # still pending for the outer block
            raise_pending()
    raise_pending()  # forgotten once the outermost block ends
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler, restored


def test_an_orphan_mlflow_run_is_closed_on_resume_and_the_rerun_gets_its_own(tmp_path):
    """A worker that died between creating its trial's MLflow run and storing the run id
    left a RUNNING run no trial points to: the next start marks it KILLED, and the trial,
    failed and re-queued, runs again under a run of its own."""
    import socket

    spec = tiny_spec(seeds=1)
    storage, tracker, prepared = setup(tmp_path, spec)
    study = prepared.study
    trial_id = pop_waiting(study)
    number = storage.get_trial(trial_id).number
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for key, value in (("host", socket.gethostname()), ("pid", dead.pid),
                       ("proc", f"{dead.pid}:1")):
        storage.set_trial_user_attr(trial_id, key, value)
    attrs = study.user_attrs
    orphan = tracker.start_trial(attrs["mlflow_experiment_id"], attrs["mlflow_parent_run_id"],
                                 cell="p=1", seed=0, trial_number=number, params={})
    live = tracker.start_trial(attrs["mlflow_experiment_id"], attrs["mlflow_parent_run_id"],
                               cell="p=2", seed=0, trial_number=number + 1, params={})
    live_id = pop_waiting(study)  # a live worker that has not stored its run id yet
    storage.set_trial_user_attr(live_id, "host", socket.gethostname())
    storage.set_trial_user_attr(live_id, "pid", os.getpid())

    again = prepare_study(spec, storage, tracker)  # the resume
    client = MlflowClient(default_tracking_uri(tmp_path))
    assert client.get_run(orphan).info.status == "KILLED"
    assert "orphan" in client.get_run(orphan).data.tags["status_reason"]
    assert client.get_run(live).info.status == "RUNNING"  # its trial still runs: left alone
    assert again.enqueued == 0  # the dead trial's copy was queued by the reaper
    storage.set_trial_state_values(live_id, state=TrialState.FAIL)
    client.set_terminated(live, "KILLED")
    opts = WorkerOptions(study_name="tiny", storage=None, out_dir=str(tmp_path), base=BASE)
    prepare_study(spec, storage, tracker, retry_failed=True)
    run_worker(opts)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted((t.user_attrs["cell"], t.user_attrs["seed"]) for t in done) == [
        ("p=1", 0), ("p=2", 0)]
    reruns = {t.user_attrs["mlflow_run_id"] for t in done}
    assert orphan not in reruns and live not in reruns
    assert {client.get_run(r).info.status for r in reruns} == {"FINISHED"}
