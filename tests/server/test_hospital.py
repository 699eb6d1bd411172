"""Hospital pull against a second real server loaded with noisy hospital-style data."""

import json
import shutil

import pytest
import requests
from click.testing import CliRunner
from storesafety import not_owner_only

from fhir_msc import Store
from fhir_msc.cli import main
from fhir_msc.errors import InputError
from fhir_msc.server.hospital import read_enrollment
from fhir_msc.study.definition import REPO_ROOT

HOSPITAL = REPO_ROOT / "fixtures" / "hospital"


@pytest.fixture
def hospital(fhir_server):
    bundle = json.loads((HOSPITAL / "bundle.json").read_text())
    response = requests.post(fhir_server.base, json=bundle, timeout=60)
    assert response.status_code == 200, response.text[:300]
    return fhir_server


def test_hospital_results_land_at_the_right_visit_in_study_units(hospital, demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store.path, store)
    before = Store(store).counts()
    result = CliRunner().invoke(main, ["hospital-pull", "--server", hospital.base, "--enrollment", str(HOSPITAL / "enrollment.csv"),
                                       "--store", str(store), "--out", str(tmp_path / "found"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["enrolled"], data["patients_found"], len(data["findings"])) == (6, 5, 20)
    assert data["skipped"] == {"outside every visit window": 5, "patient not found or ambiguous": 1,
                               "status entered-in-error": 5, "superseded by a result closer to the visit day": 5,
                               "unit mmol/L not convertible to U/mL": 1}
    first = {(f["subject"], f["testcd"]): f for f in data["findings"]}
    assert first[("NCT04288102-001", "CEA")]["result"] == "1.7"      # ug/L → ng/mL, the closer of two results
    assert first[("NCT04288102-001", "FVC")]["result"] == "3.25"     # mL → L
    assert first[("NCT04288102-001", "FVC")]["visitnum"] == 9        # month 36 by its window
    assert (tmp_path / "found" / "lb.csv").exists() and (tmp_path / "found" / "re.csv").exists()
    after = Store(store).counts()
    assert after["Patient"] == before["Patient"]  # hospital patients are not study patients
    fvc = [o for o in Store(store).read("Observation") if o["code"]["text"] == "Forced vital capacity"
           and o["identifier"][0]["value"] == "NCT04288102-001/M36/FVC"]
    assert fvc[0]["valueQuantity"] == {"value": 3.25, "unit": "L", "system": "http://unitsofmeasure.org", "code": "L"}


def test_enrollment_rows_need_system_and_value(tmp_path):
    bad = tmp_path / "enrollment.csv"
    bad.write_text("USUBJID,PATIENT_IDENTIFIER\nS1,MRN1\n")
    with pytest.raises(InputError, match="row 2: need USUBJID and PATIENT_IDENTIFIER as system|value"):
        read_enrollment(bad)


def test_hospital_findings_and_the_store_are_owner_only_under_umask_022(hospital, demo_store, tmp_path, umask_022):
    store = tmp_path / "work" / "store"
    shutil.copytree(demo_store.path, store)
    for path in [store, *store.iterdir()]:
        path.chmod(0o700 if path.is_dir() else 0o600)  # what a map under this umask gives (tested in tests/test_store_jobs.py)
    result = CliRunner().invoke(main, ["hospital-pull", "--server", hospital.base, "--enrollment", str(HOSPITAL / "enrollment.csv"),
                                       "--store", str(store), "--out", str(tmp_path / "work" / "found")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "work" / "found" / "lb.csv").exists()
    assert not_owner_only(store, tmp_path / "work" / "found") == []
