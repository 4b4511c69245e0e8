"""Helpers of benchmarks.gpu_check: the report, synced cases, CIFAR-10 files, worker processes.

Everything here runs on the CPU as well (``--dry-run``): a CUDA synchronize is only made
when the device is CUDA.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gct_ablate.models import build_model

H100_CLASS = ("H100", "H200", "GH200", "B100", "B200", "GB200")


@dataclass
class Report:
    """Lines printed as they come and kept, and the JSON sections beside them."""

    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def section(self, name: str, title: str) -> None:
        self.say()
        self.say(f"== {name}: {title}")

    def save(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        text, js = out / "gpu_check.txt", out / "gpu_check.json"
        text.write_text("\n".join(self.lines) + "\n")
        js.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        return text, js


@dataclass(frozen=True)
class Check:
    """One verdict line: what, the measured value, the target, and whether it is met."""

    name: str
    measured: float
    target: str
    ok: bool
    note: str = ""

    def line(self, dry: bool) -> str:
        status = "dry run (CPU)" if dry else ("PASS" if self.ok else "FAIL")
        note = f"  [{self.note}]" if self.note else ""
        return f"{status:14s} {self.name}: {self.measured:.3g} (target {self.target}){note}"

    def asdict(self, dry: bool) -> dict[str, Any]:
        status = "dry run (CPU)" if dry else ("PASS" if self.ok else "FAIL")
        return {"check": self.name, "measured": self.measured, "target": self.target,
                "status": status, "note": self.note}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], object], device: torch.device, inner: int = 1
           ) -> Callable[[], None]:
    """``fn`` run ``inner`` times, then the device synchronized: what a timed call does."""
    def run() -> None:
        for _ in range(inner):
            fn()
        sync(device)

    return run


def grad_step(fn: Callable[..., torch.Tensor], x: torch.Tensor, params: list[torch.Tensor],
              dy: torch.Tensor, autocast: Callable[[], Any]) -> Callable[[], list[torch.Tensor]]:
    """Forward and backward of ``fn(x, *params)``: the output and the input/param gradients."""
    def run() -> list[torch.Tensor]:
        leaf = x.detach().requires_grad_()
        with autocast():
            y = fn(leaf, *params)
        return [y, *torch.autograd.grad(y, [leaf, *params], dy.to(y.dtype))]

    return run


def max_rel_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """Largest error relative to each tensor's scale, in float32."""
    pairs = zip(a, b, strict=True)
    return max(((u.float() - v.float()).abs().max() / v.float().abs().max().clamp(min=1)).item()
               for u, v in pairs)


def autocast_for(device: torch.device, dtype: torch.dtype | None) -> Callable[[], Any]:
    """A context factory: autocast to ``dtype`` on ``device``, or nothing for float32."""
    import contextlib

    if dtype is None or dtype is torch.float32:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------------ train steps
@dataclass(frozen=True)
class Net:
    """A network benchmarked by its training step."""

    model: str
    classes: int
    pixels: int
    batch: int


def build_net(net: Net, attention: str, device: torch.device, seed: int = 0) -> nn.Module:
    """The network with ``attention`` where the tool puts it by default: GCT before every
    conv (official), SE after each block (its own position), or none; channels_last."""
    torch.manual_seed(seed)
    placement = {"gct": "every-conv", "se": "after-block", "none": "none"}[attention]
    model = build_model(net.model, net.classes, 3, attention=attention, placement=placement,
                        small_input=False)  # torchvision's ImageNet stem; CIFAR nets keep theirs
    return model.to(device, memory_format=torch.channels_last)


