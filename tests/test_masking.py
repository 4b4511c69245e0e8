"""Passwords never printed or stored: every URL form libpq and SQLAlchemy accept, as a table,
through the one masking function (:func:`gct_ablate.masking.mask`)."""

from __future__ import annotations

import pytest

from gct_ablate.masking import mask, strip_password

S = "S3cr"  # the secret in every row

# (given, masked, stored: without the password)
TABLE = [
    ("postgresql://u:S3cr@h:5432/db", "postgresql://u:***@h:5432/db", "postgresql://u@h:5432/db"),
    ("postgresql+psycopg2://u:S3cr@h/db", "postgresql+psycopg2://u:***@h/db",
     "postgresql+psycopg2://u@h/db"),
    ("postgresql://:S3cr@h/db", "postgresql://:***@h/db", "postgresql://h/db".replace(
        "://h", "://@h")),
    ("postgresql://u:p@S3cr@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db"),
    ("postgresql://u:p:S3cr@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db"),
    ("postgresql://u:a@b:S3cr@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db"),
    ("postgresql://u:p%40S3cr%3A@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db"),
    ("postgresql://u:p?S3cr@h/db", "postgresql://u:***@h/db", "postgresql://u@h/db"),
    ("postgresql://u@h/db?password=S3cr", "postgresql://u@h/db?password=***",
     "postgresql://u@h/db"),
    ("postgresql://u@h/db?sslmode=require&password=S3cr&connect_timeout=5",
     "postgresql://u@h/db?sslmode=require&password=***&connect_timeout=5",
     "postgresql://u@h/db?sslmode=require&connect_timeout=5"),
    ("postgresql://u@h/db?pass%77ord=S3cr", "postgresql://u@h/db?pass%77ord=***",
     "postgresql://u@h/db"),
    ("postgresql://u@h/db?%70assword=S3cr", "postgresql://u@h/db?%70assword=***",
     "postgresql://u@h/db"),
    ("postgresql://u@h/db?sslpassword=S3cr", "postgresql://u@h/db?sslpassword=***",
     "postgresql://u@h/db"),
    ("postgresql://u@h/db?password=a@S3cr", "postgresql://u@h/db?password=***",
     "postgresql://u@h/db"),
    ("mysql+pymysql://u:S3cr@h/db?charset=utf8", "mysql+pymysql://u:***@h/db?charset=utf8",
     "mysql+pymysql://u@h/db?charset=utf8"),
    ("http://u:S3cr@mlflow:5000", "http://u:***@mlflow:5000", "http://u@mlflow:5000"),
    ("postgresql://u@h/db", "postgresql://u@h/db", "postgresql://u@h/db"),
    ("sqlite:////tmp/p%41x/mlflow.db", "sqlite:////tmp/p%41x/mlflow.db",
     "sqlite:////tmp/p%41x/mlflow.db"),
]


@pytest.mark.parametrize(("given", "masked", "stored"), TABLE)
def test_masking_table(given, masked, stored):
    assert mask(given) == masked
    assert strip_password(given) == stored
    assert S not in mask(given) and S not in strip_password(given)


@pytest.mark.parametrize("given", [row[0] for row in TABLE])
def test_urls_inside_lines_and_errors(given):
    line = f"Error: cannot open storage {given}: (psycopg2.OperationalError) refused"
    assert S not in mask(line) and mask(line).startswith("Error: cannot open storage ")
    assert mask(f"'{given}'") == f"'{mask(given)}'"


@pytest.mark.parametrize("text", [
    "host=h user=u password=S3cr dbname=x", "password = 'S3cr' dbname=x",
    'connection to server failed: FATAL: password authentication failed; dsn "password=S3cr"',
    "token=S3cr", "MLFLOW_TRACKING_PASSWORD=S3cr"])
def test_conninfo_keywords(text):
    assert S not in mask(text)


def test_plain_text_is_left_alone():
    for text in ("password authentication failed for user \"u\"", "p=2 activation=tanh",
                 "val top-1 97.50 %, lr=0.1", ""):
        assert mask(text) == text


UNREACHABLE = ["postgresql://u:S3cr@127.0.0.1:1/x", "postgresql://:S3cr@127.0.0.1:1/x",
               "postgresql://u@127.0.0.1:1/x?password=S3cr", "postgresql://u:p@S3cr@127.0.0.1:1/x",
               "postgresql://u:p%40S3cr@127.0.0.1:1/x"]


@pytest.mark.parametrize("url", UNREACHABLE)
@pytest.mark.parametrize("option", ["--storage", "--tracking-uri"])
def test_every_form_is_masked_in_the_one_error_line(tmp_path, url, option):
    """Also: a plain postgresql:// tracking URI gets the installed driver (psycopg2), as the
    storage does, instead of a ModuleNotFoundError traceback."""
    from typer.testing import CliRunner

    from gct_ablate.cli import app

    result = CliRunner().invoke(app, ["run", "--vary", "p", "--seeds", "1", "--workers", "1",
                                      option, url, "--out", str(tmp_path / "o")])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert S not in result.output and "Traceback" not in result.output
    assert "ModuleNotFoundError" not in result.output
    assert not (tmp_path / "o" / "optuna.journal").exists()


@pytest.mark.postgres
def test_a_database_tracking_password_is_never_printed_nor_stored(tmp_path, pg_url):
    """The reported case: the final "Open the runs in MLflow" line printed the password of a
    database tracking URI, and optuna.journal stored it."""
    from conftest import TINY, run_cli

    tracking = pg_url.replace("postgresql://postgres@", f"postgresql://postgres:{S}@")
    result = run_cli(["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "1", *TINY,
                      "--workers", "1", "--tracking-uri", tracking, "--out", "o"], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert S not in result.stdout + result.stderr
    assert "Open the runs in MLflow" in result.stdout
    for path in (tmp_path / "o").rglob("*"):
        if path.is_file():
            assert S.encode() not in path.read_bytes(), path
