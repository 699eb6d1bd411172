"""SDTM as submitted: the same tables as SAS XPORT v5 or Dataset-JSON v1.1 map exactly like the CSVs."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from cohort_subset import write_subset

from fhir_msc.cli import main
from fhir_msc.store.files import private_dir
from fhir_msc.tables.formats import convert_csv
from fhir_msc.tables.sdtm import numeric_columns


def converted(study, tables: Path, out: Path, fmt: str) -> Path:
    """``tables`` with every CSV table written as ``.xpt`` or ``.json`` by fhir-msc's writer (dataset.yaml kept)."""
    private_dir(out)
    for table in tables.glob("*.csv"):
        convert_csv(table, out / f"{table.stem}.{fmt}", numeric=numeric_columns(study), dataset=table.stem)
    shutil.copy(tables / "dataset.yaml", out / "dataset.yaml")
    return out


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def store_files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("*.ndjson"))}


@pytest.mark.parametrize("fmt", ["xpt", "json"])
def test_the_fixture_as_xpt_or_dataset_json_maps_to_the_same_store_byte_for_byte(fmt, study, cohort, tmp_path):
    source = converted(study, cohort, tmp_path / fmt, fmt)
    assert not list(source.glob("*.csv"))
    from_csv = run("map", str(cohort), "--store", str(tmp_path / "csv-store"), "--json")
    from_other = run("map", str(source), "--store", str(tmp_path / "other-store"), "--json")
    assert from_csv.exit_code == 0 == from_other.exit_code, from_other.output
    expected = store_files(tmp_path / "csv-store")
    assert expected and store_files(tmp_path / "other-store") == expected
    accounts = {Path(a["file"]).name: a for a in json.loads(from_other.stdout)["accounts"]}
    assert set(accounts) == {f"{p.stem}.{fmt}" for p in cohort.glob("*.csv")}
    assert all(a["read"] == a["mapped"] and a["rejected"] == 0 for a in accounts.values())
    notes = json.loads(from_other.stdout)["notes"]
    assert any("dm." + fmt in n and ("SAS XPORT v5" in n or "Dataset-JSON v1.1" in n) for n in notes), notes


@pytest.mark.parametrize("fmt", ["xpt", "json"])
def test_rejected_rows_of_an_xpt_or_json_table_are_kept_as_csv_naming_the_file_and_record(fmt, study, cohort, tmp_path):
    tables = write_subset(cohort, tmp_path / "tables", 3)
    lines = (tables / "ex.csv").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("INTRAVENOUS", "ORAL")  # the second record
    (tables / "ex.csv").write_text("".join(lines))
    source = converted(study, tables, tmp_path / fmt, fmt)
    result = run("map", str(source), "--store", str(tmp_path / "store"), "--json")
    out = json.loads(result.stdout)
    [rejection] = out["rejections"]
    assert rejection["file"] == str(source / f"ex.{fmt}") and rejection["row"] == 2
    assert rejection["column"] == "EXROUTE" and rejection["value"] == "ORAL"
    rejects = tmp_path / "store" / "rejects"
    assert sorted(p.name for p in rejects.glob("*.csv")) == ["ex.csv"]
    with open(rejects / "ex.csv", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["EXROUTE"] == "ORAL" and row["EXDOSE"] == "100" and f"ex.{fmt}, row 2" in row["REJECT_REASON"]
    (rejects / "ex.csv").write_text((rejects / "ex.csv").read_text().replace("ORAL", "INTRAVENOUS"))
    replay = run("map", str(rejects), "--store", str(tmp_path / "store"), "--json")
    assert replay.exit_code == 0, replay.output
    assert not rejects.exists() or not list(rejects.glob("*.csv"))


def test_a_table_given_twice_in_two_formats_is_one_clear_error(study, cohort, tmp_path):
    tables = write_subset(cohort, tmp_path / "tables", 2)
    convert_csv(tables / "dm.csv", tables / "dm.xpt", numeric=numeric_columns(study), dataset="dm")
    result = run("map", str(tables), "--store", str(tmp_path / "store"))
    assert result.exit_code != 0
    assert "dm.csv" in result.output and "dm.xpt" in result.output and "keep one" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "store").exists()


@pytest.mark.parametrize("fmt", ["xpt", "json"])
def test_unmap_writes_xpt_or_json_that_maps_back_to_the_same_store(fmt, cohort, tmp_path):
    tables = write_subset(cohort, tmp_path / "tables", 10)
    assert run("map", str(tables), "--store", str(tmp_path / "store")).exit_code == 0
    result = run("unmap", str(tmp_path / "store"), "--out", str(tmp_path / "out"), "--format", fmt)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir() if p.name != "dataset.yaml") == sorted(
        f"{p.stem}.{fmt}" for p in tables.glob("*.csv"))
    assert f"dm.{fmt} 10 rows" in result.output
    assert run("map", str(out), "--store", str(tmp_path / "again")).exit_code == 0
    assert store_files(tmp_path / "again") == store_files(tmp_path / "store")
    csv_out = run("unmap", str(tmp_path / "again"), "--out", str(tmp_path / "csv"))
    assert csv_out.exit_code == 0
    unmapped = run("unmap", str(tmp_path / "store"), "--out", str(tmp_path / "csv0"))
    assert unmapped.exit_code == 0
    for table in (tmp_path / "csv0").glob("*.csv"):
        assert (tmp_path / "csv" / table.name).read_bytes() == table.read_bytes(), table.name


def test_a_control_character_in_a_dataset_json_table_rejects_its_row_by_record_and_column(study, tmp_path):
    bad = Path(__file__).parent / "data" / "bad" / "control-character"
    source = private_dir(tmp_path / "json")
    for table in bad.glob("*.csv"):
        convert_csv(table, source / f"{table.stem}.json", numeric=numeric_columns(study), dataset=table.stem)
    result = run("map", str(source), "--store", str(tmp_path / "store"))
    assert result.exit_code == 3, result.output
    assert (f"rejected: {source / 'qs.json'}, row 2, column QSTEST = 'SF-36 role\\x00physical': holds the control "
            "character U+0000 at character 11") in result.output
