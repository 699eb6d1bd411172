"""fhir-msc against SMART's reference Bulk Data server (github smart-on-fhir/bulk-data-server, 100 Synthea
patients, R4): exports at each level compared with the server's own ``$get-resource-counts``,
``hospital-pull --bulk`` with enrolled patients the server holds, and SMART Backend Services. ``make interop``."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from fhir_msc.cli import main
from fhir_msc.errors import ExitCode
from fhir_msc.fhir.unmapping import ref_id
from fhir_msc.server import bulk
from fhir_msc.server.auth import SmartBackendAuth, load_signing_key
from fhir_msc.server.client import FhirClient
from fhir_msc.study.definition import REPO_ROOT

POLICY = bulk.BulkPolicy(first_poll_wait=0.5, max_poll_wait=5)
SYNTHEA = "https://github.com/synthetichealth/synthea"  # the identifier system of the server's Synthea patients
STUDY_SUBJECTS = [row["USUBJID"] for row in csv.DictReader((REPO_ROOT / "fixtures" / "hospital" / "enrollment.csv").open())]
RELATED_ONLY = {"Organization", "Practitioner"}  # in a patient-level export: only those the patients' resources name


def counts(done: bulk.Export) -> dict[str, int]:
    return {t: sum(1 for _ in done.resources(t)) for t in dict.fromkeys(item.type for item in done.manifest.output)}


@pytest.fixture(scope="module")
def patient_export(peer, tmp_path_factory):
    c = FhirClient(peer.base())
    done = bulk.export(c, "Patient", tmp_path_factory.mktemp("patient-export"), policy=POLICY)
    yield done
    bulk.finish(c, done)


def test_the_capability_statement_declares_export_at_the_three_levels(peer):
    assert bulk.export_levels(FhirClient(peer.base())) == {"system", "Patient", "Group"}


def test_a_system_export_holds_what_the_server_counts_type_by_type(peer, tmp_path):
    c = FhirClient(peer.base(page=5000))  # options in the base: the status URL is {origin}/fhir/bulkstatus/…, outside it
    done = bulk.export(c, "system", tmp_path, policy=POLICY)
    assert done.status_url.startswith(f"{peer.origin}/fhir/bulkstatus/") and not done.status_url.startswith(c.base_url)
    assert all(item.url.startswith(peer.origin) and "/bulkfiles/" in item.url for item in done.manifest.output)
    assert len(done.manifest.output) > len(counts(done))  # more than one file for some types
    assert counts(done) == peer.resource_counts()
    assert (done.errors, done.duplicates, done.notes()) == ([], {}, [])
    bulk.finish(c, done)


def test_a_patient_export_holds_every_patients_resources(peer, patient_export):
    server, exported = peer.resource_counts(), counts(patient_export)
    assert {t: n for t, n in exported.items() if t not in RELATED_ONLY} == \
        {t: n for t, n in server.items() if t not in RELATED_ONLY | {"Group"}}
    assert all(0 < exported[t] <= server[t] for t in RELATED_ONLY)


def test_a_group_export_holds_its_members(peer, tmp_path):
    group = requests.get(f"{peer.base()}/Group", timeout=30).json()["entry"][0]["resource"]
    members = {ref_id(m["entity"]["reference"]) for m in requests.get(f"{peer.base()}/Group/{group['id']}", timeout=30).json()["member"]}
    c = FhirClient(peer.base())
    done = bulk.export(c, f"Group/{group['id']}", tmp_path, types=("Patient",), policy=POLICY)
    assert {p["id"] for p in done.resources("Patient")} == members and len(members) == group["quantity"]
    bulk.finish(c, done)


def test_transient_status_answers_are_waited_out(peer, tmp_path):
    c = FhirClient(peer.base(err="transient_error"))  # status answers 500 with issue code `transient`
    done = bulk.export(c, "system", tmp_path, types=("Patient",), policy=POLICY)
    assert counts(done) == {"Patient": 100} and c.stats.retries >= 1
    bulk.finish(c, done)


def test_error_files_are_read_and_with_the_output_account_for_every_resource(peer, tmp_path):
    c = FhirClient(peer.base(err="some_file_generation_failed", page=5000))
    done = bulk.export(c, "system", tmp_path, policy=POLICY)
    assert done.errors and all(re.fullmatch(r"error processing: Failed to export \d+\.[A-Za-z]+\.ndjson", e) for e in done.errors)
    failed: Counter[str] = Counter()
    for issue, item in zip(done.errors, done.manifest.error, strict=True):  # one OperationOutcome per error file
        failed[issue.split(".")[-2]] += item.count  # the count of the file that could not be made
    exported = counts(done)
    assert {t: exported.get(t, 0) + failed[t] for t in peer.resource_counts()} == peer.resource_counts()
    bulk.finish(c, done)


def _enrollment(path: Path, patient_ids: list[str]) -> Path:
    """The hospital fixture's study subjects, enrolled as these Synthea patients (and the last as a stranger)."""
    rows = [(subject, f"{SYNTHEA}|{patient}") for subject, patient in zip(STUDY_SUBJECTS, patient_ids)]
    rows.append((STUDY_SUBJECTS[len(rows)], f"{SYNTHEA}|not-a-patient-of-this-server"))
    path.write_text("USUBJID,PATIENT_IDENTIFIER\n" + "".join(f"{s},{i}\n" for s, i in rows))
    return path


