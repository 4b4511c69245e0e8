"""Activation memory saved for backward, in the train_step setting.

ResNet-20, batch 128, 32x32, GCT before every conv. Counts the bytes of the unique storages
that autograd saves for backward during one forward pass (``saved_tensors_hooks``;
parameters left out), and as a cross-check the peak RSS growth of one training step in a
fresh process per variant. Variants: plain, GCT (default), GCT recompute, reference
(see benchmarks/train_step.py).
Targets: GCT <= 1.5x plain, GCT recompute <= 1.15x plain; the speed cost of recompute is
timed side by side.

    python -m benchmarks.memory [--threads 1] [--rounds 7]
    python -m benchmarks.memory --data [options of benchmarks/data_memory.py]

``--data``: the host memory of the data per worker instead (:mod:`benchmarks.data_memory`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._util import arg_parser, interleaved, ratio, set_threads, setup, verdict
from benchmarks.train_step import DESCRIPTIONS, VARIANTS, batch, build, step_fn

TARGETS = {"gct": 1.5, "gct-recompute": 1.15}  # saved bytes, x plain
MIB = 1 << 20


def saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of unique non-parameter storages saved for backward by one forward pass."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()  # frees the graph; also checks that backward runs
    return sum(storages.values())


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def child(variant: str) -> None:
    """In a fresh process: peak RSS growth (bytes) of one training step, as JSON.

    The peak (VmHWM) is reset just before the step (Linux ``clear_refs``), so the transient
    peak of ``import torch`` does not hide the step's.
    """
    torch.set_num_threads(1)
    x, y = batch()
    step = step_fn(build(variant), x, y)
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    step()
    print(json.dumps({"rss_growth": (_status_kib("VmHWM") - before) * 1024}))


def rss_growth(variant: str) -> int:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", variant],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_growth"]


def main() -> None:
    if "--data" in sys.argv[1:]:
        sys.argv.remove("--data")
        from benchmarks.data_memory import main as data_main

        return data_main()
    parser = arg_parser(__doc__.splitlines()[0], rounds=7, threads="1")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    set_threads(setup(args)[0])
    x, y = batch()
    variants = [v for v in VARIANTS if v != "floor"]
    saved = {v: saved_bytes(build(v), x, y) for v in variants}
    rss = {v: rss_growth(v) for v in variants}
    print("\nResNet-20, batch 128, 32x32, GCT before all 21 convs")
    print(f"  {'variant':14s} {'saved for backward':>20s} {'x plain':>8s} "
          f"{'peak RSS growth':>17s} {'x plain':>8s}")
    for v in variants:
        print(f"  {v:14s} {saved[v] / MIB:16.1f} MiB {saved[v] / saved['plain']:7.2f}x "
              f"{rss[v] / MIB:13.1f} MiB {rss[v] / rss['plain']:7.2f}x  {DESCRIPTIONS[v]}")
    steps = {v: step_fn(build(v), x, y) for v in ("gct", "gct-recompute")}
    t = interleaved(steps, rounds=args.rounds, warmup=2)
    cost = ratio(t, "gct-recompute", "gct")
    print(f"speed cost of recompute (step time recompute / default): {cost.text()}")
    print(verdict([(f"{v} saves {saved[v] / saved['plain']:.2f}x plain > {limit}",
                    saved[v] / saved["plain"] <= limit) for v, limit in TARGETS.items()]))


if __name__ == "__main__":
    main()
