"""Outcome types beyond quantity and coded, and unscheduled visits: mapped, valid, round-tripped, rejected when bad.

tests/data/types-study is a made-up study (synthetic tables) with one outcome of every type,
unscheduled visits (VISITNUM 1.1, 2.1, 3.1, 3.2) and a scheduled fractional visit (2.5).
"""

import csv
from pathlib import Path

import pytest

from fhir_msc import Store, get_version, jobs, load_study
from fhir_msc.fhir.roundtrip import check_roundtrip
from fhir_msc.fhir.unmapping import fhir_to_tables
from fhir_msc.tables.sdtm import FindingColumns, RowError, SubjectRecord, parse_finding

TYPES = Path(__file__).parents[1] / "data" / "types-study"
TABLES = TYPES / "tables"


@pytest.fixture(scope="module")
def types_study():
    return load_study(TYPES / "study.yaml")


def _mapped(types_study, tmp_path, version: str = "R4") -> Store:
    result = jobs.map_tables(types_study, TABLES, store=tmp_path / "store", version=get_version(version))
    assert result.rows_rejected == 0
    return Store(tmp_path / "store")


def _observation(store: Store, subject: str, visit: str, code: str) -> dict:
    [found] = [o for o in store.read("Observation")
               if o["identifier"][0]["value"] == f"{subject}/{visit}/{code}"]
    return found


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_each_type_has_its_value_element(types_study, tmp_path, version):
    store = _mapped(types_study, tmp_path, version)
    values = {code: {k: v for k, v in _observation(store, "TYP-01", "W12", code).items() if k.startswith("value")}
              for code in ("FLARES", "HOSP", "RECOVDT", "COMMENT", "WHO")}
    assert values["FLARES"] == {"valueInteger": 0}
    assert values["HOSP"] == {"valueBoolean": False}
    assert values["RECOVDT"] == {"valueDateTime": "2024-02-20"}
    assert values["COMMENT"] == {"valueString": "felt well, no complaints"}
    weight = "itemWeight" if version == "R5" else "ordinalValue"  # R5 renamed R4's ordinalValue
    assert values["WHO"] == {"valueCodeableConcept": {"coding": [{
        "extension": [{"url": f"http://hl7.org/fhir/StructureDefinition/{weight}", "valueDecimal": 1}],
        "system": "https://example.org/fhir/CodeSystem/typ-001", "code": "AMBULATORY"}], "text": "AMBULATORY"}}
    ventilated = _observation(store, "TYP-04", "W12", "WHO")["valueCodeableConcept"]["coding"][0]
    assert ventilated["extension"][0]["valueDecimal"] == 3
    assert _observation(store, "TYP-06", "W12", "RECOVDT")["valueDateTime"] == "2024-04-01T10:30:00+02:00"


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_an_unscheduled_visit_is_an_encounter_marked_unscheduled(types_study, tmp_path, version):
    store = _mapped(types_study, tmp_path, version)
    [encounter] = [e for e in store.read("Encounter") if e["identifier"][0]["value"] == "TYP-02/UNSCHEDULED-3.1"]
    assert encounter["type"] == [{"coding": [{"system": "https://example.org/fhir/CodeSystem/typ-001",
                                              "code": "UNSCHEDULED", "display": "Unscheduled visit"}],
                                  "text": "UNSCHEDULED 3.1"}]
    observation = _observation(store, "TYP-02", "UNSCHEDULED-3.1", "SCORE")
    assert observation["encounter"]["reference"] == f"Encounter/{encounter['id']}"
    scheduled = [e for e in store.read("Encounter") if e["identifier"][0]["value"] == "TYP-04/W6"]
    assert scheduled[0]["type"][0]["coding"][0]["code"] == "W6"  # a scheduled fractional visit (2.5) keeps its code


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_every_new_shape_is_valid_for_both_validators(types_study, tmp_path, version, independent_validator):
    store = _mapped(types_study, tmp_path, version)
    assert jobs.validate(store.path, get_version(version)).errors == []
    report = independent_validator(version).validate(store.path)
    assert report.checked == sum(store.counts().values()) and report.errors == []


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_types_and_unscheduled_visits_round_trip_losslessly(types_study, tmp_path, version):
    result = check_roundtrip(types_study, TABLES, get_version(version), tmp_path)
    assert result.differences == []


