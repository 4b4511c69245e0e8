"""Small helpers shared by every layer (no heavy imports)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from gct_ablate.masking import mask as mask_url  # noqa: F401  (the one masking function)

DEFAULT_OUT = Path("gct-ablate-runs")  # the local stores when no --out is given


def cache_dir() -> Path:
    """Where built and computed things are kept between processes: ``$GCT_ABLATE_CACHE``,
    else ``$XDG_CACHE_HOME/gct_ablate`` (default ``~/.cache/gct_ablate``)."""
    base = os.environ.get("GCT_ABLATE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gct_ablate")
    return Path(base)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it (the umask's
    permissions), flushed to disk, then renamed: processes writing at once leave one whole
    file, nothing half-written is ever read, and a crash leaves the old file or the new."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc): no page faults on every large allocation.

    With glibc's defaults, tensors of a few MiB are returned to the OS when freed and the
    next allocation faults its pages in again, which can cost more than the kernel that
    fills them. True if applied (glibc only); the gain is measured in benchmarks/README.md.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                and libc.mallopt(m_trim_threshold, 1 << 30))


_pending: list[BaseException] = []
_depth = [0]  # nested stop_signals blocks: the outermost one forgets the pending signal


def _raise(exc: BaseException) -> NoReturn:
    _pending.append(exc)
    raise exc


@contextlib.contextmanager
def stop_signals(on_term: Callable[[int], BaseException]) -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt and SIGTERM ``on_term(signum)``, and each is also kept
    for :func:`raise_pending` until the block ends.

    Python ignores an exception raised in a finalizer or a weakref callback (SQLAlchemy runs
    some at garbage collection): a Ctrl-C that lands in one was lost, and the run went on to
    its end. Long loops call :func:`raise_pending`. Main thread only (elsewhere: no change).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers: dict[int, Any] = {
        signal.SIGINT: lambda signum, frame: _raise(KeyboardInterrupt()),
        signal.SIGTERM: lambda signum, frame: _raise(on_term(signum)),
    }
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if not _depth[0]:
            _pending.clear()


def raise_pending() -> None:
    """Raise again a stop signal whose exception was swallowed (see :func:`stop_signals`)."""
    if _pending:
        raise _pending[-1]
