"""The store across kills and concurrent jobs: one writer, all-or-nothing writes, repair, names checked, owner-only."""

import os
from pathlib import Path

import pytest
from storesafety import lock_held_elsewhere, not_owner_only

from fhir_msc import InputError, Store
from fhir_msc.errors import ExitCode, SyncLocked
from fhir_msc.store import ndjson
from fhir_msc.store.lock import spool_dir, store_lock, sweep_debris
from fhir_msc.store.repair import repair


def patient(pid: str, gender: str = "male") -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": gender}


def group(version: str) -> dict:
    return {"resourceType": "Group", "id": "g", "type": "person", "name": version}


def snapshot(store: Store) -> dict:
    return {t: sorted(str(sorted(r.items())) for r in store.read(t)) for t in store.resource_types()}


# --- all or nothing across a kill ---------------------------------------------------------

OLD = [patient("a"), patient("b"), group("old")]
NEW = [patient("b", "female"), patient("c"), group("new"), {"resourceType": "Encounter", "id": "e", "status": "finished"}]


def crash_at(monkeypatch, point):
    """os.replace fails at ``point``: "manifest" (before the commit) or after that many files were renamed into place."""
    real, renamed = os.replace, []

    def replace(src, dst):
        name = Path(dst).name
        if (point == "manifest" and name == ndjson.MANIFEST) or (name.endswith(".ndjson") and not name.startswith(".")
                                                                  and len(renamed) == point):
            raise OSError("simulated crash")
        if name.endswith(".ndjson") and not name.startswith("."):
            renamed.append(name)
        real(src, dst)

    monkeypatch.setattr(ndjson.os, "replace", replace)


@pytest.mark.parametrize("point", [0, 1, 2])
def test_a_write_killed_after_its_commit_reads_all_new_and_the_next_writer_completes_it(tmp_path, monkeypatch, point):
    Store(tmp_path).write(OLD)
    expected = Store(tmp_path / "expected")
    expected.write(OLD)
    expected.write(NEW)
    crash_at(monkeypatch, point)
    with pytest.raises(OSError, match="simulated crash"):
        Store(tmp_path).write(NEW)
    monkeypatch.undo()
    assert (tmp_path / ndjson.MANIFEST).exists()
    assert snapshot(Store(tmp_path)) == snapshot(expected)  # a reader sees the committed write whole
    assert Store(tmp_path).counts() == expected.counts()
    with Store(tmp_path).writing() as notes:
        assert len(notes) == 1 and "completed a write of" in notes[0]
    assert not (tmp_path / ndjson.MANIFEST).exists() and not list(tmp_path.glob(".*.ready"))
    Store(tmp_path).write([patient("d")])
    assert Store(tmp_path).counts() == {**expected.counts(), "Patient": 4}


