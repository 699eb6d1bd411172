"""Hospital pull against a second real server loaded with noisy hospital-style data."""

import csv
import json
import shutil
from datetime import date, timedelta

import pytest
import requests
from click.testing import CliRunner
from storesafety import not_owner_only

from fhir_msc import Store, load_study
from fhir_msc.account import MAX_EXAMPLES, Tally
from fhir_msc.cli import main
from fhir_msc.errors import ExitCode, InputError
from fhir_msc.server.client import Listing
from fhir_msc.server.hospital import (
    CONFLICT,
    NOT_LISTED,
    OTHER_CODE_NOT_FETCHED,
    PARTLY_LISTED,
    SAME,
    SUPERSEDED,
    UNUSED_CODE,
    Enrollment,
    pull_hospital,
    read_enrollment,
)
from fhir_msc.study.definition import REPO_ROOT
from fhir_msc.tables.sdtm import SubjectRecord

HOSPITAL = REPO_ROOT / "fixtures" / "hospital"


@pytest.fixture
def hospital(fhir_server):
    bundle = json.loads((HOSPITAL / "bundle.json").read_text())
    response = requests.post(fhir_server.base, json=bundle, timeout=60)
    assert response.status_code == 200, response.text[:300]
    return fhir_server


def _enrolled_observations() -> int:
    """Observations in the fixture bundle of the enrolled patients the hospital has (counted independently)."""
    bundle = json.loads((HOSPITAL / "bundle.json").read_text())
    with open(HOSPITAL / "enrollment.csv", newline="") as handle:
        mrns = {row["PATIENT_IDENTIFIER"].split("|")[1] for row in csv.DictReader(handle)}
    patients = {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
                and e["resource"]["identifier"][0]["value"] in mrns}
    return sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
               and e["resource"]["subject"]["reference"] in patients)


def _pull(hospital, store, out, *more):
    return CliRunner().invoke(main, ["hospital-pull", "--server", hospital.base, "--enrollment", str(HOSPITAL / "enrollment.csv"),
                                     "--store", str(store), "--out", str(out), "--json", *more])


def _stored(store, identifier):
    return next(o for o in Store(store).read("Observation") if o["identifier"][0]["value"] == identifier)


def test_hospital_results_fill_gaps_and_never_overwrite_study_values(hospital, demo_store, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(demo_store.path, store)
    before = Store(store).counts()
    result = _pull(hospital, store, tmp_path / "found")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["enrolled"], data["patients"]["used"]) == (6, 5)
    assert data["patients"]["skipped"] == {"no hospital patient has this identifier": 1}
    observations = data["observations"]
    assert observations["read"] == _enrolled_observations() == 43
    assert observations["used"] == len(data["findings"]) == 4
    assert observations["skipped"] == {CONFLICT: 15, "outside every visit window": 5, "status entered-in-error": 5,
                                       SUPERSEDED: 5, UNUSED_CODE: 5, SAME: 1,
                                       "in the window of a visit where its outcome is not scheduled": 1,
                                       "partial date not within one visit window": 1,
                                       "unit mmol/L not convertible to U/mL": 1}
    assert observations["read"] == observations["used"] + sum(observations["skipped"].values())
    assert data["unused_codes"] == {"https://hospital.example.org/fhir/CodeSystem/lab|GLU": 5}

    # the study's FVC at month 36 stays; the hospital's is kept apart with both values
    assert _stored(store, "NCT04288102-001/M36/FVC")["valueQuantity"]["value"] == 2.03
    with open(tmp_path / "found" / "conflicts.csv", newline="") as handle:
        conflicts = {(row["USUBJID"], row["TESTCD"]): row for row in csv.DictReader(handle)}
    assert len(conflicts) == 15 and (tmp_path / "found" / "conflicts.csv").stat().st_mode & 0o077 == 0
    fvc = conflicts[("NCT04288102-001", "FVC")]
    assert (fvc["STUDY_RESULT"], fvc["HOSPITAL_RESULT"], fvc["VISIT"], fvc["KEPT"]) == ("2.03", "3.25", "M36", "study")

    # subject 005 has no month-36 values in the trial: the hospital's fill the gap, each form kept
    found = {f["testcd"]: f for f in data["findings"]}
    assert {f["subject"] for f in data["findings"]} == {"NCT04288102-005"} and set(found) == {"CEA", "AFP", "CA125", "FVC"}
    assert _stored(store, "NCT04288102-005/M36/AFP")["valueQuantity"] == {
        "value": 0.5, "comparator": "<", "unit": "ng/mL", "system": "http://unitsofmeasure.org", "code": "ng/mL"}
    m36 = date(2020, 3, 25) + timedelta(days=1095 + 4)  # RFSTDTC + month 36 + the fixture's offset for the fifth patient
    assert found["CA125"]["date"] == m36.isoformat()[:7] and found["FVC"]["date"] == m36.isoformat()  # partial date, effectiveInstant
    assert all(f["visitnum"] == 9 for f in data["findings"])
    after = Store(store).counts()
    assert after["Patient"] == before["Patient"] and after["Observation"] == before["Observation"] + 4
    assert after["Encounter"] == before["Encounter"] + 1  # 005's month-36 visit

    # again, preferring the hospital: the conflicts are taken, the gaps filled last time are the same now
    again = _pull(hospital, store, tmp_path / "found", "--prefer", "hospital")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["observations"]["skipped"][SAME] == 5 and CONFLICT not in data["observations"]["skipped"]
    assert data["observations"]["used"] == len(data["findings"]) == len(data["conflicts"]) == 15
    assert _stored(store, "NCT04288102-001/M36/FVC")["valueQuantity"]["value"] == 3.25
    assert not (tmp_path / "found" / "qs.csv").exists()
    with open(tmp_path / "found" / "conflicts.csv", newline="") as handle:
        assert {row["KEPT"] for row in csv.DictReader(handle)} == {"hospital"}


