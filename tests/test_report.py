"""The study report: readable figures, a self-contained HTML page and its Markdown twin,
written by `run` and logged on the parent run; the MLflow and Optuna views of a study."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pytest
from conftest import assert_no_legend_over_data
from matplotlib.figure import Figure
from mlflow import MlflowClient
from typer.testing import CliRunner

from gct_ablate.analysis import report_figures as rf
from gct_ablate.analysis.report import build_report, save_report, verdict_table
from gct_ablate.artifacts import load_study_results
from gct_ablate.cli import app
from gct_ablate.stats import StudyResults, TrialRecord, summarize
from gct_ablate.storage import open_storage
from gct_ablate.tracking import EXPERIMENT_KIND, Tracker

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
P, ACT = ["1", "2", "inf"], ["tanh", "sigmoid"]
REF = "p=2 activation=tanh"


# ----------------------------------------------------------------------------- figures
def _results(vary: tuple[str, ...] = ("p", "activation")) -> StudyResults:
    """Hand-made trials of a 3 x 2 grid, 3 seeds, 4 epochs each (no training)."""
    trials, number = [], 0
    for i, p in enumerate(P):
        for j, act in enumerate(ACT if "activation" in vary else [None]):
            cell = f"p={p}" + (f" activation={act}" if act else "")
            for seed in range(3):
                final = 0.9 + 0.01 * i - 0.004 * j + 0.002 * seed
                curve = {e: final - 0.1 * (4 - e) for e in range(1, 5)}
                trials.append(TrialRecord(cell, seed, "COMPLETE", final,
                                          {"val_top1": final, "seconds": 2.0},
                                          {"p": p} | ({"activation": act} if act else {}),
                                          number, curve=curve))
                number += 1
    spec = {"name": "grid", "vary": list(vary), "set": {}, "seeds": 3, "metric": "val_top1",
            "levels": {"p": P, "activation": ACT} if len(vary) == 2 else {"p": P}}
    return StudyResults(spec, REF if len(vary) == 2 else "p=2", True, trials, "grid")


def _texts_outside_right(ax) -> list[str]:
    return [t.get_text() for t in ax.texts if t.get_position()[0] > 1.0]


def test_forest_plot_rows_cis_margin_band_and_verdicts_beside_it() -> None:
    s = summarize(_results(), importance=False, margin=1.0)
    fig = rf.forest_figure(s)
    ax = fig.axes[0]
    others = [c for c in s.cells if not c.is_reference]
    assert [t.get_text() for t in ax.get_yticklabels()] == (
        [f"{REF} (reference)"] + [c.cell for c in others])
    assert _texts_outside_right(ax) == ["reference"] + [s.verdict_text(c) for c in others]
    cis = sorted(tuple(line.get_xdata()) for line in ax.lines if len(line.get_xdata()) == 2
                 and line.get_linestyle() == "-" and line.get_ydata()[0] > 0)
    want = sorted((100 * c.ci_simultaneous[0], 100 * c.ci_simultaneous[1])
                  for c in others if c.ci_simultaneous)
    assert len(cis) == len(want)
    for got, expected in zip(cis, want, strict=True):  # approx takes no nested sequences
        assert got == pytest.approx(expected)
    band = [p for p in ax.patches if p.get_alpha() and p.get_alpha() < 0.5]
    assert len(band) == 1
    box = band[0].get_bbox()
    assert (box.x0, box.x1) == pytest.approx((-1.0, 1.0))  # +-margin, in points
    assert_no_legend_over_data(fig)


def test_learning_curves_are_small_multiples_and_gates_a_cell_by_module_map() -> None:
    results = _results()
    s = summarize(results, importance=False)
    fig = rf.curves_figure(s, results.trials)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == [
        c.cell + (" (ref)" if c.is_reference else "") for c in s.cells]
    assert all(panels[0].get_shared_y_axes().joined(panels[0], ax) for ax in panels[1:])
    first = s.cells[0]
    mean = next(line for line in panels[0].lines if line.get_linestyle() == "-")
    want = [100 * sum(t.curve[e] for t in results.trials if t.cell == first.cell) / 3
            for e in range(1, 5)]
    assert list(mean.get_ydata()) == pytest.approx(want)
    assert_no_legend_over_data(fig)
    rows = [{"index": i, "gamma_mean": 0.1 * i - 0.1, "gate_dev": 0.01 * i} for i in range(4)]
    pooled = {c.cell: rows[: 3 if c.is_reference else 4] for c in s.cells}
    gates = rf.gates_heatmap(s, pooled)
    gamma, dev = (ax.images[0].get_array() for ax in gates.axes[:2])
    assert gamma.shape == dev.shape == (len(s.cells), 4)
    ref = next(i for i, c in enumerate(s.cells) if c.is_reference)
    assert gamma[ref, 3] is np.ma.masked and gamma[0, 2] == pytest.approx(0.1)
    assert [t.get_text() for t in gates.axes[0].get_yticklabels()] == [
        c.cell + (" (ref)" if c.is_reference else "") for c in s.cells]
    assert rf.gates_heatmap(s, {}) is None
    assert rf.curves_figure(s, [TrialRecord("p=1", 0, "COMPLETE", 0.9)]) is None


def test_interaction_plot_needs_two_factors_and_keeps_its_legend_outside() -> None:
    assert rf.interaction_figure(summarize(_results(("p",)), importance=False)) is None
    s = summarize(_results(), importance=False)
    fig = rf.interaction_figure(s)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ACT
    assert [t.get_text() for t in ax.get_xticklabels()] == P
    assert_no_legend_over_data(fig)


def test_a_single_cell_or_an_all_failed_study_still_gets_a_report(tmp_path) -> None:
    one = [TrialRecord("", s, "COMPLETE", 0.9 + 0.01 * s, {"val_top1": 0.9}, {}, s,
                       curve={1: 0.5, 2: 0.9}) for s in range(3)]
    single = StudyResults({"name": "one", "vary": [], "levels": {}, "set": {}, "seeds": 3,
                           "metric": "val_top1"}, "", True, one, "one")
    report = build_report(single, summarize(single, importance=False), artifacts=False)
    assert [f.name for f in report.figures] == ["curves"]  # nothing to compare: no forest
    paths = save_report(report, tmp_path / "one.html")
    assert "A single cell: nothing to compare." in paths.html.read_text(encoding="utf-8")
    failed = [TrialRecord(f"p={p}", s, "FAIL", None, {}, {"p": p}, 2 * i + s)
              for i, p in enumerate(("1", "2")) for s in range(2)]
    broken = StudyResults({"name": "failed", "vary": ["p"], "levels": {"p": ["1", "2"]},
                           "set": {}, "seeds": 2, "metric": "val_loss"}, "p=2", False, failed,
                          "failed")
    report = build_report(broken, summarize(broken, importance=False), artifacts=False)
    assert "learning curves: no trial reported per-epoch values" in report.missing
    md = save_report(report, tmp_path / "failed.html").markdown.read_text(encoding="utf-8")
    assert "too few runs" in md and "no trial reported per-epoch values" in md
    assert sorted(p.name for p in (tmp_path / "failed_files").glob("*.png")) == [
        f"{f.name}.png" for f in sorted(report.figures, key=lambda f: f.name)]


# ----------------------------------------------------------------------------- a real study
@pytest.fixture(scope="module")
def study(vary_p_study):
    """The session's finished study 'vary-p' (conftest), its store in OUT for every test."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield vary_p_study


