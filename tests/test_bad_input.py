"""Bad input: one clear line per problem, good rows still mapped, rejects kept for replay.

Each case in tests/data/bad/<case>/ holds small trial tables with one defect and a
case.yaml saying where the defect is.
"""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fhir_msc import Store
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.study.definition import DEFAULT_STUDY
from fhir_msc.tables.formats import convert_csv

BAD = Path(__file__).parent / "data" / "bad"
CASES = sorted(p.name for p in BAD.iterdir() if p.name != "good")


def run_map(source: Path, store: Path, *extra: str):
    return CliRunner().invoke(main, ["map", str(source), "--store", str(store), "--study", str(DEFAULT_STUDY), *extra])


def good_counts(tmp_path: Path) -> dict[str, int]:
    result = run_map(BAD / "good", tmp_path / "good-store")
    assert result.exit_code == 0, result.output
    return Store(tmp_path / "good-store").counts()


@pytest.mark.parametrize("case", CASES)
def test_bad_row_is_named_and_rejected(case, tmp_path):
    spec = yaml.safe_load((BAD / case / "case.yaml").read_text())
    result = run_map(BAD / case, tmp_path / "store")
    assert result.exit_code == spec.get("exit", ExitCode.REJECTED), result.output
    assert "Traceback" not in result.output
    line = next(l for l in result.output.splitlines() if l.startswith("rejected:") and spec["file"] in l and spec["problem"] in l)
    assert f"row {spec['row']}" in line
    if "column" in spec:
        assert f"column {spec['column']}" in line
    if "value" in spec:
        assert repr(spec["value"]) in line


@pytest.mark.parametrize("case", [c for c in CASES if "lost" in yaml.safe_load((BAD / c / "case.yaml").read_text())])
def test_valid_rows_are_still_mapped(case, tmp_path):
    """Only the defective row's resources (a whole file's, for file-level defects) are missing."""
    spec = yaml.safe_load((BAD / case / "case.yaml").read_text())
    expected = good_counts(tmp_path)
    run_map(BAD / case, tmp_path / "store")
    counts = Store(tmp_path / "store").counts()
    assert sum(expected.values()) - sum(counts.values()) == spec["lost"]


def test_a_rejected_row_does_not_make_its_valid_repeat_a_duplicate(tmp_path):
    source = tmp_path / "tables"
    shutil.copytree(BAD / "good", source)
    lines = (source / "qs.csv").read_text().splitlines()
    lines.insert(1, lines[1].replace(",50.9,", ",fifty,"))  # same subject, visit and test, but not a number
    (source / "qs.csv").write_text("\n".join(lines) + "\n")
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == ExitCode.REJECTED
    assert "not a number" in result.output and "duplicate" not in result.output
    assert Store(tmp_path / "store").counts() == good_counts(tmp_path)


def test_rejected_subject_takes_its_rows_with_it(tmp_path):
    """A bad DM row rejects its own subject's rows (each naming that DM row), and only those."""
    result = run_map(BAD / "unknown-arm", tmp_path / "store")
    cascaded = [line for line in result.output.splitlines() if "'NCT04288102-001'" in line]
    subject_rows = sum(line.split(",")[1] == "NCT04288102-001" for name in ("ex.csv", "qs.csv", "re.csv")
                       for line in (BAD / "unknown-arm" / name).read_text().splitlines())
    assert len(cascaded) == subject_rows > 0
    assert all("the subject's DM row was rejected (dm.csv, row 2, column ARMCD)" in line for line in cascaded)
    assert "NCT04288102-002" not in result.output and "NCT04288102-003" not in result.output
    assert Store(tmp_path / "store").counts()["Patient"] == 2