def _hospital_pull(base: str, demo_store, tmp_path: Path, patient_ids: list[str], env: dict | None = None):
    shutil.copytree(demo_store.path, tmp_path / "store")
    return CliRunner().invoke(main, ["hospital-pull", "--server", base, "--enrollment", str(_enrollment(tmp_path / "e.csv", patient_ids)),
                                     "--store", str(tmp_path / "store"), "--out", str(tmp_path / "found"), "--bulk",
                                     "--state", str(tmp_path / "state"), "--json"], env=env)


def test_hospital_pull_bulk_finds_the_enrolled_patients_the_server_holds(peer, patient_export, demo_store, tmp_path):
    enrolled = [p["id"] for p in patient_export.resources("Patient")][:len(STUDY_SUBJECTS) - 1]
    result = _hospital_pull(peer.base(), demo_store, tmp_path, enrolled)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "bulk" and (data["enrolled"], data["patients"]["used"]) == (len(STUDY_SUBJECTS), len(enrolled))
    assert data["patients"]["skipped"] == {"no hospital patient has this identifier": 1}
    theirs = sum(1 for o in patient_export.resources("Observation") if ref_id(o["subject"]["reference"]) in enrolled)
    observations = data["observations"]
    assert observations["read"] == theirs == observations["used"] + sum(observations["skipped"].values())
    # the server cannot apply `code` in _typeFilter (it exports nothing then): Observations exported whole, filtered here
    assert any("did not apply the _typeFilter of Observation" in note for note in data["notes"])


def test_smart_backend_services_token_exchange_and_a_secure_export(peer, patient_export, demo_store, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP384R1())
    jwks = {"keys": [{**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "interop-1", "alg": "ES384"}]}
    registered = requests.post(f"{peer.origin}/auth/register", data={"jwks": json.dumps(jwks)}, timeout=30)
    assert registered.status_code == 200, registered.text
    pem = tmp_path / "key.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem.chmod(0o600)
    base = peer.base(secure=True)
    assert requests.get(f"{base}/Patient/$export", headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
                        timeout=30).status_code == 401  # no token, no export
    auth = SmartBackendAuth(base, registered.text, load_signing_key(str(pem), kid="interop-1"))
    c = FhirClient(base, auth=auth)
    done = bulk.export(c, "Patient", tmp_path / "export", types=("Patient",), policy=POLICY)
    assert done.manifest.requires_access_token and counts(done) == {"Patient": 100}
    assert auth.requested_scope() == "system/*.read"  # reading: the least the job needs (the server grants no write)
    bulk.finish(c, done)
    enrolled = [p["id"] for p in patient_export.resources("Patient")][:2]
    env = {"FHIR_MSC_SMART_CLIENT_ID": registered.text, "FHIR_MSC_SMART_KEY": str(pem), "FHIR_MSC_SMART_KID": "interop-1"}
    result = _hospital_pull(base, demo_store, tmp_path, enrolled, env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["patients"]["used"] == 2


def test_pull_bulk_needs_a_search_this_server_does_not_answer_and_says_so_in_one_line(peer, tmp_path):
    result = CliRunner().invoke(main, ["pull", "--bulk", "--server", peer.base(), "--store", str(tmp_path / "store"),
                                       "--state", str(tmp_path / "state")])
    assert result.exit_code == ExitCode.SERVER and "Traceback" not in result.output and "ResearchStudy" in result.output
