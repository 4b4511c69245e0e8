"""The cost of saving a trial's training state, side by side with not saving it.

A digits trial of a study (ResNet-20 with GCT, the default 6 epochs, all 1,437 training
images) runs with ``checkpoint_every`` 0 (never), "auto" (the default) and 1 (every epoch)
in interleaved rounds. Printed: the median wall time of each, the overhead of each against
never (per round, median and range), and the time the saves themselves took as a share
of the trial (measured inside it: the number that the 2 % target is about).

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


def trial(every: str, folder: Path) -> tuple[float, float, int]:
    """(wall seconds, seconds saving, saves) of one digits trial."""
    cfg = TrialConfig(device="cpu", threads=1, checkpoint_every=every)
    state = TrainingState(folder / f"state-{every}.pt", cfg)
    start = time.perf_counter()
    train_eval(cfg, state=state)
    wall = time.perf_counter() - start
    state.remove()
    return wall, state.save_seconds, state.saves


def main() -> None:
    parser = arg_parser(__doc__.splitlines()[0], rounds=3, threads="1")
    args = parser.parse_args()
    set_threads(setup(args)[0])
    walls: dict[str, list[float]] = {m: [] for m in MODES}
    shares: dict[str, list[float]] = {m: [] for m in MODES}
    saves: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trial("0", Path(tmp))  # warm-up: data cache, kernel
        for r in range(args.rounds):
            for mode in MODES[r % 3:] + MODES[:r % 3]:  # rotating order
                wall, saving, saves[mode] = trial(mode, Path(tmp))
                walls[mode].append(wall)
                shares[mode].append(saving / wall)
    print(f"digits trial, ResNet-20 + GCT, 6 epochs, 1 thread, {args.rounds} rounds")
    print(f"  {'checkpoint_every':16s} {'wall (s)':>9s} {'vs never':>18s} {'saves':>6s} "
          f"{'saving / trial':>15s}")
    for mode in MODES:
        ratios = [w / n - 1 for w, n in zip(walls[mode], walls["0"], strict=True)]
        print(f"  {mode:16s} {statistics.median(walls[mode]):9.2f} "
              f"{statistics.median(ratios):+8.1%} ({min(ratios):+.1%}..{max(ratios):+.1%}) "
              f"{saves[mode]:6d} {statistics.median(shares[mode]):14.2%}")
    share = statistics.median(shares["auto"])
    print(f"auto: saving takes {share:.2%} of a trial "
          f"({'meets' if share < TARGET else 'MISSES'} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
