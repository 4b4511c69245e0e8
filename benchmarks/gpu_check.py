"""GPU check: the CUDA path of gct-ablate measured side by side in one run, with a verdict.

Sections (each timed by interleaved rounds, ratios taken within a round):

- ``gct_op``: forward + backward of one GCT: the tool's module, the published formula
  (``published_gct``, the oracle) and ``torch.compile`` of each, float32 and bf16 autocast;
  the tool's error against the oracle.
- ``train_step``: one SGD step of ResNet-20 (CIFAR, 32 px, batch 128) and ResNet-50 (224 px,
  batch 64) with GCT before every conv, no attention ("plain") and SE after each block,
  AMP bf16 + channels_last, eager and compiled.
- ``trial``: a 30-epoch ResNet-20 trial on CIFAR-10-sized generated data (50 000 + 10 000
  images written in CIFAR-10's python pickle format) through the tool's cifar10 data path
  and train_eval, end to end.
- ``workers``: trial throughput of 1, 2, 4 and 8 worker processes sharing one GPU.

Targets: GCT step / plain step <= 1.15 with AMP + channels_last (each at its best, compiled
or not); the 30-epoch trial under 60 s on an H100-class GPU; 4 workers per GPU >= 2x the
throughput of 1; GCT output and gradients within 1e-4 (fp32) / 2e-2 (bf16) of the oracle.
It writes gpu_check.txt and gpu_check.json to --out. ``--dry-run`` runs the same logic on
the CPU with tiny sizes (no compile, 1 and 2 workers) and marks verdict lines "dry run (CPU)".
Most of a real run's time is torch.compile (each compiled network's first, compiling step is
reported apart); ``--sections`` splits the check over several runs, ``--no-compile`` skips it.

    python -m benchmarks.gpu_check [--dry-run] [--out DIR] [--sections gct_op,train_step,...]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks._gpu import (
    H100_CLASS,
    Check,
    Net,
    Report,
    autocast_for,
    build_net,
    grad_step,
    max_rel_diff,
    sync,
    synced,
    train_step,
    trial_throughput,
    write_cifar10,
)
from benchmarks._util import arg_parser, interleaved, ratio, set_threads, tune_malloc, verdict
from gct_ablate.gct import GCT, published_gct
from gct_ablate.spec import TrialConfig

SECTIONS = ("gct_op", "train_step", "trial", "workers")
STEP_TARGET = 1.15
TRIAL_TARGET = 60.0  # seconds, H100-class GPU
WORKERS_TARGET = 2.0  # throughput of 4 workers over 1
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
DEFAULT_OUT = Path(__file__).resolve().parent / "gpu_results"


@dataclass(frozen=True)
class Sizes:
    """How big each section is: the real check, or the CPU dry run."""

    shapes: tuple[tuple[int, int, int, int], ...]
    nets: tuple[Net, ...]
    rounds: int
    min_sample: float
    inner: int  # GCT op calls per synchronize
    compile: bool
    epochs: int
    train: int
    test: int
    workers: tuple[int, ...]
    worker_train: int
    worker_epochs: int
    worker_trials: int


REAL = Sizes(shapes=((128, 16, 32, 32), (128, 64, 8, 8), (32, 256, 28, 28)),
             nets=(Net("resnet20", 10, 32, 128), Net("resnet50", 1000, 224, 64)),
             rounds=10, min_sample=0.05, inner=10, compile=True, epochs=30, train=50_000,
             test=10_000, workers=(1, 2, 4, 8), worker_train=10_000, worker_epochs=3,
             worker_trials=3)
DRY = Sizes(shapes=((8, 16, 8, 8),), nets=(Net("resnet20", 10, 32, 8), Net("resnet50", 10, 64, 2)),
            rounds=2, min_sample=0.0, inner=1, compile=False, epochs=1, train=250, test=100,
            workers=(1, 2), worker_train=100, worker_epochs=1, worker_trials=1)


def bench_gct_op(rep: Report, sizes: Sizes, device: torch.device) -> list[Check]:
    """The tool's GCT against the published formula, eager and compiled, fp32 and bf16."""
    rep.section("gct_op", "one GCT forward + backward (p=2, l2, tanh); median (min-max)")
    rows, checks = [], []
    for shape in sizes.shapes:
        for dname, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            module = GCT(shape[1]).to(device)
            with torch.no_grad():
                for p in (module.gamma, module.beta):
                    p.normal_(0, 0.5)
                module.alpha.normal_(1, 0.1)
            params = [module.alpha, module.gamma, module.beta]
            g = torch.Generator().manual_seed(0)
            # bf16: the input a GCT gets from a bf16 BN/ReLU under autocast; params stay fp32
            x, dy = (torch.randn(shape, generator=g).to(device, dtype or torch.float32)
                     for _ in range(2))
            autocast = autocast_for(device, dtype)
            fns = {"tool": lambda x, *p, m=module: m(x), "published": published_gct}
            if sizes.compile:
                fns["tool+compile"] = lambda x, *p, m=torch.compile(module, dynamic=False): m(x)
                fns["published+compile"] = torch.compile(published_gct, dynamic=False)
            steps = {name: grad_step(fn, x, params, dy, autocast) for name, fn in fns.items()}
            err = max_rel_diff(steps["tool"](), steps["published"]())
            cases = {name: synced(step, device, sizes.inner) for name, step in steps.items()}
            t = interleaved(cases, rounds=sizes.rounds, warmup=2, min_sample=sizes.min_sample)
            row = {"shape": list(shape), "dtype": dname, "max_err": err,
                   "ms": {k: v.median / sizes.inner * 1e3 for k, v in t.items()},
                   "published_over_tool": ratio(t, "published", "tool").median}
            text = (f"  {str(shape):18s} {dname}  tool {t['tool'].text(sizes.inner * 1e-3)}"
                    f"  published/tool {ratio(t, 'published', 'tool').text()}")
            if sizes.compile:
                row["tool_over_tool_compiled"] = ratio(t, "tool", "tool+compile").median
                row["published_compiled_over_tool"] = ratio(t, "published+compile", "tool").median
                text += (f"  tool/tool+compile {ratio(t, 'tool', 'tool+compile').text()}"
                         f"  published+compile/tool "
                         f"{ratio(t, 'published+compile', 'tool').text()}")
            rep.say(f"{text}  max err {err:.1e}")
            rows.append(row)
            checks.append(Check(f"gct_op {shape} {dname} error vs published", err,
                                f"<= {TOLERANCE[dname]:g}", err <= TOLERANCE[dname]))
    if not sizes.compile:
        rep.say("  torch.compile: skipped (dry run)")
    rep.data["gct_op"] = rows
    return checks


