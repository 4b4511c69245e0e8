"""Run a study's workers (in this process or N spawned ones) under a live progress display."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from gct_ablate._util import stop_signals, tune_malloc
from gct_ablate.devices import gpu_index
from gct_ablate.errors import UsageError, disk_full
from gct_ablate.storage import open_storage
from gct_ablate.store.open import open_study
from gct_ablate.store.records import StoredTrial, stored_trials
from gct_ablate.worker import Interrupted, WorkerOptions, interrupted_by, run_worker


def threads_per_worker(workers: int, threads: int | None) -> int:
    """Each of N workers gets its share of the cores, so they do not oversubscribe."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, so an orphan re-queues its trial and stops."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _worker_main(opts: WorkerOptions) -> None:
    _die_with_parent()
    tune_malloc()
    import torch

    torch.set_num_threads(opts.base.threads or 1)
    index = gpu_index(opts.base.device)
    if index is not None:  # its CUDA context on its own GPU only
        torch.cuda.set_device(index)
    try:
        run_worker(opts)
    except (KeyboardInterrupt, Interrupted):
        sys.exit(130)
    except (UsageError, OSError) as err:  # one line, as the lead prints it
        if isinstance(err, OSError) and not disk_full(err):
            raise
        from gct_ablate.masking import mask

        print(f"Error: {mask(str(err))}", file=sys.stderr)
        sys.exit(2)


_PRIORITY = {"COMPLETE": 0, "PRUNED": 1, "RUNNING": 2, "WAITING": 3, "FAIL": 4}


def progress(study: optuna.Study) -> dict[str, Any]:
    """Counts per cell x seed (its most advanced trial) and the running trials (records)."""
    best: dict[tuple[str, int], StoredTrial] = {}
    durations: list[float] = []
    for t in stored_trials(study):
        if t.key is None:
            continue
        if t.key not in best or _PRIORITY[t.state] < _PRIORITY[best[t.key].state]:
            best[t.key] = t
        if t.state == "COMPLETE" and t.started and t.completed:
            durations.append((t.completed - t.started).total_seconds())
    counts = {"complete": 0, "pruned": 0, "running": 0, "waiting": 0, "fail": 0}
    for t in best.values():
        counts[t.state.lower()] += 1
    running = [t for t in best.values() if t.state == "RUNNING"]
    return {"counts": counts, "running": running, "durations": durations, "total": len(best)}


def _render(name: str, info: dict[str, Any], epochs: int, started: float, workers: int) -> Any:
    c = info["counts"]
    total = max(1, info["total"])
    finished = c["complete"] + c["pruned"] + c["fail"]
    elapsed = time.monotonic() - started
    left = c["waiting"] + c["running"]
    mean = sum(info["durations"]) / len(info["durations"]) if info["durations"] else None
    eta = f"{mean * left / max(1, workers):.0f}s" if mean is not None else "?"
    width = 30
    filled = int(width * finished / total)
    head = Text.assemble(
        (f"{name} ", "bold"), ("[" + "#" * filled + "-" * (width - filled) + "] ", "cyan"),
        f"{finished}/{info['total']}  ",
        (f"done {c['complete']} ", "green"), (f"running {c['running']} ", "yellow"),
        (f"waiting {c['waiting']} ", "white"), (f"failed {c['fail']} ", "red"),
        (f"pruned {c['pruned']} ", "magenta"),
        f" elapsed {elapsed:.0f}s  remaining ~{eta}",
    )
    table = Table(box=None, show_header=True, header_style="dim", pad_edge=False)
    for col in ("trial", "cell", "seed", "epoch", "worker", "device"):
        table.add_column(col)
    for t in sorted(info["running"], key=lambda t: t.number)[:8]:
        table.add_row(str(t.number), t.cell or "-", str(t.seed), f"{len(t.curve)}/{epochs}",
                      f"{t.host or '?'}:{t.pid or '?'}", t.device or "?")
    return Group(head, table) if info["running"] else head


