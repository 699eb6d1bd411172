"""`fhir-msc init` writes a study of one's own that maps, analyses and verifies as written; `fhir-msc check` tells
each mistake in a study file on a line of its own."""

from __future__ import annotations

import json
import shlex
import stat
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.fhir.mapping import SYNTHETIC_TAG
from fhir_msc.store.ndjson import Store
from fhir_msc.study import template


def fhir_msc(command: str):
    """One command line, as a user types it, through the CLI."""
    return CliRunner().invoke(main, shlex.split(command)[1:])


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_init_then_map_analyze_and_verify_as_written_all_exit_0(here):
    for command in ("fhir-msc init t", "fhir-msc map t/tables --study t/study.yaml --store s",
                    "fhir-msc analyze --store s --study t/study.yaml", "fhir-msc verify --store s --study t/study.yaml"):
        result = fhir_msc(command)
        assert result.exit_code == 0, f"{command}\n{result.output}"
    assert "reproduced 3/3 published results" in result.output
    analyzed = json.loads(fhir_msc("fhir-msc analyze --store s --study t/study.yaml --json").stdout)
    compared = {(c["outcome"], c["visit"]) for c in analyzed["comparisons"]}
    assert compared == {("SBP", "BL"), ("SBP", "W12"), ("RECOV", "W12"), ("SEV", "BL"), ("SEV", "W12")}
    assert all(SYNTHETIC_TAG in resource["meta"]["tag"] for resource in Store(here / "s").read_all())


def test_init_writes_the_study_file_its_schema_and_synthetic_tables_owner_only(here):
    result = fhir_msc("fhir-msc init t")
    written = sorted(str(p.relative_to(here)) for p in (here / "t").rglob("*"))
    assert written == ["t/study.schema.json", "t/study.yaml", "t/tables", *(f"t/tables/{name}" for name in (
        "ae.csv", "dataset.yaml", "dm.csv", "ex.csv", "qs.csv", "rs.csv", "vs.csv"))]
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in [here / "t", *(here / "t").rglob("*")])
    study = (here / "t" / "study.yaml").read_text()
    assert study.splitlines()[0] == f"# yaml-language-server: $schema={template.SCHEMA_FILE}"
    assert (here / "t" / "study.schema.json").read_text() == template.schema_text()
    assert yaml.safe_load((here / "t" / "tables" / "dataset.yaml").read_text())["synthetic"] is True
    assert result.output.splitlines()[0] == "wrote t/study.yaml, t/study.schema.json and 7 files of synthetic data in t/tables"


def test_the_next_steps_init_prints_work_as_printed(here):
    printed = fhir_msc("fhir-msc init mine").output.splitlines()
    commands = [line.strip() for line in printed if line.startswith("  fhir-msc ")]
    assert [c.split()[1] for c in commands] == ["check", "map", "analyze", "verify"]
    for command in commands:
        result = fhir_msc(command)
        assert result.exit_code == 0, f"{command}\n{result.output}"


def test_every_top_level_section_of_a_study_file_is_in_the_one_init_writes():
    text = template.study_text()
    written = set(yaml.safe_load(text)) | set(yaml.safe_load(template.with_optional_sections(text)))
    assert written == set(yaml.safe_load(template.schema_text())["properties"])


@pytest.mark.parametrize("existing", ["a file", "a non-empty directory"])
def test_init_never_overwrites(here, existing):
    if existing == "a file":
        (here / "t").write_text("mine")
    else:
        (here / "t").mkdir()
        (here / "t" / "study.yaml").write_text("mine")
    result = fhir_msc("fhir-msc init t")
    assert result.exit_code == ExitCode.USAGE and len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith("fhir-msc: error: t: ") and "never overwrites" in result.output
    assert (here / "t").read_text() == "mine" if existing == "a file" else (here / "t" / "study.yaml").read_text() == "mine"


def test_init_fills_an_empty_directory(here):
    (here / "t").mkdir()
    assert fhir_msc("fhir-msc init t").exit_code == 0 and (here / "t" / "tables" / "dm.csv").is_file()


def test_check_of_a_valid_file_is_one_line_of_what_it_declares(here):
    fhir_msc("fhir-msc init t")
    result = fhir_msc("fhir-msc check t/study.yaml")
    assert result.exit_code == 0 and result.output == (
        "t/study.yaml: valid: MYTRIAL: 2 arms, 2 visits, 3 outcomes, 3 adverse event terms, 3 published results\n")
    document = json.loads(fhir_msc("fhir-msc check t/study.yaml --json").stdout)
    assert document["valid"] is True and document["arms"] == ["TRT", "PBO"]
    assert document["published_results"] == ["RECOV", "SBP", "SEV"]


