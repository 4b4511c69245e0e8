"""The cost of saving a trial's training state, side by side with not saving it.

A digits trial of a study (ResNet-20 with GCT, the default 6 epochs, all 1,437 training
images) runs with ``checkpoint_every`` 0 (never), "auto" (the default) and 1 (every epoch)
in interleaved rounds. Printed: the median wall time of each, the overhead of each against
never (per round, median and range) in wall time and in the process's CPU time (immune
to the time slices a shared machine takes, blind to the wait for the disk), and the wall
time the saves themselves took as a share of the trial (measured inside it: the number
that the 2 % target is about).

    python -m benchmarks.checkpoint [--rounds 3] [--threads 1]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._util import arg_parser, set_threads, setup
from gct_ablate.resume import TrainingState
from gct_ablate.spec import TrialConfig
from gct_ablate.train import train_eval

TARGET = 0.02
MODES = ("0", "auto", "1")


def trial(every: str, folder: Path) -> tuple[float, float, float, int]:
    """(wall seconds, CPU seconds, seconds saving, saves) of one digits trial."""
    cfg = TrialConfig(device="cpu", threads=1, checkpoint_every=every)
    state = TrainingState(folder / f"state-{every}.pt", cfg)
    start, cpu = time.perf_counter(), time.process_time()
    train_eval(cfg, state=state)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    state.remove()
    return wall, cpu, state.save_seconds, state.saves


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=3, threads="1")
    args = parser.parse_args()
    set_threads(setup(args)[0])
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    cpus: dict[str, list[float]] = {m: [] for m in MODES}
    shares: dict[str, list[float]] = {m: [] for m in MODES}
    saves: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trial("0", Path(tmp))  # warm-up: data cache, kernel
        for r in range(args.rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotating order
                wall, cpu, saving, saves[mode] = trial(mode, Path(tmp))
                walls[mode].append(wall)
                cpus[mode].append(cpu)
                shares[mode].append(saving / wall)
    print(f"digits trial, ResNet-20 + GCT, 6 epochs, 1 thread, {args.rounds} rounds")
    print(f"  {'checkpoint_every':16s} {'wall (s)':>9s} {'vs never':>24s} {'CPU (s)':>8s} "
          f"{'vs never':>24s} {'saves':>6s} {'saving / trial':>15s}")

    def versus(times: dict[str, list[float]], mode: str) -> str:
        ratios = [t / n - 1 for t, n in zip(times[mode], times["0"], strict=True)]
        return (f"{statistics.median(ratios):+7.1%} ({min(ratios):+.1%}..{max(ratios):+.1%})"
                .rjust(24))

    for mode in MODES:
        print(f"  {mode:16s} {statistics.median(walls[mode]):9.2f} {versus(walls, mode)} "
              f"{statistics.median(cpus[mode]):8.2f} {versus(cpus, mode)} "
              f"{saves[mode]:6d} {statistics.median(shares[mode]):14.2%}")
    share = statistics.median(shares["auto"])
    print(f"auto: saving takes {share:.2%} of a trial "
          f"({'meets' if share < TARGET else 'MISSES'} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
