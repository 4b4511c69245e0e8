"""The README as a test: what a newcomer runs, run the way a newcomer runs it.

Every command is taken from README.md itself (so the README and this test cannot drift
apart) and runs as its own fresh process through the installed ``gct-ablate`` script,
in order, in one shared folder, at a terminal width of 80 columns:

1. the main job of the set-up block (``gct-ablate run --vary p,activation``);
2. every line of the "A short tour" block;
3. every study file in ``studies/`` the tour did not run already (those that need nothing
   from the tour run one after the other in a folder of their own, beside the tour);
4. the Python API excerpt (a fresh interpreter).

Each must exit 0 with no ``Traceback`` in its output and leave what it promises: the HTML
report, the figures, the saved network; the copyable lines a run prints (the summary
command, the ``mlflow ui`` command, the report path) are whole at 80 columns, and the
summary command they print runs.

Tiny settings, so that the whole tour takes a few minutes on 2 cores. Rewriting rules
(:func:`tiny`), applied to the README's words, nothing else changed:

- ``run``: ``--set epochs=1,train_size=96,val_size=96`` (study files that stage
  fine-tuning: ``epochs=2,gct_epochs=1``, and ``init_from=m.pt``, the tour's backbone, as
  the file's own comment says), ``--seeds 1`` (2 for the main job, whose report, gates and
  pruning the tour reads), ``--workers 1 --threads 1 --yes --out OUT``. Each varied factor
  without ``--levels`` keeps two of its levels (the first two of the study file's or the
  factor's default list, the reference among them; ``training`` keeps its three: staged
  fine-tuning is what ``finetune.toml`` asks about). ``--max-seeds N``: 3, one seed a look.
- ``train``: ``--epochs 1`` (unless ``--stages`` sets them), ``--train-size 96
  --val-size 96 --threads 1``, replacing the README's values.
- ``summary``, ``report``, ``gates``, ``prune``: ``--out OUT``; ``factors``: as written.
- The API excerpt: ``StudySpec`` gets ``epochs=1``, the small sizes, one seed and one
  thread; ``plan`` and ``run_study`` one worker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SIZES = "train_size=96,val_size=96"
WIDTH = 80


def _blocks(text: str, language: str) -> list[tuple[str, str]]:
    """(the heading above, the code) of every fenced ``language`` block."""
    found, heading = [], ""
    for part in re.split(r"(^```\w*\n.*?^```$)", text, flags=re.S | re.M):
        if part.startswith(f"```{language}\n"):
            found.append((heading, part.split("\n", 1)[1].rsplit("```", 1)[0]))
        else:
            heads = re.findall(r"^#+ (.+)$", part, flags=re.M)
            heading = heads[-1] if heads else heading
    return found


def readme_commands() -> list[str]:
    """The main job of the set-up block, then the tour's commands, comments removed."""
    blocks = _blocks(README.read_text(encoding="utf-8"), "bash")
    setup = [part.strip() for part in blocks[0][1].split("&&")]
    main = [c for c in setup if c.startswith("gct-ablate ")]
    tour = next(code for heading, code in blocks if heading == "A short tour")
    lines = [line.split("  #")[0].strip() for line in tour.splitlines()]
    return main + [line for line in lines if line.startswith("gct-ablate ")]


def readme_api_excerpt() -> str:
    return next(code for heading, code in _blocks(README.read_text(encoding="utf-8"),
                                                  "python") if heading == "The Python API")


def gct_ablate_script() -> str:
    """The installed ``gct-ablate`` script next to this interpreter (its virtualenv)."""
    here = Path(sys.executable).parent / "gct-ablate"
    found = str(here) if here.exists() else shutil.which("gct-ablate")
    assert found, "the gct-ablate script is not installed (pip install -e .)"
    return found


# ------------------------------------------------------------------ rewriting rules
def _option(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def _with(args: list[str], name: str, value: str) -> list[str]:
    """``args`` with option ``name`` set to ``value`` (replaced where given, else added)."""
    if name in args:
        i = args.index(name)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, name, value]


def _two_levels(factor: str, levels: list[str] | None) -> str:
    from gct_ablate.factors import canonical_level, get_factor

    f = get_factor(factor)
    options = [canonical_level(factor, x) for x in (levels or f.levels)]
    keep = options[:3] if factor == "training" else options[:2]
    if f.reference in options and f.reference not in keep:
        keep[-1] = f.reference
    return f"{factor}={','.join(keep)}"