def test_hospital_pull_prints_its_account(hospital, demo_store, tmp_path):
    shutil.copytree(demo_store.path, tmp_path / "store")
    result = CliRunner().invoke(main, ["hospital-pull", "--server", hospital.base, "--enrollment", str(HOSPITAL / "enrollment.csv"),
                                       "--store", str(tmp_path / "store"), "--out", str(tmp_path / "found")])
    assert result.exit_code == 0, result.output
    assert "Observations of the patients found: 43 read = 4 used + 15 conflicts with the study value" in result.stdout
    assert f"15 conflict(s) with study values in {tmp_path / 'found' / 'conflicts.csv'} (the study's values kept" in result.stdout
    assert "not used: 5 × code not used by the study: Observation/" in result.stderr
    assert "codes not used by the study: https://hospital.example.org/fhir/CodeSystem/lab|GLU ×5" in result.stderr
    assert "patient not used: 1 × no hospital patient has this identifier: NCT04288102-006 (MRN100205)" in result.stderr


class _Hospital:
    """A stand-in hospital server: one patient, the given Observations."""

    base_url = "https://hospital.invalid/fhir"

    def __init__(self, observations):
        self.observations = observations

    def listing(self, resource_type, params):
        if resource_type == "Patient":
            found = [{"resourceType": "Patient", "id": "p"}] if params["identifier"].endswith("|known") else []
        else:
            found = self.observations
        return Listing(resources=found, matched=len(found), total=len(found), pages=1, page=len(found))


