"""Credentials stay out of argv, output and stored results.

The shared PostgreSQL at 127.0.0.1:5432 trusts every local connection, so it cannot check a
password: this file starts its own small PostgreSQL (scram-sha-256 on 127.0.0.1, a free
port) and its own MLflow server with ``--app-name basic-auth``, and runs tiny studies
against them with the passwords given through GCT_ABLATE_STORAGE, PGPASSWORD and
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from conftest import TINY, cli_env, free_port, mlflow_script, mlflow_server_env, wait_for
from mlflow import MlflowClient
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.storage import open_storage

PG_ADMIN_PASSWORD = "adm-Pw-8f2c"
PG_PASSWORD = "pg-Secret-71d0"  # gct_user's
MLFLOW_PASSWORD = "ml-Secret-93ab"  # the MLflow server's admin
SECRETS = (PG_ADMIN_PASSWORD, PG_PASSWORD, MLFLOW_PASSWORD)
ONE_TRIAL = ["--vary", "p", "--levels", "p=2", "--seeds", "1", *TINY, "--workers", "1"]


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True).stdout
        if (Path(out.strip()) / "initdb").exists():
            return Path(out.strip())
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail("PostgreSQL's initdb is not installed (it comes with the server package)")
    return Path(initdb).parent


@pytest.fixture(scope="module")
def pg_port() -> Iterator[int]:
    """A PostgreSQL that checks passwords: role gct_user (PG_PASSWORD) owning db 'ablate'."""
    import psycopg2

    root = Path(tempfile.mkdtemp(prefix="gct-pg-"))  # under /tmp: reachable by postgres
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb and the server refuse to run as root
        as_postgres = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    pwfile = root / "pw"
    pwfile.write_text(PG_ADMIN_PASSWORD)
    if as_postgres:
        shutil.chown(pwfile, "postgres")
    bindir, data, port = _bindir(), root / "data", free_port()
    subprocess.run([*as_postgres, str(bindir / "initdb"), "-D", str(data), "-U", "postgres",
                    "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start"], check=True, capture_output=True)
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                password=PG_ADMIN_PASSWORD, dbname="postgres")
        conn.autocommit = True
        with contextlib.closing(conn), conn.cursor() as cur:
            cur.execute(f"CREATE ROLE gct_user LOGIN PASSWORD '{PG_PASSWORD}'")
            cur.execute("CREATE DATABASE ablate OWNER gct_user")
        yield port
    finally:
        subprocess.run([*as_postgres, str(bindir / "pg_ctl"), "-D", str(data), "-m",
                        "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server --app-name basic-auth`, admin password MLFLOW_PASSWORD; its URL."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = root / "auth.ini"
    config.write_text(f"[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{root / 'auth.db'}\n"
                      f"admin_username = admin\nadmin_password = {MLFLOW_PASSWORD}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**mlflow_server_env(), "MLFLOW_AUTH_CONFIG_PATH": str(config),
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key"}
    log = open(root / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [mlflow_script(), "server", "--app-name", "basic-auth",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 240, "the basic-auth MLflow server's /health", poll=0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()


def cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**{k: v for k, v in cli_env().items()
               if not k.startswith(("PG", "MLFLOW_TRACKING_", "GCT_ABLATE_STORAGE"))}, **env}
    return subprocess.run([sys.executable, "-m", "gct_ablate", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=400)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            where = text[max(0, text.find(secret) - 80):][:200]
            assert secret not in text, f"a password leaked: ...{where}"


def stored_text(url: str, name: str) -> str:
    """Everything the study stores: its attributes and its trials' attributes."""
    storage = open_storage(url, Path("."))
    study = optuna.load_study(study_name=name, storage=storage)
    parts = [study.user_attrs, storage.get_study_system_attrs(storage.get_study_id_from_name(name))]
    for t in study.get_trials(deepcopy=False):
        parts += [t.user_attrs, t.system_attrs, t.params]
    return json.dumps(parts, default=str)


def mlflow_text(client: MlflowClient, name: str) -> tuple[str, int]:
    """Params, tags and names of every run of the study's experiment, and how many runs."""
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    return json.dumps([[r.data.params, r.data.tags, r.info.run_name] for r in runs]), len(runs)


