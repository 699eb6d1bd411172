"""fhir-msc report: the report of any study from its store, self-contained, and as a browser shows it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fhir_msc import get_version, jobs, load_study
from fhir_msc.cli import main
from fhir_msc.study.definition import DEFAULT_STUDY, REPO_ROOT

CHROMIUM_HINT = ("the report tests render the HTML in headless Chromium, which is not installed: "
                 "install it (Debian: apt-get install -y chromium)")
ZERO_CELL, DOSE_RANGING = jobs.EXAMPLE_STUDIES[1][0], jobs.EXAMPLE_STUDIES[0][0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, Path]:
    """The cohort and the example studies, each mapped into its own store (this module's: report may write views)."""
    made = {}
    for name, definition, tables in (("cohort", DEFAULT_STUDY, jobs.DEMO_TABLES),
                                     ("dose-ranging", *jobs.EXAMPLE_STUDIES[0]), ("zero-cell", *jobs.EXAMPLE_STUDIES[1])):
        made[name] = tmp_path_factory.mktemp(name) / "store"
        jobs.map_tables(load_study(definition), tables, store=made[name], version=get_version("R4"))
    return made


def report(store: Path, out: Path, *options: str):
    return CliRunner().invoke(main, ["report", "--store", str(store), "--out", str(out), *options])


@pytest.fixture(scope="module")
def cohort_report(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort-report") / "report"
    result = report(stores["cohort"], out, "--study", str(DEFAULT_STUDY))
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.html'} (" in result.stdout and "reproduced 3/3 published results" in result.stdout
    return out


@pytest.fixture(scope="module")
def zero_cell_report(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero-cell-report") / "report"
    result = report(stores["zero-cell"], out, "--study", str(ZERO_CELL), "--engine", "python")
    assert result.exit_code == 0, result.output
    return out


def test_report_writes_the_page_the_table_the_json_and_the_plot_of_any_study(cohort_report, zero_cell_report):
    for out in (cohort_report, zero_cell_report):
        assert sorted(p.name for p in out.iterdir()) == ["analysis.csv", "analysis.json", "forest.png", "forest.svg",
                                                         "report.html"]
        document = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
        table = pd.read_csv(out / "analysis.csv", keep_default_na=False)
        assert len(document["comparisons"]) == len(table) > 0
        assert (out / "forest.svg").read_text(encoding="utf-8").lstrip().startswith("<?xml")
    assert json.loads((zero_cell_report / "analysis.json").read_text())["study"] == "EXZC-001"


def test_the_page_is_self_contained_and_names_no_local_path(stores, cohort_report, zero_cell_report, tmp_path):
    for out, store in ((cohort_report, stores["cohort"]), (zero_cell_report, stores["zero-cell"])):
        page = (out / "report.html").read_text(encoding="utf-8")
        sources = re.findall(r"""\b(?:src|href)\s*=\s*['"]([^'"]*)""", page)
        assert sources and all(s.startswith(("data:image/png;base64,", "#")) for s in sources), sources
        assert not re.search(r"https?://", re.sub(r"data:image/png;base64,[^'\"]*", "", page))
        for local in (str(store.parent), str(REPO_ROOT), str(Path.home()), str(DEFAULT_STUDY.parent)):
            assert local not in page
        assert f"the store directory {store.name}/" in page


def test_the_report_says_the_data_are_synthetic_only_when_they_are_tagged(stores, tmp_path):
    """The demo's tables are tagged HTEST (dataset.yaml): report marks them; the same rows untagged are not marked."""
    tagged = (tmp_path / "tagged" / "report.html")
    assert report(stores["zero-cell"], tagged.parent, "--study", str(ZERO_CELL), "--engine", "python").exit_code == 0
    page = tagged.read_text(encoding="utf-8")
    assert "EXZC-001: between-arm effects (synthetic data)</h1>" in page and "every subject tagged HTEST" in page
    untagged = tmp_path / "untagged"
    shutil.copytree(jobs.EXAMPLE_STUDIES[1][1], untagged / "tables")
    (untagged / "tables" / "dataset.yaml").unlink()
    jobs.map_tables(load_study(ZERO_CELL), untagged / "tables", store=untagged / "store", version=get_version("R4"))
    result = report(untagged / "store", untagged / "report", "--study", str(ZERO_CELL), "--engine", "python")
    assert result.exit_code == 0, result.output
    page = (untagged / "report" / "report.html").read_text(encoding="utf-8")
    assert "EXZC-001: between-arm effects</h1>" in page and "HTEST" not in page
    assert "synthetic" not in result.stdout


def test_report_of_a_store_without_the_study_is_one_line_exit_4(tmp_path, stores):
    older = tmp_path / "older"  # a store that records no study definition (written before stores recorded theirs)
    shutil.copytree(stores["zero-cell"], older, ignore=shutil.ignore_patterns(".fhir-msc"))
    result = report(older, tmp_path / "r", "--study", str(DEFAULT_STUDY), "--engine", "python")
    assert result.exit_code == 4 and "no findings of NCT04288102 subjects" in result.stderr, result.output
    assert "Traceback" not in result.output


def test_report_with_another_study_than_the_store_records_is_refused(tmp_path, stores):
    result = report(stores["zero-cell"], tmp_path / "r", "--study", str(DEFAULT_STUDY))
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1, result.output
    assert f"is not the study definition {stores['zero-cell']} holds data of (EXZC-001" in result.output
    assert not (tmp_path / "r").exists()


def test_demo_writes_the_report_as_report_does(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert ("report: " + str(tmp_path / "demo" / "report" / "report.html")
            + " (beside it: analysis.csv, analysis.json, forest.png, forest.svg)") in result.stdout
    page = (tmp_path / "demo" / "report" / "report.html").read_text(encoding="utf-8")
    assert str(tmp_path) not in page and str(jobs.DEMO_TABLES) not in page


def test_an_ordinal_scale_is_labelled_as_one_and_rows_name_the_arms(stores, tmp_path):
    """The WHO scale (ordinal, lower is better) gets its own panel, not one under "the event is bad"."""
    from fhir_msc.analysis.report import forest_panels

    study = load_study(DOSE_RANGING)
    comparisons = jobs.analyze(study, stores["dose-ranging"], visits=["D28"], engine="python").comparisons
    _, panels = forest_panels(comparisons, study)
    (ordinal,) = [p for p in panels if any(row.outcome == "WHOCPS" for row in p.rows)]
    assert ordinal.title == "Odds ratio, treatment vs control · ordinal scale, lower is better"
    assert {row.outcome for row in ordinal.rows} == {"WHOCPS"} and ordinal.favours == ("← favours treatment",
                                                                                       "favours control →")
    assert [row.label for row in ordinal.rows] == ["WHO clinical progression scale · D28 · Drug Z 200 mg vs Placebo",
                                                   "WHO clinical progression scale · D28 · Drug Z 50 mg vs Placebo"]


# --- as a browser shows it ---------------------------------------------------------------------------------------

def chromium() -> str:
    """The headless browser; a missing one fails the test with how to install it (never a skip)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(CHROMIUM_HINT)
    return found


def in_browser(page: Path, tmp_path: Path, *what: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on the page, offline and with a profile of its own."""
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         *what, page.resolve().as_uri()], capture_output=True, text=True, timeout=180, check=True)


def ink(png: Path) -> float:
    """The share of pixels that are not (near) white: 0 for a blank image."""
    from matplotlib.image import imread

    pixels = imread(png)[..., :3]
    return float((pixels.mean(axis=2) < 0.9).mean())


@pytest.mark.parametrize("which", ["cohort", "zero-cell"])
def test_the_page_renders_in_a_browser_with_its_numbers(which, cohort_report, zero_cell_report, tmp_path):
    from matplotlib.image import imread

    out = cohort_report if which == "cohort" else zero_cell_report
    in_browser(out / "report.html", tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1280,2000")
    shot = imread(tmp_path / "shot.png")[..., :3]
    assert shot.shape[:2] == (2000, 1280) and float(np.var(shot)) > 0.001 and ink(tmp_path / "shot.png") > 0.02
    dom = in_browser(out / "report.html", tmp_path, "--dump-dom").stdout
    numbers = {"cohort": ["NCT04288102", "3/3 reproduced", "12.86 (1.44–24.28)", "1.68 (0.65–4.34)", "0.028"],
               "zero-cell": ["EXZC-001", "3/3 reproduced", "0.043", "0/16 (0.00%)", "5/16 (31.25%)",
                             "Not drawn: Death by day 28 · D28"]}[which]
    for number in numbers:
        assert number in dom, number


def test_chromium_is_checked_by_make_test_and_installed_by_ci():
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^test: .*chromium-check", makefile, re.M)
    assert "apt-get install -y chromium" in makefile
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ci.index("apt-get install") < ci.index("make test") and "command -v chromium" in ci


def test_analyze_plot_marks_synthetic_data_and_writes_svg_by_suffix(stores, tmp_path):
    result = CliRunner().invoke(main, ["analyze", "--store", str(stores["zero-cell"]), "--study", str(ZERO_CELL),
                                       "--engine", "python", "--plot", str(tmp_path / "forest.svg")])
    assert result.exit_code == 0, result.output
    svg = (tmp_path / "forest.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "SYNTHETIC DATA (tagged HTEST)" in svg and "EXZC-001" in svg