def bench_train_step(rep: Report, sizes: Sizes, device: torch.device) -> list[Check]:
    """Training steps with GCT / plain / SE under AMP bf16 + channels_last, compile off/on."""
    rep.section("train_step", "one SGD step, AMP bf16 + channels_last; median (min-max)")
    rows, checks = [], []
    for net in sizes.nets:
        steps: dict[str, Any] = {}
        compile_s: dict[str, float] = {}
        for attention in ("none", "gct", "se"):
            name = "plain" if attention == "none" else attention
            steps[name] = train_step(build_net(net, attention, device), net, device)
            if sizes.compile:
                compiled = torch.compile(build_net(net, attention, device), dynamic=False)
                steps[f"{name}+compile"] = train_step(compiled, net, device)
                start = time.perf_counter()
                steps[f"{name}+compile"]()
                sync(device)
                compile_s[name] = time.perf_counter() - start
        cases = {k: synced(v, device) for k, v in steps.items()}
        t = interleaved(cases, rounds=sizes.rounds, warmup=2, min_sample=sizes.min_sample)
        rep.say(f"  {net.model}, {net.pixels} px, batch {net.batch}, {net.classes} classes")
        for name, samples in t.items():
            first = name.removesuffix("+compile")
            extra = f"   (first step, compiling: {compile_s[first]:.1f} s)" \
                if name.endswith("+compile") else ""
            rep.say(f"    {name:14s} {samples.text()}{extra}")
        best = {v: min((k for k in t if k.removesuffix("+compile") == v),
                       key=lambda k: t[k].median) for v in ("plain", "gct", "se")}
        gct_over = ratio(t, best["gct"], best["plain"])
        se_over = ratio(t, best["se"], best["plain"])
        rep.say(f"    GCT / plain (eager): {ratio(t, 'gct', 'plain').text()}   "
                f"SE / plain (eager): {ratio(t, 'se', 'plain').text()}")
        if sizes.compile:
            rep.say(f"    GCT / plain (compiled): {ratio(t, 'gct+compile', 'plain+compile').text()}"
                    f"   SE / plain (compiled): {ratio(t, 'se+compile', 'plain+compile').text()}")
        rep.say(f"    best GCT ({best['gct']}) / best plain ({best['plain']}): {gct_over.text()}"
                f"   best SE / best plain: {se_over.text()}")
        rows.append({"model": net.model, "pixels": net.pixels, "batch": net.batch,
                     "ms": {k: v.median * 1e3 for k, v in t.items()}, "compile_s": compile_s,
                     "best": best, "gct_over_plain": gct_over.median,
                     "se_over_plain": se_over.median})
        checks.append(Check(f"train_step {net.model} GCT / plain (best of eager, compiled)",
                            gct_over.median, f"<= {STEP_TARGET}", gct_over.median <= STEP_TARGET))
    rep.data["train_step"] = rows
    return checks


