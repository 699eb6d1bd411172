"""Tables as submitted: SAS XPORT v5 and Dataset-JSON v1.1 read into the strings a CSV holds, and written."""

from __future__ import annotations

import datetime
import json

import pandas as pd
import pyreadstat
import pytest

from fhir_msc.errors import InputError
from fhir_msc.tables.formats import detect_format, find_table, read_table, write_table
from fhir_msc.tables.reading import read_rows
from fhir_msc.tables.rejects import RejectLog

HEADER = ["STUDYID", "USUBJID", "AGE", "RFSTDTC"]
ROWS = [["S1", "S1-001", "40", "2020-04-02"], ["S1", "S1-002", "", "2020-04-03"], ["S1", "S1-003", "0.5", ""]]


@pytest.mark.parametrize("suffix", [".xpt", ".json"])
def test_written_tables_read_back_as_the_csv_strings(tmp_path, suffix):
    path = tmp_path / f"dm{suffix}"
    write_table(path, HEADER, ROWS, numeric={"AGE"}, dataset="dm")
    header, rows, described = read_table(path, detect_format(path))
    assert header == HEADER and list(rows) == ROWS  # 40 not 40.0; a missing number is empty
    assert "dataset DM" in described
    assert path.stat().st_mode & 0o077 == 0


def test_xpt_numbers_are_numeric_variables_and_sas_dates_read_as_iso_dates(tmp_path):
    path = tmp_path / "dm.xpt"
    write_table(path, HEADER, ROWS, numeric={"AGE"}, dataset="dm")
    _, meta = pyreadstat.read_xport(path)
    assert meta.readstat_variable_types == {"STUDYID": "string", "USUBJID": "string", "AGE": "double",
                                            "RFSTDTC": "string"}
    frame = pd.DataFrame({"USUBJID": ["S1-001", "S1-002"], "RFSTDT": [datetime.date(2020, 4, 2), None]})
    pyreadstat.write_xport(frame, tmp_path / "sd.xpt", file_format_version=5)  # a numeric date (SAS DATE format)
    header, rows, _ = read_table(tmp_path / "sd.xpt", "xpt")
    assert list(rows) == [["S1-001", "2020-04-02"], ["S1-002", ""]]


def test_dataset_json_has_the_v1_1_structure(tmp_path):
    path = tmp_path / "dm.json"
    write_table(path, HEADER, ROWS, numeric={"AGE"}, dataset="dm")
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["datasetJSONCreationDateTime", "datasetJSONVersion"]
    assert data["datasetJSONVersion"] == "1.1.0" and data["itemGroupOID"] == "IG.DM" and data["records"] == 3
    assert data["columns"][2] == {"itemOID": "IT.DM.AGE", "name": "AGE", "label": "AGE", "dataType": "double"}
    assert data["columns"][0]["dataType"] == "string" and data["columns"][0]["length"] == 2
    assert data["rows"][1] == ["S1", "S1-002", None, "2020-04-03"] and data["rows"][2][2] == 0.5


def test_xpt_v5_limits_are_an_error_not_a_truncation(tmp_path):
    with pytest.raises(InputError, match="at most 200"):
        write_table(tmp_path / "dm.xpt", ["USUBJID"], [["x" * 201]], numeric=set(), dataset="dm")
    with pytest.raises(InputError, match="at most 8 ASCII"):
        write_table(tmp_path / "dm.xpt", ["USUBJIDXX"], [["x"]], numeric=set(), dataset="dm")


def test_one_file_per_table_whatever_its_format(tmp_path):
    assert find_table(tmp_path, "dm.csv") == tmp_path / "dm.csv"  # none: the name the study asks for
    (tmp_path / "dm.json").write_text("{}")
    assert find_table(tmp_path, "dm.csv") == tmp_path / "dm.json"
    (tmp_path / "dm.csv").write_text("STUDYID\n")
    with pytest.raises(InputError, match=r"dm.csv, dm.json\): keep one"):
        find_table(tmp_path, "dm.csv")


@pytest.mark.parametrize(("name", "data", "problem"), [
    ("dm.xpt", b"STUDYID,USUBJID\nS1,S1-001\n", "named .xpt but not a SAS XPORT v5"),
    ("dm.xpt", b"HEADER RECORD*******LIBV8 HEADER RECORD!!!!!!!" + b"0" * 40, "version 8"),
    ("dm.json", b"[1, 2]", "named .json but not a JSON object"),
    ("dm.json", b'{"rows": []}', "no datasetJSONVersion"),
    ("dm.json", b'{"datasetJSONVersion": "1.0.0"', "not valid JSON"),
])
def test_a_file_that_is_not_what_it_says_is_one_line_and_no_rows(tmp_path, name, data, problem):
    path = tmp_path / name
    path.write_bytes(data)
    log = RejectLog(None)
    assert list(read_rows(path, ["STUDYID"], log, table="dm.csv")) == []
    [rejection] = log.rejections
    assert rejection.file == str(path) and problem in rejection.problem
    assert log.accounts[0].unusable


def test_missing_column_of_a_json_table_keeps_every_row_as_csv_in_the_rejects(tmp_path):
    path = tmp_path / "dm.json"
    write_table(path, ["STUDYID", "SUBJID"], [["S1", "001"], ["S1", "002"]], numeric=set(), dataset="dm")
    log = RejectLog(tmp_path / "rejects")
    assert list(read_rows(path, ["STUDYID", "USUBJID"], log, table="dm.csv")) == []
    log.close()
    [rejection] = log.rejections
    assert rejection.column == "USUBJID" and "columns found: STUDYID, SUBJID" in rejection.problem
    lines = (tmp_path / "rejects" / "dm.csv").read_text().splitlines()
    assert lines[0] == "STUDYID,SUBJID,REJECT_REASON" and len(lines) == 3 and lines[1].startswith("S1,001,")
