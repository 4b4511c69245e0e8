"""Several worker processes on PostgreSQL and one MLflow tracking server (real services).

Needs PostgreSQL at 127.0.0.1:5432 (trust auth); each test gets a fresh database.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import optuna
from conftest import (
    LONG_TRIALS,
    TINY,
    assert_each_once,
    assert_mlflow_tree,
    start_cli,
    stop,
    wait_for,
)
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.storage import open_storage


@functools.cache
def _storage(url: str) -> optuna.storages.BaseStorage:
    return open_storage(url, Path("."))  # the tool's own way to open a storage URL


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=_storage(url)).get_trials()
    except KeyError:
        return []


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def test_three_workers_on_postgres_and_an_mlflow_server(tmp_path, pg_url, mlflow_server):
    """`run` creates the study on PostgreSQL and works on it; two `worker` processes join.
    Every cell x seed runs once; the MLflow server holds one parent and a child per trial."""
    name = "three-workers"
    logs = [tmp_path / f"p{i}.log" for i in range(3)]
    run_out = tmp_path / "run"
    procs = [start_cli(["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "2", *TINY,
                        "--study", name, "--storage", pg_url, "--tracking-uri", mlflow_server,
                        "--workers", "1", "--out", str(run_out)], tmp_path, logs[0])]
    try:
        wait_for(lambda: len(_trials(pg_url, name)) >= 4, 120, "the grid to be enqueued")
        procs += [start_cli(["worker", name, "--storage", pg_url, "--threads", "1",
                             "--out", str(tmp_path / f"w{i}")], tmp_path, logs[i])
                  for i in (1, 2)]
        for proc, log in zip(procs, logs, strict=True):
            assert proc.wait(timeout=300) == 0, _log(log)
    finally:
        for proc in procs:
            stop(proc)

    trials = _trials(pg_url, name)
    assert_each_once(trials, {(f"p={p}", s) for p in ("1", "2") for s in (0, 1)})
    assert len(trials) == 4  # nothing failed, nothing ran twice
    assert {t.user_attrs["pid"] for t in trials} <= {p.pid for p in procs}
    assert "No cells left" in _log(logs[1])
    for log in logs:  # quiet output: no tracebacks, warnings or MLflow's "View run" lines
        text = log.read_text()
        assert not {"Traceback", "Warning", "View run"} & set(text.split()), text

    children = assert_mlflow_tree(mlflow_server, name, trials)
    assert f"open {mlflow_server}" in _log(logs[0])  # the UI hint names the server
    assert not (run_out / "mlflow.db").exists()  # nothing went to the local default store
    client = MlflowClient(tracking_uri=mlflow_server)
    run = children[trials[0].user_attrs["mlflow_run_id"]]
    assert run.data.tags["cell"] == trials[0].user_attrs["cell"]
    assert run.data.params["p"] == trials[0].params["p"]
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_top1")} == {1}
    assert {"config.json", "gates"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert "summary" in {a.path for a in client.list_artifacts(parent_id)}
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_sigkill_worker_mid_trial_is_redone_elsewhere(tmp_path, pg_url, mlflow_server):
    """A worker on "another machine" dies mid-trial: its heartbeat stops, the trial is
    failed after the grace period (3 s with --heartbeat 1) and redone by a worker here."""
    name = "sigkill"
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    # --hostname: its own UTS namespace, so the pid check of this host cannot see it die
    victim = start_cli(["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "1", *TINY,
                        *LONG_TRIALS, "--study", name, "--storage", pg_url,
                        "--tracking-uri", mlflow_server, "--heartbeat", "1", "--workers", "1",
                        "--out", str(tmp_path / "a")],
                       tmp_path, log_a, hostname="lost-machine")
    survivor = None
    try:
        def victim_running():
            return [t for t in _trials(pg_url, name) if t.state == TrialState.RUNNING
                    and t.user_attrs.get("host") == "lost-machine"
                    and "mlflow_run_id" in t.user_attrs]

        killed = wait_for(victim_running, 120, "a running trial on the victim")[0]
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
        shown = CliRunner().invoke(app, ["status", name, "--storage", pg_url])
        assert shown.exit_code == 0, shown.output
        assert "1 running" in shown.stdout and "lost-machine" in shown.stdout
        survivor = start_cli(["worker", name, "--storage", pg_url, "--heartbeat", "1",
                              "--threads", "1", "--out", str(tmp_path / "b")], tmp_path, log_b)
        assert survivor.wait(timeout=240) == 0, _log(log_b)
    finally:
        stop(victim)
        if survivor is not None:
            stop(survivor)

    trials = _trials(pg_url, name)
    assert_each_once(trials, {("p=1", 0), ("p=2", 0)})
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL
    redo = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE
    assert redo[0].user_attrs["retry_reason"] == "worker lost (no heartbeat)"
    assert redo[0].user_attrs["host"] != "lost-machine"
    children = assert_mlflow_tree(mlflow_server, name, trials)
    lost_run = children[dead.user_attrs["mlflow_run_id"]]
    assert lost_run.info.status == "KILLED"
    assert lost_run.data.tags["status_reason"] == "worker lost (no heartbeat)"
