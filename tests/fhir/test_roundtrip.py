"""Lossless round trips, both directions, both FHIR versions, through a store and a bundle."""

import csv
import shutil
from pathlib import Path

import pytest

from fhir_msc import Store, get_version, load_study
from fhir_msc.fhir.bundle import read_bundle, write_bundle
from fhir_msc.fhir.mapping import tables_to_fhir
from fhir_msc.fhir.roundtrip import check_roundtrip, compare_stores, compare_tables, value_columns
from fhir_msc.fhir.unmapping import fhir_to_tables
from fhir_msc.store.source import BundleSource
from fhir_msc.tables.rejects import RejectLog


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_round_trip_is_lossless(study, cohort, tmp_path, version):
    result = check_roundtrip(study, cohort, get_version(version), tmp_path)
    assert result.differences == []
    assert result.lossless


def test_tables_come_back_byte_identical(study, cohort, mapped, tmp_path):
    _, store = mapped
    fhir_to_tables(study, store, tmp_path)
    for source in cohort.iterdir():
        assert (tmp_path / source.name).read_bytes() == source.read_bytes(), source.name


def test_bundle_round_trip_restores_the_store(mapped, tmp_path):
    _, store = mapped
    write_bundle(store.read_all(), tmp_path / "bundle.json")
    copy = Store(tmp_path / "copy")
    copy.write(read_bundle(tmp_path / "bundle.json"))
    assert compare_stores(store, copy) == []


def test_unmap_from_bundle_equals_cohort(study, cohort, mapped, tmp_path):
    _, store = mapped
    write_bundle(store.read_all(), tmp_path / "bundle.json")
    fhir_to_tables(study, BundleSource(list(read_bundle(tmp_path / "bundle.json"))), tmp_path / "tables")
    assert compare_tables(cohort, tmp_path / "tables") == []


def test_a_changed_value_is_detected(study, cohort, mapped, tmp_path):
    _, store = mapped
    fhir_to_tables(study, store, tmp_path)
    lines = (tmp_path / "qs.csv").read_text().splitlines(keepends=True)
    fields = lines[1].split(",")
    fields[4] = "0"
    lines[1] = ",".join(fields)
    (tmp_path / "qs.csv").write_text("".join(lines))
    differences = compare_tables(cohort, tmp_path)
    assert len(differences) == 2 and "row lost" in differences[0] and "row added" in differences[1]


DATA = Path(__file__).parents[1] / "data"


def _rewritten(source: Path, target: Path, change) -> Path:
    """A copy of the tables in ``source`` with ``change(column, value)`` applied to every cell."""
    shutil.copytree(source, target)
    for path in target.glob("*.csv"):
        with open(path, newline="") as handle:
            header, *rows = list(csv.reader(handle))
        with open(path, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([header, *([change(c, v) for c, v in zip(header, row)]
                                                                           for row in rows)])
    return target


def test_numbers_written_with_a_decimal_zero_round_trip_as_their_value(study, tmp_path):
    """AGE 40.0, EXDOSE 100.0, VISITNUM 9.0 and a result 100.0 are the values 40, 100, 9 and 100: lossless."""
    def with_decimal_zero(column: str, value: str) -> str:
        return f"{value}.0" if column in value_columns(study) and value.isdigit() else value

    tables = _rewritten(DATA / "bad" / "good", tmp_path / "tables", with_decimal_zero)
    assert "40.0" in (tables / "dm.csv").read_text() and ",100.0," in (tables / "qs.csv").read_text()
    result = check_roundtrip(study, tables, get_version("R4"), tmp_path / "work")
    assert result.differences == [] and result.lossless


def test_a_count_written_20_0_is_the_integer_20_and_round_trips(tmp_path):
    typed = load_study(DATA / "types-study" / "study.yaml")

    def count_as_decimal(column: str, value: str) -> str:
        return f"{value}.0" if column == "XSORRES" and value.isdigit() else value

    tables = _rewritten(DATA / "types-study" / "tables", tmp_path / "tables", count_as_decimal)
    store = Store(tmp_path / "store")
    log = RejectLog(None)
    store.write(tables_to_fhir(typed, tables, get_version("R4"), log))
    assert log.rejections == []
    assert {o["valueInteger"] for o in store.read("Observation") if "valueInteger" in o} >= {2}
    assert check_roundtrip(typed, tables, get_version("R4"), tmp_path / "work").lossless


def test_comparing_by_value_still_sees_a_changed_number_and_never_reads_identifiers_as_numbers(study, tmp_path):
    left, right = tmp_path / "left", tmp_path / "right"
    for directory, age, subject in ((left, "40", "001"), (right, "40.5", "1")):
        directory.mkdir()
        (directory / "dm.csv").write_text(f"USUBJID,AGE\n{subject},{age}\n")
    differences = compare_tables(left, right, value_columns(study))
    assert differences == ["dm.csv: row lost: 001,40", "dm.csv: row added: 1,40.5"]