def _study_file(args: list[str]) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    path = next((a for a in args[1:] if a.endswith(".toml")), None)
    return tomllib.loads((ROOT / path).read_text(encoding="utf-8")) if path else {}


def tiny(command: str, out: Path, main_study: bool = False) -> list[str]:
    """The README's ``command`` with tiny settings (the rules in the module doc)."""
    words = command.split()
    assert words[0] == "gct-ablate", command
    args = words[1:]
    verb = args[0]
    if verb == "run":
        study = _study_file(args)
        vary = (_option(args, "--vary") or "").split(",") if "--vary" in args else list(
            study.get("vary", []))
        given = {a.split("=", 1)[0] for a in args if "=" in a and not a.startswith("--")}
        for factor in vary:
            if factor and factor not in given:
                args += ["--levels", _two_levels(factor, study.get("levels", {}).get(factor))]
        fixed = f"epochs=1,{SIZES}"
        if "gct_epochs" in study.get("set", {}):
            fixed = f"epochs=2,gct_epochs=1,init_from={out / 'm.pt'},{SIZES}"
        args += ["--set", fixed, "--workers", "1", "--threads", "1", "--yes", "--out", str(out)]
        args = [str(ROOT / a) if a.endswith(".toml") else a for a in args]  # cwd is OUT
        args = _with(args, "--seeds", "2" if main_study else "1")
        if "--max-seeds" in args:
            args = _with(_with(args, "--max-seeds", "3"), "--seed-batch", "1")
    elif verb == "train":
        if "--stages" not in args:
            args = _with(args, "--epochs", "1")
        for name, value in (("--train-size", "96"), ("--val-size", "96"), ("--threads", "1")):
            args = _with(args, name, value)
    elif verb in ("summary", "report", "gates", "prune"):
        args = _with(args, "--out", str(out))
    return [gct_ablate_script(), *args]


