"""The command line: every command callable with an argv list, exit codes that mean something."""

import json
import re

import click
import pytest
from click.testing import CliRunner
from storesafety import not_owner_only, umask_022  # noqa: F401 (a fixture)

from fhir_msc import Store
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.mark.parametrize("command", ["map", "unmap", "validate", "demo", "analyze", "verify", "push", "pull", "sync", "repair",
                                     "hospital-pull"])
def test_help_teaches_every_command(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and f"{command} [OPTIONS]" in result.output
    for param in main.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help and param.help.endswith("."), param.name


def test_demo_prints_store_counts_and_lossless(tmp_path, umask_022):
    result = invoke("demo", "--workdir", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    assert not_owner_only(tmp_path / "demo" / "store", tmp_path / "demo" / "bundle.json") == []
    assert (tmp_path / "demo").stat().st_mode & 0o777 == 0o700
    assert f"store: {tmp_path / 'demo' / 'store'}" in result.output
    assert re.search(r"ResearchSubject\s+100\n", result.output)
    assert re.search(r"MedicationAdministration\s+300\n", result.output)
    assert "MSC 65" in result.output and "Placebo 35" in result.output
    assert "round trip: lossless" in result.output
    assert "reproduced 3/3 published results" in result.output
    assert (tmp_path / "demo" / "report" / "forest.png").exists() and (tmp_path / "demo" / "report" / "report.html").exists()


def test_map_json_output_is_machine_readable(cohort, tmp_path):
    result = invoke("map", str(cohort), "--bundle", str(tmp_path / "b.json"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["counts"]["Observation"] > 9000 and data["rejections"] == []


def test_unmap_then_validate(cohort, tmp_path):
    assert invoke("map", str(cohort), "--store", str(tmp_path / "s"), "--fhir-version", "R5").exit_code == 0
    result = invoke("validate", str(tmp_path / "s"), "--fhir-version", "R5", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["error_count"] == 0
    result = invoke("unmap", str(tmp_path / "s"), "--out", str(tmp_path / "t"))
    assert result.exit_code == 0 and "dm.csv 100 rows" in result.output


def test_validate_exits_5_on_an_invalid_resource(tmp_path):
    Store(tmp_path).write([{"resourceType": "Observation", "id": "x", "status": "final"}])
    result = invoke("validate", str(tmp_path))
    assert result.exit_code == ExitCode.INVALID
    assert "Observation/x: code" in result.output


def test_bad_study_file_is_exit_4_without_traceback(cohort, tmp_path):
    (tmp_path / "study.yaml").write_text("study: [unclosed")
    result = invoke("map", str(cohort), "--store", str(tmp_path / "s"), "--study", str(tmp_path / "study.yaml"))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not valid YAML" in result.output and "Traceback" not in result.output
