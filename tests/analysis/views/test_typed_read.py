"""The DuckDB engine's typed read (STRUCT columns) of flat views, and its fallback to the general query.

Each shape a typed read does not expect is one case: the engine's table must equal the python
reference engine's, and the typed query must have given way (raised) exactly where it could differ.
"""

import json
from importlib.resources import files
from pathlib import Path

import duckdb
import orjson
import pytest

from fhir_msc.analysis.views import python_engine
from fhir_msc.analysis.views.duckdb_engine import compile_view, connect, run_view
from fhir_msc.analysis.views.shapes import Shape, shape

SYSTEM = "http://example.org/codes"


def shipped_view(name: str) -> dict:
    """A shipped view with its study code system set to SYSTEM (its other constants as shipped)."""
    view = json.loads(files("fhir_msc.analysis.views").joinpath(f"{name}.json").read_text(encoding="utf-8"))
    constants = [{**c, "valueUri": SYSTEM} if c["name"] == "studyCodeSystem" else c for c in view["constant"]]
    return {**view, "constant": constants}


OBSERVATIONS = shipped_view("observations")
VISITS = shipped_view("visits")
OBSERVATION = {
    "resourceType": "Observation", "id": "o1", "identifier": [{"value": "x-1"}],
    "code": {"coding": [{"system": "other", "code": "Z"}, {"system": SYSTEM, "code": "A"}], "text": "Finding"},
    "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"},
    "valueQuantity": {"value": 1.50, "unit": "L", "code": "L", "comparator": "<"}, "effectiveDateTime": "2020-01-01",
}
ANSWERED = {**OBSERVATION, "id": "o2", "valueQuantity": None,
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "263654008"}, {"code": "2"}]},
            "dataAbsentReason": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                                             "code": "not-performed"}], "text": "not done"}}
ENCOUNTER = {"resourceType": "Encounter", "id": "e1",
             "type": [{"coding": [{"system": SYSTEM, "code": "M36"}]}, {"coding": [{"system": "x", "code": "y"}]}]}


def _store(tmp_path: Path, *resources: dict) -> Path:
    with open(tmp_path / f"{resources[0]['resourceType']}.ndjson", "wb") as handle:
        handle.writelines(orjson.dumps(r) + b"\n" for r in resources)
    return tmp_path


def _typed_raises(view: dict, store: Path) -> bool:
    try:
        connect().sql(compile_view(view, store).typed_sql).fetchall()
    except (duckdb.InvalidInputException, duckdb.ConversionException):
        return True
    return False


def _same_as_reference(view: dict, store: Path, *resources: dict) -> None:
    assert run_view(view, store).to_pylist() == python_engine.run_view(view, resources).to_pylist()


PATIENT = {"resourceType": "Patient", "id": "p1", "identifier": [{"system": "http://example.org/subject", "value": "S-1"}],
           "gender": "female", "birthDate": "1960-01-01"}


def test_the_shipped_views_are_read_typed(tmp_path):
    patients = shipped_view("patients")
    for view, resources in ((OBSERVATIONS, [OBSERVATION, ANSWERED]), (VISITS, [ENCOUNTER]), (patients, [PATIENT])):
        store = _store(tmp_path, *resources)
        sql = compile_view(view, store).typed_sql
        assert sql is not None and "STRUCT(" in sql and "json_extract" not in sql
        assert not _typed_raises(view, store)
        _same_as_reference(view, store, *resources)


@pytest.mark.parametrize("name", ["subjects", "adverse_events"])
def test_the_other_shipped_views_use_the_general_query(name, tmp_path):
    """``(individual | subject).first()`` and the AdverseEvent's R4/R5 shapes are not read typed (yet)."""
    view = shipped_view(name)
    assert compile_view(view, _store(tmp_path, {"resourceType": view["resource"], "id": "x"})).typed_sql is None


def test_a_view_the_typed_read_does_not_cover_has_only_the_general_query(tmp_path):
    view = {"resource": "Observation", "select": [{"forEach": "code.coding", "column": [{"name": "c", "path": "code"}]}]}
    assert compile_view(view, _store(tmp_path, OBSERVATION)).typed_sql is None


def test_element_shapes_come_from_the_fhir_models():
    assert shape("Observation", ("code", "coding")) == Shape(repeats=True, data_type="Coding")
    assert shape("Observation", ("code", "coding", "system")) == Shape(repeats=False, data_type=None, text=True)
    assert shape("Observation", ("valueQuantity", "value")) == Shape(repeats=False, data_type=None, text=False)
    assert shape("Encounter", ("class",)) is None  # a Coding in R4, CodeableConcepts in R5
    assert shape("Observation", ("valueQuantity", "valueDecimal")) is None  # no such element


