"""The DuckDB engine for SQL-on-FHIR v2 ViewDefinitions, one small store per feature."""

import json
import tempfile
from decimal import Decimal
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_msc.analysis.engine_frame import VIEWS
from fhir_msc.analysis.views import python_engine
from fhir_msc.analysis.views.tables import shipped_view
from fhir_msc.analysis.views.duckdb_engine import connect, run_view
from fhir_msc.cli import main
from fhir_msc.errors import ViewDefinitionError

MINI = Path(__file__).parents[1] / "data" / "mini-study"
PATIENTS = [
    {"resourceType": "Patient", "id": "p1", "active": True, "birthDate": "1970-06",
     "name": [{"use": "official", "family": "Smith", "given": ["Ann", "B"]}, {"family": "Jones"}],
     "extension": [{"url": "http://example.org/race", "valueString": "x"}],
     "managingOrganization": {"reference": "Organization/o1"}},
    {"resourceType": "Patient", "id": "p2", "active": False},
]
ITEMS = {"resourceType": "QuestionnaireResponse", "id": "q1",
         "item": [{"linkId": "1", "item": [{"linkId": "1.1"}]}, {"linkId": "2"}]}


def _store(tmp_path: Path, *resources: dict) -> Path:
    for resource in resources:
        with open(tmp_path / f"{resource['resourceType']}.ndjson", "ab") as handle:
            handle.write(orjson.dumps(resource) + b"\n")
    return tmp_path


def _rows(view: dict, store: Path) -> list[dict]:
    return run_view({"resource": "Patient", **view}, store).to_pylist()


def test_duckdb_never_downloads_an_extension():
    con = connect()
    settings = dict(con.sql("SELECT name, value FROM duckdb_settings() WHERE name LIKE 'auto%_known_extensions' "
                            "OR name = 'enable_progress_bar'").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false",
                        "enable_progress_bar": "false"}
    modes = dict(con.sql("SELECT extension_name, install_mode FROM duckdb_extensions() "
                         "WHERE extension_name IN ('json', 'parquet')").fetchall())
    assert modes == {"json": "STATICALLY_LINKED", "parquet": "STATICALLY_LINKED"}


def test_columns_are_typed_from_their_fhir_type(tmp_path):
    store = _store(tmp_path, *PATIENTS)
    table = run_view({"resource": "Patient", "select": [{"column": [
        {"name": "id", "path": "getResourceKey()", "type": "id"}, {"name": "active", "path": "active", "type": "boolean"},
        {"name": "given", "path": "name.given", "type": "string", "collection": True}]}]}, store)
    assert table.schema.types == [pa.string(), pa.bool_(), pa.list_(pa.string())]
    assert table.to_pylist() == [{"id": "p1", "active": True, "given": ["Ann", "B"]},
                                 {"id": "p2", "active": False, "given": []}]


def test_for_each_or_null_row_index_and_where(tmp_path):
    store = _store(tmp_path, *PATIENTS)
    rows = _rows({"where": [{"path": "active.exists()"}], "select": [
        {"column": [{"name": "id", "path": "id", "type": "id"}]},
        {"forEachOrNull": "name", "column": [{"name": "n", "path": "%rowIndex", "type": "integer"},
                                             {"name": "family", "path": "family", "type": "string"}]}]}, store)
    assert rows == [{"id": "p1", "n": 0, "family": "Smith"}, {"id": "p1", "n": 1, "family": "Jones"},
                    {"id": "p2", "n": 0, "family": None}]


def test_union_all_constants_and_functions(tmp_path):
    store = _store(tmp_path, *PATIENTS)
    rows = _rows({"constant": [{"name": "use", "valueCode": "official"}], "where": [{"path": "id = 'p1'"}], "select": [{
        "unionAll": [
            {"column": [{"name": "v", "path": "name.where(use = %use).given.join(' ')", "type": "string"}]},
            {"column": [{"name": "v", "path": "extension('http://example.org/race').value.ofType(string)", "type": "string"}]},
            {"column": [{"name": "v", "path": "managingOrganization.getReferenceKey(Organization)", "type": "string"}]},
            {"column": [{"name": "v", "path": "birthDate.highBoundary()", "type": "date"}]}]}]}, store)
    assert rows == [{"v": "Ann B"}, {"v": "x"}, {"v": "o1"}, {"v": "1970-06-30"}]