def test_visitnum_3_1_comes_back_as_3_1(types_study, tmp_path):
    store = _mapped(types_study, tmp_path)
    fhir_to_tables(types_study, store, tmp_path / "tables")
    with open(tmp_path / "tables" / "xs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    visits = {(r["VISITNUM"], r["VISIT"]) for r in rows if r["USUBJID"] == "TYP-02"}
    assert visits == {("1", "Week 0"), ("3.1", "UNSCHEDULED 3.1"), ("3.2", "UNSCHEDULED 3.2")}
    assert ("2.5", "Week 6") in {(r["VISITNUM"], r["VISIT"]) for r in rows}


def test_an_observation_whose_value_has_another_type_is_skipped_by_name(types_study, tmp_path):
    store = _mapped(types_study, tmp_path)
    flares = _observation(store, "TYP-01", "W12", "FLARES")
    store.write([{**{k: v for k, v in flares.items() if k != "valueInteger"}, "valueString": "0"}])
    result = jobs.unmap(types_study, store.path, tmp_path / "tables")
    observations = result.accounts["Observation"]
    assert observations.skipped == {"value not interpretable as integer (valueInteger expected)": 1}
    assert observations.examples[next(iter(observations.skipped))] == [f"Observation/{flares['id']}"]


SUBJECT = SubjectRecord(subject="TYP-01", age=30, sex="M", country="", arm_code="TRT", actual_arm_code="TRT",
                        start="2024-01-10", end="")
ROW = {"STUDYID": "TYP-001", "USUBJID": "TYP-01", "XSTESTCD": "FLARES", "XSTEST": "Flares", "XSORRES": "2",
       "XSORRESU": "", "VISITNUM": "3", "VISIT": "Week 12", "XSDTC": "2024-04-03"}


@pytest.mark.parametrize("change, column, problem", [
    ({"XSORRES": "2.5"}, "XSORRES", "FLARES is a count: write a whole number"),
    ({"XSORRES": "60"}, "XSORRES", "FLARES out of plausible range 0-50"),
    ({"XSORRESU": "{flares}"}, "XSORRESU", "FLARES is an integer outcome and has no unit"),
    ({"XSTESTCD": "WHO", "XSORRES": "CRITICAL"}, "XSORRES",
     "not an allowed answer for WHO: use one of AMBULATORY, HOSPITALISED, VENTILATED"),
    ({"XSTESTCD": "HOSP", "XSORRES": "yes"}, "XSORRES", "not an allowed answer for HOSP: use one of Y, N"),
    ({"XSTESTCD": "RECOVDT", "XSORRES": "2024-02-30"}, "XSORRES", "no such calendar date"),
    ({"XSTESTCD": "RECOVDT", "XSORRES": "20/02/2024"}, "XSORRES", "not an ISO 8601 date"),
    ({"VISITNUM": "3.1", "VISIT": ""}, "VISIT", "VISITNUM 3.1 is an unscheduled visit: name it in VISIT"),
    ({"VISITNUM": "3.1", "VISIT": "Week 12"}, "VISIT", "not as a scheduled visit"),
    ({"VISITNUM": "7"}, "VISITNUM", "unknown visit number: use one of 1, 2, 2.5, 3 (or a fractional one"),
])
def test_bad_typed_results_are_row_errors(types_study, change, column, problem):
    columns = FindingColumns.of(types_study, "XS")
    parse_finding(types_study, columns, {"TYP-01": SUBJECT}, ROW)  # the row itself is good
    with pytest.raises(RowError) as raised:
        parse_finding(types_study, columns, {"TYP-01": SUBJECT}, {**ROW, **change})
    assert raised.value.column == column and problem in raised.value.problem


def test_bad_typed_rows_go_to_rejects_and_good_rows_go_on(types_study, tmp_path):
    tables = tmp_path / "in"
    tables.mkdir()
    for path in TABLES.iterdir():
        (tables / path.name).write_bytes(path.read_bytes())
    with open(tables / "xs.csv", "a", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([
            ["TYP-001", "TYP-03", "FLARES", "Flares", "two", "", "2", "Week 4", "2024-02-07"],
            ["TYP-001", "TYP-03", "WHO", "Clinical status", "DEAD", "", "2", "Week 4", "2024-02-07"],
            ["TYP-001", "TYP-03", "RECOVDT", "Date of recovery", "2024-13-01", "", "2", "Week 4", "2024-02-07"]])
    result = jobs.map_tables(types_study, tables, store=tmp_path / "store")
    assert [(r.row, r.column, r.value) for r in result.rejections] == [
        (44, "XSORRES", "two"), (45, "XSORRES", "DEAD"), (46, "XSORRES", "2024-13-01")]
    assert result.counts["Observation"] == 42
    with open(result.rejects_files[0], newline="") as handle:
        assert [row["XSORRES"] for row in csv.DictReader(handle)] == ["two", "DEAD", "2024-13-01"]


def test_without_an_unscheduled_section_a_fractional_visit_is_still_rejected(types_study):
    study = types_study.model_copy(update={"unscheduled": None})
    with pytest.raises(RowError, match="add an 'unscheduled:' section"):
        parse_finding(study, FindingColumns.of(study, "XS"), {"TYP-01": SUBJECT},
                      {**ROW, "VISITNUM": "3.1", "VISIT": "UNSCHEDULED 3.1"})


@pytest.mark.parametrize("fmt", ["xpt", "json"])
def test_types_and_visits_survive_xport_and_dataset_json(types_study, tmp_path, fmt):
    from fhir_msc.fhir.roundtrip import compare_stores
    store = _mapped(types_study, tmp_path)
    fhir_to_tables(types_study, store, tmp_path / fmt, fmt)
    again = jobs.map_tables(types_study, tmp_path / fmt, store=tmp_path / "again")
    assert again.rows_rejected == 0 and compare_stores(store, Store(tmp_path / "again")) == []


def test_an_unscheduled_encounter_without_its_visitnum_is_skipped_with_its_observations(types_study, tmp_path):
    store = _mapped(types_study, tmp_path)
    [encounter] = [e for e in store.read("Encounter") if e["identifier"][0]["value"] == "TYP-01/UNSCHEDULED-2.1"]
    store.write([{**encounter, "identifier": [{"system": encounter["identifier"][0]["system"], "value": "TYP-01"}]}])
    result = jobs.unmap(types_study, store.path, tmp_path / "tables")
    assert result.accounts["Encounter"].examples == {
        "unscheduled visit without its VISITNUM (identifier …/UNSCHEDULED-3.1) or VISIT (type text)":
            [f"Encounter/{encounter['id']}"]}
    assert result.accounts["Observation"].skipped == {"unknown visit": 1}
