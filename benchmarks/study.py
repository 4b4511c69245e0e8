"""Benchmark 3, ``study``: a whole grid run by ``gct-ablate run`` against a hand-written script.

The grid: p in 1,2,3 x activation tanh,sigmoid x 3 seeds (18 trials) of ResNet-20 with GCT
before every conv on digits, 15 epochs. Three candidates, each a subprocess in a fresh temp
folder, timed by wall clock from launch to exit (imports, stores, final summary included):

- ``handwritten``: ``benchmarks/handwritten_study.py`` (Optuna GridSampler, optuna-integration
  MLflowCallback, SQLite stores, DataLoader loop, eager reference GCT, one process);
- ``workers-2`` / ``workers-1``: ``gct-ablate run --vary p,activation ... --workers 2`` / ``1``.

Bookkeeping share. Each candidate runs under a thin timer (the private ``_timed`` entry point
of this module, which then runs the gct-ablate CLI or the script unchanged; about 1 us per
timed call). It times every call into Optuna's storage classes and into MLflow (the
``MlflowClient`` methods and the fluent ``mlflow.*`` functions), counting only the outermost
call. For gct-ablate it also times each trial (``worker.run_trial``: from popping the trial to
``study.tell``) and the pure training inside it (``train_eval`` minus its per-epoch ``report``
callback and its ``on_end`` artifacts hook), so:

    bookkeeping = trial time - pure training time

covers everything a trial does besides training: Optuna storage, MLflow runs, metrics and
artifacts (gate statistics, gate figure, weights), Optuna's trial API. A stored-trials
cross-check needs no timer: sum over trials of (Optuna datetime_start..datetime_complete)
minus ``metrics['seconds']`` (measured inside ``train_eval``) is the bookkeeping outside
``train_eval``, a lower bound. For the hand-written script the share is its storage and MLflow
calls over the time spent in ``study.optimize`` (its trials plus their callbacks).

Targets: ``--workers 2`` at least 1.5x faster than the hand-written script on this
2-core machine; bookkeeping under 5% of trial time.

    python -m benchmarks.study [--epochs 15] [--seeds 3] [--repeats 1] [--quick] [--keep]
"""

from __future__ import annotations

import argparse
import collections
import functools
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "handwritten_study.py"
TIMINGS_ENV = "GCT_ABLATE_BENCH_TIMINGS"  # folder where timed processes write their JSON
TARGET_SPEEDUP = 1.5
TARGET_BOOKKEEPING = 0.05
CANDIDATES = ("handwritten", "workers-2", "workers-1")
LABELS = {"handwritten": "hand-written script", "workers-2": "gct-ablate --workers 2",
          "workers-1": "gct-ablate --workers 1"}


# ------------------------------------------------------------------------ timing (in-process)
class Timings:
    """Seconds and counts of timed calls (outermost only) and of spans, for one process."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.calls: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
        self.spans: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])

    def _add(self, table: dict[str, list[float]], key: str, seconds: float) -> None:
        with self.lock:
            table[key][0] += seconds
            table[key][1] += 1

    def _where(self) -> str:
        if threading.current_thread() is not threading.main_thread():
            return "other-thread"
        return "trial" if getattr(self.local, "in_trial", False) else "outside"

    def call(self, fn: Any, category: str) -> Any:
        """Time ``fn`` as ``category`` unless a timed call is already running in this thread."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            local = self.local
            if getattr(local, "busy", False):
                return fn(*args, **kwargs)
            local.busy = True
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(self.calls, f"{category}|{self._where()}", time.perf_counter() - start)
                local.busy = False

        return timed

    def span(self, fn: Any, name: str, trial: bool = False) -> Any:
        """Time every call of ``fn``; ``trial`` marks calls made inside it as in-trial."""

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if trial:
                self.local.in_trial = True
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._add(self.spans, name, time.perf_counter() - start)
                if trial:
                    self.local.in_trial = False

        return timed

    def dump(self, role: str) -> None:
        folder = os.environ.get(TIMINGS_ENV)
        if not folder:
            return
        data = {"pid": os.getpid(), "role": role, "calls": dict(self.calls),
                "spans": dict(self.spans)}
        Path(folder, f"{role}-{os.getpid()}.json").write_text(json.dumps(data))