def test_storage_password_from_the_environment_and_tracking_login(tmp_path, pg_port,
                                                                  auth_server):
    url = f"postgresql://gct_user:{PG_PASSWORD}@127.0.0.1:{pg_port}/ablate"
    env = {"GCT_ABLATE_STORAGE": url, "MLFLOW_TRACKING_USERNAME": "admin",
           "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD}
    result = cli(["run", *ONE_TRIAL, "--study", "env-login", "--tracking-uri", auth_server],
                 tmp_path, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"postgresql://gct_user:***@127.0.0.1:{pg_port}/ablate" in result.stdout
    assert "(storage from $GCT_ABLATE_STORAGE)" in result.stdout
    runner = CliRunner(env={"GCT_ABLATE_STORAGE": url})  # in this process: no start-up cost
    status = runner.invoke(app, ["status", "env-login"])
    assert status.exit_code == 0 and "1 done" in status.stdout, status.output
    summary = runner.invoke(app, ["summary", "env-login", "--format", "csv"])
    assert summary.exit_code == 0 and "env-login" in summary.stdout, summary.output
    client = MlflowClient(tracking_uri=auth_server)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD)
    try:
        logged, n_runs = mlflow_text(client, "env-login")
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert n_runs == 2  # the study's parent run and its one trial
    assert_no_secret(result.stdout, result.stderr, status.stdout, status.stderr,
                     summary.stdout, summary.stderr, stored_text(url, "env-login"), logged)


def test_wrong_tracking_password_is_one_line_before_any_training(tmp_path, pg_port,
                                                                 auth_server):
    url = f"postgresql://gct_user:{PG_PASSWORD}@127.0.0.1:{pg_port}/ablate"
    result = cli(["run", *ONE_TRIAL, "--study", "wrong-login", "--tracking-uri", auth_server],
                 tmp_path, GCT_ABLATE_STORAGE=url, MLFLOW_TRACKING_USERNAME="admin",
                 MLFLOW_TRACKING_PASSWORD="not-" + MLFLOW_PASSWORD[::-1])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: MLflow tracking server {auth_server} refused the credentials of user 'admin' "
        "(HTTP 401); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"]
    # nothing queued or trained
    assert "wrong-login" not in optuna.get_all_study_names(open_storage(url, tmp_path))
    assert MLFLOW_PASSWORD[::-1] not in result.stdout + result.stderr


def test_pgpassword_with_a_passwordless_url(tmp_path, pg_port):
    url = f"postgresql://gct_user@127.0.0.1:{pg_port}/ablate"
    missing = cli(["run", *ONE_TRIAL, "--study", "pgpass", "--storage", url, "--out", "out"],
                  tmp_path)
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr
    assert lines[0].startswith(f"Error: cannot open storage {url}: ")
    assert "password" in lines[0]  # the server asked for one: it really checks
    wrong = cli(["run", *ONE_TRIAL, "--study", "pgpass", "--storage", url, "--out", "out"],
                tmp_path, PGPASSWORD="not-the-password")
    assert wrong.returncode == 2 and "password authentication failed" in wrong.stderr
    assert "not-the-password" not in wrong.stdout + wrong.stderr
    # the option wins over the environment variable (which here points nowhere)
    result = cli(["run", *ONE_TRIAL, "--study", "pgpass", "--storage", url, "--out", "out"],
                 tmp_path, PGPASSWORD=PG_PASSWORD,
                 GCT_ABLATE_STORAGE="postgresql://nobody:x@127.0.0.1:1/none")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Optuna storage: {url}" in result.stdout
    os.environ["PGPASSWORD"] = PG_PASSWORD
    try:
        stored = stored_text(url, "pgpass")
    finally:
        del os.environ["PGPASSWORD"]
    logged, n_runs = mlflow_text(MlflowClient(f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"),
                                 "pgpass")
    assert n_runs == 2
    assert_no_secret(missing.stderr, wrong.stdout, wrong.stderr, result.stdout, result.stderr,
                     stored, logged)