def bench_trial(rep: Report, sizes: Sizes, device: torch.device, data: Path) -> list[Check]:
    """A ResNet-20 trial through the tool's cifar10 data path and train_eval, end to end."""
    from gct_ablate.train import train_eval

    rep.section("trial", f"{sizes.epochs}-epoch ResNet-20 GCT trial, cifar10 data path "
                f"({sizes.train} + {sizes.test} generated images)")
    cfg = TrialConfig(dataset="cifar10", data_dir=str(data), epochs=sizes.epochs,
                      model="resnet20", device=str(device), save_model=False)
    start = time.perf_counter()
    result = train_eval(cfg)
    wall = time.perf_counter() - start
    rep.say(f"  {wall:.1f} s end to end ({wall / sizes.epochs:.2f} s per epoch), status "
            f"{result['status']}, val_top1 {result['val_top1']:.3f}, device {result['device']}, "
            f"GCT implementation {result['gct_impl']}")
    rep.data["trial"] = {"seconds": wall, "epochs": sizes.epochs, "train": sizes.train,
                         "test": sizes.test, **{k: result[k] for k in
                                                ("status", "val_top1", "device", "gct_impl")}}
    name = device_name(device)
    note = "" if any(k in name for k in H100_CLASS) else f"target is for H100-class; this is {name}"
    return [Check(f"trial {sizes.epochs} epochs end to end (s)", wall, f"< {TRIAL_TARGET:g}",
                  wall < TRIAL_TARGET, note)]