def _instrument_stores(timings: Timings) -> None:
    """Time Optuna storage methods and MLflow client / fluent calls."""
    import mlflow
    import mlflow.tracking.fluent as fluent
    import optuna.storages as storages
    from mlflow import MlflowClient
    from optuna.storages._cached_storage import _CachedStorage

    classes = (storages.BaseStorage, storages.RDBStorage, storages.JournalStorage,
               storages.InMemoryStorage, _CachedStorage)
    for cls in classes:
        for name, fn in list(vars(cls).items()):
            if inspect.isfunction(fn) and not name.startswith("_"):
                setattr(cls, name, timings.call(fn, "storage"))
    for name, fn in list(vars(MlflowClient).items()):
        if inspect.isfunction(fn) and (not name.startswith("_") or name == "__init__"):
            setattr(MlflowClient, name, timings.call(fn, "mlflow"))
    for name in ("start_run", "end_run", "set_experiment", "set_tracking_uri", "log_metric",
                 "log_metrics", "log_param", "log_params", "set_tag", "set_tags", "log_dict",
                 "log_text", "log_artifact", "log_figure"):
        original = getattr(mlflow, name, None)
        if original is None:
            continue
        timed = timings.call(original, "mlflow")
        setattr(mlflow, name, timed)
        if getattr(fluent, name, None) is original:
            setattr(fluent, name, timed)


def _instrument_gct_ablate(timings: Timings) -> None:
    """Spans: each trial, its ``train_eval``, the ``report`` callback and the ``on_end`` hook."""
    import gct_ablate.train as train
    import gct_ablate.worker as worker

    worker.run_trial = timings.span(worker.run_trial, "trial", trial=True)
    original = train.train_eval

    def train_eval(cfg: Any, report: Any = None, *, on_end: Any = None) -> Any:
        if report is not None:
            report = timings.span(report, "report")
        if on_end is not None:
            on_end = timings.call(on_end, "artifacts")
        return original(cfg, report, on_end=on_end)

    train.train_eval = timings.span(train_eval, "train_eval")


def _timed_worker_main(opts: Any) -> None:
    """Spawned gct-ablate worker (replaces ``runner._worker_main``): timed, then the original."""
    from gct_ablate import runner

    timings = Timings()
    _instrument_stores(timings)
    _instrument_gct_ablate(timings)
    try:
        runner._worker_main(opts)
    finally:
        timings.dump("worker")


def _timed(argv: list[str]) -> None:
    """``_timed cli ARGS...`` runs the gct-ablate CLI, ``_timed script PATH ARGS...`` a script."""
    kind, rest = argv[0], argv[1:]
    timings = Timings()
    _instrument_stores(timings)
    if kind == "cli":
        from gct_ablate import runner
        from gct_ablate.cli import app

        _instrument_gct_ablate(timings)
        runner._worker_main = _timed_worker_main  # spawned workers time themselves
        try:
            app(args=rest, prog_name="gct-ablate")
        finally:
            timings.dump("main")
        return
    import runpy

    import optuna.study._optimize as optimize

    optimize._optimize_sequential = timings.span(optimize._optimize_sequential, "trial",
                                                 trial=True)
    sys.argv = rest
    try:
        runpy.run_path(rest[0], run_name="__main__")
    finally:
        timings.dump("main")


# ------------------------------------------------------------------------ orchestration
def _commands(epochs: int, seeds: int, out: Path) -> dict[str, list[str]]:
    timed = [sys.executable, "-m", "benchmarks.study", "_timed"]
    grid = ["run", "--vary", "p,activation", "--levels", "p=1,2,3",
            "--levels", "activation=tanh,sigmoid", "--seeds", str(seeds),
            "--set", f"epochs={epochs}"]
    return {
        "handwritten": [*timed, "script", str(SCRIPT), "--epochs", str(epochs),
                        "--seeds", str(seeds), "--out", str(out / "handwritten")],
        "workers-2": [*timed, "cli", *grid, "--workers", "2", "--out", str(out / "workers-2")],
        "workers-1": [*timed, "cli", *grid, "--workers", "1", "--out", str(out / "workers-1")],
    }


def _run(name: str, cmd: list[str], out: Path) -> tuple[float, Path]:
    folder = out / name
    timings = out / f"{name}-timings"
    for path in (folder, timings):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env[TIMINGS_ENV] = str(timings)
    env.setdefault("COLUMNS", "120")
    log = out / f"{name}.log"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    print(f"  {LABELS[name]:<24} {seconds:7.1f} s  (1-min load average before {load:.1f}, "
          f"after {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores)", flush=True)
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        sys.exit(f"{name} failed (exit {rc}); last lines of {log}:\n{tail}")
    return seconds, timings


