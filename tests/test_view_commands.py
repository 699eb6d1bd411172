"""`fhir-msc export` and `fhir-msc sql`: the analysis views as files for other tools, and read-only SQL over them."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fhir_msc import jobs
from fhir_msc.analysis.views import query as query_module
from fhir_msc.analysis.views.python_engine import run_view
from fhir_msc.analysis.views.tables import SHIPPED, shipped_view
from fhir_msc.cli import main
from fhir_msc.errors import InputError
from fhir_msc.study.definition import DEFAULT_STUDY

GENDERS = {"resourceType": "ViewDefinition", "name": "genders", "resource": "Patient",
           "select": [{"column": [{"name": "id", "path": "getResourceKey()", "type": "id"},
                                  {"name": "gender", "path": "gender", "type": "code"}]}]}


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


def _files(store) -> dict[str, tuple[int, int]]:
    """Every file under the store with its size and modification time: a write anywhere changes it."""
    return {str(p.relative_to(store.path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(store.path.rglob("*")) if p.is_file()}


def _arms(store) -> Counter:
    """ResearchSubjects per assigned arm, read straight from the store's NDJSON (no view engine)."""
    lines = (store.path / "ResearchSubject.ndjson").read_text().splitlines()
    return Counter(json.loads(line)["assignedArm"] for line in lines)


@pytest.fixture
def genders_view(tmp_path):
    path = tmp_path / "genders.json"
    path.write_text(json.dumps(GENDERS))
    return path


def test_export_writes_each_shipped_view_as_the_reference_engine_computes_it(study, demo_store, tmp_path):
    before = _files(demo_store)
    result = invoke("export", "--store", str(demo_store.path), "--out", str(tmp_path / "tables"), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["files"]) == list(SHIPPED)
    counts = demo_store.counts()
    assert summary["read"] == {kind: counts[kind] for kind in ("Patient", "ResearchSubject", "Encounter", "Observation", "AdverseEvent")}
    for name in SHIPPED:
        path = tmp_path / "tables" / f"{name}.parquet"
        table = pq.read_table(path)
        view = shipped_view(name, study)
        reference = run_view(view, demo_store.read(view["resource"]))
        assert table.schema == reference.schema
        assert sorted(map(str, table.to_pylist())) == sorted(map(str, reference.to_pylist()))
        assert summary["rows"][name] == table.num_rows > 0
        assert os.stat(path).st_mode & 0o077 == 0
    assert os.stat(tmp_path / "tables").st_mode & 0o077 == 0
    assert not [p for p in (tmp_path / "tables").iterdir() if p.suffix != ".parquet"]  # no partial file left
    assert _files(demo_store) == before


def test_export_csv_adds_a_given_view_by_its_name(demo_store, genders_view, tmp_path):
    result = invoke("export", "--store", str(demo_store.path), "--out", str(tmp_path), "--format", "csv",
                    "--view", str(genders_view))
    assert result.exit_code == 0, result.output
    assert f"genders: 100 rows written to {tmp_path / 'genders.csv'}" in result.stdout
    with open(tmp_path / "genders.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    genders = Counter(json.loads(line)["gender"] for line in (demo_store.path / "Patient.ndjson").read_text().splitlines())
    assert Counter(row["gender"] for row in rows) == genders
    assert sorted(p.name for p in tmp_path.glob("*.csv")) == sorted(f"{n}.csv" for n in [*SHIPPED, "genders"])


def test_a_given_view_with_a_shipped_views_name_is_refused(demo_store, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**GENDERS, "name": "Patients"}))
    result = invoke("export", "--store", str(demo_store.path), "--out", str(tmp_path / "t"), "--view", str(path))
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"fhir-msc: error: {path}: a view named 'Patients' is already there "
                                     "(shipped views: patients, subjects, visits, observations, adverse_events): rename it")
    assert not (tmp_path / "t").exists()


def test_export_into_the_store_itself_is_refused(demo_store):
    before = _files(demo_store)
    result = invoke("export", "--store", str(demo_store.path), "--out", str(demo_store.path))
    assert result.exit_code == 2 and "is the store itself" in result.stderr
    assert _files(demo_store) == before


