"""Host memory of the data, per worker: peak RSS next to the uint8 bytes of the images.

Each case runs in a fresh process that imports what a worker imports, then loads the data
(``load_dataset``), runs one epoch of its training batches and the validation batches
(normalized and augmented as in training) and three ResNet-20 training steps. It prints the
RSS after the imports, the peak growth while loading and batching, the peak growth of the
training steps, and the part of the RSS mapped from the shared cache file. Cases: digits,
Fashion-MNIST (4,000 + 2,000 images, and all), and a CIFAR-10-format fixture.

``--shared``: two such processes hold Fashion-MNIST (all) at the same time; the
proportional share (PSS) of the mapped cache file is half its RSS in each: one copy.
``--train-command``: peak RSS and CPU time (``/usr/bin/time -v``) of ``gct-ablate train`` on
digits and on Fashion-MNIST (4,000 / 2,000, one epoch; also with huge-page buffers and at
batch 32) next to the import baseline, interleaved over ``--rounds``, and the activations
ResNet-20 saves for backward. ``--live-study``: a real ``run --workers 2`` on Fashion-MNIST,
each worker's peak RSS and the PSS of the cache file while both train. Every process runs
in the tool's default environment (without the benchmarks' huge-page setting).

    python -m benchmarks.data_memory [--cifar-images 10000] [--shared] [--train-command]
                                     [--rounds 3] [--live-study]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import THP_ENV

MIB = 1 << 20
WORKER_IMPORTS = "import torch, mlflow, optuna, statsmodels, matplotlib"


def _status_kib(field: str, pid: int | str = "self") -> int:
    """A field of a process's status in KiB (0 once it has exited: a zombie has none)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), 0)
    return 0


def _print_mapped(label: str, mapped: list[dict[str, int]], note: str = "") -> None:
    """Each process's RSS and PSS of the cache file, and how many copies they hold together."""
    for i, m in enumerate(mapped, 1):
        print(f"  {label} {i}: cache file mapped RSS {m['rss'] / MIB:6.1f} MiB, "
              f"PSS {m['pss'] / MIB:6.1f} MiB")
    total, each = sum(m["pss"] for m in mapped), max(m["rss"] for m in mapped)
    print(f"  together: {total / MIB:.1f} MiB of PSS for {each / MIB:.1f} MiB mapped in each: "
          f"{total / each:.2f} copies{note}")


def _mapped(pid: int | str = "self", marker: str = "/arrays/") -> dict[str, int]:
    """RSS and PSS (bytes) of a process's mappings of the shared array cache (none when the
    process is gone)."""
    totals = {"rss": 0, "pss": 0}
    inside = False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = marker in line
            elif inside and line.startswith(("Rss:", "Pss:")):
                totals[line.split(":")[0].lower()] += int(line.split()[1]) * 1024
    return totals


def child(options: dict, wait: bool) -> None:
    """One worker-like process: the JSON line of its measurements."""
    import mlflow  # noqa: F401  (what a worker holds)
    import optuna  # noqa: F401
    import torch
    import torch.nn.functional as F

    from gct_ablate.data import load_dataset
    from gct_ablate.models import build_trial
    from gct_ablate.spec import TrialConfig

    torch.set_num_threads(1)
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS
    data = load_dataset(**options)
    gen = data.generator(0)
    for split in ("train", "val"):
        for x, _ in data.batches(split, 128, shuffle=split == "train", generator=gen,
                                 augment=split == "train"):
            x.sum()
    data_peak = _status_kib("VmHWM")
    held = data.train_x.numel() * data.train_x.element_size() + \
        data.val_x.numel() * data.val_x.element_size()
    cfg = TrialConfig(**{k: v for k, v in options.items() if k != "name"},
                      dataset=options["name"], threads=1)
    model, data = build_trial(cfg, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for (x, y), _ in zip(data.batches("train", 128, shuffle=True, generator=gen, augment=True),
                         range(3), strict=False):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if wait:
        print("ready", flush=True)
        sys.stdin.readline()
    print(json.dumps({"base": base * 1024, "data_peak": (data_peak - base) * 1024,
                      "train_peak": (_status_kib("VmHWM") - base) * 1024, "uint8": held,
                      "dtype": str(data.train_x.dtype), **_mapped()}), flush=True)
    if wait:
        sys.stdin.readline()  # alive until every worker has measured


def _tool_env() -> dict[str, str]:
    """This environment without the benchmarks' huge-page setting: what ``gct-ablate`` runs
    with by default."""
    return {k: v for k, v in os.environ.items() if k != THP_ENV}


def _spawn(options: dict, wait: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.data_memory", "--child",
                             json.dumps(options), *(["--wait"] if wait else [])],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=_tool_env())


