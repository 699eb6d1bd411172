"""`fhir-msc view run`: a ViewDefinition over the fixture store or a server, written as Parquet, CSV or NDJSON."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile

import click
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from fhir_msc import Store, jobs
from fhir_msc.analysis.views.spark_engine import EngineUnavailable, spark_session
from fhir_msc.analysis.views.tables import SHIPPED, shipped_view
from fhir_msc.cli import main
from fhir_msc.fhir.bundle import write_bundle
from fhir_msc.server.client import FhirClient

SCORES = {"resourceType": "ViewDefinition", "name": "scores", "resource": "Observation",
          "where": [{"path": "value.ofType(Quantity).exists()"}],
          "select": [{"column": [
              {"name": "id", "path": "getResourceKey()", "type": "id"},
              {"name": "patient", "path": "subject.getReferenceKey(Patient)", "type": "id"},
              {"name": "code", "path": "code.coding.first().code", "type": "code"},
              {"name": "value", "path": "value.ofType(Quantity).value", "type": "decimal"}]}]}


def invoke(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.fixture
def scores_view(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(SCORES))
    return path


def _scores_in(store) -> dict[str, tuple[str, str, float]]:
    """The expected rows, read straight from the store's NDJSON (not through any view engine)."""
    rows = {}
    for line in (store.path / "Observation.ndjson").read_text().splitlines():
        observation = json.loads(line)
        if "valueQuantity" in observation:
            rows[observation["id"]] = (observation["subject"]["reference"].split("/")[1],
                                       observation["code"]["coding"][0]["code"], observation["valueQuantity"]["value"])
    return rows


def test_view_run_writes_the_views_rows_to_parquet(demo_store, scores_view, tmp_path):
    out = tmp_path / "scores.parquet"
    result = invoke("view", "run", str(scores_view), "--store", str(demo_store.path), "--out", str(out))
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["id", "patient", "code", "value"]
    assert {row["id"]: (row["patient"], row["code"], row["value"]) for row in table.to_pylist()} == _scores_in(demo_store)
    assert table.num_rows == len(_scores_in(demo_store)) > 0
    assert os.stat(out).st_mode & 0o077 == 0


def test_view_run_json_accounts_for_every_resource_read(demo_store, scores_view, tmp_path):
    result = invoke("view", "run", str(scores_view), "--store", str(demo_store.path), "--out", str(tmp_path / "s.ndjson"),
                    "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    observations = demo_store.counts()["Observation"]
    assert summary["read"] == {"Observation": observations}
    assert summary["rows"] == len(_scores_in(demo_store))
    assert summary["skipped"] == {"where not true": observations - summary["rows"]}


def test_csv_and_ndjson_hold_the_same_rows_as_parquet(demo_store, scores_view, tmp_path):
    for suffix in ("parquet", "csv", "ndjson"):
        assert invoke("view", "run", str(scores_view), "--store", str(demo_store.path),
                      "--out", str(tmp_path / f"s.{suffix}")).exit_code == 0
    expected = pq.read_table(tmp_path / "s.parquet").to_pylist()
    lines = [json.loads(line) for line in (tmp_path / "s.ndjson").read_text().splitlines()]
    assert lines == expected
    with open(tmp_path / "s.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["id"], float(r["value"])) for r in rows] == [(r["id"], r["value"]) for r in expected]
    # a decimal is written alike in both, a whole one without a fraction (100, as JSON and the SQL-on-FHIR suite write it)
    written = [re.search(r'"value":([^,}]*)', line).group(1) for line in (tmp_path / "s.ndjson").read_text().splitlines()]
    assert written == [r["value"] for r in rows] and "100" in written and not any(v.endswith(".0") for v in written)


def test_a_bad_view_exits_4_with_one_line_naming_the_json_path(demo_store, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**SCORES, "select": [{"column": [{"name": "id", "path": "id"},
                                                                {"name": "x", "path": "code.("}]}]}))
    result = invoke("view", "run", str(bad), "--store", str(demo_store.path), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 4
    assert result.stderr.startswith(f"fhir-msc: error: {bad}: select[0].column[1].path: 'code.(' is not valid FHIRPath")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "o.csv").exists()


def test_an_output_file_of_another_format_is_refused(demo_store, scores_view, tmp_path):
    result = invoke("view", "run", str(scores_view), "--store", str(demo_store.path), "--out", str(tmp_path / "o.xlsx"))
    assert result.exit_code == 2
    assert "name a file ending in .parquet, .csv, .ndjson" in result.stderr


def test_view_run_reads_a_server_by_search(fhir_server, tmp_path):
    client = FhirClient(fhir_server.base)
    for i, value in enumerate([5, 7.5]):
        client.request("PUT", f"Observation/o{i}", json={
            "resourceType": "Observation", "id": f"o{i}", "status": "final", "code": {"coding": [{"code": "SCORE"}]},
            "subject": {"reference": f"Patient/p{i}"}, "valueQuantity": {"value": value}})
    result = jobs.view_run(SCORES, client, tmp_path / "s.parquet")
    assert sorted(pq.read_table(tmp_path / "s.parquet").to_pylist(), key=lambda r: r["id"]) == [
        {"id": "o0", "patient": "p0", "code": "SCORE", "value": 5.0},
        {"id": "o1", "patient": "p1", "code": "SCORE", "value": 7.5}]
    assert result.read == {"Observation": 2} and result.rows == 2


