"""The embedded NDJSON store and transaction bundles."""

import json

import orjson
import pytest

from fhir_msc import InputError, Store
from fhir_msc.fhir.bundle import (
    conditional_url,
    open_resources,
    read_bundle,
    transaction_entry,
    write_bundle,
)


def patient(pid: str, gender: str = "male") -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": gender,
            "identifier": [{"system": "https://example.org/sid", "value": pid}]}


def test_store_writes_one_ndjson_file_per_type(tmp_path):
    store = Store(tmp_path)
    store.write([patient("a"), {"resourceType": "Group", "id": "g", "type": "person"}])
    assert sorted(p.name for p in tmp_path.glob("*.ndjson")) == ["Group.ndjson", "Patient.ndjson"]
    assert orjson.loads((tmp_path / "Patient.ndjson").read_bytes().splitlines()[0])["id"] == "a"


def test_store_write_upserts_by_id(tmp_path):
    store = Store(tmp_path)
    store.write([patient("a"), patient("b")])
    store.write([patient("b", "female"), patient("c")])
    assert {p["id"]: p["gender"] for p in store.read("Patient")} == {"a": "male", "b": "female", "c": "male"}


def test_upsert_keeps_old_lines_across_merge_batches(tmp_path, monkeypatch):
    monkeypatch.setattr("fhir_msc.store.ndjson.MERGE_BATCH", 2)
    store = Store(tmp_path)
    store.write([patient(str(n)) for n in range(7)])
    assert store.write([patient("3", "female"), patient("6", "female"), patient("new")]) == {"Patient": 3}
    genders = {p["id"]: p["gender"] for p in store.read("Patient")}
    assert genders == {**{str(n): "male" for n in range(7)}, "3": "female", "6": "female", "new": "male"}
    assert store.counts() == {"Patient": 8}


def test_store_refuses_the_same_id_twice_in_one_write(tmp_path):
    with pytest.raises(InputError, match="Patient/a was produced twice"):
        Store(tmp_path).write([patient("a"), patient("b"), patient("a")])
    assert Store(tmp_path).counts() == {}


def test_digest_collisions_of_different_ids_are_not_repeats(tmp_path, monkeypatch):
    monkeypatch.setattr("fhir_msc.store.ndjson.NEW_DIGEST", 1)  # 256 values: 300 ids must collide
    store = Store(tmp_path)
    assert store.write([patient(str(n)) for n in range(300)]) == {"Patient": 300}
    with pytest.raises(InputError, match="Patient/7 was produced twice"):
        Store(tmp_path / "other").write([patient(str(n)) for n in range(300)] + [patient("7")])


def test_corrupt_line_names_file_and_line(tmp_path):
    (tmp_path / "Patient.ndjson").write_text('{"resourceType": "Patient", "id": "a"}\n{oops\n')
    with pytest.raises(InputError, match=r"Patient.ndjson, line 2"):
        list(Store(tmp_path).read("Patient"))


def test_transaction_entry_is_a_conditional_update_with_urn_references():
    observation = {"resourceType": "Observation", "id": "0d1c6c2e-6d53-5e8a-8d0a-1f0c6c1f2b3a",
                   "identifier": [{"system": "https://example.org/obs", "value": "S1/M36/CEA"}],
                   "subject": {"reference": "Patient/7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c"}}
    entry = transaction_entry(observation)
    assert entry["request"] == {"method": "PUT", "url": "Observation?identifier=https://example.org/obs%7CS1/M36/CEA"}
    assert entry["fullUrl"] == "urn:uuid:0d1c6c2e-6d53-5e8a-8d0a-1f0c6c1f2b3a"
    assert entry["resource"]["subject"]["reference"] == "urn:uuid:7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c"
    assert conditional_url(observation).startswith("Observation?identifier=")


def test_bundle_reads_back_what_was_written(tmp_path):
    pid = "7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c"
    resources = [patient(pid), {"resourceType": "Observation", "id": "0d1c6c2e-6d53-5e8a-8d0a-1f0c6c1f2b3a",
                                "identifier": [{"system": "s", "value": "v"}], "subject": {"reference": f"Patient/{pid}"}}]
    assert write_bundle(resources, tmp_path / "b.json") == {"Patient": 1, "Observation": 1}
    assert list(read_bundle(tmp_path / "b.json")) == resources


def test_bundle_entries_without_a_resource_are_accounted_for(tmp_path):
    entries = [{"fullUrl": "urn:uuid:7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c", "resource": patient("7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c")},
               {"request": {"method": "DELETE", "url": "Patient/234"}},
               {"request": {"method": "GET", "url": "Patient?name=peter"}},
               {"resource": "not an object"}]
    (tmp_path / "b.json").write_text(json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    not_used: list[str] = []
    assert [r["id"] for r in read_bundle(tmp_path / "b.json", not_used)] == ["7b0c1b5e-3f7d-5b8e-9f55-6c0e8b9d1a2c"]
    assert not_used == [f"{tmp_path / 'b.json'}: 3 bundle entries hold no resource (a DELETE or GET request has none): "
                        "entry[1] DELETE Patient/234, entry[2] GET Patient?name=peter, entry[3] (no FHIR resource object)"]
    source = open_resources(tmp_path / "b.json")
    assert source.not_used == not_used and [r["resourceType"] for r in source.read_all()] == ["Patient"]


def test_non_bundle_file_is_refused(tmp_path):
    (tmp_path / "x.json").write_text('{"resourceType": "Patient"}')
    with pytest.raises(InputError, match="not a FHIR Bundle"):
        list(read_bundle(tmp_path / "x.json"))
