"""Timing helpers shared by the benchmarks: interleaved rounds, medians, per-round ratios.

The machine is shared and noisy, so candidates are never timed one after the other:
each round runs every candidate once (in a rotating order) and ratios are taken within a
round, then summarised by their median and min-max over rounds.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from benchmarks import THP_ENV
from gct_ablate._util import tune_malloc  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Samples:
    """Seconds per call of one candidate, one value per round."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self, unit: float = 1e-3, suffix: str = "ms") -> str:
        lo, hi = min(self.values) / unit, max(self.values) / unit
        return f"{self.median / unit:.3g} {suffix} ({lo:.3g}-{hi:.3g})"


@dataclass(frozen=True)
class Ratio:
    """Per-round ratios ``slow / fast`` (how many times faster ``fast`` is)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def text(self) -> str:
        return f"{self.median:.2f}x ({min(self.values):.2f}-{max(self.values):.2f})"


def clock() -> Callable[[], float]:
    """Thread CPU time with one torch thread (immune to time slices lost to other users of
    a shared machine), else wall-clock time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def clock_name() -> str:
    return "thread CPU time" if clock() is time.thread_time else "wall-clock time"


def interleaved(cases: Mapping[str, Callable[[], object]], rounds: int = 15, warmup: int = 2,
                number: int = 1, min_sample: float = 0.0) -> dict[str, Samples]:
    """Time every case once per round (rotating the order); ``number`` calls per sample.

    With ``min_sample`` (seconds) each case makes as many calls per sample as it needs to
    take at least that long (calibrated after the warm-up): short calls are otherwise at
    the mercy of timer resolution and of interrupts on a shared machine.
    """
    now = clock()
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    calls = dict.fromkeys(names, number)
    if min_sample > 0:
        for name in names:
            start = now()
            cases[name]()
            calls[name] = max(number, math.ceil(min_sample / max(now() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = now()
            for _ in range(calls[name]):
                cases[name]()
            times[name].append((now() - start) / calls[name])
    return {name: Samples(tuple(v)) for name, v in times.items()}


def ratio(samples: Mapping[str, Samples], slow: str, fast: str) -> Ratio:
    """Round-by-round ``slow / fast`` time ratios."""
    pairs = zip(samples[slow].values, samples[fast].values, strict=True)
    return Ratio(tuple(s / f for s, f in pairs))


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (and print them): benchmarks never rely on a default."""
    torch.set_num_threads(threads)
    n = torch.get_num_threads()
    print(f"torch {torch.__version__}, {n} thread(s) of {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, timing by {clock_name()}")
    return n


def thread_counts(text: str) -> list[int]:
    """``"1,all"`` -> ``[1, os.cpu_count()]`` (in order, without repeats)."""
    counts: list[int] = []
    for word in text.split(","):
        word = word.strip().lower()
        n = (os.cpu_count() or 1) if word == "all" else int(word)
        if n < 1:
            raise argparse.ArgumentTypeError(f"invalid thread count {word!r}")
        if n not in counts:
            counts.append(n)
    return counts


def arg_parser(description: str, rounds: int, threads: str = "1,all"
               ) -> argparse.ArgumentParser:
    """Common options: --threads, --rounds, --tune-malloc."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=thread_counts, default=thread_counts(threads),
                        help="torch intra-op thread counts to measure, e.g. 1,2 or 1,all "
                             f"(default {threads}: each count is measured in turn)")
    parser.add_argument("--rounds", type=int, default=rounds, help="interleaved timing rounds")
    parser.add_argument("--tune-malloc", action=argparse.BooleanOptionalAction, default=True,
                        help="glibc mallopt: keep freed memory, as gct-ablate's own processes "
                             "do (see gct_ablate._util.tune_malloc); applies to every case alike")
    return parser


def setup(args: argparse.Namespace) -> list[int]:
    """Apply --tune-malloc, print the settings; the thread counts to measure in turn."""
    print(f"glibc malloc tuned: {tune_malloc() if args.tune_malloc else 'no (--no-tune-malloc)'}; "
          f"torch page-aligned allocation ({THP_ENV}): {os.environ.get(THP_ENV) == '1'}")
    return args.threads


def verdict(checks: Sequence[tuple[str, bool]]) -> str:
    """One line: PASS or FAIL with the failed checks named."""
    failed = [name for name, ok in checks if not ok]
    return "VERDICT: PASS" if not failed else "VERDICT: FAIL (" + "; ".join(failed) + ")"