def _load_timings(folder: Path) -> dict[str, Any]:
    calls: dict[str, float] = collections.defaultdict(float)
    counts: dict[str, int] = collections.defaultdict(int)
    spans: dict[str, float] = collections.defaultdict(float)
    for path in folder.glob("*.json"):
        data = json.loads(path.read_text())
        for key, (seconds, n) in data["calls"].items():
            calls[key] += seconds
            counts[key] += n
        for key, (seconds, _) in data["spans"].items():
            spans[key] += seconds
    return {"calls": calls, "counts": counts, "spans": spans}


def _stored_trials(name: str, folder: Path) -> dict[str, float]:
    """From the stores: trials, summed Optuna durations, time outside train_eval, mean top-1."""
    import optuna

    from gct_ablate.store.open import open_study, study_names
    from gct_ablate.store.records import stored_trials

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if name == "handwritten":
        storage: Any = f"sqlite:///{folder / 'optuna.db'}"
    else:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        storage = JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    (study_name,) = study_names(storage)
    done = [t for t in stored_trials(open_study(storage, study_name)) if t.state == "COMPLETE"]
    durations = [(t.completed - t.started).total_seconds() for t in done
                 if t.completed and t.started]
    inside = sum(t.metrics.get("seconds", 0.0) for t in done)
    return {"trials": len(done), "duration": sum(durations), "train_eval": inside,
            "shortest": min(durations, default=0.0), "longest": max(durations, default=0.0),
            "top1": sum(t.value for t in done) / max(1, len(done))}


def _bookkeeping(name: str, timed: dict[str, Any], stored: dict[str, float]) -> dict[str, float]:
    calls, spans = timed["calls"], timed["spans"]
    trial = spans["trial"]
    storage, mlflow = calls["storage|trial"], calls["mlflow|trial"]
    result = {"trial": trial, "storage": storage, "mlflow": mlflow,
              "outside": calls["storage|outside"] + calls["mlflow|outside"],
              "thread": calls["storage|other-thread"] + calls["mlflow|other-thread"]}
    if name == "handwritten":
        result["total"] = storage + mlflow
        return result
    artifacts = calls["artifacts|trial"]
    pure = spans["train_eval"] - spans["report"] - artifacts
    result.update(total=trial - pure, artifacts=artifacts,
                  other=trial - pure - storage - mlflow - artifacts,
                  stored_outside=stored["duration"] - stored["train_eval"])
    return result


