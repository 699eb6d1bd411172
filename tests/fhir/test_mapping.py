"""Tables → FHIR: every resource valid, deterministic, linked, and tagged synthetic."""

import uuid
from collections import Counter

from fhir_msc import Store, get_version
from fhir_msc.fhir.mapping import (
    STUDY_EXTENSION,
    SYNTHETIC_TAG,
    resource_id,
    tables_to_fhir,
)
from fhir_msc.fhir.validate import validate_resources
from fhir_msc.fhir.versions import subject_arm_names
from fhir_msc.tables.sdtm import RejectLog


def test_every_resource_validates(mapped):
    version, store = mapped
    report = validate_resources(store.read_all(), get_version(version))
    assert report.errors == []
    assert report.checked["Observation"] > 9000


def test_counts_match_the_design(mapped, study):
    _, store = mapped
    counts = store.counts()
    assert counts["ResearchStudy"] == 1
    assert counts["ResearchSubject"] == counts["Patient"] == 100
    assert counts["MedicationAdministration"] == 300
    names = {a.code: a.name for a in study.arms}
    arms = Counter(subject_arm_names(rs, names)[0] for rs in store.read("ResearchSubject"))
    assert arms == {"MSC": 65, "Placebo": 35}


def test_every_resource_is_tagged_synthetic(mapped):
    _, store = mapped
    assert all(SYNTHETIC_TAG in r["meta"]["tag"] for r in store.read_all())


def test_mapping_twice_gives_identical_resources(study, cohort, tmp_path):
    first, second = Store(tmp_path / "a"), Store(tmp_path / "b")
    for store in (first, second):
        store.write(tables_to_fhir(study, cohort, get_version("R4"), RejectLog(None)))
    for resource_type in first.resource_types():
        assert (first.path / f"{resource_type}.ndjson").read_bytes() == (second.path / f"{resource_type}.ndjson").read_bytes()


def test_ids_are_uuid5_of_type_system_and_value(mapped):
    _, store = mapped
    patient = next(store.read("Patient"))
    identifier = patient["identifier"][0]
    expected = uuid.uuid5(uuid.NAMESPACE_URL, f"Patient|{identifier['system']}|{identifier['value']}")
    assert patient["id"] == resource_id("Patient", identifier["system"], identifier["value"]) == str(expected)


def test_observation_links_subject_visit_and_study(mapped, study):
    version, store = mapped
    ids = {r["resourceType"]: {x["id"] for x in store.read(r["resourceType"])} for r in
           (next(store.read(t)) for t in store.resource_types())}
    observation = next(store.read("Observation"))
    assert observation["subject"]["reference"].split("/")[1] in ids["Patient"]
    assert observation["encounter"]["reference"].split("/")[1] in ids["Encounter"]
    study_ext = [e for e in observation["extension"] if e["url"] == STUDY_EXTENSION]
    assert study_ext[0]["valueReference"]["reference"].split("/")[1] in ids["ResearchStudy"]


def test_quantities_carry_ucum_units(mapped):
    _, store = mapped
    quantities = [o["valueQuantity"] for o in store.read("Observation") if "valueQuantity" in o]
    assert quantities and all(q["system"] == "http://unitsofmeasure.org" and q["code"] for q in quantities)


def test_r5_uses_comparison_groups_and_progress(study, cohort):
    resources = list(tables_to_fhir(study, cohort, get_version("R5"), RejectLog(None)))
    rs = next(r for r in resources if r["resourceType"] == "ResearchStudy")
    assert [g["linkId"] for g in rs["comparisonGroup"]] == ["MSC", "PBO"]
    subject = next(r for r in resources if r["resourceType"] == "ResearchSubject")
    assert subject["assignedComparisonGroup"] in {"MSC", "PBO"}
    assert subject["progress"][0]["subjectState"]["coding"][0]["code"] == "off-study"
    assert "individual" not in subject and subject["subject"]["reference"].startswith("Patient/")


def test_r4_uses_arms(study, cohort):
    resources = list(tables_to_fhir(study, cohort, get_version("R4"), RejectLog(None)))
    rs = next(r for r in resources if r["resourceType"] == "ResearchStudy")
    assert [a["name"] for a in rs["arm"]] == ["MSC", "Placebo"]
    assert "comparisonGroup" not in rs


def test_invalid_resource_is_reported(mapped):
    version, store = mapped
    observation = dict(next(store.read("Observation")))
    observation["status"] = 42
    report = validate_resources([observation], get_version(version))
    assert not report.ok and report.errors[0].resource == f"Observation/{observation['id']}"
    assert report.errors[0].path == "status" and str(report.errors[0]).startswith(f"Observation/{observation['id']}: status: ")