class _Page(HTMLParser):
    """Every tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_the_html_report_is_self_contained(study) -> None:
    html = (study / "vary-p-report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html)  # no network reference at all
    page = _page(study / "vary-p-report.html")
    tags = [t for t, _ in page.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    images = [a["src"] for t, a in page.tags if t == "img"]
    assert len(images) >= 4  # forest, levels, learning curves, gates
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    refs = [v for _, a in page.tags for k, v in a.items() if k in ("href", "src") and v]
    assert all(v.startswith(("#", "data:")) for v in refs)
    figures = [a["id"] for t, a in page.tags if t == "figure"]
    assert figures[0] == "fig-forest"  # the picture a reader looks at first
    assert {"fig-curves", "fig-gates", "fig-levels"} <= set(figures)
    text = " ".join(page.text)
    for words in ("fixed stratified 80/20", "the last epoch (2)", "no separate test set",
                  "±0.5 points", "paired", "Type-II ANOVA", "trials trained for"):
        assert words in text, words
    assert html.index('id="fig-forest"') < html.index('id="verdicts"')


def test_the_markdown_twin_links_its_images_beside_it(study) -> None:
    md = (study / "vary-p-report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links[0] == "vary-p-report_files/forest.png"
    for link in links:
        assert (study / link).read_bytes()[:4] == b"\x89PNG"
    summary = load_study_results("vary-p", None, study)
    assert "| p=1 |" in md and "| p=2 |" in md and summary.study_name in md


def test_run_logs_the_report_and_the_verdict_table_on_the_parent_run(study) -> None:
    results = load_study_results("vary-p", None, study)
    uri, parent = results.tracking["tracking_uri"], results.tracking["mlflow_parent_run_id"]
    client = MlflowClient(uri)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/vary-p-report.html", "report/vary-p-report.md", "report/forest.png",
            "report/verdicts.json", "report/vary-p-report_files"} <= logged
    with pytest.MonkeyPatch.context() as mp:  # load_table searches the global store
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        table = client.load_table(results.tracking["mlflow_experiment_id"],
                                  "report/verdicts.json", run_ids=[parent])
    s = summarize(results)
    want = verdict_table(s)
    assert list(table["cell"]) == want["cell"] == ["p=1", "p=2"]
    assert list(table["verdict"]) == want["verdict"]
    assert list(table["mean"]) == pytest.approx([100 * c.mean for c in s.cells])


def test_the_experiment_is_tagged_as_model_development_also_on_resume(study) -> None:
    results = load_study_results("vary-p", None, study)
    uri, experiment = results.tracking["tracking_uri"], results.tracking["mlflow_experiment_id"]
    client = MlflowClient(uri)
    key, value = EXPERIMENT_KIND
    assert (key, value) == ("mlflow.experimentKind", "custom_model_development")
    assert client.get_experiment(experiment).tags[key] == value
    client.delete_experiment_tag(experiment, key)  # a study made before the tag
    report = study / "vary-p-report.html"
    before = report.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        again = runner.invoke(app, ["run", "--vary", "p", "--levels", "p=1,2", "--seeds", "2",
                                    "--set", "epochs=2", "--out", str(study), "--workers", "1",
                                    "--threads", "1", "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert client.get_experiment(experiment).tags[key] == value
    assert report.stat().st_mtime_ns > before  # the resumed run wrote its report again
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        table = client.load_table(experiment, "report/verdicts.json",
                                  run_ids=[results.tracking["mlflow_parent_run_id"]])
    assert list(table["cell"]) == ["p=1", "p=2"]  # replaced, not appended to
    older = client.create_experiment("made-elsewhere")  # an existing experiment, no tag
    assert Tracker(uri).experiment("made-elsewhere") == older
    assert client.get_experiment(older).tags[key] == value


def test_the_optuna_study_names_its_objective(study) -> None:
    found = optuna.load_study(study_name="vary-p", storage=open_storage(None, study))
    assert found.metric_names == ["val_top1"]


def test_report_command_output_margin_and_a_logged_prune_figure(study, tmp_path) -> None:
    results = load_study_results("vary-p", None, study)
    client = MlflowClient(results.tracking["tracking_uri"])
    fig = Figure(figsize=(3, 2))
    fig.subplots().plot([0, 50, 100], [98, 97, 60])
    client.log_figure(results.tracking["mlflow_parent_run_id"], fig, "prune/by-hand.png")
    target = tmp_path / "deep" / "r.html"
    result = runner.invoke(app, ["report", "vary-p", "--out", str(study), "-o", str(target),
                                 "--margin", "20"])
    assert result.exit_code == 0, result.output
    assert f"report: {target}" in result.output
    assert (tmp_path / "deep" / "r.md").exists() and (tmp_path / "deep" / "r_files").is_dir()
    page = _page(target)
    assert "fig-prune-by-hand" in [a.get("id") for t, a in page.tags if t == "figure"]
    assert "±20.0 points" in " ".join(page.text)
    assert (tmp_path / "deep" / "r_files" / "prune-by-hand.png").read_bytes()[:4] == b"\x89PNG"


def test_report_log_replaces_the_report_on_the_parent_run(study, tmp_path) -> None:
    results = load_study_results("vary-p", None, study)
    uri, parent = results.tracking["tracking_uri"], results.tracking["mlflow_parent_run_id"]
    result = runner.invoke(app, ["report", "--out", str(study), "--margin", "3", "--log"])
    assert result.exit_code == 0, result.output
    assert f"logged to MLflow run {parent} under report/" in result.output
    local = MlflowClient(uri).download_artifacts(parent, "report/vary-p-report.html",
                                                 str(tmp_path))
    assert "±3.0 points" in Path(local).read_text(encoding="utf-8")


@pytest.mark.parametrize("args, message", [
    (["report", "no-such-study"], "no study 'no-such-study'"),
    (["report", "vary-p", "--margin", "0"], "invalid margin"),
])
def test_report_bad_input_is_one_line_and_exit_code_2(study, args, message) -> None:
    result = runner.invoke(app, [*args, "--out", str(study)])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


LOADED = """<script>window.addEventListener("load", () => {
  const all = Array.from(document.images);
  const ok = all.filter(i => i.complete && i.naturalWidth > 0);
  document.title = "images " + ok.length + " of " + all.length;
});</script>"""


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                    reason="chromium is not installed (apt-get install chromium)")
def test_headless_chromium_renders_the_report_with_every_image(study, tmp_path) -> None:
    assert CHROMIUM is not None, "CI installs chromium (.ci/run)"
    probe = tmp_path / "probe.html"  # the report plus a script that counts decoded images
    probe.write_text((study / "vary-p-report.html").read_text(encoding="utf-8").replace(
        "</body>", LOADED + "</body>"), encoding="utf-8")
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>images (\d+) of (\d+)</title>", dom.stdout)
    assert title, dom.stderr[-2000:]
    assert int(title.group(1)) == int(title.group(2)) >= 4
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,1600",
                    (study / "vary-p-report.html").as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:
        dark = float((np.asarray(im.convert("L").resize((128, 160))) < 200).mean())
    assert 0.02 < dark < 0.6  # text and figures drawn, not a blank or an error page
