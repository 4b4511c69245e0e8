"""Cross-process locks: a file lock and PostgreSQL's advisory lock exclude other processes,
are re-entrant within one, and are released when their holder dies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gct_ablate.locks import database_lock, file_lock, storage_lock
from gct_ablate.storage import open_storage

HOLD = """
import sys, time
from gct_ablate.locks import {kind}
with {kind}({target!r}, "k"):
    print("held", flush=True)
    time.sleep({seconds})
"""


def hold_in_child(kind: str, target: str, seconds: float) -> subprocess.Popen:
    """A child process that takes the lock, says so, and keeps it for ``seconds``."""
    code = HOLD.format(kind=kind, target=target, seconds=seconds)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env={"PYTHONPATH": str(Path(__file__).parents[1])})
    assert child.stdout.readline().strip() == "held"
    return child


def waited(lock) -> float:
    start = time.monotonic()
    with lock:
        return time.monotonic() - start


def test_a_file_lock_excludes_another_process_until_it_lets_go(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    child = hold_in_child("file_lock", target, 1.5)
    assert waited(file_lock(target, "k")) > 1.0
    child.wait()
    assert waited(file_lock(target, "k")) < 0.5
    assert waited(file_lock(target, "other")) < 0.5  # another name, another lock


def test_a_file_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    target = str(tmp_path / "store.db")
    child = hold_in_child("file_lock", target, 60)
    child.kill()
    child.wait()
    assert waited(file_lock(target, "k")) < 0.5


def test_locks_are_reentrant_in_a_process_and_exclude_its_other_threads(tmp_path) -> None:
    order: list[str] = []

    def other() -> None:
        with file_lock(tmp_path / "x", "k"):
            order.append("thread")

    with file_lock(tmp_path / "x", "k"), file_lock(tmp_path / "x", "k"):  # no deadlock
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.3)
        order.append("main")
    thread.join(5)
    assert order == ["main", "thread"]


def test_a_postgres_advisory_lock_excludes_another_process(pg_url: str) -> None:
    child = hold_in_child("database_lock", pg_url, 1.5)
    assert waited(database_lock(pg_url, "k")) > 1.0
    child.wait()
    assert waited(database_lock(pg_url, "k")) < 1.0


def test_a_postgres_advisory_lock_is_released_when_its_holder_is_killed(pg_url: str) -> None:
    child = hold_in_child("database_lock", pg_url, 60)
    child.kill()
    child.wait()
    assert waited(database_lock(pg_url, "k")) < 5.0  # the server ends the dead session


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_storage_lock_is_the_lock_of_its_file(tmp_path: Path, kind: str) -> None:
    url = (str(tmp_path / "o.journal") if kind == "journal"
           else f"sqlite:///{tmp_path / 'o.db'}")
    storage = open_storage(url, tmp_path)
    target = str(tmp_path / ("o.journal" if kind == "journal" else "o.db"))
    child = hold_in_child("file_lock", target, 1.5)
    assert waited(storage_lock(storage, "k")) > 1.0
    child.wait()