def test_the_hospital_account_balances_on_bad_input():
    study = load_study()
    fvc = {"resourceType": "Observation", "status": "final", "effectiveDateTime": "2023-03-20",
           "code": {"coding": [{"system": "http://loinc.org", "code": "19868-9"}]},
           "valueQuantity": {"value": 2.5, "unit": "L", "code": "L"}}
    bad = [{**fvc, "id": "1", "status": None}, {**fvc, "id": "2", "code": {}}, {**fvc, "id": "3", "valueQuantity": {"value": "2"}},
           {**fvc, "id": "4", "effectiveDateTime": "2023-02-30"}, {**fvc, "id": "5", "valueQuantity": {**fvc["valueQuantity"], "comparator": "ad"}},
           {**fvc, "id": "6", "valueQuantity": {"value": 99, "code": "L"}}, {**fvc, "id": "7", "effectiveDateTime": None},
           {**fvc, "id": "8"}, {**fvc, "id": "9", "valueQuantity": {"value": 2.0, "comparator": "<=", "code": "L"}}]
    subject = SubjectRecord(subject="S1", age=50, sex="F", country="", arm_code="MSC", actual_arm_code="MSC",
                            start="2020-03-20", end="")
    enrollment = [Enrollment(subject="S1", system="mrn", value="known"), Enrollment(subject="S2", system="mrn", value="x"),
                  Enrollment(subject="S1", system="mrn", value="unknown")]
    result = pull_hospital(_Hospital(bad), study, enrollment, {"S1": subject}, {("S1", 9, "FVC"): ("2.5", "2023-03-21")})
    patients, observations = result.patients, result.observations
    assert (patients.read, patients.used, patients.balanced) == (3, 1, True)
    assert observations.balanced and observations.read == len(bad) and observations.used == 0
    assert observations.skipped == {"status None": 1, UNUSED_CODE: 1, "no valueQuantity value": 1,
                                    "no effective date, or not a calendar date": 2, "comparator ad is not a bound (<, <=, >=, >)": 1,
                                    "out of plausible range": 1, SUPERSEDED: 1, SAME: 1}
    assert result.unused_codes == {"no code": 1} and result.conflicts == []


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


def test_hospital_findings_never_go_into_the_trial_tables(cohort, demo_store):
    from fhir_msc import jobs
    with pytest.raises(InputError, match="holds trial tables"):
        jobs.hospital_pull(load_study(), None, HOSPITAL / "enrollment.csv", demo_store.path, cohort)


def test_hospital_pull_bulk_gives_the_paged_findings_conflicts_and_account(hospital, demo_store, tmp_path):
    for name in ("paged", "bulk"):
        shutil.copytree(demo_store.path, tmp_path / name)
    paged = json.loads(_pull(hospital, tmp_path / "paged", tmp_path / "found-paged").stdout)
    result = _pull(hospital, tmp_path / "bulk", tmp_path / "found-bulk", "--bulk", "--state", str(tmp_path / "state"))
    assert result.exit_code == 0, result.output
    by_bulk = json.loads(result.stdout)
    assert (by_bulk["method"], paged["method"]) == ("bulk", "search")
    assert by_bulk["findings"] == paged["findings"] and by_bulk["conflicts"] == paged["conflicts"]
    assert by_bulk["patients"] == paged["patients"]
    # only the study's codes are exported (_typeFilter): the GLU results are not read, all else is the same
    expected = {**paged["observations"], "read": paged["observations"]["read"] - 5,
                "skipped": {k: v for k, v in paged["observations"]["skipped"].items() if k != UNUSED_CODE},
                "examples": {k: v for k, v in paged["observations"]["examples"].items() if k != UNUSED_CODE}}
    assert by_bulk["observations"] == expected and by_bulk["unused_codes"] == {}
    assert any("bulk export (Patient level" in note for note in by_bulk["notes"])
    assert Store(tmp_path / "bulk").counts() == Store(tmp_path / "paged").counts()
    assert not list((tmp_path / "state" / "bulk").iterdir())  # the export's files are removed once used


def test_hospital_pull_bulk_falls_back_to_paged_search_without_export(demo_store, tmp_path):
    from loopback import LoopbackServer
    server = LoopbackServer({"FHIR_TEST_BULK": "off"})
    try:
        requests.post(server.base, json=json.loads((HOSPITAL / "bundle.json").read_text()), timeout=60).raise_for_status()
        shutil.copytree(demo_store.path, tmp_path / "store")
        data = json.loads(_pull(server, tmp_path / "store", tmp_path / "found", "--bulk", "--state", str(tmp_path / "s")).stdout)
        assert data["method"] == "search" and data["observations"]["read"] == 43 and len(data["findings"]) == 4
        assert len(data["notes"]) == 1 and data["notes"][0].endswith("declares no $export: pulled by paged search")
    finally:
        server.stop()