def train_step(model: nn.Module, net: Net, device: torch.device,
               dtype: torch.dtype | None = torch.bfloat16) -> Callable[[], None]:
    """One SGD step under autocast ``dtype`` with channels_last inputs, as train_eval does."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(net.batch, 3, net.pixels, net.pixels, generator=g).to(
        device, memory_format=torch.channels_last)
    y = torch.randint(0, net.classes, (net.batch,), generator=g).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    autocast = autocast_for(device, dtype)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    return step


# ----------------------------------------------------------------------- CIFAR-10 files
def write_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Generated images in CIFAR-10's python format (``cifar-10-batches-py``: five pickled
    training batches, a test batch, ``batches.meta``), learnable: each class has its own
    colour pattern under the noise. Returns ``root``, the ``data_dir`` of a cifar10 run."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    patterns = rng.integers(0, 256, (10, 3072), dtype=np.uint8)

    def batch(n: int, label: str) -> dict[str, Any]:
        labels = rng.integers(0, 10, n)
        noise = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        data = (patterns[labels].astype(np.uint16) + noise) // 2
        return {"batch_label": label, "labels": labels.tolist(), "data": data.astype(np.uint8),
                "filenames": [f"{label}_{i}.png" for i in range(n)]}

    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    files = {f"data_batch_{i + 1}": batch(n, f"training batch {i + 1} of 5")
             for i, n in enumerate(sizes)}
    files["test_batch"] = batch(n_test, "testing batch 1 of 1")
    files["batches.meta"] = {"label_names": ["airplane", "automobile", "bird", "cat", "deer",
                                             "dog", "frog", "horse", "ship", "truck"],
                             "num_cases_per_batch": 10000, "num_vis": 3072}
    for name, content in files.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f, protocol=2)
    return root


# --------------------------------------------------------------------- worker processes
def throughput_worker(rank: int, cfg: Any, trials: int, ready: Any, barriers: dict[int, Any],
                      results: Any) -> None:
    """Worker process ``rank``: a warm-up trial (all workers' end before any round starts,
    so no round shares the device with a start-up), then, for each round of N > rank workers
    (all N starting together at that round's barrier), ``trials`` trials of ``cfg`` through
    the tool's train_eval; puts (N, start, end, trials, device, error) on ``results``."""
    from gct_ablate._util import tune_malloc
    from gct_ablate.runner import threads_per_worker
    from gct_ablate.train import train_eval

    tune_malloc()
    if cfg.device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(cfg.device))
    n = 0
    try:
        device = train_eval(cfg.replace(epochs=1))["device"]
        ready.wait()
        for n, barrier in sorted(barriers.items()):
            if rank >= n:
                continue
            torch.set_num_threads(threads_per_worker(n, None))
            barrier.wait()
            start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
            for _ in range(trials):
                train_eval(cfg)
            results.put((n, start, time.perf_counter(), trials, device, None))
    except Exception as err:  # the parent reports it instead of waiting forever
        for barrier in (ready, *barriers.values()):
            barrier.abort()
        results.put((n, 0.0, 0.0, 0, cfg.device, f"{type(err).__name__}: {err}"))


def trial_throughput(cfg: Any, workers: tuple[int, ...], trials: int,
                     on_round: Callable[[dict[str, Any]], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Trials per second of N worker processes sharing ``cfg.device``, for each N of
    ``workers``, each worker running ``trials`` trials; ``max(workers)`` processes are
    started once (imports and warm-up not counted) and rounds run one after the other."""
    import multiprocessing as mp

    from gct_ablate.runner import threads_per_worker

    ctx = mp.get_context("spawn")
    barriers, results = {n: ctx.Barrier(n) for n in workers}, ctx.Queue()
    ready = ctx.Barrier(max(workers))
    procs = [ctx.Process(target=throughput_worker,
                         args=(rank, cfg, trials, ready, barriers, results))
             for rank in range(max(workers))]
    for p in procs:
        p.start()
    rows = []
    try:
        for n in sorted(workers):
            got = [results.get(timeout=1800) for _ in range(n)]
            errors = [g[5] for g in got if g[5]]
            if errors:
                raise RuntimeError(f"a worker process failed: {errors[0]}")
            wall = max(g[2] for g in got) - min(g[1] for g in got)
            done = sum(g[3] for g in got)
            rows.append({"workers": n, "trials": done, "seconds": wall,
                         "trials_per_s": done / wall, "threads": threads_per_worker(n, None),
                         "devices": sorted({g[4] for g in got})})
            if on_round is not None:
                on_round(rows[-1])
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()
    return rows