def test_sql_counts_subjects_per_arm_as_the_store_holds_them(demo_store):
    result = invoke("sql", "SELECT assigned_arm AS arm, count(*) AS n FROM subjects GROUP BY 1 ORDER BY 1",
                    "--store", str(demo_store.path), "--format", "json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["columns"] == ["arm", "n"]
    assert {row["arm"]: row["n"] for row in document["rows"]} == dict(_arms(demo_store))
    assert result.stderr.strip() == f"{len(_arms(demo_store))} rows"


def test_sql_joins_the_views_and_a_given_one(demo_store, genders_view):
    result = invoke("sql", "SELECT g.gender, count(*) AS n FROM observations o JOIN patients p "
                    "ON p.id = regexp_extract(o.subject, '[^/]*$') JOIN genders g ON g.id = p.id GROUP BY 1 ORDER BY 1",
                    "--store", str(demo_store.path), "--view", str(genders_view), "--format", "markdown")
    assert result.exit_code == 0, result.output
    patients = {json.loads(line)["id"]: json.loads(line)["gender"]
                for line in (demo_store.path / "Patient.ndjson").read_text().splitlines()}
    expected = Counter(patients[json.loads(line)["subject"]["reference"].split("/")[-1]]
                       for line in (demo_store.path / "Observation.ndjson").read_text().splitlines())
    assert result.stdout.splitlines() == ["| gender | n |", "|---|---|",
                                          *[f"| {g} | {n} |" for g, n in sorted(expected.items())]]


@pytest.mark.parametrize("statement", [
    "COPY (SELECT * FROM patients) TO '{out}'", "ATTACH '{out}' AS other", "INSTALL httpfs", "LOAD httpfs",
    "SET enable_external_access = true", "CREATE TABLE t AS SELECT 1", "SELECT 1; COPY patients TO '{out}'"])
def test_sql_refuses_statements_that_write_or_reach_out(demo_store, tmp_path, statement):
    before = _files(demo_store)
    out = tmp_path / "leak.csv"
    result = invoke("sql", statement.format(out=out), "--store", str(demo_store.path))
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists() and _files(demo_store) == before


@pytest.mark.parametrize("reader", ["read_text('{store}/Patient.ndjson')", "read_json('http://127.0.0.1:9/x.json')",
                                    "glob('{store}/*')", "read_csv('{store}/Patient.ndjson')"])
def test_sql_reads_no_file_and_no_url_beyond_the_views(demo_store, reader):
    result = invoke("sql", f"SELECT * FROM {reader.format(store=demo_store.path)}", "--store", str(demo_store.path))
    assert result.exit_code == 4
    assert result.stderr.startswith("fhir-msc: error: the query cannot be run: Permission Error:")
    assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""


def test_the_database_is_shut_off_even_past_the_statement_check(demo_store, study, tmp_path, monkeypatch):
    monkeypatch.setattr(query_module, "_check_statements", lambda con, text: None)
    out = tmp_path / "leak.csv"
    with pytest.raises(InputError, match="the query cannot be run: .*(disabled by configuration|Permission)"):
        jobs.sql(study, f"COPY (SELECT * FROM patients) TO '{out}'", demo_store.path)
    assert not out.exists()


@pytest.mark.parametrize("query, line", [
    ("SELECT * FROM nope", "fhir-msc: error: the query cannot be run: Catalog Error: Table with name nope does not exist!"),
    ("SELEC 1", 'fhir-msc: error: the query is not SQL DuckDB reads: Parser Error: syntax error at or near "SELEC"')])
def test_a_bad_query_is_one_line_and_exit_4(demo_store, query, line):
    result = invoke("sql", query, "--store", str(demo_store.path))
    assert result.exit_code == 4
    assert result.stderr.strip() == line and "Traceback" not in result.output


def test_a_missing_store_is_one_line(tmp_path):
    result = invoke("sql", "SELECT 1", "--store", str(tmp_path / "none"))
    assert result.exit_code == 4 and result.stderr.startswith(f"fhir-msc: error: {tmp_path / 'none'}: no such store")


@pytest.mark.parametrize("command", ["export", "sql"])
def test_help_teaches_with_an_example(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Example:" in result.output and f"fhir-msc {command} " in result.output
    for param in main.commands[command].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help and param.help.endswith("."), param.name


def test_sql_computes_only_the_views_the_query_names(tmp_path):
    (tmp_path / "Patient.ndjson").write_text(
        "\n".join(json.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "female"}) for i in range(3)) + "\n")
    (tmp_path / "Observation.ndjson").write_text("not JSON\n")
    result = invoke("sql", "SELECT gender, count(*) AS n FROM patients GROUP BY 1", "--store", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == [{"gender": "female", "n": 3}]
    broken = invoke("sql", "SELECT count(*) FROM observations", "--store", str(tmp_path), "--study", str(DEFAULT_STUDY))
    assert broken.exit_code == 4 and len(broken.stderr.strip().splitlines()) == 1