def bench_workers(rep: Report, sizes: Sizes, device: torch.device, data: Path) -> list[Check]:
    """Trial throughput of N worker processes on one device."""
    rep.section("workers", f"trial throughput of {', '.join(map(str, sizes.workers))} worker "
                f"processes on one {device.type} device (ResNet-20, {sizes.worker_train} images, "
                f"{sizes.worker_epochs} epoch(s), {sizes.worker_trials} trial(s) each)")
    cfg = TrialConfig(dataset="cifar10", data_dir=str(data), epochs=sizes.worker_epochs,
                      model="resnet20", device=str(device), save_model=False,
                      train_size=sizes.worker_train, val_size=min(sizes.worker_train, sizes.test))
    first: list[float] = []

    def show(row: dict[str, Any]) -> None:
        first.append(first[0] if first else row["trials_per_s"])
        rep.say(f"  {row['workers']} worker(s): {row['trials_per_s'] * 60:.1f} trials/min "
                f"({row['trials']} trials in {row['seconds']:.1f} s, {row['threads']} thread(s) "
                f"each, {', '.join(row['devices'])}); x{row['trials_per_s'] / first[0]:.2f} "
                "of 1 worker")

    rows = trial_throughput(cfg, sizes.workers, sizes.worker_trials, show)
    rep.data["workers"] = rows
    n = 4 if 4 in sizes.workers else max(sizes.workers)
    speedup = next(r for r in rows if r["workers"] == n)["trials_per_s"] / rows[0]["trials_per_s"]
    return [Check(f"workers: {n} per GPU over 1 (throughput)", speedup,
                  f">= {WORKERS_TARGET:g}", speedup >= WORKERS_TARGET)]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = arg_parser(__doc__.splitlines()[0], rounds=REAL.rounds)
    parser.set_defaults(threads=None, rounds=None)
    parser._option_string_actions["--threads"].help = (
        "torch CPU threads of the timing process (default 4; 1 with --dry-run)")
    parser.add_argument("--dry-run", action="store_true",
                        help="the whole logic on the CPU with tiny sizes (no verdict)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder of gpu_check.txt and gpu_check.json")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile cases")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; valid: {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; run with --dry-run to check the logic "
              "on the CPU", file=sys.stderr)
        return 2
    sizes = DRY if args.dry_run else REAL
    if args.rounds or args.no_compile:
        import dataclasses

        sizes = dataclasses.replace(sizes, rounds=args.rounds or sizes.rounds,
                                    compile=sizes.compile and not args.no_compile)
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    if args.tune_malloc:
        tune_malloc()
    # one thread on the CPU (thread CPU time); on CUDA several, so that rounds are timed by
    # wall clock (benchmarks._util.clock), which is what a GPU step costs
    set_threads(args.threads[0] if args.threads else (1 if args.dry_run else 4))
    rep = Report()
    rep.data["meta"] = {"device": device_name(device), "torch": torch.__version__,
                        "cuda": torch.version.cuda, "dry_run": args.dry_run,
                        "sections": args.sections, "sizes": sizes.__dict__ | {"nets": [
                            n.__dict__ for n in sizes.nets]}}
    rep.say(f"gpu_check on {device} ({device_name(device)}), torch {torch.__version__}"
            f"{' - DRY RUN on the CPU, tiny sizes' if args.dry_run else ''}")
    checks: list[Check] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        data = None
        if {"trial", "workers"} & set(args.sections):
            data = write_cifar10(Path(tmp), sizes.train, sizes.test)
        for section in args.sections:
            t0 = time.perf_counter()
            if section == "gct_op":
                checks += bench_gct_op(rep, sizes, device)
            elif section == "train_step":
                checks += bench_train_step(rep, sizes, device)
            elif section == "trial":
                checks += bench_trial(rep, sizes, device, data)
            else:
                checks += bench_workers(rep, sizes, device, data)
            rep.say(f"  ({section}: {time.perf_counter() - t0:.0f} s)")
    rep.section("verdict", "dry run (CPU): no verdict" if args.dry_run else "against targets")
    for check in checks:
        rep.say(check.line(args.dry_run))
    overall = ("VERDICT: dry run (CPU), no verdict" if args.dry_run
               else verdict([(c.name, c.ok) for c in checks]))
    rep.say(overall)
    rep.say(f"total {time.perf_counter() - started:.0f} s")
    rep.data["verdict"] = [c.asdict(args.dry_run) for c in checks]
    rep.data["overall"] = overall
    text, js = rep.save(args.out)
    print(f"wrote {text} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
