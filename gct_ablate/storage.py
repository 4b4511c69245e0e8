"""Optuna storages: the local journal file by default, or an RDB URL shared by workers."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from gct_ablate._util import mask_url
from gct_ablate.errors import UsageError
from gct_ablate.locks import database_lock, driver_url
from gct_ablate.masking import check_url
from gct_ablate.recovery import requeue_stale
from gct_ablate.store.open import study_names

JOURNAL_NAME = "optuna.journal"
HEARTBEAT_INTERVAL = 10  # seconds, RDB storages only
GRACE_PERIOD = 30  # a RUNNING trial without heartbeat for this long is failed and re-queued

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_label(storage: str | None, out_dir: Path) -> str:
    return mask_url(storage) if storage else str((out_dir / JOURNAL_NAME).resolve())


_OPENED: dict[tuple[Any, ...], tuple[optuna.storages.BaseStorage, int]] = {}


def journal_file(storage: str | None, out_dir: Path) -> Path | None:
    """The journal file of ``storage`` (None: the default one in ``out_dir``); None for a
    database URL."""
    if storage is None:
        return out_dir / JOURNAL_NAME
    if storage.endswith(".journal") or storage.startswith("journal:"):
        return Path(storage.removeprefix("journal:"))
    return None


def open_storage(
    storage: str | None,
    out_dir: Path,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """The storage (see :func:`_open_new`), opened once per process: every later call for
    the same storage returns the same handle. A journal file replaced or shortened since
    (rewritten by hand, repaired) is opened afresh."""
    key, size = _identity(storage, out_dir, heartbeat_interval, grace_period)
    if key in _OPENED and size >= _OPENED[key][1]:
        _OPENED[key] = (_OPENED[key][0], size)
        return _OPENED[key][0]
    opened = _open_new(storage, out_dir, heartbeat_interval=heartbeat_interval,
                       grace_period=grace_period, create=create)
    key, size = _identity(storage, out_dir, heartbeat_interval, grace_period)  # a new file
    if key[-1] is not None:
        _OPENED[key] = (opened, size)
    return opened


def _identity(storage: str | None, out_dir: Path, heartbeat_interval: int,
              grace_period: int) -> tuple[tuple[Any, ...], int]:
    """What tells one storage from another, and a journal file's size (RDB: 0)."""
    path = journal_file(storage, out_dir)
    if path is not None:
        path = path.resolve()
        try:
            stat = path.stat()
        except OSError:
            return ("journal", str(path), None), 0  # created by the open: not kept
        return ("journal", str(path), stat.st_dev, stat.st_ino), stat.st_size
    return ("rdb", storage, heartbeat_interval, grace_period), 0


def _open_new(
    storage: str | None,
    out_dir: Path,
    *,
    heartbeat_interval: int = HEARTBEAT_INTERVAL,
    grace_period: int = GRACE_PERIOD,
    create: bool = True,
) -> optuna.storages.BaseStorage:
    """The default journal file in ``out_dir``, a '*.journal' path, or an RDB URL.

    RDB storages get heartbeats: a trial whose worker dies is failed after
    ``grace_period`` seconds and re-queued. Unreachable storage: one-line UsageError; so is
    a missing journal file when not ``create`` (read commands make no file), and a journal
    damaged before its last record (:mod:`gct_ablate.store.journal`).
    """
    from optuna.storages.journal import JournalStorage

    from gct_ablate.store.journal import GuardedJournal

    path = journal_file(storage, out_dir)
    if path is not None:
        if not create and not path.is_file():
            raise UsageError(f"no study storage {path}; pass --out DIR (the folder of the "
                             "study's first run) or --storage URL")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(GuardedJournal(str(path)))
        except OSError as err:
            raise UsageError(f"cannot use storage {path}: {err.strerror or err}") from None
    url = driver_url(check_url(storage))
    try:
        with database_lock(url, "schema"):  # one process at a time creates the tables
            return _rdb_storage(url, storage, heartbeat_interval, grace_period)
    except Exception as err:  # sqlalchemy/driver errors differ per backend
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"cannot open storage {mask_url(storage)}: {reason}") from None


_CREATION_CONFLICTS = ("already exists", "duplicate key", "duplicate entry")


def _rdb_storage(url: str, given: str, heartbeat_interval: int, grace_period: int
                 ) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage; retried when another program creates its tables at the same time
    (the tool's own processes take the schema lock first)."""
    attempt = 0
    while True:
        try:
            with warnings.catch_warnings():  # Optuna calls heartbeats experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True, **_connect_timeout(given)},
                    heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                    heartbeat_stale_trial_callback=requeue_stale)
        except Exception as err:
            attempt += 1
            if attempt == 5 or not any(k in str(err).lower() for k in _CREATION_CONFLICTS):
                raise
            time.sleep(0.2 * attempt)


def _connect_timeout(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": 5}}
    if url.startswith("mysql"):
        return {"connect_args": {"connect_timeout": 5}}
    return {}


def open_named_study(out: str | Path, storage: str | None, name: str | None
                     ) -> tuple[optuna.storages.BaseStorage, str]:
    """The opened storage of ``out`` (or ``storage``) and the study to read: ``name``, or
    the only study there when it is None; one-line errors for no storage or no single study."""
    out = Path(out)
    if storage is None and not (out / JOURNAL_NAME).exists():
        raise UsageError(f"no study storage in {out}; pass --out DIR or --storage URL")
    opened = open_storage(storage, out, create=False)
    if name is None:
        names = study_names(opened)
        if len(names) != 1:
            raise UsageError(f"name a study; this storage has: {', '.join(names) or 'none'}")
        name = names[0]
    return opened, name
