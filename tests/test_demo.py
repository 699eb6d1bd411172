"""demo --tables DIR --study FILE: the whole job on another study's tables, every row accounted for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.study.definition import DEFAULT_STUDY

DATA = Path(__file__).parent / "data"
MINI = DATA / "mini-study"


def demo(tables: Path, study: Path, workdir: Path):
    return CliRunner().invoke(main, ["demo", "--tables", str(tables), "--study", str(study), "--workdir", str(workdir)])


def test_demo_runs_on_another_study(tmp_path):
    result = demo(MINI / "tables", MINI / "study.yaml", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "subjects by arm: Treatment 8, Control 6" in result.stdout
    assert "round trip: lossless" in result.stdout and "reproduced 2/2 published results" in result.stdout
    assert "example " not in result.stdout and not (tmp_path / "demo" / "examples").exists()  # only with the default cohort


def test_demo_names_rejected_rows(tmp_path):
    shutil.copytree(MINI / "tables", tmp_path / "tables")
    rows = (tmp_path / "tables" / "xs.csv").read_text().splitlines(keepends=True)
    assert ",10,{score}," in rows[2]
    rows[2] = rows[2].replace(",10,{score},", ",ten,{score},")
    (tmp_path / "tables" / "xs.csv").write_text("".join(rows))
    result = demo(tmp_path / "tables", MINI / "study.yaml", tmp_path / "demo")
    assert result.exit_code == ExitCode.MISMATCH  # the row is missing from the round trip and the analysis
    assert "xs.csv, row 3, column XSORRES = 'ten': not a number" in result.stderr


def test_demo_on_tables_with_nothing_to_compare_is_exit_4(tmp_path):
    result = demo(DATA / "bad" / "good", DEFAULT_STUDY, tmp_path / "demo")
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "nothing to compare" in result.stderr and "Traceback" not in result.output


def test_demo_lists_the_example_studies_and_fails_when_one_is_not_reproduced(tmp_path, monkeypatch):
    """The default demo also maps, verifies and reports each example study; a published number changed in one
    example's definition makes the demo exit 6 and show that study's table."""
    from fhir_msc import jobs

    changed = tmp_path / "example-zero-cell.yaml"
    original, tables = jobs.EXAMPLE_STUDIES[1]
    changed.write_text(original.read_text().replace("value: 0.043}", "value: 0.050}"))
    monkeypatch.setattr(jobs, "EXAMPLE_STUDIES", (jobs.EXAMPLE_STUDIES[0], (changed, tables)))
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path / "demo"), "--json"])
    assert result.exit_code == ExitCode.MISMATCH, result.output
    examples = json.loads(result.stdout)["examples"]
    assert [(e["verify"]["study"], e["verify"]["counts"]["reproduced"], e["verify"]["counts"]["published"])
            for e in examples] == [("EXDR-001", 7, 7), ("EXZC-001", 2, 3)]
    (mismatch,) = [r for r in examples[1]["verify"]["results"] if not r["matches"]]
    assert mismatch["mismatches"] == ["p (fisher): expected 0.050, got 0.043 (3 decimals)"]
