"""The map job's promises: every row accounted for, upsert means upsert, rejects are the user's, replay is exact."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from cohort_subset import edit_rows, write_subset

from fhir_msc import Store, get_version
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.fhir.mapping import SYNTHETIC_TAG
from fhir_msc.jobs import map_tables

BAD = Path(__file__).parent / "data" / "bad"


def run_map(source: Path, *target: str):
    return CliRunner().invoke(main, ["map", str(source), *target])


def contents(store: Path) -> dict[str, dict[str, dict]]:
    """A store as {type: {id: resource}}: what it holds, whatever the line order."""
    return {t: {r["id"]: r for r in Store(store).read(t)} for t in Store(store).resource_types()}


def rejects_rows(directory: Path) -> dict[str, list[dict[str, str]]]:
    rows = {}
    for path in sorted(directory.glob("*.csv")):
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            rows[path.name] = list(csv.DictReader(handle))
    return rows


@pytest.fixture
def tables(cohort, tmp_path) -> Path:
    """The first 12 subjects of the synthetic cohort (every table, dataset.yaml)."""
    return write_subset(cohort, tmp_path / "tables", 12)


# --- item 1: the account ------------------------------------------------------------------

def test_account_of_the_fixture_balances_and_covers_every_row(cohort, tmp_path):
    result = run_map(cohort, "--store", str(tmp_path / "store"), "--json")
    assert result.exit_code == 0, result.output
    accounts = {Path(a["file"]).name: a for a in json.loads(result.stdout)["accounts"]}
    for name, account in accounts.items():
        data_lines = len((cohort / name).read_text().splitlines()) - 1
        assert account["read"] == data_lines == account["mapped"] + account["rejected"], name
    assert set(accounts) == {p.name for p in cohort.glob("*.csv")}


@pytest.mark.parametrize("case", sorted(p.name for p in BAD.iterdir()))
def test_account_balances_on_bad_input_and_rejected_rows_are_kept(case, study, tmp_path):
    store = tmp_path / "store"
    result = map_tables(study, BAD / case, store=store, version=get_version("R4"))
    assert result.accounts and all(a.read == a.mapped + a.rejected for a in result.accounts)
    kept = rejects_rows(store / "rejects")
    for account in result.accounts:
        assert len(kept.get(Path(account.file).name, [])) == account.rejected, account
    assert sum(a.mapped for a in result.accounts if a.file.endswith(("qs.csv", "re.csv"))) == Store(store).counts().get("Observation", 0)


def test_map_prints_the_account(tables, tmp_path):
    result = run_map(tables, "--store", str(tmp_path / "store"))
    line = next(l for l in result.output.splitlines() if l.startswith("rows read = mapped + rejected:"))
    dm_rows = len((tables / "dm.csv").read_text().splitlines()) - 1
    assert f"dm.csv {dm_rows} = {dm_rows} + 0" in line


# --- item 2: upsert ---------------------------------------------------------------------------

def test_mapping_the_same_tables_twice_is_a_no_op(tables, tmp_path):
    """Defect: the second map rejected every DM row as a duplicate subject."""
    store = tmp_path / "store"
    assert run_map(tables, "--store", str(store)).exit_code == 0
    before = {p.name: p.read_bytes() for p in store.glob("*.ndjson")}
    result = run_map(tables, "--store", str(store), "--json")
    assert result.exit_code == 0, result.output
    changes = json.loads(result.stdout)["changes"]
    assert all(c["created"] == c["updated"] == 0 and c["unchanged"] > 0 for c in changes.values())
    assert sum(c["unchanged"] for c in changes.values()) == sum(len(v) for v in contents(store).values())
    assert {p.name: p.read_bytes() for p in store.glob("*.ndjson")} == before
    assert not (store / "rejects").exists()


def test_a_corrected_row_mapped_again_updates_its_resources(tables, study, tmp_path):
    store = tmp_path / "store"
    run_map(tables, "--store", str(store))
    subject = next(csv.DictReader(open(tables / "dm.csv")))["USUBJID"]
    edit_rows(tables / "dm.csv", lambda n, r: r.update(AGE="33") if r["USUBJID"] == subject else None)
    edit_rows(tables / "ex.csv", lambda n, r: r.update(EXDOSE="99") if n == 2 else None)
    edit_rows(tables / "qs.csv", lambda n, r: r.update(QSORRES="12.5") if n == 2 else None)
    result = map_tables(study, tables, store=store, version=get_version("R4"))
    updated = {t: c.updated for t, c in result.changes.items() if c.updated}
    assert updated == {"Patient": 1, "MedicationAdministration": 1, "Observation": 1}
    assert all(c.created == 0 for c in result.changes.values())
    patient = next(p for p in Store(store).read("Patient") if p["identifier"][0]["value"] == subject)
    rs = next(csv.DictReader(open(tables / "dm.csv")))
    assert patient["birthDate"] == f"{int(rs['RFSTDTC'][:4]) - 33:04d}"
    assert 12.5 in {o.get("valueQuantity", {}).get("value") for o in Store(store).read("Observation")}
    assert 99 in {m["dosage"]["dose"]["value"] for m in Store(store).read("MedicationAdministration")}


def test_duplicate_subject_is_within_one_input_only(tmp_path):
    store = tmp_path / "store"
    assert run_map(BAD / "good", "--store", str(store)).exit_code == 0
    result = run_map(BAD / "duplicate-subject", "--store", str(store))
    assert result.exit_code == ExitCode.REJECTED
    assert [l for l in result.output.splitlines() if l.startswith("rejected:")] == [
        next(l for l in result.output.splitlines() if "duplicate subject" in l)]


# --- item 3: rejects are the user's, replay is exact -------------------------------------------

def test_rejects_directory_named_by_the_user_keeps_its_other_files(tmp_path):
    """Defect: `map --rejects DIR` removed DIR with the unrelated files in it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    (mine / "old.csv").write_text("a,b\n1,2\n")
    store = tmp_path / "store"
    assert run_map(BAD / "good", "--store", str(store), "--rejects", str(mine)).exit_code == 0
    assert run_map(BAD / "non-numeric", "--store", str(store), "--rejects", str(mine)).exit_code == ExitCode.REJECTED
    assert (mine / "qs.csv").exists()
    (mine / "qs.csv").write_text((mine / "qs.csv").read_text().replace(",sixty,", ",60,"))
    assert run_map(mine, "--store", str(store), "--rejects", str(mine)).exit_code == 0
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "old.csv"]
    assert (mine / "notes.txt").read_text() == "my notes"


