"""Reading tables as they come: encodings, delimiters, headers; strict numbers, dates and visit numbers."""

from __future__ import annotations

import codecs
import re

import pytest

from fhir_msc.tables.reading import detect_encoding, inspect_table, raw_rows
from fhir_msc.tables.sdtm import RowError, check_date, parse_number, parse_whole_number, visit_number

HEADER = "STUDYID,USUBJID,AGE\n1,2,3\n"


@pytest.mark.parametrize(("data", "codec"), [
    (HEADER.encode(), "utf-8"),
    (codecs.BOM_UTF8 + HEADER.encode(), "utf-8-sig"),
    (HEADER.encode("utf-16"), "utf-16"),
    (HEADER.encode("utf-16-le"), "utf-16-le"),
    (HEADER.encode("utf-16-be"), "utf-16-be"),
    (HEADER.encode("utf-32"), "utf-32"),
    (HEADER.encode("latin-1").replace(b"1", b"\xe9"), "utf-8"),  # not guessed: its rows are rejected, bytes kept
])
def test_encoding_is_recognised_only_where_it_is_certain(data, codec):
    assert detect_encoding(data)[0] == codec


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_the_one_that_gives_the_required_columns(tmp_path, delimiter):
    path = tmp_path / "dm.csv"
    path.write_text(HEADER.replace(",", delimiter))
    fmt, problem = inspect_table(path, ["STUDYID", "USUBJID"], ["STUDYID", "USUBJID", "AGE"])
    assert problem is None and fmt.delimiter == delimiter and fmt.header == ["STUDYID", "USUBJID", "AGE"]


def test_header_problem_shows_the_header_found(tmp_path):
    path = tmp_path / "dm.csv"
    path.write_text("STUDYID;SUBJECT\n1;2\n")
    _, problem = inspect_table(path, ["STUDYID", "USUBJID"], ["STUDYID", "USUBJID"])
    assert problem.column == "USUBJID"
    assert "header found (UTF-8, semicolon-delimited): 'STUDYID;SUBJECT'" in problem.problem


def test_reject_reason_column_is_left_out_on_replay(tmp_path):
    path = tmp_path / "dm.csv"
    path.write_text("STUDYID,REJECT_REASON,USUBJID\n1,old reason,2\n")
    fmt, problem = inspect_table(path, ["STUDYID", "USUBJID"], ["STUDYID", "USUBJID"])
    assert problem is None and fmt.header == ["STUDYID", "USUBJID"]
    assert [r.fields for r in raw_rows(path, fmt)] == [["1", "2"]]


def test_rows_know_their_physical_lines(tmp_path):
    path = tmp_path / "dm.csv"
    path.write_text('A,B\n1,"two\nlines"\n\n3,4\n')
    fmt, _ = inspect_table(path, ["A", "B"], ["A", "B"])
    assert [(r.number, r.first_line, r.last_line) for r in raw_rows(path, fmt)] == [(2, 2, 3), (3, 5, 5)]


@pytest.mark.parametrize("value", ["2023", "2023-02", "2023-02-28", "2024-02-29", "2023-03-27T10:30:00+08:00",
                                   "2023-03-27T23:59:59.5Z", "2023-03-27T00:00:00-12:00"])
def test_real_dates_pass(value):
    assert check_date("DTC", value) == value


@pytest.mark.parametrize(("value", "problem"), [
    ("2020-13", "no such calendar date"), ("2020-02-30", "no such calendar date"), ("2023-02-29", "no such calendar date"),
    ("0000-01-01", "no such calendar date"), ("2023-03-27T25:61:00Z", "no such time of day"),
    ("2023-03-27T10:60:00Z", "no such time of day"), ("2023-03-27T10:30", "keep the time"),
    ("2023-03-27T10:30:00", "keep the time"), ("2023-03-27T10:30Z", "has seconds"),
    ("2023-03-27T10:30:00+15:00", "no such time zone offset"), ("٢٠٢٣-03-27", "not an ISO 8601 date"),
    ("27/03/2023", "not an ISO 8601 date"),
])
def test_impossible_dates_are_rejected(value, problem):
    with pytest.raises(RowError, match=problem):
        check_date("DTC", value)


@pytest.mark.parametrize(("text", "number"), [("52.5", 52.5), ("-1", -1.0), (".5", 0.5), ("1e3", 1000.0), ("+7", 7.0)])
def test_numbers(text, number):
    assert parse_number("ORRES", text) == number


@pytest.mark.parametrize("text", ["1_000", "٥٠", "５", "nan", "inf", "1e999", "12 mg", "0x10", ""])
def test_numbers_that_are_not_read(text):
    with pytest.raises(RowError):
        parse_number("ORRES", text)


@pytest.mark.parametrize(("text", "advice"), [
    ("1,234", "ambiguous: 1234 with a thousands separator, or 1.234 with a decimal comma: write the number meant"),
    ("-12,345", "ambiguous: -12345 with a thousands separator, or -12.345 with a decimal comma"),
    ("1,234,567", "thousands separator: write 1234567 (no digit grouping)"),
    ("1,234.5", "thousands separator: write 1234.5 (no digit grouping)"),
    ("1.234,5", "decimal comma with '.' grouping: write 1234.5"),
    ("12,5", "decimal comma: write the number with a decimal point (12.5)"),
    ("0,125", "decimal comma: write the number with a decimal point (0.125)"),
    ("1,2345", "decimal comma: write the number with a decimal point (1.2345)"),
])
def test_grouped_and_comma_numbers_get_advice_that_keeps_their_value(text, advice):
    """"1,234" is never advised as 1.234 alone (a thousand times less than a thousands separator means)."""
    with pytest.raises(RowError, match=re.escape(advice)):
        parse_number("ORRES", text)


@pytest.mark.parametrize(("text", "number"), [("50", 50), ("50.0", 50), ("50.00", 50), ("+7.", 7), ("-3.0", -3)])
def test_whole_numbers_as_spreadsheets_write_them(text, number):
    assert parse_whole_number("AGE", text, "whole") == number


@pytest.mark.parametrize("text", ["50.5", "50.01", "5e1", "٥٠", "", ".0", "1,0", "50 years"])
def test_numbers_that_are_not_whole_are_not_read_as_whole(text):
    with pytest.raises(RowError, match="whole"):
        parse_whole_number("AGE", text, "whole")


@pytest.mark.parametrize(("text", "number"), [("9", 9), ("9.0", 9), ("3.1", 3.1), ("inf", "inf"), ("١", "١"), ("x", "x")])
def test_visit_numbers_are_never_truncated(text, number):
    assert visit_number(text) == number and type(visit_number(text)) is type(number)


def test_reject_reason_of_a_row_longer_than_its_header_is_its_last_field(tmp_path):
    path = tmp_path / "dm.csv"
    path.write_text("A,B,REJECT_REASON\n1,2,3,row has 3 fields\n")
    fmt, _ = inspect_table(path, ["A", "B"], ["A", "B"])
    assert [r.fields for r in raw_rows(path, fmt)] == [["1", "2", "3"]]