@pytest.mark.parametrize(("prefer", "per_part"), [("study", 1), ("hospital", 1), ("study", 1000)])
def test_the_out_of_core_choice_equals_the_in_memory_one_on_the_fixture(demo_store, prefer, per_part, tmp_path, monkeypatch):
    """The bulk path's choice part by part (one subject per part, or all in one) gives the in-memory path's findings,
    conflicts and account (examples included), on the hospital fixture with each Observation also sent again as a
    copy (earlier, in reverse order) and with its own id and another value (later): ties, which the first one wins,
    and more than MAX_EXAMPLES superseded results."""
    from fhir_msc import jobs
    from fhir_msc.server import hospital

    monkeypatch.setattr(hospital, "SUBJECTS_PER_PART", per_part)
    study = load_study()
    people = read_enrollment(HOSPITAL / "enrollment.csv")
    subjects, values = jobs._held_values(study, demo_store, {person.subject for person in people})
    values = list(values)
    bundle = [e for e in json.loads((HOSPITAL / "bundle.json").read_text())["entry"]]
    by_mrn = {e["resource"]["identifier"][0]["value"]: e["fullUrl"] for e in bundle if e["resource"]["resourceType"] == "Patient"}
    found = {}
    for person in people:
        if person.value in by_mrn:
            found.setdefault(by_mrn[person.value], []).append((person.subject, date.fromisoformat(subjects[person.subject].start[:10])))
    observations = [(e["resource"]["subject"]["reference"], {**e["resource"], "id": f"h{n:03d}"}) for n, e in enumerate(bundle)
                    if e["resource"]["resourceType"] == "Observation" and e["resource"]["subject"]["reference"] in found]
    copies = [(patient, {**o, "id": f"{o['id']}-copy"}) for patient, o in reversed(observations)]
    changed = [(patient, {**o, "valueQuantity": {**o["valueQuantity"], "value": o["valueQuantity"]["value"] * 1.1}})
               for patient, o in observations if isinstance(o.get("valueQuantity", {}).get("value"), (int, float))]
    observations += changed
    by_code = hospital.hospital_outcomes(study)
    args = (study, by_code, len(people))
    in_memory = hospital._account(*args, Tally(), found, copies + observations, dict(values), prefer)
    out_of_core = hospital._account_out_of_core(*args, Tally(), found, copies + observations, values, prefer, tmp_path)
    assert out_of_core == in_memory
    assert in_memory.observations.skipped[SUPERSEDED] > MAX_EXAMPLES and in_memory.conflicts and in_memory.findings
    assert SAME in in_memory.observations.skipped and in_memory.observations.balanced
    assert list(tmp_path.iterdir()) == []  # the spool is removed


def _quirky_hospital(quirk: str):
    """A hospital server whose Bulk Data export behaves as FHIR_TEST_BULK_QUIRKS=quirk says."""
    from loopback import LoopbackServer
    server = LoopbackServer({"FHIR_TEST_BULK_QUIRKS": quirk})
    requests.post(server.base, json=json.loads((HOSPITAL / "bundle.json").read_text()), timeout=60).raise_for_status()
    return server


@pytest.mark.parametrize("quirk", ["type-filter-empty", "ignore-type-filter", "type-filter-outcome"])
def test_hospital_pull_bulk_without_the_type_filter_applied_gives_the_paged_account(demo_store, tmp_path, quirk):
    for name in ("paged", "bulk"):
        shutil.copytree(demo_store.path, tmp_path / name)
    server = _quirky_hospital(quirk)
    try:
        paged = json.loads(_pull(server, tmp_path / "paged", tmp_path / "found-paged").stdout)
        result = _pull(server, tmp_path / "bulk", tmp_path / "found-bulk", "--bulk", "--state", str(tmp_path / "state"))
        assert result.exit_code == 0, result.output
        by_bulk = json.loads(result.stdout)
        for part in ("patients", "observations", "findings", "conflicts", "unused_codes"):
            assert by_bulk[part] == paged[part], part  # every Observation read and accounted for, as by search
        assert any("did not apply the _typeFilter of Observation" in note for note in by_bulk["notes"])
        assert any("every Observation of the patients found was exported" in note for note in by_bulk["notes"])
        assert not list((tmp_path / "state" / "bulk").iterdir())
    finally:
        server.stop()