def measure(options: dict) -> dict:
    proc = _spawn(options)
    out, _ = proc.communicate()
    return json.loads(out.strip().splitlines()[-1])


def write_cifar_fixture(root: Path, n: int) -> Path:
    """A CIFAR-10-format folder: five training batches of ``n // 5`` random images, a test
    batch of ``n // 5``, and the meta file."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def batch(count: int) -> dict:
        return {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                "labels": [int(v) for v in rng.integers(0, 10, count)]}

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch(n // 5), protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return root


def shared() -> None:
    """Two processes holding Fashion-MNIST (all) at once: RSS and PSS of the mapped file."""
    procs = [_spawn({"name": "fashion-mnist"}, wait=True) for _ in range(2)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs if p.stdout is not None]
    for p in procs:
        p.communicate("done\n")
    print("\nTwo workers holding Fashion-MNIST (all, 54.9 MB as uint8) at the same time "
          "(PSS: each one's share of the pages it maps):")
    _print_mapped("worker", results)


def _time_v(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Peak RSS (MiB) and CPU seconds (user + system) of ``cmd``, by /usr/bin/time -v."""
    run = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True,
                         check=True, env=env)
    fields = dict(re.findall(r"^\s*(.+?): ([\d.]+)$", run.stderr, re.M))
    cpu = float(fields["User time (seconds)"]) + float(fields["System time (seconds)"])
    return int(fields["Maximum resident set size (kbytes)"]) / 1024, cpu