def test_repeat_walks_items_depth_first(tmp_path):
    store = _store(tmp_path, ITEMS)
    table = run_view({"resource": "QuestionnaireResponse", "select": [
        {"repeat": ["item"], "column": [{"name": "link", "path": "linkId", "type": "string"}]}]}, store)
    assert table.column("link").to_pylist() == ["1", "1.1", "2"]


@pytest.mark.parametrize("select, where, message", [
    ([{"column": [{"name": "id", "path": "id"}, {"name": "family", "path": "name.family", "type": "string"}]}], [],
     "select[0].column[1].path: 'name.family' gives 2 values for Patient/p1 but column 'family' holds one; "
     "set \"collection\": true or narrow the path (e.g. first())"),
    ([{"forEach": "name", "select": [{"column": [{"name": "given", "path": "given"}]}]}], [],
     "select[0].select[0].column[0].path: 'given' gives 2 values for Patient/p1 but column 'given' holds one"),
    ([{"unionAll": [{"column": [{"name": "v", "path": "active", "type": "boolean"}]},
                    {"column": [{"name": "v", "path": "birthDate", "type": "boolean"}]}]}], [],
     "select[0].unionAll[1].column[0].path: gives '1970-06' for Patient/p1, which is not a FHIR boolean; "
     "fix the path or set the column's \"type\""),
    ([{"column": [{"name": "v", "path": "name.given", "type": "integer", "collection": True}]}], [],
     "select[0].column[0].path: gives 'Ann' for Patient/p1, which is not a FHIR integer"),
    ([{"column": [{"name": "id", "path": "id"}]}], [{"path": "active"}, {"path": "name.family"}],
     "where[1].path: gives 'Smith', 'Jones' for Patient/p1, not true or false; make the expression end in a test"),
])
def test_a_view_that_does_not_apply_to_a_resource_names_the_resource_and_its_place_in_the_view(tmp_path, select, where,
                                                                                                message):
    """As the reference engine names it, whichever way DuckDB reads the file (typed, general, rows of a forEach)."""
    store = _store(tmp_path, *PATIENTS)
    view = {"resource": "Patient", "select": select, "where": where}
    with pytest.raises(ViewDefinitionError) as found:
        run_view(view, store)
    assert str(found.value).startswith(message)
    with pytest.raises(ViewDefinitionError) as reference:
        python_engine.run_view(view, PATIENTS)
    assert str(reference.value).startswith(message)


def test_a_missing_resource_file_is_an_empty_table(tmp_path):
    table = run_view({"resource": "Encounter", "select": [{"column": [{"name": "id", "path": "id", "type": "id"}]}]},
                     tmp_path)
    assert table.num_rows == 0 and table.column_names == ["id"]


def test_each_shipped_view_gives_one_row_per_resource(study, demo_store):
    counts = demo_store.counts()
    for name, resource_type in VIEWS.items():
        view = shipped_view(name, study)
        assert view["resource"] == resource_type
        assert run_view(view, demo_store).num_rows == counts[resource_type]


def test_analyze_prints_the_same_table_with_either_engine(tmp_path):
    runner = CliRunner()
    runner.invoke(main, ["map", str(MINI / "tables"), "--store", str(tmp_path / "s"), "--study", str(MINI / "study.yaml")])
    outputs = [runner.invoke(main, ["analyze", "--store", str(tmp_path / "s"), "--study", str(MINI / "study.yaml"),
                                    "--engine", engine]) for engine in ("python", "duckdb")]
    assert [o.exit_code for o in outputs] == [0, 0] and outputs[0].output == outputs[1].output
    assert "difference of means" in outputs[1].output


def test_duckdb_types_columns_as_every_engine_does():
    from fhir_msc.analysis.views.duckdb_engine import TYPES
    from fhir_msc.analysis.views.python_engine import ARROW_TYPES

    assert {kind: arrow for kind, (_, arrow) in TYPES.items()} == ARROW_TYPES