# ------------------------------------------------------------------ running, in order
def tour_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(COLUMNS=str(WIDTH), LINES="50", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def run_fresh(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, cwd=cwd, env=tour_env(), capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return proc


@dataclass
class Step:
    name: str  # the README's words (the test id)
    run: Callable[[], subprocess.CompletedProcess]
    check: Callable[[subprocess.CompletedProcess], None]
    result: subprocess.CompletedProcess | None = None
    background: Future | None = None  # a study file running beside the tour


@dataclass
class Tour:
    """The steps in README order; a step's test runs every earlier tour step first. Study
    files that need nothing from the tour run one after the other in a folder of their own,
    beside it (the tour waits on one process at a time; the machine has a second core)."""

    out: Path
    steps: list[Step] = field(default_factory=list)

    def through(self, index: int) -> Step:
        target = self.steps[index]
        chain = [target] if target.background else self.steps[:index + 1]
        for step in chain:
            if step.result is None and (step.background is None or step is target):
                step.result = step.background.result() if step.background else step.run()
                step.check(step.result)
        return target


def _printed(output: str, label: str) -> str:
    """The rest of the one line that starts with ``label`` (it must be whole there)."""
    lines = [line for line in output.splitlines() if line.startswith(label)]
    assert len(lines) == 1, f"no single {label!r} line in:\n{output[-3000:]}"
    return lines[0][len(label):].strip()


def check_run(out: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        text = proc.stdout
        report = out / _printed(text, "Report (HTML, Markdown):")
        assert report.is_file() and report.read_text(encoding="utf-8").startswith("<!DOCTYPE")
        again = _printed(text, "Summary again later:")
        assert again.startswith("gct-ablate summary ") and " --out " in again, again
        ui = _printed(text, "Open the runs in MLflow:")
        uri = re.fullmatch(r"mlflow ui --backend-store-uri (\S+)  then open "
                           r"http://127\.0\.0\.1:5000/#/experiments/(\d+)\S*", ui)
        assert uri, ui
        from mlflow import MlflowClient

        experiment = MlflowClient(tracking_uri=uri[1]).get_experiment(uri[2])
        assert experiment is not None and experiment.lifecycle_stage == "active"
    return check


def check_figure(out: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        figures = re.findall(r"^figure: (\S+?)(?:;|$)", proc.stdout, flags=re.M)
        assert figures, proc.stdout[-3000:]
        for name in figures:
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    return check


def check_report(out: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        html = out / _printed(proc.stdout, "report:")
        assert html.is_file() and "<img" in html.read_text(encoding="utf-8")
        images = _printed(proc.stdout, "markdown:").split("(images in ")[1].rstrip("/)")
        assert list((out / images).glob("*.png")), images
    return check


def check_for(command: str, out: Path) -> Callable[[subprocess.CompletedProcess], None]:
    words = command.split()
    verb = words[1]
    if verb == "run":
        return check_run(out)
    if verb in ("gates", "prune"):
        return check_figure(out)
    if verb == "report":
        return check_report(out)
    if verb == "summary" and "json" in words:
        return lambda proc: json.loads(proc.stdout)
    if verb == "train" and "--save" in words:
        saved = out / words[words.index("--save") + 1]
        return lambda proc: (saved.is_file() and Path(f"{saved}.json").is_file()) or \
            pytest.fail(f"{saved} was not saved")
    if verb == "train":
        return lambda proc: "val top-1" in proc.stdout or pytest.fail(proc.stdout[-2000:])
    return lambda proc: None


def study_commands(tour_commands: list[str]) -> list[str]:
    ran = {w for c in tour_commands for w in c.split() if w.endswith(".toml")}
    return [f"gct-ablate run studies/{p.name}" for p in sorted((ROOT / "studies").glob("*.toml"))
            if f"studies/{p.name}" not in ran]


COMMANDS = readme_commands()
ALL = COMMANDS + study_commands(COMMANDS)


def _api_prelude() -> str:
    return textwrap.dedent("""
        import dataclasses
        import gct_ablate as ga

        _spec, _run, _plan = ga.StudySpec, ga.run_study, ga.plan

        def _tiny_spec(*args, **kw):
            fixed = {"epochs": "1", "train_size": "96", "val_size": "96",
                     **dict(kw.pop("fixed", {}))}
            spec = _spec(*args, fixed=fixed, **kw)
            return dataclasses.replace(spec, seeds=1,
                                       base=spec.base.replace(threads=1))

        def _one_worker(spec, **kw):
            return _run(spec, **{**kw, "workers": 1})

        def _plan_one_worker(spec, **kw):
            return _plan(spec, **{**kw, "workers": 1})

        ga.StudySpec, ga.run_study, ga.plan = _tiny_spec, _one_worker, _plan_one_worker
        # ---- the README's excerpt:
    """)


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tour]:
    out, beside = tmp_path_factory.mktemp("tour"), tmp_path_factory.mktemp("studies")
    journey = Tour(out)
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        for i, command in enumerate(ALL):
            needs_backbone = "gct_epochs" in _study_file(command.split()).get("set", {})
            alone = i >= len(COMMANDS) and not needs_backbone  # finetune.toml needs m.pt
            where = beside if alone else out
            argv = tiny(command, where, main_study=i == 0)
            step = Step(command, lambda argv=argv, where=where: run_fresh(argv, where),
                        check_for(command, where))
            if alone:
                step.background = pool.submit(step.run)
            journey.steps.append(step)
        yield journey
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("index", range(len(ALL)), ids=ALL)
def test_readme_command_runs_in_a_fresh_process(tour: Tour, index: int) -> None:
    step = tour.through(index)
    assert step.result is not None and step.result.returncode == 0


def test_the_printed_summary_command_runs_as_printed(tour: Tour) -> None:
    """The main job's 'Summary again later' line, copied whole at 80 columns, runs."""
    step = tour.through(0)
    again = _printed(step.result.stdout, "Summary again later:").split()
    assert again[0] == "gct-ablate"
    proc = run_fresh([gct_ablate_script(), *again[1:]], tour.out)
    assert "Study vary-p-activation" in proc.stdout


def test_readme_python_api_excerpt_runs(tour: Tour) -> None:
    script = _api_prelude() + readme_api_excerpt()
    proc = run_fresh([sys.executable, "-c", script], tour.out)
    assert re.search(r"^p=1 ", proc.stdout, flags=re.M), proc.stdout[-2000:]


def test_tour_covers_the_readme() -> None:
    """The parser found the README's blocks: the main job, the tour, the study files."""
    assert COMMANDS[0] == "gct-ablate run --vary p,activation"
    assert len(COMMANDS) >= 10 and "gct-ablate factors" in COMMANDS
    assert all(c.startswith("gct-ablate run studies/") for c in ALL[len(COMMANDS):])
    assert {Path(c.split()[-1]).name for c in ALL if c.endswith(".toml")} == {
        p.name for p in (ROOT / "studies").glob("*.toml")}
    excerpt = readme_api_excerpt()
    assert all(f"ga.{step}(" in excerpt for step in ("plan", "execute", "finish")), excerpt
