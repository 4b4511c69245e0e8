"""What a study will cost, estimated before anything is queued.

Trials still to run x their epochs x the seconds per epoch of this model on this data on
this machine: measured on the study's own finished trials when it has some, else from a
few training steps of the actual model on the actual data (calibration). A study above
the limits (by default 500 trials or 2 hours) is not started unless the caller confirms.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gct_ablate.designs import ofat_size
from gct_ablate.errors import UsageError
from gct_ablate.spec import StudySpec, TrialConfig, cell_id

DEFAULT_MAX_TRIALS = 500
DEFAULT_MAX_HOURS = 2.0


class TooCostly(UsageError):
    """A study above the cost limits that nobody confirmed (nothing was queued)."""


@dataclass(frozen=True)
class CostLimits:
    """Ask before a study that runs more than ``trials`` trials or ``hours`` hours here."""

    trials: int = DEFAULT_MAX_TRIALS
    hours: float = DEFAULT_MAX_HOURS


@dataclass(frozen=True)
class CostEstimate:
    """What is left of a study, and how long it takes on this machine."""

    trials: int  # cell x seed trials still to run
    cells: int
    seeds: int
    epochs: int  # epochs of those trials, all together
    epoch_seconds: float  # of one trial, one worker
    source: str  # where epoch_seconds comes from
    workers: int
    ofat_cells: int  # the ofat design of the same factors and levels
    limits: CostLimits

    @property
    def hours(self) -> float:
        """Wall-clock hours with ``workers`` local workers."""
        return self.epochs * self.epoch_seconds / max(1, self.workers) / 3600

    @property
    def over(self) -> bool:
        return self.trials > self.limits.trials or self.hours > self.limits.hours

    def line(self) -> str:
        """One line: the trials, the rate, the hours, the limits."""
        per = f"{self.epochs / self.trials:.3g}" if self.trials else "0"
        serial = self.epochs * self.epoch_seconds / 3600
        return (f"{self.trials:,} trials to run ({self.cells:,} cells x {self.seeds} seeds) x "
                f"{per} epoch(s) at {self.epoch_seconds:.2g} s per epoch ({self.source}) = "
                f"about {_hours(serial)} of training, {_hours(self.hours)} with "
                f"{self.workers} worker(s) here; limits: {self.limits.trials:,} trials or "
                f"{self.limits.hours:g} h")

    def ofat_line(self) -> str:
        return (f"--design ofat of the same factors: {self.ofat_cells:,} cells, "
                f"{self.ofat_cells * self.seeds:,} trials")


def _hours(h: float) -> str:
    if not math.isfinite(h):
        return "forever"
    return f"{h * 60:.0f} min" if h < 1 else f"{h:,.1f} h"


def estimate_cost(spec: StudySpec, study: Any = None, *, workers: int = 1,
                  limits: CostLimits = CostLimits()) -> CostEstimate:
    """The estimate for ``spec``; ``study`` is its stored Optuna study (None: a new one),
    whose finished trials say what is done and how fast an epoch runs."""
    from optuna.trial import TrialState

    from gct_ablate.store.records import stored_trials

    cells = spec.cells()
    default_epochs = spec.config(()).epochs
    total_epochs = sum(int(dict(c).get("epochs", default_epochs)) for c in cells) * spec.seeds
    total = len(cells) * spec.seeds
    done: set[tuple[str, int]] = set()
    seconds = epochs_done = 0.0
    if study is not None:
        wanted = {cell_id(c) for c in cells}
        for t in stored_trials(study, (TrialState.COMPLETE, TrialState.PRUNED)):
            if t.cell in wanted and t.seed is not None and t.seed < spec.seeds:
                done.add((t.cell, t.seed))
            metrics = t.metrics
            if metrics.get("seconds") and metrics.get("epochs_done"):
                seconds += float(metrics["seconds"])
                epochs_done += float(metrics["epochs_done"])
    left = total - len(done)
    epochs = round(total_epochs * left / total) if total else 0
    if epochs_done:
        rate, source = seconds / epochs_done, "measured on this study's finished trials"
    elif left:
        rate, source = calibrate_study(spec, workers)
    else:
        rate, source = 0.0, "nothing left to run"
    return CostEstimate(trials=left, cells=len(cells), seeds=spec.seeds, epochs=epochs,
                        epoch_seconds=rate, source=source, workers=workers,
                        ofat_cells=ofat_size(spec.levels), limits=limits)


def check_cost(estimate: CostEstimate,
               confirm: Callable[[CostEstimate], bool] | None = None) -> None:
    """Nothing below the limits; above them ``confirm(estimate)`` must say yes, else (or
    without ``confirm``) a one-line :class:`TooCostly`."""
    if not estimate.over:
        return
    if confirm is not None and confirm(estimate):
        return
    raise TooCostly(f"{estimate.line()}; not started, nothing was queued ({estimate.ofat_line()})")


def calibrate_study(spec: StudySpec, workers: int) -> tuple[float, str]:
    """Seconds per epoch of the study's trials here, from the reference cell's model and
    data; one calibration per model, dataset and batch size the design varies, weighted by
    their epochs."""
    from gct_ablate.runner import threads_per_worker

    threads = threads_per_worker(workers, spec.base.threads)
    keys = [k for k in ("model", "dataset", "batch_size", "epochs") if k in spec.vary]
    reference = dict(spec.reference_cell())
    weights: dict[tuple[str, ...], int] = {}
    for cell in spec.cells():
        values = dict(cell)
        key = tuple(values[k] for k in keys)
        weights[key] = weights.get(key, 0) + 1
    rates, epochs = {}, {}
    for key in weights:
        cfg = spec.config(tuple({**reference, **dict(zip(keys, key, strict=True))}.items()))
        shape = (cfg.model, cfg.dataset, cfg.batch_size)
        if shape not in rates:
            rates[shape] = calibrate(cfg, threads)
        epochs[key] = (shape, cfg.epochs * weights[key])
    weight = sum(w for _, w in epochs.values()) or 1
    rate = sum(rates[shape] * w for shape, w in epochs.values()) / weight
    shown = ", ".join(f"{m} on {d}" for m, d, _ in list(rates)[:3])
    more = f" and {len(rates) - 3} more" if len(rates) > 3 else ""
    return rate, f"calibrated here: {shown}{more}, {threads} thread(s)"


def calibrate(cfg: TrialConfig, threads: int | None = None, budget: float = 1.0) -> float:
    """Seconds per epoch (training plus evaluation) of ``cfg``'s model on its data here,
    from a few timed training steps after one warm-up step (about ``budget`` seconds)."""
    import torch
    import torch.nn.functional as F

    from gct_ablate.models import build_trial
    from gct_ablate.train import param_groups, resolve_device

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rng = torch.get_rng_state()
    try:
        device = resolve_device(cfg.device)
        model, data = build_trial(cfg, device)
        model.train()
        optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay, cfg.beta_decay),
                                    lr=cfg.lr, momentum=0.9, nesterov=True)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times: list[float] = []
        started = time.perf_counter()
        generator = torch.Generator(device=data.train_x.device).manual_seed(0)
        for x, y in data.batches("train", cfg.batch_size, shuffle=True, generator=generator,
                                 augment=True, drop_last=data.train_y.numel() > cfg.batch_size):
            tic = time.perf_counter()
            loss = F.cross_entropy(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()
            times.append(time.perf_counter() - tic)
            if len(times) >= 4 or (len(times) >= 2 and time.perf_counter() - started > budget):
                break
        step = statistics.median(times[1:] or times)
        train_steps = math.ceil(data.train_y.numel() / cfg.batch_size)
        # evaluation: forward passes only, about a third of a training step per sample
        evaluation = step / 3 * data.val_y.numel() / cfg.batch_size
        return step * train_steps + evaluation
    finally:
        torch.set_num_threads(previous)
        torch.set_rng_state(rng)
