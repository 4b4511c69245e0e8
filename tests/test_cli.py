"""The command line, end to end through Typer's CliRunner (and one real Ctrl-C)."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.storage import open_storage

runner = CliRunner()
TINY = ["--set", "epochs=1", "--threads", "1", "--workers", "1", "--no-save-models"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_lists_commands_and_factor_levels():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "run", "worker", "status", "summary", "factors"):
        assert command in result.output
    result = invoke("train", "--help")
    assert "1+tanh" in result.output and "every-conv" in result.output


def test_the_tool_leaves_torchs_allocator_at_its_default():
    """Importing the command line does not turn on torch's huge-page buffers (about 200 MiB
    more peak memory in a training process, no faster: benchmarks/README.md)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    code = "import os, gct_ablate.cli; print(os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout.split()
    assert out == ["None"]


def test_factors_table():
    result = invoke("factors")
    assert result.exit_code == 0
    for name in ("p", "norm", "activation", "remove", "init", "placement", "attention"):
        assert f" {name} " in result.output


def test_train_one_epoch():
    result = invoke("train", "--epochs", "1", "--threads", "1", "--p", "inf",
                    "--activation", "sigmoid")
    assert result.exit_code == 0, result.output
    assert "val_top1" in result.output and "n_attention_modules" in result.output


@pytest.mark.parametrize("args,message", [
    (["train", "--p", "0.5"], "p must be >= 1"),
    (["train", "--norm", "l3"], "unknown level 'l3' for norm"),
    (["run", "--vary", "p,colour"], "unknown factor 'colour'"),
    (["run", "--vary", "p", "--levels", "p=1,0"], "p must be >= 1"),
    (["run", "--vary", "activation", "--levels", "activation=relu"], "unknown level 'relu'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = invoke(*args, "--out", tmp_path) if args[0] == "run" else invoke(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())  # nothing stored


def test_run_tracks_every_trial_and_summary_reproduces_it(tmp_path):
    out = tmp_path / "runs"
    result = invoke("run", "--vary", "p,activation", "--levels", "p=2,inf",
                    "--levels", "activation=tanh,sigmoid", "--seeds", "2", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    assert "vary-p-activation" in result.output
    assert f"mlflow ui --backend-store-uri sqlite:///{(out / 'mlflow.db').resolve()}" in \
        result.output.replace("\n", "")
    assert "reference" in result.output

    study = optuna.load_study(study_name="vary-p-activation", storage=open_storage(None, out))
    done = Counter((t.user_attrs["cell"], t.user_attrs["seed"])
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert len(done) == 8 and set(done.values()) == {1}

    client = MlflowClient(f"sqlite:///{(out / 'mlflow.db').resolve()}")
    runs = client.search_runs([study.user_attrs["mlflow_experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 9
    assert parents[0].info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id, "summary")}
    assert {"summary/summary.md", "summary/summary.csv"} <= artifacts

    again = invoke("summary", "vary-p-activation", "--out", out, "--format", "json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.output)
    cells = {c["cell"]: c for c in data["cells"]}
    assert set(cells) == {"p=2 activation=tanh", "p=2 activation=sigmoid",
                          "p=inf activation=tanh", "p=inf activation=sigmoid"}
    values = [t.value for t in study.get_trials(states=(TrialState.COMPLETE,))
              if t.user_attrs["cell"] == "p=inf activation=sigmoid"]
    assert cells["p=inf activation=sigmoid"]["mean"] == pytest.approx(sum(values) / 2)

    rerun = invoke("run", "--vary", "p,activation", "--levels", "p=2,inf",
                   "--levels", "activation=tanh,sigmoid", "--seeds", "2", *TINY, "--out", out)
    assert rerun.exit_code == 0
    assert "(8 done, 0 queued now)" in rerun.output
    assert len(optuna.load_study(study_name="vary-p-activation",
                                 storage=open_storage(None, out)).trials) == 8

    status = invoke("status", "vary-p-activation", "--out", out)
    assert status.exit_code == 0 and "8 done" in status.output


def test_ctrl_c_then_same_command_completes_grid_exactly_once(tmp_path):
    cmd = [sys.executable, "-m", "gct_ablate", "run", "--vary", "p", "--levels", "p=1,2",
           "--seeds", "2", "--set", "epochs=4", "--threads", "1", "--workers", "1",
           "--no-save-models", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = tmp_path / "optuna.journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some trial is half-way
        time.sleep(0.5)
        if journal.exists():
            try:
                study = optuna.load_study(study_name="vary-p",
                                          storage=open_storage(None, tmp_path))
            except KeyError:  # the study is not created yet
                continue
            running = study.get_trials(states=(TrialState.RUNNING,))
            if running and running[0].intermediate_values:
                break
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "run the same command again" in output.replace("\n", " ")
    study = optuna.load_study(study_name="vary-p", storage=open_storage(None, tmp_path))
    interrupted = study.get_trials(states=(TrialState.FAIL,))
    assert interrupted and "interrupted" in interrupted[0].user_attrs["status_reason"]

    env = {**os.environ, "COLUMNS": "200"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="vary-p", storage=open_storage(None, tmp_path))
    done = Counter((t.user_attrs["cell"], t.user_attrs["seed"])
                   for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert sorted(done) == [("p=1", 0), ("p=1", 1), ("p=2", 0), ("p=2", 1)]
    assert set(done.values()) == {1}