def test_the_fast_path_falls_back_where_an_element_has_another_shape(study, tmp_path, monkeypatch):
    """Each shipped Observation column, on resources whose elements break the fast path's expected
    shapes (an object for an array, an array for an object, JSON nulls), equals the general translation's."""
    from fhir_msc.analysis.views import duckdb_engine

    base = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "s", "code": "A"}]}}
    odd = [
        {**base, "id": "o1", "valueQuantity": {"value": 1.5, "unit": "L"}, "effectiveDateTime": "2020-01-01"},
        {**base, "id": "o2", "subject": [{"reference": "Patient/p2"}], "code": {"coding": {"system": "s", "code": "B"}}},
        {**base, "id": "o3", "identifier": [None, {"value": "x"}], "valueQuantity": [{"value": 7}]},
        {**base, "id": "o4", "code": {"coding": [None, {"system": ["s"], "code": "C"}]}, "subject": None},
        {**base, "id": "o5", "valueCodeableConcept": {"coding": [{"system": "a", "code": "1"}, None, {"code": "2"}]},
         "dataAbsentReason": {"coding": {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                         "code": "not-performed"}}},
        {**base, "id": "o6", "valueCodeableConcept": {"coding": {"system": "a", "code": "1"}}, "valueString": "t"},
    ]
    view = shipped_view("observations", study)
    view["constant"] = [{**c, "valueUri": "s"} if c["name"] == "studyCodeSystem" else c for c in view["constant"]]
    store = _store(tmp_path, *odd)
    fast = run_view(view, store).to_pylist()
    monkeypatch.setattr(duckdb_engine._Compiler, "scalar", lambda *a, **k: None)
    monkeypatch.setattr(duckdb_engine._Compiler, "selected", lambda *a, **k: None)
    assert fast == run_view(view, store).to_pylist()
    assert [row["code"] for row in fast] == ["A", "B", "A", "C", "A", "A"] and fast[1]["subject"] == "Patient/p2"


decimals = st.decimals(min_value=-10**12, max_value=10**12, places=3, allow_nan=False, allow_infinity=False) | \
    st.decimals(min_value=-100, max_value=100, places=2, allow_nan=False, allow_infinity=False) | \
    st.integers(min_value=-10**9, max_value=10**9).map(Decimal)
ARITHMETIC = {"resource": "Observation", "select": [{"column": [
    {"name": "id", "path": "id", "type": "id"},
    *({"name": name, "path": f"value.ofType(Range).low.value {op} value.ofType(Range).high.value", "type": "decimal"}
      for name, op in (("sum", "+"), ("difference", "-"), ("product", "*"), ("quotient", "/"))),
    {"name": "tied", "path": "value.ofType(Range).low.value - value.ofType(Range).high.value = 30.00", "type": "boolean"}]}]}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(decimals, decimals), min_size=1, max_size=40))
def test_decimal_arithmetic_is_exact_on_the_numbers_as_written_as_in_the_reference_engine(pairs):
    """+, −, ×, ÷ of decimals written with up to 3 places give the double nearest the exact decimal result, as Python's
    decimal (and the reference engine, fhirpathpy on Decimal) gives it: 66.21 − 36.21 is 30, 0.1 + 0.2 is 0.3."""
    pairs = [*pairs, (Decimal("66.21"), Decimal("36.21")), (Decimal("0.1"), Decimal("0.2")),
             (Decimal("999999.999"), Decimal("999999.999"))]
    lines = [f'{{"resourceType": "Observation", "id": "o{i}", "status": "final", "code": {{"text": "x"}}, '
             f'"valueRange": {{"low": {{"value": {a}}}, "high": {{"value": {b}}}}}}}' for i, (a, b) in enumerate(pairs)]
    expected = [{"id": f"o{i}", "sum": float(a + b), "difference": float(a - b), "product": float(a * b),
                 "quotient": None if b == 0 else float(a / b), "tied": a - b == 30}
                for i, (a, b) in enumerate(pairs)]
    with tempfile.TemporaryDirectory() as store:
        (Path(store) / "Observation.ndjson").write_text("\n".join(lines) + "\n")
        assert run_view(ARITHMETIC, Path(store)).to_pylist() == expected
    assert python_engine.run_view(ARITHMETIC, [json.loads(line) for line in lines]).to_pylist() == expected