def _summed(per_round: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Sum each value over rounds (``top1``, ``trials``: the mean; ``shortest``, ``longest``)."""
    summed = {}
    for name, dicts in per_round.items():
        summed[name] = {k: sum(d[k] for d in dicts) for k in dicts[0]}
        for key in ("top1", "trials"):
            if key in summed[name]:
                summed[name][key] /= len(dicts)
        if "shortest" in summed[name]:
            summed[name]["shortest"] = min(d["shortest"] for d in dicts)
            summed[name]["longest"] = max(d["longest"] for d in dicts)
    return summed


def _report(rounds: list[dict[str, float]], books: dict[str, dict[str, float]],
            stored: dict[str, dict[str, float]], quick: bool) -> None:
    from benchmarks._util import Ratio, Samples, verdict

    walls = {n: Samples(tuple(r[n] for r in rounds)) for n in CANDIDATES}

    def ratio(slow: str, fast: str) -> Ratio:
        return Ratio(tuple(r[slow] / r[fast] for r in rounds))

    print(f"\nwall time, launch to exit (median, min-max over {len(rounds)} round(s)):")
    for n in CANDIDATES:
        s = stored[n]
        print(f"  {LABELS[n]:<24} {walls[n].text(1.0, 's'):<26} {s['trials']:.0f} trials, "
              f"{s['duration'] / len(rounds) / max(1, s['trials']):.1f} s/trial in Optuna "
              f"({s['shortest']:.1f}-{s['longest']:.1f}), "
              f"mean val top-1 {100 * s['top1']:.1f}%")
    speedup = ratio("handwritten", "workers-2")
    print("ratios:")
    print(f"  hand-written / gct-ablate --workers 2   {speedup.text()}   "
          f"(target >= {TARGET_SPEEDUP}x)")
    print(f"  hand-written / gct-ablate --workers 1   {ratio('handwritten', 'workers-1').text()}")
    print(f"  gct-ablate --workers 1 / --workers 2    {ratio('workers-1', 'workers-2').text()}")

    print("\nbookkeeping share of trial time (summed over rounds and worker processes):")
    print("  gct-ablate: trial = study.run_trial (pop..tell); bookkeeping = trial - pure training"
          " (train_eval minus its report callback and on_end artifacts hook)")
    shares = {}
    for n in ("workers-2", "workers-1"):
        b = books[n]
        shares[n] = b["total"] / b["trial"]
        print(f"  {LABELS[n]:<24} {b['total']:6.2f} s of {b['trial']:7.1f} s = "
              f"{100 * shares[n]:.2f}%  [Optuna storage {b['storage']:.2f} s, MLflow "
              f"{b['mlflow']:.2f} s, artifacts hook (gate stats, figure, weights, their MLflow "
              f"uploads) {b['artifacts']:.2f} s, other (Optuna trial API, Python) "
              f"{b['other']:.2f} s]")
        print(f"  {'':<24} cross-check from the stores, no timer: Optuna trial duration minus "
              f"metrics['seconds'] = {b['stored_outside']:.2f} s = "
              f"{100 * b['stored_outside'] / max(1e-9, stored[n]['duration']):.2f}% of "
              f"{stored[n]['duration']:.1f} s (bookkeeping outside train_eval only)")
        print(f"  {'':<24} outside trials, main thread (startup, queue polls, summary): "
              f"{b['outside']:.2f} s; progress display thread polling the storage: "
              f"{b['thread']:.2f} s")
    b = books["handwritten"]
    print(f"  {LABELS['handwritten']:<24} {b['total']:6.2f} s of {b['trial']:7.1f} s "
          f"(study.optimize: trials + callbacks) = {100 * b['total'] / b['trial']:.2f}%  "
          f"[Optuna storage {b['storage']:.2f} s, MLflow {b['mlflow']:.2f} s]")

    checks = [
        (f"--workers 2 only {speedup.median:.2f}x faster than the hand-written script "
         f"(target {TARGET_SPEEDUP}x)", speedup.median >= TARGET_SPEEDUP),
        *((f"{LABELS[n]} bookkeeping {100 * shares[n]:.1f}% of trial time (target < "
           f"{100 * TARGET_BOOKKEEPING:.0f}%)", shares[n] < TARGET_BOOKKEEPING) for n in shares),
    ]
    line = verdict(checks)
    print(line + ("  [--quick: not the target configuration]" if quick else ""))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_timed":
        _timed(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.study",
        description="Wall time of a whole grid: gct-ablate run (2 and 1 workers) against a "
        "hand-written Optuna + MLflowCallback script; bookkeeping share of trial time.")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial (default 15)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (default 3)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds of the three runs, order rotated (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke check: 3 epochs, 1 seed (6 trials)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders and logs")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 3, 1

    import torch

    out = Path(tempfile.mkdtemp(prefix="gct-bench-study-"))
    commands = _commands(args.epochs, args.seeds, out)
    print(f"benchmark study: p 1,2,3 x activation tanh,sigmoid x {args.seeds} seed(s) = "
          f"{6 * args.seeds} trials, {args.epochs} epochs, digits, ResNet-20 + GCT every conv")
    cores = os.cpu_count() or 1
    print(f"torch {torch.__version__}, {cores} cores; torch threads: hand-written "
          f"{torch.get_num_threads()} (default), --workers 2: 2 processes x {max(1, cores // 2)}, "
          f"--workers 1: 1 x {cores}; each run a subprocess in a fresh folder under {out}")
    rounds: list[dict[str, float]] = []
    books: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    stored: dict[str, list[dict[str, float]]] = collections.defaultdict(list)
    try:
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}:", flush=True)
            walls: dict[str, float] = {}
            for name in CANDIDATES[r % 3:] + CANDIDATES[:r % 3]:
                walls[name], folder = _run(name, commands[name], out)
                stored[name].append(_stored_trials(name, out / name))
                books[name].append(_bookkeeping(name, _load_timings(folder), stored[name][-1]))
            rounds.append(walls)
        _report(rounds, _summed(books), _summed(stored), args.quick)
    finally:
        if args.keep:
            print(f"kept: {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
