"""Faults and bad input: one-line errors (exit 2) that leave stored results untouched,
a diverging trial that fails alone, stopped and killed runs that resume exactly once, a
tracking store that fails mid-trial (trial re-queued, one-line stop)."""

from __future__ import annotations

import collections
import signal
import threading
from pathlib import Path

import optuna
import pytest
from conftest import LONG_TRIALS, TINY, run_cli, start_cli, stop, wait_for
from mlflow import MlflowClient
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from typer.testing import CliRunner

from gct_ablate.cli import app

GRID = ["--vary", "p", "--levels", "p=1,2", "--seeds", "1"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def journal_trials(out: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except KeyError:
        return []


def mlflow_runs(out: Path, name: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def completed_once(trials: list[optuna.trial.FrozenTrial]) -> collections.Counter:
    return collections.Counter((t.user_attrs["cell"], int(t.user_attrs["seed"]))
                               for t in trials if t.state == TrialState.COMPLETE)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output folder holding one finished tiny study, 'base' (p = 1, 2; one seed)."""
    out = tmp_path_factory.mktemp("stored")
    result = invoke("run", *GRID, *TINY, "--study", "base", "--workers", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (out / "optuna.journal", out / "mlflow.db")}


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (arguments of `run`, or of another command, what the one-line error says)."""
    syntax = tmp / "syntax.toml"
    syntax.write_text('vary = ["p"\nseeds = 2\n')
    unknown_key = tmp / "unknown_key.toml"
    unknown_key.write_text('vary = ["p"]\nrepeats = 2\n')
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    latin1 = tmp / "latin1.toml"
    latin1.write_bytes('question = "Größe?"\nvary = ["p"]\n'.encode("latin-1"))
    return {
        "unknown factor": (["--vary", "q"], "unknown factor 'q'; valid: attention, p,"),
        "unknown level": (["--vary", "activation", "--levels", "activation=foo"],
                          "unknown level 'foo' for activation; valid: "),
        "p < 1": (["--vary", "p", "--levels", "p=0.5,2"], "p must be >= 1"),
        "TOML syntax error": ([str(syntax)], f"{syntax}: TOML syntax error"),
        "unknown key": ([str(unknown_key)], f"{unknown_key}: unknown key 'repeats'; allowed:"),
        "conflicting options": (["--vary", "p", "--set", "p=2"],
                                "conflicting options: p is both in --vary and --set"),
        "same name, other grid": (["--study", "base", "--vary", "p", "--levels", "p=1,3"],
                                  "study 'base' exists with a different grid"),
        "missing dataset": ([*GRID, "--study", "c10", "--set", "dataset=cifar10",
                             "--data-dir", "/nonexistent"], "not found in /nonexistent"),
        "unwritable output": ([*GRID, "--out", str(a_file / "runs")],
                              f"cannot create output directory {a_file / 'runs'}: Not a "
                              "directory"),
        "unreachable storage": ([*GRID, "--study", "base", "--storage",
                                 "postgresql://postgres:secret@127.0.0.1:1/x"],
                                "cannot open storage postgresql://postgres:***@127.0.0.1:1/x"),
        "unreachable tracking": ([*GRID, "--study", "base", "--tracking-uri",
                                  "http://127.0.0.1:1"],
                                 "cannot reach MLflow tracking server http://127.0.0.1:1"),
        "worker, unreachable tracking": (["worker", "base", "--tracking-uri",
                                          "http://127.0.0.1:1"],
                                         "cannot reach MLflow tracking server"),
        "worker, unknown study": (["worker", "nope", "--wait", "0"],
                                  "no study named 'nope' in this storage; existing: base"),
        "hostile study name": (["--vary", "p", "--study", "../../etc/x"],
                               "invalid study name '../../etc/x'; use letters, digits and "
                               ". _ - = only, no leading dot"),
        "study file not UTF-8": ([str(latin1)], f"{latin1}: not UTF-8 text (byte 0xf6 at "
                                 "offset 14); save the study file as UTF-8"),
        "unknown design": (["--vary", "p", "--design", "half"],
                           "unknown design 'half'; valid: full, ofat, gsd=R"),
        "too costly": (["--vary", "p,norm,activation,remove,init,placement", "--study", "big"],
                       "30,240 trials to run (10,080 cells x 3 seeds) x 1 epoch(s) at "),
    }


def test_bad_input_is_one_line_exit_2_and_touches_nothing(stored, tmp_path):
    before = _files(stored)
    trials_before = journal_trials(stored, "base")
    problems = []
    for name, (args, message) in _bad_inputs(tmp_path).items():
        out = [] if "--out" in args else ["--out", str(stored)]
        if args[0] == "worker":
            result = invoke(*args, "--threads", "1", *out)
        else:
            result = invoke("run", *args, *TINY, "--workers", "1", *out)
        lines = result.stderr.strip().splitlines()
        if (result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("Error: ")
                or message not in lines[0] or "Traceback" in result.output
                or "secret" in result.output or not isinstance(result.exception, SystemExit)):
            problems.append(f"{name}: exit {result.exit_code}, {result.output!r}")
        if _files(stored) != before:
            problems.append(f"{name}: changed the stored study")
            before = _files(stored)
    assert not problems, "\n".join(problems)
    assert journal_trials(stored, "base") == trials_before


def test_diverging_trial_fails_alone_with_its_reason(tmp_path):
    result = invoke("run", "--vary", "lr", "--levels", "lr=0.1,1e6", "--seeds", "1", *TINY,
                    "--study", "nan", "--workers", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    trials = {t.user_attrs["cell"]: t for t in journal_trials(tmp_path, "nan")}
    assert trials["lr=0.1"].state == TrialState.COMPLETE  # the study went on
    bad = trials["lr=1e+06"]
    assert bad.state == TrialState.FAIL
    reason = bad.user_attrs["status_reason"]
    assert reason.startswith("diverged: loss became NaN/inf")
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "nan")}
    run = runs[bad.user_attrs["mlflow_run_id"]]
    assert run.info.status == "FAILED"
    assert run.data.tags["status_reason"] == reason
    assert "1 failed" in result.stdout


def _stop_mid_trial(args: list[str], out: Path, sig: int, log: Path):
    """Start `run`, send ``sig`` once a trial trains; (that trial, pid, exit code)."""
    proc = start_cli(args, out, log)
    try:
        def running():
            return [t for t in journal_trials(out, "killed")
                    if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]

        trial = wait_for(running, 120, "a running trial")[0]
        proc.send_signal(sig)
        return trial, proc.pid, proc.wait(timeout=60)
    finally:
        stop(proc)


def test_stopped_runs_resume_each_cell_once(tmp_path):
    """Ctrl-C, then SIGKILL, a single-worker `run` mid-trial; the same command again
    finishes the grid with every cell x seed complete exactly once."""
    args = ["run", *GRID, *TINY, *LONG_TRIALS, "--study", "killed", "--workers", "1",
            "--out", str(tmp_path), "--checkpoint-every", "0"]  # no state: each retry redone
    stopped, _, code = _stop_mid_trial(args, tmp_path, signal.SIGINT, tmp_path / "int.log")
    assert code == 130  # Ctrl-C: the trial fails cleanly and goes back to the queue
    assert "run the same command again" in (tmp_path / "int.log").read_text()
    trials = journal_trials(tmp_path, "killed")
    assert trials[stopped.number].state == TrialState.FAIL
    assert trials[stopped.number].user_attrs["status_reason"].startswith("interrupted")
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == stopped.number] == [
        TrialState.WAITING]

    killed, pid, code = _stop_mid_trial(args, tmp_path, signal.SIGKILL, tmp_path / "kill.log")
    assert code == -signal.SIGKILL  # nothing could clean up: the trial stays RUNNING
    assert journal_trials(tmp_path, "killed")[killed.number].state == TrialState.RUNNING

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = journal_trials(tmp_path, "killed")
    assert completed_once(trials) == {("p=1", 0): 1, ("p=2", 0): 1}
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    dead = trials[killed.number]
    assert dead.state == TrialState.FAIL
    assert dead.user_attrs["status_reason"] == f"worker died (pid {pid})"
    assert [t.state for t in trials if t.user_attrs.get("retry_of") == killed.number] == [
        TrialState.COMPLETE]
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path, "killed")}
    assert sorted(runs[t.user_attrs["mlflow_run_id"]].info.status for t in trials) == [
        "FINISHED", "FINISHED", "KILLED", "KILLED"]
    assert runs[dead.user_attrs["mlflow_run_id"]].data.tags["status_reason"] == (
        f"worker died (pid {pid})")
    assert len([r for r in runs.values() if r.data.tags.get("gct_ablate.role") == "trial"]) == 4


def test_tracking_failure_mid_trial_requeues_and_stops(tmp_path):
    """The tracking store refuses writes mid-trial (the experiment was deleted in the UI):
    the trial is not the culprit, so it is re-queued, and the run stops with one line."""
    name = "untracked"

    def delete_experiment_mid_trial() -> None:
        def running():
            return [t for t in journal_trials(tmp_path, name)
                    if t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs]

        wait_for(running, 120, "a running trial")
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        client.delete_experiment(client.get_experiment_by_name(name).experiment_id)

    thread = threading.Thread(target=delete_experiment_mid_trial)
    thread.start()
    result = invoke("run", *GRID, *TINY, "--study", name, "--workers", "1", "--out", str(tmp_path))
    thread.join()
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: MLflow tracking at sqlite:///{tmp_path}")
    assert "the trial was re-queued" in lines[0]
    trials = journal_trials(tmp_path, name)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 1
    assert lost[0].user_attrs["status_reason"].startswith("worker error: MlflowException")
    left = {(t.user_attrs["cell"], t.user_attrs["seed"]) for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.WAITING)}
    assert left == {("p=1", 0), ("p=2", 0)}  # nothing lost: done, or queued for the next run