class LiveDisplay:
    """Polls the storage from a thread and redraws the progress."""

    def __init__(self, opts: WorkerOptions, epochs: int, workers: int, console: Console):
        self.opts, self.epochs, self.workers, self.console = opts, epochs, workers, console
        self.started = time.monotonic()
        self._stop = threading.Event()
        storage = open_storage(opts.storage, Path(opts.out_dir),
                               heartbeat_interval=opts.heartbeat_interval,
                               grace_period=opts.grace_period)
        self.study = open_study(storage, opts.study_name)
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _draw(self) -> None:
        info = progress(self.study)
        self.live.update(_render(self.opts.study_name, info, self.epochs, self.started,
                                 self.workers))

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            with contextlib.suppress(Exception):  # display is best effort
                self._draw()

    def __enter__(self) -> LiveDisplay:
        self.live.__enter__()
        self._draw()
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.thread.join()
        with contextlib.suppress(Exception):
            self._draw()
        self.live.__exit__(*exc)
        self.console.print()


def run_workers(opts: WorkerOptions, workers: int, epochs: int, console: Console | None = None,
                devices: Sequence[str] | None = None) -> list[int]:
    """Run ``workers`` workers to the end of the queue, under a live display on ``console``.

    One worker runs in this process (already warm); the other N-1 are spawned processes
    (one ``import torch`` each), each worker with its share of the cores. ``devices``: the
    device of each worker (:func:`gct_ablate.devices.worker_devices`; default: every worker
    on ``opts.base.device``), the first one this process's. Ctrl-C or
    SIGTERM stops them cleanly: their running trials are failed and re-queued, so the
    same command resumes. Returns the exit codes of spawned workers that failed.
    """
    import torch

    threads = threads_per_worker(workers, opts.base.threads)
    opts = replace(opts, base=opts.base.replace(threads=threads))
    devices = list(devices or [opts.base.device] * workers)
    if len(devices) != workers:
        raise ValueError(f"{len(devices)} devices for {workers} workers")
    each = [replace(opts, base=opts.base.replace(device=d)) for d in devices]
    procs: list[Any] = []
    display = (LiveDisplay(opts, epochs, workers, console) if console is not None
               else contextlib.nullcontext())
    previous = torch.get_num_threads()
    try:
        with stop_signals(interrupted_by), display:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_main, args=(o,), daemon=False)
                     for o in each[1:]]
            for i, p in enumerate(procs):  # they start while this process, already warm, works
                try:
                    p.start()
                except OSError as err:  # out of processes or memory: one line, trials kept
                    raise UsageError(f"cannot start worker process {i + 2} of {workers}: "
                                     f"{err.strerror or err}; pass fewer --workers") from None
            torch.set_num_threads(threads)
            tune_malloc()
            index = gpu_index(devices[0])
            with torch.cuda.device(index) if index is not None else contextlib.nullcontext():
                run_worker(each[0])
            for p in procs:
                p.join()
    except BaseException:
        _stop(procs)
        raise
    finally:
        torch.set_num_threads(previous)
    return [p.exitcode for p in procs if p.exitcode]


MANY_WORKERS = 4  # workers per core allowed without --allow-many-workers


def check_workers(workers: int, allow_many: bool = False) -> int:
    """``workers`` if at least 1 and at most cores x 4 (unless ``allow_many``); else one line."""
    cores = os.cpu_count() or 1
    if workers < 1:
        raise UsageError(f"invalid --workers {workers}; must be >= 1")
    if workers > MANY_WORKERS * cores and not allow_many:
        raise UsageError(f"--workers {workers} is more than {MANY_WORKERS} per core "
                         f"({cores} core(s) here: at most {MANY_WORKERS * cores}); pass "
                         "--allow-many-workers to start them anyway")
    return workers


def _stop(procs: list[Any]) -> None:
    """SIGTERM the spawned workers (they fail and re-queue their trials) and wait."""
    started = [p for p in procs if p.pid is not None]  # a process that never started: no join
    for p in started:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGTERM)
    for p in started:
        p.join(timeout=60)