def test_hospital_pull_bulk_from_an_export_without_patients_is_an_error_not_nobody_found(demo_store, tmp_path):
    server = _quirky_hospital("empty-manifest")
    try:
        shutil.copytree(demo_store.path, tmp_path / "store")
        before = Store(tmp_path / "store").counts()
        result = CliRunner().invoke(main, ["hospital-pull", "--server", server.base, "--enrollment", str(HOSPITAL / "enrollment.csv"),
                                           "--store", str(tmp_path / "store"), "--out", str(tmp_path / "found"), "--bulk",
                                           "--state", str(tmp_path / "state")])
        assert result.exit_code == ExitCode.SERVER and "Traceback" not in result.output
        assert "holds no Patient file although _type asked for Patient: the 6 enrolled patients cannot be looked up" in result.output
        assert "enrolled patients found" not in result.output and Store(tmp_path / "store").counts() == before
    finally:
        server.stop()


def _capped_hospital(cap: int):
    """The hospital fixture on a server that answers every search with one page of at most ``cap`` matches, no next link."""
    from loopback import LoopbackServer
    server = LoopbackServer({"FHIR_TEST_PAGE_CAP": str(cap)})
    requests.post(server.base, json=json.loads((HOSPITAL / "bundle.json").read_text()), timeout=60).raise_for_status()
    return server


def test_hospital_pull_from_a_capped_server_reads_every_observation_by_the_study_codes(hospital, demo_store, tmp_path):
    for name in ("paged", "capped"):
        shutil.copytree(demo_store.path, tmp_path / name)
    paged = json.loads(_pull(hospital, tmp_path / "paged", tmp_path / "found-paged").stdout)
    server = _capped_hospital(5)  # each patient has 8 to 10 Observations, at most 4 with one code
    try:
        result = _pull(server, tmp_path / "capped", tmp_path / "found-capped")
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    capped = json.loads(result.stdout)
    values = lambda conflicts: [{k: v for k, v in c.items() if k != "hospital_observation"} for c in conflicts]  # noqa: E731
    assert capped["findings"] == paged["findings"] and values(capped["conflicts"]) == values(paged["conflicts"])
    assert capped["patients"] == paged["patients"] and capped["missed"] == []  # (each server gave its own ids)
    observations = capped["observations"]
    assert observations["read"] == paged["observations"]["read"] == 43 and observations["used"] == 4
    others = {UNUSED_CODE, OTHER_CODE_NOT_FETCHED}
    assert {k: v for k, v in observations["skipped"].items() if k not in others} == \
        {k: v for k, v in paged["observations"]["skipped"].items() if k not in others}
    assert sum(observations["skipped"].get(k, 0) for k in others) == 5 and observations["skipped"][OTHER_CODE_NOT_FETCHED] > 0
    assert any(note.startswith("the server listed only part of the Observations of 5 patient(s)") for note in capped["notes"])
    assert Store(tmp_path / "capped").counts() == Store(tmp_path / "paged").counts()


def test_hospital_pull_that_cannot_list_a_code_completely_counts_it_says_so_and_exits_7(demo_store, tmp_path):
    shutil.copytree(demo_store.path, tmp_path / "store")
    server = _capped_hospital(3)  # two patients have 4 CEA results: even one code does not fit a page
    try:
        result = CliRunner().invoke(main, ["hospital-pull", "--server", server.base, "--enrollment",
                                           str(HOSPITAL / "enrollment.csv"), "--store", str(tmp_path / "store"),
                                           "--out", str(tmp_path / "found")])
        as_json = _pull(server, tmp_path / "store", tmp_path / "found")
    finally:
        server.stop()
    assert result.exit_code == as_json.exit_code == ExitCode.PARTIAL, result.output
    assert "incomplete: 2 search(es) fell short of what the server says they match" in result.stderr
    assert "missed: Observation http://loinc.org|2039-6 of Patient/" in result.stderr
    assert "the server listed 3 of the 4 it matches (Bundle.total)" in result.stderr
    observations = json.loads(as_json.stdout)["observations"]
    assert observations["read"] == 43 and observations["read"] == observations["used"] + sum(observations["skipped"].values())
    skipped = observations["skipped"]
    assert skipped[PARTLY_LISTED] == 6 and skipped[NOT_LISTED] >= 2  # 3 CEA listed of each 4, and the 2 not listed
    # the 5 GLU results: fetched with a page, not fetched (asked for by code), or not listed where a code fell short
    assert skipped.get(UNUSED_CODE, 0) + skipped.get(OTHER_CODE_NOT_FETCHED, 0) + skipped[NOT_LISTED] == 5 + 2
