"""Findings not done (SDTM --STAT NOT DONE, --REASND): an Observation without a value, with dataAbsentReason."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from fhir_msc import Store, get_version, jobs
from fhir_msc.analysis import engine_frame
from fhir_msc.analysis.frame import NOT_DONE, frame_and_account
from fhir_msc.cli import main
from fhir_msc.fhir.roundtrip import check_roundtrip
from fhir_msc.tables.sdtm import FindingColumns, RowError, SubjectRecord, parse_finding

NOT_DONE_TABLES = Path(__file__).parents[1] / "data" / "not-done"  # bad/good, a 4th subject, QSSTAT, QSREASND, a row NOT DONE


def _mapped(study, tmp_path, version: str = "R4") -> Store:
    result = jobs.map_tables(study, NOT_DONE_TABLES, store=tmp_path / "store", version=get_version(version))
    assert result.rows_rejected == 0
    return Store(tmp_path / "store")


def _not_done(store: Store) -> list[dict]:
    return [o for o in store.read("Observation") if "dataAbsentReason" in o]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_a_row_not_done_becomes_an_observation_with_a_data_absent_reason(study, tmp_path, version,
                                                                          independent_validator):
    store = _mapped(study, tmp_path, version)
    [observation] = _not_done(store)
    assert observation["status"] == "final"
    assert not [key for key in observation if key.startswith("value")]
    assert observation["dataAbsentReason"] == {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "not-performed",
                    "display": "Not Performed"}],
        "text": "Questionnaire page missing"}
    assert jobs.validate(store.path, get_version(version)).errors == []
    assert independent_validator(version).validate(store.path).errors == []


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_a_row_not_done_round_trips(study, tmp_path, version):
    result = check_roundtrip(study, NOT_DONE_TABLES, get_version(version), tmp_path)
    assert result.differences == []


def test_unmapping_writes_not_done_and_the_reason(study, tmp_path):
    store = _mapped(study, tmp_path)
    jobs.unmap(study, store.path, tmp_path / "tables")
    lines = (tmp_path / "tables" / "qs.csv").read_text().splitlines()
    assert lines[0] == "STUDYID,USUBJID,QSTESTCD,QSTEST,QSORRES,QSORRESU,QSSTAT,QSREASND,VISITNUM,VISIT,QSDTC"
    assert ("NCT04288102,NCT04288102-003,SF36VT,SF-36 vitality,,,NOT DONE,Questionnaire page missing,9,Month 36,"
            "2023-03-16") in lines
    assert (tmp_path / "tables" / "re.csv").read_text().splitlines()[0].count(",") == 8  # no row not done: as before


@pytest.mark.parametrize("frames", [frame_and_account, engine_frame.frame_and_account], ids=["python", "duckdb"])
def test_analysis_counts_a_row_not_done_instead_of_using_it(study, tmp_path, frames):
    store = _mapped(study, tmp_path)
    frame, account = frames(study, store)
    assert frame.equals(frame_and_account(study, store)[0])
    assert account.skipped == {NOT_DONE: 1} and account.balanced
    assert len(frame[(frame.subject == "NCT04288102-003") & (frame.outcome == "SF36VT")]) == 0
    analyzed = CliRunner().invoke(main, ["analyze", "--store", str(store.path)])
    assert f"dropped: 1 × {NOT_DONE}: NCT04288102-003/M36/SF36VT" in analyzed.output


ROW = {"STUDYID": "NCT04288102", "USUBJID": "S1", "QSTESTCD": "SF36VT", "QSTEST": "SF-36 vitality", "QSORRES": "",
       "QSORRESU": "", "QSSTAT": "NOT DONE", "QSREASND": "", "VISITNUM": "9", "VISIT": "Month 36", "QSDTC": "2023-03-16"}


@pytest.mark.parametrize("change, column, problem", [
    ({"QSORRES": "50"}, "QSORRES", "QSSTAT is NOT DONE but there is a result"),
    ({"QSORRESU": "{score}"}, "QSORRESU", "a test not done has no unit"),
    ({"QSSTAT": "DONE"}, "QSSTAT", "unknown status"),
    ({"QSSTAT": "", "QSORRES": "50", "QSORRESU": "{score}", "QSREASND": "refused"}, "QSREASND",
     "a reason not done needs QSSTAT NOT DONE"),
])
def test_inconsistent_not_done_rows_are_row_errors(study, change, column, problem):
    subject = SubjectRecord(subject="S1", age=40, sex="M", country="", arm_code="MSC", actual_arm_code="MSC",
                            start="2020-04-01", end="")
    parse_finding(study, FindingColumns.of(study, "QS"), {"S1": subject}, ROW)  # the row itself is good
    with pytest.raises(RowError) as raised:
        parse_finding(study, FindingColumns.of(study, "QS"), {"S1": subject}, {**ROW, **change})
    assert raised.value.column == column and problem in raised.value.problem