def test_rejects_waiting_are_kept_by_a_run_of_other_rows(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", "--store", str(store))
    waiting = rejects_rows(store / "rejects")
    later = tmp_path / "later"  # a later delivery: only re.csv, one bad row
    later.mkdir()
    shutil.copy(BAD / "wrong-unit" / "re.csv", later)
    result = run_map(later, "--store", str(store))
    assert result.exit_code == ExitCode.REJECTED
    kept = rejects_rows(store / "rejects")
    assert [r["REORRESU"] for r in kept["re.csv"]] == ["kg"]
    assert kept["qs.csv"] == waiting["qs.csv"]  # rows this run did not read: untouched, still waiting


def test_mapping_the_corrected_input_clears_its_waiting_rejects(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", "--store", str(store))
    assert run_map(BAD / "good", "--store", str(store)).exit_code == 0  # the same rows, corrected
    assert not (store / "rejects").exists()


def test_mapping_the_same_bad_input_again_replaces_its_rejects(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", "--store", str(store))
    first = rejects_rows(store / "rejects")
    run_map(BAD / "non-numeric", "--store", str(store))
    assert rejects_rows(store / "rejects") == first


def test_a_row_rejected_again_on_replay_keeps_one_reject_reason(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", "--store", str(store))
    result = run_map(store / "rejects", "--store", str(store))
    assert result.exit_code == ExitCode.REJECTED
    with open(store / "rejects" / "qs.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header.count("REJECT_REASON") == 1 and len(rows) == 1
    assert rows[0][header.index("QSORRES")] == "sixty"


def test_replay_keeps_the_synthetic_tag(tables, tmp_path):
    """Defect: replayed rows lost the dataset's synthetic-data tag (HTEST)."""
    edit_rows(tables / "qs.csv", lambda n, r: r.update(QSORRES="sixty") if n == 3 else None)
    store = tmp_path / "store"
    assert run_map(tables, "--store", str(store)).exit_code == ExitCode.REJECTED
    (store / "rejects" / "qs.csv").write_text((store / "rejects" / "qs.csv").read_text().replace(",sixty,", ",60,"))
    assert run_map(store / "rejects", "--store", str(store)).exit_code == 0
    assert all(SYNTHETIC_TAG in r["meta"]["tag"] for r in Store(store).read_all())


def _break(tables: Path) -> None:
    """One bad DM row (its subject's other rows follow it into the rejects), one bad EX row, bad findings."""
    edit_rows(tables / "dm.csv", lambda n, r: r.update(ARMCD="XYZ") if n == 4 else None)
    edit_rows(tables / "ex.csv", lambda n, r: r.update(EXDOSE="lots") if n == 30 else None)
    edit_rows(tables / "qs.csv", lambda n, r: r.update(QSORRES="n/a") if n % 50 == 0 else None)
    edit_rows(tables / "re.csv", lambda n, r: r.update(REDTC="2021-02-30") if n == 7 else None)


def _fix(path: Path) -> None:
    """The user's fixes, applied to a table (the input or its rejects file)."""
    def fix(_, row):
        if row.get("ARMCD") == "XYZ":
            row["ARMCD"] = row["ACTARMCD"]
        if row.get("EXDOSE") == "lots":
            row["EXDOSE"] = "100"
        if row.get("QSORRES") == "n/a":
            row["QSORRES"] = "50"
        if row.get("REDTC") == "2021-02-30":
            row["REDTC"] = "2021-02-28"
    if path.exists():
        edit_rows(path, fix)


def test_replaying_fixed_rejects_equals_mapping_the_corrected_input(tables, tmp_path):
    _break(tables)
    store = tmp_path / "store"
    assert run_map(tables, "--store", str(store)).exit_code == ExitCode.REJECTED
    rejects = store / "rejects"
    assert {"dm.csv", "ex.csv", "qs.csv", "re.csv"} <= {p.name for p in rejects.glob("*.csv")}
    for path in rejects.glob("*.csv"):
        _fix(path)
    result = run_map(rejects, "--store", str(store))
    assert result.exit_code == 0, result.output
    assert not rejects.exists()

    for path in tables.glob("*.csv"):
        _fix(path)
    one_go = tmp_path / "one-go"
    assert run_map(tables, "--store", str(one_go)).exit_code == 0
    assert contents(store) == contents(one_go)


def test_utf16_table_and_bad_rows_replay_to_the_whole_cohort(tables, tmp_path):
    """Defect: a UTF-16 lb.csv plus 30 bad qs rows ended, after the printed replay, with exit 0 and lb's findings missing."""
    whole = tmp_path / "whole"
    run_map(tables, "--store", str(whole))
    lb = tables / "lb.csv"
    lb.write_bytes(lb.read_text().encode("utf-16"))
    edit_rows(tables / "qs.csv", lambda n, r: r.update(QSORRES="n/a") if n <= 31 else None)
    store = tmp_path / "store"
    first = run_map(tables, "--store", str(store))
    assert first.exit_code == ExitCode.REJECTED
    assert "lb.csv: read as UTF-16" in first.output
    replay = first.output.splitlines()[-1].split()
    assert replay[:2] == ["fhir-msc", "map"]
    edit_rows(store / "rejects" / "qs.csv", lambda n, r: r.update(QSORRES="50"))
    assert CliRunner().invoke(main, replay[1:]).exit_code == 0
    assert Store(store).counts() == Store(whole).counts()


def test_rejected_whole_file_is_replayed_after_fixing_its_header(tmp_path):
    store = tmp_path / "store"
    result = run_map(BAD / "missing-column", "--store", str(store))
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "header found" in result.output and "STUDYID,USUBJID,QSTESTCD" in result.output
    with open(store / "rejects" / "qs.csv", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert len(rows) == 23  # every row of the file
    at = header.index("QSORRES") + 1
    with open(store / "rejects" / "qs.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header[:at] + ["QSORRESU"] + header[at:],
                                      *(row[:at] + ["{score}"] + row[at:] for row in rows)])
    assert run_map(store / "rejects", "--store", str(store)).exit_code == 0
    good = tmp_path / "good"
    run_map(BAD / "good", "--store", str(good))
    assert contents(store) == contents(good)


def test_rejects_files_are_owner_only(tmp_path):
    store = tmp_path / "store"
    run_map(BAD / "non-numeric", "--store", str(store))
    assert (store / "rejects" / "qs.csv").stat().st_mode & 0o077 == 0


def test_bundle_replay_hint_names_the_bundle(tmp_path):
    result = run_map(BAD / "non-numeric", "--bundle", str(tmp_path / "b.json"))
    assert result.exit_code == ExitCode.REJECTED
    assert f"--bundle {tmp_path / 'b.json'}" in result.output.splitlines()[-1]
