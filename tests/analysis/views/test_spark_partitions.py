"""What each Spark partition computes (spark_engine.partition_rows), without Spark: DuckDB's rows and counts, or the reference engine's."""

import json

import pyarrow as pa
import pyarrow.compute as pc

from fhir_msc.analysis.views.definition import load_view
from fhir_msc.analysis.views.python_engine import run_view
from fhir_msc.analysis.views.spark_engine import RowFilter, duckdb_translates, partition_rows

ACTIVE = {"resourceType": "ViewDefinition", "resource": "Patient", "where": [{"path": "active"}],
          "select": [{"column": [{"name": "id", "path": "id"}, {"name": "gender", "path": "gender", "type": "code"}]}]}
LINES = [json.dumps({"resourceType": "Patient", "id": "a", "active": True, "gender": "male"}), "  ", "{not JSON",
         "[1]", json.dumps({"resourceType": "Observation", "id": "o"}),
         json.dumps({"resourceType": "Patient", "id": "b", "active": False}),
         json.dumps({"resourceType": "Patient", "id": "c", "active": True})]


def _batches(lines: list[str]) -> list[pa.RecordBatch]:
    return [pa.record_batch([pa.array(lines[:3])], names=["value"]), pa.record_batch([pa.array(lines[3:])], names=["value"])]


def test_duckdb_gives_the_reference_engines_rows_counts_and_line_numbers():
    view = load_view(ACTIVE)
    by = {duckdb: partition_rows(view, _batches(LINES), first=100, ordinal="_line", by_duckdb=duckdb)
          for duckdb in (True, False)}
    assert by[True] == by[False]
    assert by[True].table.to_pylist() == [{"id": "a", "gender": "male", "_line": 101},
                                          {"id": "c", "gender": None, "_line": 107}]
    assert by[True].read == {"Patient": 3, "Observation": 1}
    assert by[True].skipped == {"not JSON": 1, "not a resource": 1, "not Patient": 1, "where not true": 1}


def test_rows_a_filter_leaves_out_are_counted_under_its_reason():
    keep = RowFilter("not asked", lambda table: pc.not_equal(table["id"], "a"))
    found = partition_rows(load_view(ACTIVE), _batches(LINES), keep=keep)
    assert found.table.column("id").to_pylist() == ["c"]
    assert found.skipped["not asked"] == 1 and found.read == {"Patient": 3, "Observation": 1}


def test_a_view_duckdb_does_not_translate_is_run_by_the_reference_engine():
    view = load_view({**ACTIVE, "where": [], "select": [{"column": [{"name": "g", "path": "gender.upper()"}]}]})
    assert not duckdb_translates(view) and duckdb_translates(load_view(ACTIVE))
    found = partition_rows(view, _batches(LINES), by_duckdb=False)
    assert found.table == run_view(view, [json.loads(line) for line in LINES if line.startswith("{\"")])
    assert found.table.column("g").to_pylist() == ["MALE", None, None]
