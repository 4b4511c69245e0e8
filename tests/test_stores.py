"""Stores that heal or refuse, and results folders that move: a torn journal is set aside
before the next append, damage in its middle or a broken MLflow store is one line for every
read command, and a moved or copied folder resumes, summarises, reports, gates and prunes on
its own stores without writing outside itself."""

from __future__ import annotations

import collections
import os
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState
from typer.testing import CliRunner

from gct_ablate.cli import app
from gct_ablate.store.journal import find_damage, torn_tail

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = ["--set", "epochs=1,train_size=256,val_size=128", "--threads", "1", "--workers", "1"]
GRID = ["--vary", "p", "--levels", "p=2,inf", "--study", "s"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def run(out: Path, seeds: int = 1, *extra: str):
    return invoke("run", *GRID, *SMALL, "--seeds", str(seeds), *extra, "--out", str(out))


def complete(out: Path) -> collections.Counter:
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    return collections.Counter((t.user_attrs["cell"], int(t.user_attrs["seed"]))
                               for t in trials if t.state == TrialState.COMPLETE)


def one_line(result, *parts: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one finished tiny study 's' (p = 2, inf; one seed; weights saved), made
    by another process: a trial that a cut journal leaves RUNNING has a dead owner."""
    out = tmp_path_factory.mktemp("finished") / "A"
    result = run_cli(["run", *GRID, *SMALL, "--seeds", "1", "--out", str(out)], out.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def copy(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to, symlinks=True)
    return to


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- journals
def test_torn_last_record_is_set_aside_and_the_run_resumes(finished, tmp_path):
    """The reported case: `truncate -s -15 optuna.journal`, then `run` appended after the
    partial line and every later command failed with a JSONDecodeError."""
    out = copy(finished, tmp_path / "D")
    journal = out / "optuna.journal"
    size = journal.stat().st_size
    with open(journal, "r+b") as f:
        f.truncate(size - 15)
    offset = torn_tail(journal)
    assert offset is not None
    assert invoke("summary", "s", "--out", str(out)).exit_code == 0  # reads tolerate it
    result = run(out, 2)
    assert result.exit_code == 0, result.output
    assert f"ended in a torn record (a write cut short at byte {offset})" in result.stderr
    assert (out / f"optuna.journal.torn-{offset}").is_file()
    assert torn_tail(journal) is None and find_damage(journal) is None
    assert complete(out) == {(c, s): 1 for c in ("p=2", "p=inf") for s in (0, 1)}
    assert invoke("summary", "s", "--out", str(out)).exit_code == 0


def test_damage_in_the_middle_is_one_line_for_every_command(finished, tmp_path):
    out = copy(finished, tmp_path / "G")
    journal = out / "optuna.journal"
    lines = journal.read_bytes().split(b"\n")
    offset = sum(len(line) + 1 for line in lines[:5])
    journal.write_bytes(b"\n".join([*lines[:5], b'{"op_cod', *lines[5:]]))
    before = journal.read_bytes()
    for args in (["summary", "s"], ["status", "s"], ["report", "s"], ["gates", "s"],
                 ["prune", "s"], ["run", *GRID, *SMALL, "--seeds", "2"]):
        one_line(invoke(*args, "--out", str(out)), f"Optuna journal {journal} is damaged at "
                 f"byte {offset}")
    assert journal.read_bytes() == before


@settings(max_examples=4, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(fraction=st.floats(0.05, 0.999))
def test_journal_cut_anywhere_reads_then_resumes_each_cell_seed_once(finished, tmp_path,
                                                                     fraction):
    out = tmp_path / f"cut-{fraction:.6f}"
    copy(finished, out)
    journal = out / "optuna.journal"
    with open(journal, "r+b") as f:
        f.truncate(int(journal.stat().st_size * fraction))
    for args in (["summary", "s"], ["status", "s"]):
        result = invoke(*args, "--out", str(out))
        assert result.exit_code == 0 or one_line(result), result.output
    result = run(out)
    if result.exit_code == 2:  # refused in one line (e.g. the study itself was cut away)
        one_line(result)
        return
    assert result.exit_code == 0, result.output
    assert complete(out) == {("p=2", 0): 1, ("p=inf", 0): 1}


# ------------------------------------------------------------------------- MLflow store
def test_broken_mlflow_store_is_one_line(finished, tmp_path):
    out = copy(finished, tmp_path / "M")
    store = out / "mlflow.db"
    with open(store, "r+b") as f:
        f.truncate(store.stat().st_size // 3)
    for args in (["gates", "s"], ["prune", "s"], ["report", "s", "--log"], ["run", *GRID,
                                                                            *SMALL]):
        one_line(invoke(*args, "--out", str(out)), f"MLflow store {store.resolve()}")


# ------------------------------------------------------------------ relocatable folders
def test_copied_folder_works_alone_and_the_original_is_untouched(finished, tmp_path):
    original = copy(finished, tmp_path / "A")
    before = snapshot(original)
    work = copy(original, tmp_path / "C")
    assert run(work, 2).exit_code == 0
    for args in (["summary", "s"], ["report", "s", "--log"], ["gates", "s"],
                 ["prune", "s"], ["status", "s"]):
        result = invoke(*args, "--out", str(work))
        assert result.exit_code == 0, (args, result.output)
    assert snapshot(original) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "C"]
    assert complete(work) == {(c, s): 1 for c in ("p=2", "p=inf") for s in (0, 1)}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("s")
    assert experiment.artifact_location.startswith((work / "mlartifacts").as_uri())
    for r in client.search_runs([experiment.experiment_id]):
        assert r.info.artifact_uri.startswith((work / "mlartifacts").as_uri())


def test_moved_folder_resumes_and_never_recreates_the_old_one(finished, tmp_path):
    moved = tmp_path / "B"
    copy(finished, tmp_path / "A").rename(moved)
    assert run(moved, 2).exit_code == 0
    for args in (["summary", "s"], ["gates", "s"], ["report", "s"]):
        assert invoke(*args, "--out", str(moved)).exit_code == 0, args
    assert not (tmp_path / "A").exists()
    assert complete(moved) == {(c, s): 1 for c in ("p=2", "p=inf") for s in (0, 1)}


def test_a_store_named_elsewhere_is_one_line_and_nothing_is_made(finished, tmp_path):
    out = copy(finished, tmp_path / "E")
    result = run(out, 1, "--tracking-uri", f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}")
    one_line(result, "study 's' is tracked at")
    assert not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------ full disk
FULL_DISK = """
mount -t tmpfs -o size=24m tmpfs "$M" || exit 77
run() { "$PY" -m gct_ablate run --vary p --levels p=2,inf --study s --seeds "$1" \\
        --set epochs=1,train_size=256,val_size=128 --threads 1 --workers 1 \\
        --no-save-models --out "$M/out" > "$LOG.$2" 2>&1; echo $? > "$LOG.$2.rc"; }
run 1 first
dd if=/dev/zero of="$M/filler" bs=4k 2>/dev/null
truncate -s -150000 "$M/filler"
run 3 full
rm "$M/filler"
run 3 again
cp -a "$M/out" "$COPY"
"""


def test_a_full_disk_stops_in_one_line_and_the_trial_is_redone(tmp_path):
    """ENOSPC mid-study, on a 24 MB tmpfs (a mount namespace of its own) filled up to 150 kB:
    one line, exit 2; once space is freed the same command ends with each cell x seed once."""
    import subprocess
    import sys

    from conftest import cli_env

    mount = tmp_path / "disk"
    mount.mkdir()
    env = {**cli_env(), "M": str(mount), "PY": sys.executable, "LOG": str(tmp_path / "log"),
           "COPY": str(tmp_path / "copy"),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", FULL_DISK], env=env, timeout=600,
                          capture_output=True, text=True)
    if done.returncode == 77 or not (tmp_path / "log.first.rc").exists():
        why = f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}"
        if os.environ.get("CI"):  # CI must test it (as with PostgreSQL)
            pytest.fail(why)
        pytest.skip(why)
    rc = {k: (tmp_path / f"log.{k}.rc").read_text().strip() for k in ("first", "full", "again")}
    full = (tmp_path / "log.full").read_text()
    assert rc == {"first": "0", "full": "2", "again": "0"}, full
    error = [line for line in full.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "No space left on device" in error[0], full
    assert "Traceback" not in full
    assert complete(tmp_path / "copy") == {(c, s): 1 for c in ("p=2", "p=inf")
                                           for s in (0, 1, 2)}


# -------------------------------------------------------------------------- report files
def test_report_output_never_deletes_or_overwrites_what_it_did_not_write(finished, tmp_path):
    """`report -o X.html` deleted every PNG in an existing X_files/ (a browser's "save
    complete page" layout) and overwrote X.html and X.md."""
    out = copy(finished, tmp_path / "R")
    saved = tmp_path / "page.html"
    saved.write_text("<html>mine</html>")
    (tmp_path / "page_files").mkdir()
    (tmp_path / "page_files" / "photo.png").write_bytes(b"mine")
    before = snapshot(tmp_path / "page_files") | {"html": (0, saved.read_bytes())}
    one_line(invoke("report", "s", "--out", str(out), "-o", str(saved)),
             "exists and was not written by gct-ablate; nothing was written")
    assert snapshot(tmp_path / "page_files") | {"html": (0, saved.read_bytes())} == before
    fresh = tmp_path / "mine" / "r.html"
    for _ in range(2):  # its own earlier report is replaced
        assert invoke("report", "s", "--out", str(out), "-o", str(fresh)).exit_code == 0
    (fresh.parent / "r_files" / "notes.png").write_bytes(b"mine")  # added by hand later
    assert invoke("report", "s", "--out", str(out), "-o", str(fresh)).exit_code == 0
    assert (fresh.parent / "r_files" / "notes.png").read_bytes() == b"mine"