def test_check_tells_each_mistake_on_a_line_with_its_line_path_and_nearest_allowed_value(here):
    fhir_msc("fhir-msc init t")
    study = here / "t" / "study.yaml"
    lines = study.read_text().splitlines()
    typos = {"type: coded": "type: codedd", "effect: mann-whitney,": "effect: man-whitney,",
             "visits: [BL, W12],": "visitss: [BL, W12],"}
    for old, new in typos.items():
        assert sum(old in line for line in lines) >= 1, old
    text = study.read_text()
    for old, new in typos.items():
        text = text.replace(old, new, 1)
    study.write_text(text)
    line = {old: next(n for n, line in enumerate(lines, 1) if old in line) for old in typos}
    result = fhir_msc("fhir-msc check t/study.yaml")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.output.splitlines() == [
        f"t/study.yaml:{line['visits: [BL, W12],']}: outcomes[0].visitss: unknown key: did you mean 'visits'?",
        f"t/study.yaml:{line['type: coded']}: outcomes[1].type: 'codedd' is not an allowed value: did you mean "
        "'coded'? (allowed: quantity, coded, ordinal, integer, boolean, datetime, text)",
        f"t/study.yaml:{line['effect: mann-whitney,']}: analysis.published[2].effect: 'man-whitney' is not an allowed "
        "value: did you mean 'mann-whitney'? (allowed: odds-ratio, exact-odds-ratio, odds-ratio-mh, relative-risk, "
        "risk-difference, risk-difference-newcombe, adjusted-odds-ratio, mean-difference, mean-difference-welch, "
        "hodges-lehmann, adjusted-mean-difference, proportional-odds and 5 more)"]
    document = json.loads(fhir_msc("fhir-msc check t/study.yaml --json").stdout)
    assert document["valid"] is False
    assert [(p["path"], p["value"], p["suggestion"]) for p in document["problems"]] == [
        ("outcomes[0].visitss", ["BL", "W12"], "visits"), ("outcomes[1].type", "codedd", "coded"),
        ("analysis.published[2].effect", "man-whitney", "mann-whitney")]


def test_check_names_cross_references_with_the_code_they_should_be(here):
    fhir_msc("fhir-msc init t")
    study = here / "t" / "study.yaml"
    study.write_text(study.read_text().replace("intervention: DRUGA}", "intervention: DRUG-A}"))
    result = fhir_msc("fhir-msc check t/study.yaml")
    assert result.exit_code == ExitCode.BAD_INPUT
    (line,) = result.output.splitlines()
    assert line.endswith(": arms[0].intervention: unknown intervention 'DRUG-A': did you mean 'DRUGA'? "
                         "(a key of interventions)")


@pytest.mark.parametrize("text, says", [("study: [unclosed\n", "t.yaml:2: not valid YAML: "),
                                        (None, "t.yaml: study definition not found")])
def test_check_of_a_file_that_is_not_a_study_file_is_one_line_exit_4(here, text, says):
    if text is not None:
        (here / "t.yaml").write_text(text)
    result = fhir_msc("fhir-msc check t.yaml")
    assert result.exit_code == ExitCode.BAD_INPUT and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"fhir-msc: error: {says}"), result.output


def test_init_json_names_what_it_wrote_and_the_next_commands(here):
    document = json.loads(fhir_msc("fhir-msc init t --json").stdout)
    assert document["study"] == "t/study.yaml" and document["schema"] == "t/study.schema.json"
    assert len(document["tables"]) == 7 and document["next"][0] == "fhir-msc check t/study.yaml"


def test_the_optional_sections_of_the_study_file_work_once_uncommented(here):
    fhir_msc("fhir-msc init t")
    study = here / "t" / "study.yaml"
    study.write_text(template.with_optional_sections(study.read_text()))
    for command in ("fhir-msc map t/tables --study t/study.yaml --store s", "fhir-msc verify --store s --study t/study.yaml"):
        assert fhir_msc(command).exit_code == 0, command
    analyzed = json.loads(fhir_msc("fhir-msc analyze --store s --study t/study.yaml --json").stdout)
    assert {"SBPCHG", "TTRECOV"} <= {c["outcome"] for c in analyzed["comparisons"]}
