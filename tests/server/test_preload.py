"""The loopback server's test-harness preload (FHIR_TEST_PRELOAD) and where its export files live."""

import json
import stat

import pytest

from fhir_msc.server import bulk
from fhir_msc.server.client import FhirClient
from loopback import LoopbackServer

LOINC = "http://loinc.org"


def observation(id_: str, patient: str, code: str, system: str = LOINC) -> dict:
    return {"resourceType": "Observation", "id": id_, "status": "final", "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{patient}"}, "valueQuantity": {"value": 1.0, "unit": "L"}}


RESOURCES = {
    "Patient": [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"}],
    "Observation": [observation("o1", "p1", "19868-9"), observation("o2", "p1", "1834-1"), observation("o3", "p2", "19868-9"),
                    observation("o4", "p2", "19868-9", system="http://example.org/other"), observation("o5", "p2", "2039-6")],
}


def write_ndjson(directory, resources: dict[str, list[dict]]) -> None:
    directory.mkdir(exist_ok=True)
    for resource_type, items in resources.items():
        (directory / f"{resource_type}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in items) + "\n")


@pytest.fixture(scope="module")
def preloaded(tmp_path_factory):
    """A server preloaded from NDJSON files, its temporary directory a folder of the test's own."""
    root = tmp_path_factory.mktemp("preload")
    write_ndjson(root / "data", RESOURCES)
    (root / "tmp").mkdir()
    server = LoopbackServer({"FHIR_TEST_PRELOAD": str(root / "data"), "TMPDIR": str(root / "tmp")})
    yield server, root / "tmp"
    server.stop()


def test_preloaded_resources_are_served_with_versions_and_searchable(preloaded):
    server, _ = preloaded
    c = FhirClient(server.base)
    patient = c.request("GET", "Patient/p1")
    assert patient["meta"]["versionId"] and patient["meta"]["lastUpdated"]
    assert server.count("Patient") == 2 and server.count("Observation") == 5
    assert sorted(o["id"] for o in c.search("Observation", {"subject": "Patient/p2"})) == ["o3", "o4", "o5"]


def test_a_preload_line_without_an_id_stops_the_server_naming_file_and_line(tmp_path):
    write_ndjson(tmp_path, {"Patient": [{"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient"}]})
    with pytest.raises(RuntimeError, match=r"Patient\.ndjson, line 2: not a resource with a resourceType and an id"):
        LoopbackServer({"FHIR_TEST_PRELOAD": str(tmp_path)})


@pytest.mark.parametrize("codes", [f"{LOINC}|19868-9", f"{LOINC}|19868-9,{LOINC}|2039-6", "19868-9"])
def test_a_type_filter_on_code_exports_what_the_code_search_finds(preloaded, tmp_path, codes):
    server, _ = preloaded
    c = FhirClient(server.base)
    done = bulk.export(c, "system", tmp_path, types=("Observation",), type_filters=[bulk.type_filter("Observation", {"code": codes})])
    exported = sorted(r["id"] for r in done.resources("Observation"))
    assert exported == sorted(o["id"] for o in c.search("Observation", {"code": codes}))
    assert exported  # o4 has the code under another system: only a code without system matches it
    bulk.finish(c, done)


def test_export_files_are_owner_only_on_the_servers_disk_until_the_job_is_deleted(preloaded, tmp_path):
    server, server_tmp = preloaded
    c = FhirClient(server.base)
    status_url = bulk.kick_off(c, "system", {"_type": ["Patient,Observation"]})
    manifest = bulk.wait_for_manifest(c, status_url, bulk.BulkPolicy())
    files = [f for d in server_tmp.glob("fhir-test-export-*") for f in d.iterdir()]
    assert len(files) == len(manifest.output) == 2
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    bulk.delete_job(c, status_url)
    assert not list(server_tmp.glob("fhir-test-export-*"))