def test_rejected_row_is_kept_verbatim_with_its_reason(tmp_path):
    run_map(BAD / "non-numeric", tmp_path / "store")
    with open(tmp_path / "store" / "rejects" / "qs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1
    assert rows[0]["QSORRES"] == "sixty"
    assert "not a number" in rows[0]["REJECT_REASON"]


def test_bad_bytes_are_kept_in_the_rejects_file(tmp_path):
    run_map(BAD / "bad-encoding", tmp_path / "store")
    assert b"r\xf4le physique" in (tmp_path / "store" / "rejects" / "qs.csv").read_bytes()


def test_fixed_rejects_replay_into_the_same_store(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", store)
    before = Store(store).counts()["Observation"]
    rejects = store / "rejects" / "qs.csv"
    rejects.write_text(rejects.read_text().replace(",sixty,", ",60,"))
    result = run_map(store / "rejects", store)
    assert result.exit_code == 0, result.output
    assert Store(store).counts()["Observation"] == before + 1
    assert not (store / "rejects").exists()


def test_convertible_unit_is_converted(tmp_path, study):
    source = tmp_path / "tables"
    shutil.copytree(BAD / "good", source)
    re_csv = source / "re.csv"
    lines = re_csv.read_text().splitlines()
    fields = lines[1].split(",")
    assert fields[2] == "FVC" and fields[5] == "L"
    fields[4], fields[5] = str(round(float(fields[4]) * 1000)), "mL"
    re_csv.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    assert run_map(source, tmp_path / "store").exit_code == 0
    fvc = [o for o in Store(tmp_path / "store").read("Observation") if o["code"]["text"] == "Forced vital capacity"]
    assert {o["valueQuantity"]["code"] for o in fvc} == {"L"}


def test_missing_source_says_it_does_not_exist(tmp_path):
    result = run_map(tmp_path / "nowhere", tmp_path / "store")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.output == f"fhir-msc: error: {tmp_path / 'nowhere'}: no such directory: give the directory holding " \
                            "dm.csv, ex.csv and the findings tables\n"
    assert not (tmp_path / "store").exists()


def test_bundle_into_a_missing_directory_is_one_line(tmp_path):
    """Defect: `map --bundle` into a missing directory gave a traceback."""
    result = CliRunner().invoke(main, ["map", str(BAD / "good"), "--bundle", str(tmp_path / "no" / "b.json"),
                                       "--study", str(DEFAULT_STUDY)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.output.startswith(f"fhir-msc: error: {tmp_path / 'no'}: no such directory for the bundle b.json")
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "no").exists()


def _with_field(tmp_path: Path, column: int, value: str, row: int = 2) -> Path:
    source = tmp_path / "tables"
    shutil.copytree(BAD / "good", source)
    lines = (source / "qs.csv").read_text().splitlines()
    fields = lines[row - 1].split(",")
    fields[column] = value
    lines[row - 1] = ",".join(fields)
    (source / "qs.csv").write_text("\n".join(lines) + "\n")
    return source


def test_field_longer_than_the_csv_limit_is_mapped_whole(tmp_path):
    """Defect: a 131,073-character field gave a traceback (csv's default limit is 131,072)."""
    text = "SF-36 physical functioning " + "x" * 131_073
    result = run_map(_with_field(tmp_path, 3, text), tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert text in {o["code"]["text"] for o in Store(tmp_path / "store").read("Observation")}


def test_long_bad_value_is_shown_cut_and_kept_whole(tmp_path):
    value = "9" * 131_073 + "x"
    result = run_map(_with_field(tmp_path, 4, value), tmp_path / "store")
    assert result.exit_code == ExitCode.REJECTED
    line = next(l for l in result.output.splitlines() if l.startswith("rejected:"))
    assert "(131,074 characters)" in line and len(line) < 400
    with open(tmp_path / "store" / "rejects" / "qs.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["QSORRES"] == value


def test_stray_quote_keeps_the_lines_it_swallowed(tmp_path):
    store = tmp_path / "store"
    result = run_map(BAD / "stray-quote", store)
    assert "spans physical lines 4-24" in result.output
    with open(store / "rejects" / "qs.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    swallowed = (BAD / "stray-quote" / "qs.csv").read_text().splitlines()[4:]
    assert all(line in row["QSTEST"] for line in swallowed)


def test_utf16_table_is_read_and_said_so(tmp_path):
    result = run_map(BAD / "utf-16", tmp_path / "store")
    assert "note: " in result.output and "re.csv: read as UTF-16 (byte-order mark), comma-delimited" in result.output
    assert Store(tmp_path / "store").counts()["Observation"] == good_counts(tmp_path)["Observation"] - 1


def test_semicolon_table_is_read_and_said_so(tmp_path):
    result = run_map(BAD / "semicolon-decimal-comma", tmp_path / "store")
    assert "qs.csv: read as UTF-8, semicolon-delimited" in result.output
    assert "write the number with a decimal point (100.0)" in result.output


def test_impossible_dates_are_never_stored(tmp_path):
    for case in ("impossible-date", "impossible-month", "impossible-time"):
        spec = yaml.safe_load((BAD / case / "case.yaml").read_text())
        store = tmp_path / case
        run_map(BAD / case, store)
        stored = {r.get("effectiveDateTime") for r in Store(store).read("Observation")}
        assert spec["value"] not in stored


def test_replayed_finding_widens_its_visit_instead_of_replacing_it(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "good", store)
    encounter = next(Store(store).read("Encounter"))
    start = encounter["period"]["start"]
    extra = tmp_path / "extra"
    extra.mkdir()
    lines = (BAD / "good" / "qs.csv").read_text().splitlines()
    fields = lines[1].split(",")
    fields[-1] = "2099-01-01"
    fields[2] = "SF36GH" if fields[2] != "SF36GH" else "SF36PF"
    (extra / "qs.csv").write_text(lines[0] + "\n" + ",".join(fields) + "\n")
    assert run_map(extra, store).exit_code == 0
    widened = next(e for e in Store(store).read("Encounter") if e["id"] == encounter["id"])
    assert widened["period"] == {"start": start, "end": "2099-01-01"}


def _good_copy(tmp_path: Path) -> Path:
    source = tmp_path / "tables"
    shutil.copytree(BAD / "good", source)
    return source


def test_an_age_written_50_0_is_a_whole_number_of_years(tmp_path):
    source = _good_copy(tmp_path)
    dm = (source / "dm.csv").read_text()
    (source / "dm.csv").write_text(dm.replace(",40,M,", ",40.0,M,").replace(",75,M,", ",75.00,M,"))
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert Store(tmp_path / "store").counts() == good_counts(tmp_path)
    assert {p["birthDate"] for p in Store(tmp_path / "store").read("Patient")} >= {"1980", "1945"}


def test_columns_the_study_does_not_read_are_named_in_the_account(tmp_path):
    source = _good_copy(tmp_path)
    lines = (source / "dm.csv").read_text().splitlines()
    comments = ["DMCOMMENT", "moved abroad", "", "see notes"]
    (source / "dm.csv").write_text("\n".join(f"{line},{comment}" for line, comment in zip(lines, comments)) + "\n")
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert "dm.csv 3 = 3 + 0 (columns not read: DMCOMMENT with 2 value(s))" in result.stdout
    document = json.loads(run_map(source, tmp_path / "store", "--json").stdout)
    assert [a["unread_columns"] for a in document["accounts"]] == [{"DMCOMMENT": 2}, {}, {}, {}]


@pytest.mark.parametrize("names", [{"qs.csv": "QS.csv"}, {"dm.csv": "DM.CSV", "re.csv": "Re.Csv"}])
def test_table_files_are_found_whatever_the_case_of_their_names(tmp_path, names):
    source = _good_copy(tmp_path)
    for name, other in names.items():
        (source / name).rename(source / other)
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert Store(tmp_path / "store").counts() == good_counts(tmp_path)
    assert all(f"{other} " in result.stdout for other in names.values())  # the account names the file read


def test_an_xport_table_named_in_capitals_is_found(tmp_path):
    source = _good_copy(tmp_path)
    convert_csv(source / "dm.csv", source / "DM.XPT", numeric={"AGE"}, dataset="dm")
    (source / "dm.csv").unlink()
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert "DM.XPT: read as SAS XPORT v5" in result.output
    assert Store(tmp_path / "store").counts() == good_counts(tmp_path)


def test_two_files_for_one_table_are_refused_in_one_line(tmp_path):
    source = _good_copy(tmp_path)
    shutil.copy(source / "dm.csv", source / "DM.CSV")
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == ExitCode.BAD_INPUT
    assert result.output == (f"fhir-msc: error: {source}: the table dm.csv is there 2 times (DM.CSV, dm.csv): "
                             "keep one of them and run again\n")
    assert not Store(tmp_path / "store").counts()


def test_a_rejected_row_of_a_table_named_in_capitals_is_kept_under_the_study_s_name(tmp_path):
    source = _good_copy(tmp_path)
    (source / "qs.csv").write_text((source / "qs.csv").read_text().replace(",50.9,", ",fifty,"))
    (source / "qs.csv").rename(source / "QS.CSV")
    store = tmp_path / "store"
    assert run_map(source, store).exit_code == ExitCode.REJECTED
    assert [p.name for p in (store / "rejects").glob("*.csv")] == ["qs.csv"]


def test_files_that_look_like_tables_but_are_none_of_the_study_s_are_named(tmp_path):
    source = _good_copy(tmp_path)
    (source / "sv.csv").write_text("STUDYID,USUBJID,VISITNUM\n")
    result = run_map(source, tmp_path / "store")
    assert result.exit_code == 0, result.output
    assert f"note: {source / 'sv.csv'}: not a table of NCT04288102 (dm.csv, ex.csv, fa.csv, " in result.stderr