def test_repair_dry_run_says_it_would_complete_a_committed_write_and_changes_nothing(tmp_path, monkeypatch):
    Store(tmp_path).write(OLD)
    crash_at(monkeypatch, 1)
    with pytest.raises(OSError, match="simulated crash"):
        Store(tmp_path).write(NEW)
    monkeypatch.undo()
    files = sorted(p.name for p in tmp_path.iterdir())
    result = repair(Store(tmp_path), dry_run=True)
    assert result.sound and result.dropped == []
    assert result.recovered == [f"would complete a write of Group, Encounter that a killed job had committed in {tmp_path}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == files


def test_an_unreadable_manifest_still_commits_every_prepared_file(tmp_path, monkeypatch):
    Store(tmp_path).write(OLD)
    crash_at(monkeypatch, 0)
    with pytest.raises(OSError, match="simulated crash"):
        Store(tmp_path).write(NEW)
    monkeypatch.undo()
    (tmp_path / ndjson.MANIFEST).write_bytes(b"")  # what a machine crash can leave of an unsynced file
    expected = Store(tmp_path / "expected")
    expected.write(OLD)
    expected.write(NEW)
    assert snapshot(Store(tmp_path)) == snapshot(expected)
    Store(tmp_path).write([])
    assert snapshot(Store(tmp_path)) == snapshot(expected) and not (tmp_path / ndjson.MANIFEST).exists()


def test_a_write_killed_before_its_commit_leaves_all_old_and_its_files_are_removed(tmp_path, monkeypatch):
    Store(tmp_path).write(OLD)
    before = snapshot(Store(tmp_path))
    crash_at(monkeypatch, "manifest")
    with pytest.raises(OSError, match="simulated crash"):
        Store(tmp_path).write(NEW)
    monkeypatch.undo()
    assert list(tmp_path.glob(".*.ready"))  # prepared, never committed
    assert snapshot(Store(tmp_path)) == before
    with Store(tmp_path).writing() as notes:
        assert any("uncommitted write" in note and "Patient.ndjson.ready" in note for note in notes)
    assert not list(tmp_path.glob(".*.ready")) and not list(tmp_path.glob(".write-manifest*"))
    assert snapshot(Store(tmp_path)) == before


def test_only_killed_jobs_spools_are_swept_never_a_live_ones(tmp_path):
    killed = tmp_path / ".spool-killed"
    killed.mkdir()
    (killed / "Patient.ndjson").write_bytes(b'{"resourceType": "Pat')
    with spool_dir(tmp_path, ".spool-") as live:
        assert sweep_debris(tmp_path, ".spool-") == [killed]
        assert live.exists() and not killed.exists()
    assert not live.exists()


def test_the_next_writer_reports_and_removes_a_killed_maps_debris(tmp_path):
    Store(tmp_path).write([patient("a")])
    for name in (".spool-x1", ".rejects-x2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "qs.csv").write_text("half a row")
    with Store(tmp_path).writing() as notes:
        assert sorted(notes) == [f"removed {tmp_path / '.rejects-x2'}: left by a killed job",
                                 f"removed {tmp_path / '.spool-x1'}: left by a killed job"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fhir-msc.lock", "Patient.ndjson"]


# --- one writer ------------------------------------------------------------------------------

def test_a_store_locked_by_another_process_refuses_writers_and_names_the_pid(tmp_path):
    with lock_held_elsewhere(tmp_path) as pid:
        with pytest.raises(SyncLocked, match=rf"another job is writing {tmp_path} \(pid {pid}\); wait for it") as caught:
            Store(tmp_path).write([patient("a")])
        assert caught.value.exit_code == ExitCode.LOCKED
    assert Store(tmp_path).write([patient("a")]) == {"Patient": 1}  # released with its process


def test_a_job_holding_the_lock_can_write_many_times(tmp_path):
    with Store(tmp_path).writing():
        Store(tmp_path).write([patient("a")])
        with store_lock(tmp_path) as outermost:
            assert not outermost
        Store(tmp_path).write([patient("b")])
    assert Store(tmp_path).counts() == {"Patient": 2}


# --- names checked before they name a file -----------------------------------------------

@pytest.mark.parametrize("resource_type", ["../../evil", "Patient/../../x", "patient", "Pa tient", "", None, 7])
def test_a_resource_type_that_is_not_a_fhir_name_is_refused(tmp_path, resource_type):
    store = Store(tmp_path / "a" / "b" / "store")  # deep enough that ../../evil would land in tmp_path
    store.write([patient("a")])
    with pytest.raises(InputError, match="not a FHIR resource type name .*nothing of this write was stored"):
        store.write([patient("b"), {"resourceType": resource_type, "id": "x"}])
    assert store.counts() == {"Patient": 1}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "a", "a/b", "a/b/store", "a/b/store/.fhir-msc.lock", "a/b/store/Patient.ndjson"]  # nothing outside, no debris


@pytest.mark.parametrize("id_", ["../x", "a" * 65, "", "a b", "a/b", 7, None])
def test_an_id_that_is_not_a_fhir_id_is_refused(tmp_path, id_):
    with pytest.raises(InputError, match="not a FHIR id"):
        Store(tmp_path).write([{"resourceType": "Patient", "id": id_}])
    assert Store(tmp_path).counts() == {}


def test_fhir_ids_at_the_limits_are_stored(tmp_path):
    ids = ["a" * 64, "A-1.b", "0"]
    Store(tmp_path).write([patient(i) for i in ids])
    assert sorted(p["id"] for p in Store(tmp_path).read("Patient")) == sorted(ids)


# --- repair ------------------------------------------------------------------------------------

def test_repair_drops_only_the_torn_and_foreign_lines_and_names_each(tmp_path):
    store = Store(tmp_path)
    store.write([patient("a"), patient("b"), patient("c")])
    path = tmp_path / "Patient.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"resourceType": "Observation", "id": "o"}\n' + b"".join(lines[1:])
                     + b'{"resourceType": "Patient", "id": "d", "gen')  # a write cut off mid-line
    with pytest.raises(InputError, match=rf"Patient.ndjson, line 5: not valid JSON .*fhir-msc repair {tmp_path}`"):
        list(store.read("Patient"))
    dry = repair(store, dry_run=True)
    assert not dry.sound and path.read_bytes().endswith(b'"gen')
    result = repair(store)
    assert [(d.file.name, d.line, d.first_bytes[:24]) for d in result.dropped] == [
        ("Patient.ndjson", 2, '{"resourceType": "Observ'), ("Patient.ndjson", 5, '{"resourceType": "Patien')]
    assert "torn last line" in result.dropped[1].problem and "not a Patient" in result.dropped[0].problem
    assert result.sound and [p["id"] for p in store.read("Patient")] == ["a", "b", "c"]
    assert [d.line for d in repair(store).dropped] == []


def test_a_line_that_is_json_but_no_object_is_named_and_repair_drops_it(tmp_path):
    """Found by tests/test_resource_properties.py: `validate`, `unmap` and `analyze` crashed on it."""
    store = Store(tmp_path)
    store.write([patient("a"), patient("b")])
    path = tmp_path / "Patient.ndjson"
    path.write_bytes(path.read_bytes() + b'[{"resourceType": "Patient", "id": "c"}]\n')
    with pytest.raises(InputError, match=rf"Patient.ndjson, line 3: not a FHIR resource \(a JSON array, not an object\); "
                                         rf"run `fhir-msc repair {tmp_path}`"):
        list(store.read("Patient"))
    assert [d.line for d in repair(store).dropped] == [3]
    assert [p["id"] for p in store.read("Patient")] == ["a", "b"]


def test_repair_of_a_sound_store_changes_nothing(tmp_path):
    Store(tmp_path).write(OLD)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.ndjson")}
    result = repair(Store(tmp_path))
    assert result.sound and result.dropped == [] and result.recovered == []
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.ndjson")} == before


# --- owner-only --------------------------------------------------------------------------------

def test_store_files_and_directories_are_owner_only_whatever_the_umask(tmp_path, umask_022):
    (tmp_path / "mine").mkdir(mode=0o755)
    store = Store(tmp_path / "mine" / "new" / "store")
    store.write(OLD)
    (store.path / "Patient.ndjson").chmod(0o644)  # a file someone made readable is private again once rewritten
    store.write(NEW)
    assert not_owner_only(tmp_path / "mine" / "new") == []
    assert (tmp_path / "mine").stat().st_mode & 0o777 == 0o755  # a directory the user made is left as it was
