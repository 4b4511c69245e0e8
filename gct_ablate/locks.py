"""Cross-process locks: creating a store, creating a study and queueing cells happen once.

Each engine's own means: an ``flock`` on a file beside a local store (the Optuna journal,
an SQLite database, MLflow's SQLite store), a session-level advisory lock on PostgreSQL
(``pg_advisory_lock``), a named lock on MySQL/MariaDB (``GET_LOCK``). A process that dies
releases its locks with it (the file is closed, the database session ends).

Locks are re-entrant within a process: a block that holds one may call code that takes it
again (preparing a study reaps dead trials, which re-queues them under the same lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".gct-ablate.lock"
WAIT = 600  # seconds a database lock is waited for before giving up

_held: dict[str, int] = {}  # lock key -> depth in this process
_guards: dict[str, threading.RLock] = {}
_registry = threading.Lock()


def _guard(key: str) -> threading.RLock:
    with _registry:
        return _guards.setdefault(key, threading.RLock())


@contextlib.contextmanager
def _reentrant(key: str, acquire: Any) -> Iterator[None]:
    """Hold ``acquire()`` (a context manager factory) once per process for ``key``."""
    guard = _guard(key)
    with guard:
        if _held.get(key):
            _held[key] += 1
            try:
                yield
            finally:
                _held[key] -= 1
            return
        with acquire():
            _held[key] = 1
            try:
                yield
            finally:
                _held[key] = 0


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def file_lock(target: str | Path, name: str = "") -> contextlib.AbstractContextManager[None]:
    """Exclusive lock on the hidden file ``.TARGET[.NAME].gct-ablate.lock`` beside TARGET."""
    target = Path(target).resolve()
    suffix = f".{_safe(name)}{LOCK_SUFFIX}" if name else LOCK_SUFFIX
    path = target.with_name(f".{target.name}{suffix}")
    return _reentrant(f"file:{path}", lambda: _flock(path))


def _safe(name: str) -> str:
    """A short file-name form of a lock name (study names may hold any character)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _lock_id(url: str, name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    digest = hashlib.sha256(f"gct-ablate:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _database_lock(engine: Any, url: str, name: str) -> Iterator[None]:
    from sqlalchemy import text

    with engine.connect() as conn:
        if url.startswith("postgresql"):
            key = _lock_id(url, name)
            conn.execute(text(f"SET lock_timeout = '{WAIT}s'"))
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:  # mysql / mariadb: lock names are at most 64 characters
            key = "gct-ablate:" + _safe(name)
            got = conn.execute(text("SELECT GET_LOCK(:k, :t)"), {"k": key, "t": WAIT}).scalar()
            if got != 1:
                raise TimeoutError(f"could not take database lock {key} in {WAIT} s")
            try:
                yield
            finally:
                conn.execute(text("SELECT RELEASE_LOCK(:k)"), {"k": key})


def driver_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 if only it is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of an ``sqlite:///`` URL (None for in-memory or other URLs)."""
    if not url.startswith("sqlite:///"):
        return None
    from urllib.parse import unquote

    path = unquote(url[len("sqlite:///"):].split("?", 1)[0])  # as SQLAlchemy reads it
    return None if path in ("", ":memory:") else Path(path)


def database_lock(url: str, name: str, engine: Any = None
                  ) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock ``name`` held by this process on the database at ``url``.

    SQLite: a file lock beside the database. PostgreSQL / MySQL: the server's own lock
    (``engine``: an SQLAlchemy engine for ``url``; one is made, without pooling, if None).
    """
    path = sqlite_path(url)
    if path is not None:
        return file_lock(path, name)
    if not url.startswith(("postgresql", "mysql")):
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def acquire() -> Iterator[None]:
        if engine is not None:
            with _database_lock(engine, url, name):
                yield
            return
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        own = create_engine(driver_url(url), poolclass=NullPool,
                            connect_args={"connect_timeout": 5})
        try:
            with _database_lock(own, url, name):
                yield
        finally:
            own.dispose()

    return _reentrant(f"db:{url}:{name}", acquire)


def storage_lock(storage: Any, name: str) -> contextlib.AbstractContextManager[None]:
    """Lock ``name`` on an Optuna storage: its journal file, or its database."""
    from gct_ablate.store import _optuna

    journal = _optuna.journal_path(storage)
    if journal is not None:
        return file_lock(journal, name)
    rdb = _optuna.rdb_storage(storage)
    if rdb is not None:
        return database_lock(rdb.url, name, rdb.engine)
    return contextlib.nullcontext()  # in-memory storage: one process


def study_lock(study: Any) -> contextlib.AbstractContextManager[None]:
    """The lock under which a study is created, its grid queued and trials re-queued."""
    from gct_ablate.store import _optuna

    return storage_lock(_optuna.storage_of(study), f"study:{study.study_name}")