def _sorted(table):
    return sorted(table.to_pylist(), key=lambda row: json.dumps(row, sort_keys=True))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_three_engines_give_identical_tables_of_each_shipped_view(name, study, demo_store, spark, tmp_path):
    view = shipped_view(name, study)
    results = {engine: jobs.view_run(view, demo_store.path, tmp_path / f"{engine}.parquet", engine=engine)
               for engine in ("python", "duckdb", "spark")}
    tables = {engine: pq.read_table(tmp_path / f"{engine}.parquet") for engine in results}
    assert tables["python"].num_rows > 0
    for engine in ("duckdb", "spark"):
        assert tables[engine].schema == tables["python"].schema, engine
        assert _sorted(tables[engine]) == _sorted(tables["python"]), engine
        assert (results[engine].read, results[engine].skipped, results[engine].rows) == (
            results["python"].read, results["python"].skipped, results["python"].rows), engine


def test_duckdb_reads_a_bundle_as_it_reads_the_store(demo_store, scores_view, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    bundle = tmp_path / "bundle.json"
    write_bundle(demo_store.read_all(), bundle)
    from_store = jobs.view_run(scores_view, demo_store.path, tmp_path / "store.parquet", engine="duckdb")
    from_bundle = jobs.view_run(scores_view, bundle, tmp_path / "bundle.parquet", engine="duckdb")
    assert _sorted(pq.read_table(tmp_path / "bundle.parquet")) == _sorted(pq.read_table(tmp_path / "store.parquet"))
    assert (from_bundle.read, from_bundle.skipped) == (from_store.read, from_store.skipped)
    assert not list((tmp_path / "tmp").iterdir())  # the spooled store is gone


def test_spark_without_java_says_what_to_install(monkeypatch):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(EngineUnavailable, match=r"^--engine spark needs Java 17 or 21 and none was found: install"):
        spark_session()


def test_a_store_url_needs_the_spark_engine(scores_view, tmp_path):
    result = invoke("view", "run", str(scores_view), "--store", "s3a://bucket/store", "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 2
    assert "only --engine spark reads URLs" in result.stderr


def test_view_run_help_explains_every_option():
    result = invoke("view", "run", "--help")
    assert result.exit_code == 0 and "view run [OPTIONS] VIEW" in result.output
    for param in main.commands["view"].commands["run"].params:
        if isinstance(param, click.Option) and param.name != "help":
            assert param.help and param.help.endswith("."), param.name


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".ndjson"])
def test_spark_writes_a_stores_view_in_parts_without_collecting_it_in_the_resources_order(
        suffix, study, demo_store, spark, tmp_path, monkeypatch):
    """On a local master the rows go from Spark's part files into the output, never whole into this process."""
    from fhir_msc.analysis.views import spark_engine

    view = shipped_view("observations", study)
    jobs.view_run(view, demo_store.path, tmp_path / f"duckdb{suffix}", engine="duckdb")
    monkeypatch.setattr(spark_engine, "_collected", lambda *a: pytest.fail("the view was collected to the driver"))
    result = jobs.view_run(view, demo_store.path, tmp_path / f"spark{suffix}", engine="spark")
    if suffix == ".parquet":
        assert pq.read_table(tmp_path / "spark.parquet") == pq.read_table(tmp_path / "duckdb.parquet")
    else:
        assert (tmp_path / f"spark{suffix}").read_bytes() == (tmp_path / f"duckdb{suffix}").read_bytes()
    assert result.rows == demo_store.counts()["Observation"]
    assert oct(os.stat(tmp_path / f"spark{suffix}").st_mode & 0o777) == "0o600"


def test_a_local_spark_session_stays_on_loopback_and_its_jvm_logs_errors_only(spark):
    conf = spark_session().sparkContext.getConf()
    assert os.environ["SPARK_LOCAL_IP"] == conf.get("spark.driver.bindAddress") == "127.0.0.1"
    log_config = conf.get("spark.driver.extraJavaOptions").split("-Dlog4j2.configurationFile=file:", 1)[1]
    assert "rootLogger.level = error" in open(log_config, encoding="utf-8").read()


def test_an_expected_view_error_under_spark_is_one_line_and_the_jvm_speaks_only_with_verbose(tmp_path):
    """In a process of its own, so that it starts its own JVM: the Spark log and the workers' tracebacks stay out of
    stderr; --verbose lets them through."""
    store = tmp_path / "store"
    Store(store).write([{"resourceType": "Patient", "id": "p1", "name": [{"given": ["Ann", "B"]}]}])
    view = tmp_path / "given.json"
    view.write_text(json.dumps({"resourceType": "ViewDefinition", "resource": "Patient", "select": [{"column": [
        {"name": "id", "path": "id", "type": "id"}, {"name": "given", "path": "name.given", "type": "string"}]}]}))
    said = ("fhir-msc: error: select[0].column[1].path: 'name.given' gives 2 values for Patient/p1 but column 'given' "
            "holds one; set \"collection\": true or narrow the path (e.g. first())\n")
    for verbose in ([], ["--verbose"]):
        run = subprocess.run([sys.executable, "-c", "from fhir_msc.cli import main; main()", *verbose, "view", "run",
                              str(view), "--store", str(store), "--out", str(tmp_path / "o.ndjson"), "--engine", "spark"],
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 4 and run.stdout == ""
        if verbose:
            assert run.stderr.endswith(said) and "PythonException" in run.stderr, run.stderr[-2000:]
        else:
            assert run.stderr == said
