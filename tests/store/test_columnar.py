"""The columnar projection: Parquet tables kept beside the NDJSON, rebuilt when the store changes."""

import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fhir_msc import Store
from fhir_msc.store.columnar import ColumnarProjection


def patient(pid: str, gender: str = "male") -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": gender}


class Builder:
    """Builds a table of the store's Patients and counts how often it was asked to."""

    def __init__(self, store: Store):
        self.store, self.calls = store, 0

    def __call__(self) -> pa.Table:
        self.calls += 1
        rows = [{"id": p["id"], "gender": p["gender"]} for p in self.store.read("Patient")]
        return pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.string()), ("gender", pa.string())]))


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "store")
    store.write([patient("a"), patient("b", "female")])
    return store


def test_a_table_is_built_once_and_then_read_from_parquet(store):
    projection, build = ColumnarProjection(store), Builder(store)
    first = projection.table("patients", ["Patient"], "v1", build)
    second = projection.table("patients", ["Patient"], "v1", build)
    assert (first.rebuilt, second.rebuilt, build.calls) == (True, False, 1)
    assert second.rows == 2
    assert pq.read_table(second.path).to_pydict() == {"id": ["a", "b"], "gender": ["male", "female"]}


def test_a_write_of_a_source_type_makes_the_table_stale(store):
    projection, build = ColumnarProjection(store), Builder(store)
    projection.table("patients", ["Patient"], "v1", build)
    store.write([patient("b", "other")])
    again = projection.table("patients", ["Patient"], "v1", build)
    assert again.rebuilt and build.calls == 2
    assert pq.read_table(again.path).column("gender").to_pylist() == ["male", "other"]


def test_a_write_of_another_type_leaves_the_table_fresh(store):
    projection, build = ColumnarProjection(store), Builder(store)
    projection.table("patients", ["Patient"], "v1", build)
    store.write([{"resourceType": "Group", "id": "g", "type": "person"}])
    assert not projection.table("patients", ["Patient"], "v1", build).rebuilt


def test_a_new_key_rebuilds_and_a_type_that_appears_later_counts(store):
    projection, build = ColumnarProjection(store), Builder(store)
    projection.table("patients", ["Patient", "Encounter"], "v1", build)
    assert not projection.is_fresh("patients", ["Patient", "Encounter"], "v2")
    store.write([{"resourceType": "Encounter", "id": "e", "status": "finished"}])
    assert not projection.is_fresh("patients", ["Patient", "Encounter"], "v1")


def test_tables_are_owner_only(store):
    projection = ColumnarProjection(store)
    kept = projection.table("patients", ["Patient"], "v1", Builder(store))
    assert stat.S_IMODE(kept.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(projection.directory.stat().st_mode) == 0o700


def test_a_failed_build_keeps_the_old_table_and_leaves_no_debris(store):
    projection = ColumnarProjection(store)
    projection.table("patients", ["Patient"], "v1", Builder(store))
    store.write([patient("c")])

    def broken() -> pa.Table:
        raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError):
        projection.table("patients", ["Patient"], "v1", broken)
    assert pq.read_table(projection.path("patients")).num_rows == 2
    assert not list(projection.directory.glob(".build-*"))


def test_what_a_killed_build_left_is_removed_by_the_next(store):
    projection = ColumnarProjection(store)
    projection.directory.mkdir(mode=0o700)
    (projection.directory / ".build-killed").mkdir()
    projection.table("patients", ["Patient"], "v1", Builder(store))
    assert not (projection.directory / ".build-killed").exists()
    assert projection.names() == ["patients"]
