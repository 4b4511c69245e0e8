"""Shared fixtures: a fresh PostgreSQL database, an MLflow tracking server, CLI processes.

Tests that need PostgreSQL (the ``pg_url`` fixture, marked ``postgres``) skip with the
reason in the summary line when the server at 127.0.0.1:5432 does not answer, unless the
environment sets ``CI``: there they fail, so CI always tests them (``.ci/run`` starts the
server). ``-m "not slow"`` leaves out the multi-process tests of a minute or more.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}

# Tiny trials: one epoch on digits, one thread, no weights logged.
TINY = ["--set", "epochs=1", "--threads", "1", "--no-save-models"]
# For tests that signal a run once one of its trials is seen running: trials of a few
# seconds, so that the signal lands mid-trial (1-epoch trials can all end before it does).
LONG_TRIALS = ["--set", "epochs=5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin():
    import psycopg2

    conn = psycopg2.connect(connect_timeout=5, **PG_ADMIN)
    conn.autocommit = True
    return conn


def _pg_reason(err: Exception) -> str:
    return (f"PostgreSQL at 127.0.0.1:5432 is not answering ({str(err).strip()}); start it "
            "with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")


def _pg_missing() -> str | None:
    """Why PostgreSQL cannot be used here, or None when it answers."""
    try:
        _admin().close()
    except Exception as err:  # no driver, refused, timed out
        return _pg_reason(err)
    return None


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (the default, pyproject.toml): one test process per core, at most 4. Most
    tests are one process on one thread; the ones that start several (workers, servers)
    would crowd a bigger machine's PostgreSQL and ports no faster."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests taking a PostgreSQL database get the ``postgres`` marker, and skip (with the
    reason) when it does not answer, except under CI, where the fixture fails them."""
    needs = [item for item in items if "pg_url" in getattr(item, "fixturenames", ())]
    for item in needs:
        item.add_marker(pytest.mark.postgres)
    missing = _pg_missing() if needs and not os.environ.get("CI") else None
    for item in needs:
        item.add_marker(pytest.mark.skipif(missing is not None, reason=missing or ""))


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One torch thread for the test: the machine is shared, and oversubscribed threads
    crawl (``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def vary_p_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Output folder of one finished study 'vary-p' (p = 1, 2; 2 seeds; 2 epochs on digits;
    weights saved), trained once per session and shared by the files that read a real
    study (report, gates, pruning). Tests add to it (figures, reports) but never remove."""
    import torch
    from typer.testing import CliRunner

    from gct_ablate.cli import app

    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("vary-p")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store in OUT
        result = CliRunner().invoke(app, [
            "run", "--vary", "p", "--levels", "p=1,2", "--seeds", "2", "--set", "epochs=2",
            "--out", str(out), "--workers", "1", "--threads", "1", "--device", "cpu"])
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    assert f"Report (HTML, Markdown): {out / 'vary-p-report.html'}" in result.output
    return out


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh database gct_test_<random>, dropped after the test."""
    import psycopg2

    name = f"gct_test_{secrets.token_hex(4)}"
    try:
        conn = _admin()
    except psycopg2.OperationalError as err:
        pytest.fail(_pg_reason(err))
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with contextlib.closing(_admin()) as conn, conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli_env() -> dict[str, str]:
    """The environment for CLI processes: no inherited tracking URI, one thread each."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               COLUMNS="200", TERM="dumb")
    return env


def mlflow_server_env() -> dict[str, str]:
    """:func:`cli_env` for an ``mlflow server``, without its job runners (four Huey consumer
    processes polling all the time, for features these tests do not use)."""
    return {**cli_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_cli(args: list[str], cwd: Path, log: Path, hostname: str | None = None):
    """Start `python -m gct_ablate ARGS` in the background, output to ``log``.

    ``hostname``: run it in its own UTS namespace under that host name, so it looks like a
    worker on another machine (its death is then only visible through the heartbeat).
    """
    cmd = [sys.executable, "-m", "gct_ablate", *args]
    if hostname is not None:
        cmd = ["unshare", "--uts", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *cmd]
    out = open(log, "wb")  # noqa: SIM115 - closed by the process's end
    return subprocess.Popen(cmd, cwd=cwd, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)


def run_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run `python -m gct_ablate ARGS` to its end; output captured as text."""
    return subprocess.run([sys.executable, "-m", "gct_ablate", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def wait_for(predicate, timeout: float, what: str, poll: float = 0.3):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def stop(proc: subprocess.Popen) -> None:
    """Kill a process this test started, if it still runs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)


def mlflow_script() -> str:
    """The ``mlflow`` command of this interpreter's environment (its virtualenv's bin, which
    need not be on PATH), else the one on PATH."""
    here = Path(sys.executable).with_name("mlflow")
    return str(here) if here.exists() else "mlflow"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An `mlflow server` on a free loopback port with a SQLite backend; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [mlflow_script(), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=mlflow_server_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 120, "the MLflow server's /health", poll=0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
        proc.wait(timeout=30)
        log.close()


# ------------------------------------------------------------------ shared assertions
def assert_each_once(trials: list[Any], expected: set[tuple[str, int]]) -> None:
    """Every cell x seed COMPLETE exactly once; nothing waiting or running; failures redone."""
    from optuna.trial import TrialState

    done = collections.Counter(
        (t.user_attrs["cell"], int(t.user_attrs["seed"]))
        for t in trials if t.state == TrialState.COMPLETE
    )
    assert set(done) == expected
    assert all(n == 1 for n in done.values()), done
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    retried = {t.user_attrs.get("retry_of") for t in trials if t.state == TrialState.COMPLETE}
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.number in retried, f"failed trial {t.number} was not redone"


def assert_mlflow_tree(uri: str, name: str, trials: list[Any]) -> dict:
    """One parent run for the study, one child run under it per trial; child runs by id."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("gct_ablate.role") == "study"]
    assert len(parents) == 1
    children = {r.info.run_id: r for r in runs if r.data.tags.get("gct_ablate.role") == "trial"}
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
               for r in children.values())
    assert sorted(t.user_attrs["mlflow_run_id"] for t in trials) == sorted(children)
    for t in trials:
        run = children[t.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna_trial_number"] == str(t.number)
        if t.state == TrialState.COMPLETE:
            assert run.info.status == "FINISHED"
            assert run.data.metrics["val_top1"] == t.value
    return children


def assert_no_legend_over_data(fig: Any) -> None:
    """No legend of ``fig`` (an axes' or the figure's) overlaps a visible axes' data area."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in [*legends, *fig.legends]:
        box = legend.get_window_extent(renderer)
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (
                f"a legend covers the axes {ax.get_title() or ax.get_xlabel()!r}")