ODD_SHAPES = {  # name: (changes to OBSERVATION, whether the typed query gives way to the general one)
    "array for one item": ({"subject": [{"reference": "Patient/p2"}]}, True),
    "text for an object": ({"encounter": "Encounter/e2"}, True),
    "object for a list": ({"identifier": {"value": "x-2"}}, True),
    "array in a leaf": ({"subject": {"reference": ["Patient/p2"]}}, True),
    "JSON null in a where() list": ({"code": {"coding": [None, {"system": SYSTEM, "code": "B"}]}}, False),
    "array in a where() criterion": ({"code": {"coding": [{"system": [SYSTEM], "code": "C"}]}}, True),
    "a choice and its plain element": ({"effective": "2020-02-02"}, True),
    "text starting with [": ({"code": {"coding": [{"system": SYSTEM, "code": "D"}], "text": "[note]"}}, True),
    "JSON null leaf": ({"subject": {"reference": None}, "valueQuantity": {"value": None}}, False),
    "empty object": ({"subject": {}, "identifier": [{}]}, False),
    "number for text": ({"code": {"coding": [{"system": SYSTEM, "code": 12}], "text": 1.50}}, False),
    "object for text": ({"encounter": {"reference": {"id": "e3"}}}, False),
    "integer decimal": ({"valueQuantity": {"value": 2, "unit": "L"}}, False),
    "a string value": ({"valueQuantity": None, "valueString": "better"}, False),
}


@pytest.mark.parametrize("name", ODD_SHAPES)
def test_a_resource_of_an_odd_shape_gives_the_reference_engines_row(name, tmp_path):
    changes, gives_way = ODD_SHAPES[name]
    resources = [OBSERVATION, {**OBSERVATION, "id": "odd", **changes}]
    store = _store(tmp_path, *resources)
    assert _typed_raises(OBSERVATIONS, store) == gives_way
    _same_as_reference(OBSERVATIONS, store, *resources)


def test_a_json_null_first_in_a_list_gives_the_general_querys_row(tmp_path):
    """The general query skips a JSON null item (the python engine reads it as an item: first().value is empty)."""
    resources = [OBSERVATION, {**OBSERVATION, "id": "odd", "identifier": [None, {"value": "x-3"}]}]
    store = _store(tmp_path, *resources)
    compiled = compile_view(OBSERVATIONS, store)
    assert _typed_raises(OBSERVATIONS, store)
    assert run_view(OBSERVATIONS, store) == compiled.finish(connect().sql(compiled.sql).to_arrow_table())
    assert run_view(OBSERVATIONS, store)["identifier"].to_pylist() == ["x-1", "x-3"]


@pytest.mark.parametrize(("changes", "column"), [({"valueString": 3}, "value_string"), ({"valueInteger": "3"}, "value_integer")])
def test_a_value_of_another_json_type_is_not_of_the_type_asked_for(changes, column, tmp_path):
    """``valueString.ofType(string)`` of a number is empty, as in the general query (the python engine, whose
    FHIRPath does not check the JSON type, gives the number: the analysis frame's reader counts it as not text)."""
    resources = [OBSERVATION, {**OBSERVATION, "id": "odd", "valueQuantity": None, **changes}]
    store = _store(tmp_path, *resources)
    compiled = compile_view(OBSERVATIONS, store)
    assert not _typed_raises(OBSERVATIONS, store)
    assert run_view(OBSERVATIONS, store) == compiled.finish(connect().sql(compiled.sql).to_arrow_table())
    assert run_view(OBSERVATIONS, store)[column].to_pylist() == [None, None]


def test_a_json_null_among_selected_items_gives_the_reference_engines_row(tmp_path):
    resources = [ENCOUNTER, {**ENCOUNTER, "id": "e2", "type": [None, {"coding": [{"system": SYSTEM, "code": "M3"}]}]}]
    store = _store(tmp_path, *resources)
    assert not _typed_raises(VISITS, store)
    _same_as_reference(VISITS, store, *resources)


UNSCHEDULED_TYPE = {"coding": [{"system": SYSTEM, "code": "UNSCHEDULED"}], "text": "Unscheduled 3.1"}
VISIT_SHAPES = {  # name: (changes to ENCOUNTER, whether the typed query gives way to the general one)
    "an unscheduled type's text": ({"type": [{"coding": [{"system": "x", "code": "y"}]}, UNSCHEDULED_TYPE]}, False),
    "the study coding second": ({"type": [{"coding": [{"system": "x", "code": "UNSCHEDULED"},
                                                      {"system": SYSTEM, "code": "UNSCHEDULED"}], "text": "U"}]}, False),
    "another system's UNSCHEDULED": ({"type": [{"coding": [{"system": "x", "code": "UNSCHEDULED"}], "text": "U"}]}, False),
    "array for a coding's code": ({"type": [{"coding": [{"system": SYSTEM, "code": ["UNSCHEDULED"]}], "text": "U"}]}, True),
}


@pytest.mark.parametrize("name", VISIT_SHAPES)
def test_a_where_on_a_chain_in_the_visits_view_gives_the_reference_engines_row(name, tmp_path):
    """``type.where(coding.where(system = …).first().code = …)``: the criterion is a chain from each item."""
    changes, gives_way = VISIT_SHAPES[name]
    resources = [ENCOUNTER, {**ENCOUNTER, "id": "e2", **changes}]
    store = _store(tmp_path, *resources)
    assert compile_view(VISITS, store).typed_sql is not None
    assert _typed_raises(VISITS, store) == gives_way
    _same_as_reference(VISITS, store, *resources)
