"""Shared fixtures: a fresh PostgreSQL database, an MLflow tracking server, CLI processes.

The PostgreSQL fixture never skips: when the server at 127.0.0.1:5432 does not answer,
the tests that need it fail loudly (CI starts it before the tests).
"""

from __future__ import annotations

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


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh database gct_test_<random>, dropped after the test."""
    import psycopg2

    name = f"gct_test_{secrets.token_hex(4)}"
    try:
        conn = _admin()
    except psycopg2.OperationalError as err:
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is not answering ({err}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`")
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


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An `mlflow server` on a free loopback port with a SQLite backend; its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
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