def train_command(rounds: int) -> None:
    """Whole commands, next to the import baseline; ``train`` on Fashion-MNIST with torch's
    huge-page buffers on and off (``THP_MEM_ALLOC_ENABLE``), interleaved over ``rounds``."""
    cli = [sys.executable, "-m", "gct_ablate", "train", "--threads", "1", "--epochs", "1"]
    fashion = [*cli, "--dataset", "fashion-mnist", "--train-size", "4000", "--val-size", "2000"]
    env = _tool_env()
    rows = {
        "import baseline (" + WORKER_IMPORTS.removeprefix("import ") + ")":
            ([sys.executable, "-c", WORKER_IMPORTS], env),
        "import torch, torch.optim's torch._dynamo": (
            [sys.executable, "-c", "import torch, torch._dynamo"], env),
        "train (digits)": (cli, env),
        "train fashion-mnist 4000/2000 (default)": (fashion, env),
        f"train fashion-mnist 4000/2000, {THP_ENV}=1": (fashion, {**env, THP_ENV: "1"}),
        "train fashion-mnist 4000/2000, --batch-size 32": ([*fashion, "--batch-size", "32"],
                                                           env),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (cmd, cmd_env) in rows.items():
            results[name].append(_time_v(cmd, cmd_env))
    print(f"\nWhole commands (/usr/bin/time -v; medians of {rounds} interleaved rounds):")
    base = None
    for name, runs in results.items():
        mib = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        base = mib if base is None else base
        print(f"  {name:58s} {mib:7.0f} MiB  (+{mib - base:4.0f})  CPU {cpu:6.1f} s")
    import torch

    from benchmarks.memory import saved_bytes
    from gct_ablate.models import build_model

    torch.set_num_threads(1)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for attention in ("none", "gct"):
        model = build_model("resnet20", 10, 1, attention=attention)
        print(f"  activations saved for backward, ResNet-20 ({attention}), batch 128 at 28x28: "
              f"{saved_bytes(model, x, y) / MIB:.0f} MiB")


def _worker_pids(root: int) -> list[int]:
    """``root`` and its descendants that run Python (the study's workers), not the
    multiprocessing resource tracker."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        if b"resource_tracker" not in cmdline:
            pids.append(pid)
        todo += [int(c) for c in children]
    return pids


def live_study() -> None:
    """A real two-worker study on Fashion-MNIST (6,000 training images per trial): each
    worker's peak RSS, and the RSS and PSS of the cache file it maps, sampled while both
    train."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gct_ablate", "run", "--vary", "p", "--levels", "p=1,2",
             "--seeds", "2", "--set", "dataset=fashion-mnist", "--set", "epochs=1",
             "--set", "train_size=6000", "--workers", "2", "--threads", "1",
             "--no-save-models", "--out", tmp],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_tool_env())
        peak: dict[int, int] = {}
        both: list[dict[int, dict[str, int]]] = []
        while proc.poll() is None:
            pids = _worker_pids(proc.pid)
            for pid in pids:
                peak[pid] = max(peak.get(pid, 0), _status_kib("VmHWM", pid) * 1024)
            mapped = {pid: _mapped(pid) for pid in pids}
            if sum(1 for m in mapped.values() if m["rss"]) >= 2:
                both.append(mapped)
            time.sleep(0.5)
        assert proc.returncode == 0, "the study failed"
    print("\nA live study, `run --workers 2` on Fashion-MNIST (6,000 of its images per trial):")
    for i, pid in enumerate(sorted(peak), 1):
        print(f"  worker process {i}: peak RSS {peak[pid] / MIB:6.0f} MiB")
    if not both:
        print("  the two workers never held the data at the same time")
        return
    middle = both[len(both) // 2]
    _print_mapped("worker process", [m for _, m in sorted(middle.items()) if m["rss"]],
                  f" ({len(both)} samples with both holding it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-images", type=int, default=10000)
    parser.add_argument("--shared", action="store_true")
    parser.add_argument("--train-command", action="store_true")
    parser.add_argument("--live-study", action="store_true",
                        help="a real `run --workers 2` on Fashion-MNIST: RSS and PSS per worker")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --train-command")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child), args.wait)
    with tempfile.TemporaryDirectory() as tmp:
        fixture = write_cifar_fixture(Path(tmp), args.cifar_images)
        cases = {
            "digits": {"name": "digits"},
            "fashion-mnist 4000/2000": {"name": "fashion-mnist", "train_size": 4000,
                                        "val_size": 2000},
            "fashion-mnist all": {"name": "fashion-mnist"},
            f"cifar10 fixture ({args.cifar_images})": {"name": "cifar10",
                                                       "data_dir": str(fixture)},
        }
        subprocess.run([sys.executable, "-c", "import json, sys\n"  # the cache files, made
                        "from gct_ablate.data import load_dataset\n"  # once per node, by a
                        "for o in json.loads(sys.argv[1]): load_dataset(**o)",  # process apart
                        json.dumps(list(cases.values()))], check=True)
        print(f"Per worker (pid {os.getpid()}'s children; MiB; peaks above the imports):")
        print(f"  {'data':28s} {'held':>8s} {'dtype':>6s} {'imports':>8s} {'+load+batches':>14s}"
              f" {'+3 steps':>9s} {'mapped':>7s}")
        for name, options in cases.items():
            r = measure(options)
            print(f"  {name:28s} {r['uint8'] / MIB:8.1f} {r['dtype'][6:]:>6s} "
                  f"{r['base'] / MIB:8.0f} {r['data_peak'] / MIB:14.1f} "
                  f"{r['train_peak'] / MIB:9.1f} {r['rss'] / MIB:7.1f}")
    if args.shared:
        shared()
    if args.train_command:
        train_command(args.rounds)
    if args.live_study:
        live_study()


if __name__ == "__main__":
    main()
